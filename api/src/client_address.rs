//! The client's address behind reverse proxies, and what the rate limiter keys on.
//!
//! A proxy in front of Keyledger says who its client was in a header: it appends
//! to `X-Forwarded-For` (as a new header line or at the end of the last one) or adds
//! a `Forwarded` element (RFC 7239). Everything to the left of what the nearest
//! trusted proxy wrote came from the client and proves nothing, so the chain is
//! read from the right, across *every* header line in order (`get` sees only the
//! first line, which the client wrote itself), skipping trusted proxies; the first
//! untrusted address is the client.
//!
//! Only the header the proxies are configured to write is read
//! (`KEYLEDGER_FORWARDED_HEADER`): a proxy that appends `X-Forwarded-For` passes a
//! client's own `Forwarded` header through untouched, so believing both would let
//! the client pick its address again.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use actix_web::http::header::HeaderMap;

/// A trusted proxy: one address (`10.0.0.7`, `2001:db8::7`) or a CIDR range
/// (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask_v4(bits: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        bits & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask_v6(bits: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - u32::from(prefix)))
    }
}

/// Why a `KEYLEDGER_TRUSTED_PROXIES` entry is not an address or range.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct IpRangeError(String);

impl FromStr for IpRange {
    type Err = IpRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match s.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s.trim(), None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| IpRangeError(format!("`{address}` is not an IP address")))?;
        let address = address.to_canonical();
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix =
            match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    IpRangeError(format!("`/{p}` is not a prefix length 0–{max}"))
                })?,
            };
        // The host bits are dropped (`10.1.2.3/8` is `10.0.0.0/8`), as routers do.
        let network = match address {
            IpAddr::V4(a) => IpAddr::V4(mask_v4(u32::from(a), prefix).into()),
            IpAddr::V6(a) => IpAddr::V6(mask_v6(u128::from(a), prefix).into()),
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The header trusted proxies write the client's address into.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1` (de facto standard; nginx, HAProxy, ELB).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client;proto=https, for=proxy1` (RFC 7239).
    Forwarded,
}

impl FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            other => Err(format!(
                "`{other}` is neither `x-forwarded-for` nor `forwarded`"
            )),
        }
    }
}

/// Which peers are believed about the client's address, and where they say it.
#[derive(Clone, Debug, Default)]
pub struct ClientAddressRule {
    pub trusted_proxies: Vec<IpRange>,
    pub header: ForwardedHeader,
}

impl ClientAddressRule {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|range| range.contains(ip))
    }

    /// The client's address: the TCP peer, unless the peer is a trusted proxy; then
    /// the right-most hop of the forwarding chain that is not itself a trusted
    /// proxy. A hop that names no address (`unknown`, an obfuscated `_id`, garbage)
    /// ends the walk at the last trusted address before it: whatever lies further
    /// left is the client's word.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_for_hops(headers),
            ForwardedHeader::Forwarded => forwarded_hops(headers),
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(ip) = hop else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// Every `X-Forwarded-For` hop, left to right across all header lines.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for line in headers.get_all("x-forwarded-for") {
        match line.to_str() {
            Ok(line) => hops.extend(line.split(',').map(node_address)),
            // A line that is not visible ASCII names nobody.
            Err(_) => hops.push(None),
        }
    }
    hops
}

/// Every `Forwarded` element's `for=` node, left to right across all header lines;
/// an element without `for=` is a hop of unknown address.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for line in headers.get_all("forwarded") {
        let Ok(line) = line.to_str() else {
            hops.push(None);
            continue;
        };
        for element in split_unquoted(line, ',') {
            let node = split_unquoted(element, ';').into_iter().find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| unquote(value.trim()))
            });
            hops.push(node.as_deref().and_then(node_address));
        }
    }
    hops
}

/// Splits on `separator` outside quoted strings (RFC 7230 `quoted-string`, with
/// backslash escapes).
fn split_unquoted(s: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A `token` as is, a `quoted-string` without its quotes and escapes.
fn unquote(value: &str) -> String {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' {
            chars.next().unwrap_or(c)
        } else {
            c
        });
    }
    out
}

/// The address in a node: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`. `unknown`, obfuscated identifiers
/// (`_hidden`) and anything else name no address.
fn node_address(node: &str) -> Option<IpAddr> {
    let node = node.trim();
    if let Some(rest) = node.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        if !(after.is_empty() || is_port(after.strip_prefix(':')?)) {
            return None;
        }
        return address
            .parse::<Ipv6Addr>()
            .ok()
            .map(|a| IpAddr::V6(a).to_canonical());
    }
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    // One colon: an IPv4 address with a port (an IPv6 address has several).
    let (address, port) = node.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// RFC 7239 allows obfuscated ports (`_abc`) too; they carry no address either
/// way, so both count as a port.
fn is_port(port: &str) -> bool {
    !port.is_empty()
        && (port.bytes().all(|b| b.is_ascii_digit())
            || (port.starts_with('_')
                && port[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')))
}

/// The rate limiter's key for a client: its IPv4 address, or its IPv6 /64. One
/// IPv6 subscriber is routinely given a whole /64, so keying on the full address
/// would hand every client 2^64 separate buckets.
pub fn rate_limit_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(mask_v6(u128::from(v6), 64).into()),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &'static str, lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(line).unwrap(),
            );
        }
        map
    }

    fn rule(trusted: &[&str], header: ForwardedHeader) -> ClientAddressRule {
        ClientAddressRule {
            trusted_proxies: trusted.iter().map(|t| t.parse().unwrap()).collect(),
            header,
        }
    }

    fn xff(trusted: &[&str], peer: &str, lines: &[&str]) -> IpAddr {
        rule(trusted, ForwardedHeader::XForwardedFor)
            .client_ip(ip(peer), &headers("x-forwarded-for", lines))
    }

    fn fwd(trusted: &[&str], peer: &str, lines: &[&str]) -> IpAddr {
        rule(trusted, ForwardedHeader::Forwarded).client_ip(ip(peer), &headers("forwarded", lines))
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        assert_eq!(
            xff(&["10.0.0.1"], "198.51.100.7", &["1.2.3.4"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            fwd(&["10.0.0.1"], "198.51.100.7", &["for=1.2.3.4"]),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let trusted = ["10.0.0.1"];
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["6.6.6.6, 203.0.113.5"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["203.0.113.5, 10.0.0.1"]),
            ip("203.0.113.5")
        );
        // No or garbage header: the proxy itself.
        assert_eq!(xff(&trusted, "10.0.0.1", &[]), ip("10.0.0.1"));
        assert_eq!(xff(&trusted, "10.0.0.1", &["garbage"]), ip("10.0.0.1"));
    }

    #[test]
    fn every_header_line_is_read_in_order_so_a_client_line_cannot_win() {
        // The client sent the first line; the proxy appended its own line.
        let trusted = ["10.0.0.1"];
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["6.6.6.6", "203.0.113.5"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            xff(
                &trusted,
                "10.0.0.1",
                &["6.6.6.6, 7.7.7.7", "203.0.113.5, 10.0.0.1"]
            ),
            ip("203.0.113.5")
        );
        assert_eq!(
            fwd(&trusted, "10.0.0.1", &["for=6.6.6.6", "for=203.0.113.5"]),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn trusted_proxies_may_be_cidr_ranges() {
        let trusted = ["10.0.0.0/8", "2001:db8:feed::/48"];
        assert_eq!(
            xff(&trusted, "10.1.2.3", &["6.6.6.6, 203.0.113.5, 10.9.9.9"]),
            ip("203.0.113.5")
        );
        assert_eq!(
            xff(&trusted, "2001:db8:feed::1", &["6.6.6.6, 2001:db8::42"]),
            ip("2001:db8::42")
        );
        // Outside the range: believed no more than any client.
        assert_eq!(xff(&trusted, "11.0.0.1", &["203.0.113.5"]), ip("11.0.0.1"));
    }

    #[test]
    fn a_range_is_parsed_normalised_and_checked() {
        let range: IpRange = "10.1.2.3/8".parse().unwrap();
        assert_eq!(range.to_string(), "10.0.0.0/8");
        assert!(range.contains(ip("10.255.0.1")));
        assert!(range.contains(ip("::ffff:10.0.0.1")));
        assert!(!range.contains(ip("11.0.0.1")));
        let single: IpRange = "192.0.2.7".parse().unwrap();
        assert_eq!(single.to_string(), "192.0.2.7/32");
        assert!(!single.contains(ip("192.0.2.8")));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        let v6: IpRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")) && !v6.contains(ip("2001:db9::1")));
        for bad in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "10.0.0.0/",
            "nope",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<IpRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_and_brackets_are_stripped() {
        let trusted = ["10.0.0.1"];
        assert_eq!(xff(&trusted, "10.0.0.1", &["1.2.3.4:5678"]), ip("1.2.3.4"));
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["[2001:db8::1]:443"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["[2001:db8::1]"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["2001:db8::1"]),
            ip("2001:db8::1")
        );
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["::ffff:1.2.3.4"]),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn forwarded_reads_for_with_quoted_ipv6_and_other_parameters() {
        let trusted = ["10.0.0.1"];
        assert_eq!(
            fwd(
                &trusted,
                "10.0.0.1",
                &["for=192.0.2.60;proto=http;by=203.0.113.43"]
            ),
            ip("192.0.2.60")
        );
        assert_eq!(
            fwd(&trusted, "10.0.0.1", &[r#"For="[2001:db8:cafe::17]:4711""#]),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            fwd(
                &trusted,
                "10.0.0.1",
                &[r#"for="192.0.2.43:47011", for=198.51.100.17"#]
            ),
            ip("198.51.100.17")
        );
        // A quoted comma or semicolon does not split.
        assert_eq!(
            fwd(
                &trusted,
                "10.0.0.1",
                &[r#"for=6.6.6.6;host="a,b;c", for=192.0.2.60;proto=https"#]
            ),
            ip("192.0.2.60")
        );
    }

    #[test]
    fn unknown_and_obfuscated_hops_end_the_walk_at_the_last_trusted_address() {
        let trusted = ["10.0.0.1", "10.0.0.2"];
        // The proxy could not or would not say who its client was: the client's own
        // claims further left are not believed, the proxy stands for it.
        assert_eq!(
            fwd(&trusted, "10.0.0.1", &["for=6.6.6.6, for=unknown"]),
            ip("10.0.0.1")
        );
        assert_eq!(
            fwd(
                &trusted,
                "10.0.0.1",
                &["for=6.6.6.6, for=_hidden, for=10.0.0.2"]
            ),
            ip("10.0.0.2")
        );
        assert_eq!(
            fwd(&trusted, "10.0.0.1", &["for=\"_gazonk\""]),
            ip("10.0.0.1")
        );
        assert_eq!(fwd(&trusted, "10.0.0.1", &["proto=https"]), ip("10.0.0.1"));
        assert_eq!(
            fwd(&trusted, "10.0.0.1", &["for=192.0.2.9:_port"]),
            ip("192.0.2.9")
        );
        assert_eq!(
            xff(&trusted, "10.0.0.1", &["6.6.6.6, garbage"]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn only_the_configured_header_is_believed() {
        let trusted = ["10.0.0.1"];
        let mut map = headers("x-forwarded-for", &["203.0.113.5"]);
        map.append(
            HeaderName::from_static("forwarded"),
            HeaderValue::from_static("for=6.6.6.6"),
        );
        assert_eq!(
            rule(&trusted, ForwardedHeader::XForwardedFor).client_ip(ip("10.0.0.1"), &map),
            ip("203.0.113.5")
        );
        let mut map = headers("forwarded", &["for=203.0.113.5"]);
        map.append(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6"),
        );
        assert_eq!(
            rule(&trusted, ForwardedHeader::Forwarded).client_ip(ip("10.0.0.1"), &map),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn ipv6_clients_are_rate_limited_by_their_64() {
        assert_eq!(
            rate_limit_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            rate_limit_key(ip("2001:db8:1:2::1")),
            rate_limit_key(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            rate_limit_key(ip("2001:db8:1:2::1")),
            rate_limit_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(rate_limit_key(ip("192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(rate_limit_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
