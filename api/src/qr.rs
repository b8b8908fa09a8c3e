//! QR codes as images a page can show inline: the API's TOTP setup answer and
//! the account page's enrolment draw the same `otpauth://` URI the same way.

use base64::Engine as _;
use qrcodegen::{QrCode, QrCodeEcc};

/// `text` as an SVG QR code in a `data:` URL (one path of dark modules on white,
/// with the standard four-module quiet zone); `None` when it does not fit a QR
/// code (an `otpauth://` URI always does: it is well under 2 KB).
///
/// An SVG rather than a PNG: no image encoder to carry, and it stays sharp at
/// any size. A `data:` URL, so the page needs no second request for a secret
/// (the pages' policy allows `img-src data:`).
pub fn svg_data_url(text: &str) -> Option<String> {
    let qr = QrCode::encode_text(text, QrCodeEcc::Medium).ok()?;
    let size = qr.size();
    let border = 4;
    let mut path = String::new();
    for y in 0..size {
        for x in 0..size {
            if qr.get_module(x, y) {
                path.push_str(&format!("M{},{}h1v1h-1z", x + border, y + border));
            }
        }
    }
    let full = size + 2 * border;
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {full} {full}\" \
         shape-rendering=\"crispEdges\"><rect width=\"100%\" height=\"100%\" fill=\"#fff\"/>\
         <path d=\"{path}\" fill=\"#000\"/></svg>"
    );
    Some(format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(svg)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_otpauth_uri_becomes_an_svg_data_url() {
        let url = svg_data_url("otpauth://totp/Keyledger:ada@example.com?secret=JBSWY3DPEHPK3PXP")
            .expect("fits");
        let svg = url
            .strip_prefix("data:image/svg+xml;base64,")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .expect("base64 SVG");
        assert!(String::from_utf8(svg).unwrap().starts_with("<svg "));
    }
}
