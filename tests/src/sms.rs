//! A webhook receiver on loopback for the SMS tests: a real HTTP server (plain
//! tokio, HTTP/1.1, one request per connection) that records what the server
//! POSTs, and can refuse the first requests to exercise retries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One request the receiver accepted.
#[derive(Debug, Clone)]
pub struct ReceivedText {
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ReceivedText {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

pub struct WebhookReceiver {
    port: u16,
    received: Arc<Mutex<Vec<ReceivedText>>>,
    refused: Arc<AtomicUsize>,
}

impl WebhookReceiver {
    /// Listens on an ephemeral loopback port; answers 503 to the first
    /// `refuse_first` requests, 200 to the others (which it records).
    pub async fn start(refuse_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicUsize::new(0));
        let (sink, count) = (received.clone(), refused.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (sink, count) = (sink.clone(), count.clone());
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    let refuse = count.fetch_add(1, Ordering::SeqCst) < refuse_first;
                    let status = if refuse {
                        "503 Service Unavailable"
                    } else {
                        sink.lock().unwrap().push(request);
                        "200 OK"
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        Self {
            port,
            received,
            refused,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/sms", self.port)
    }

    /// Requests answered so far, refused ones included.
    pub fn requests(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// Waits (at most 30 s) until `count` messages were accepted; returns them.
    pub async fn texts(&self, count: usize) -> Vec<ReceivedText> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let texts = self.received.lock().unwrap().clone();
            if texts.len() >= count {
                return texts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {count} text messages arrived",
                texts.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<ReceivedText> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[header_end..header_end + length]).into_owned();
    Some(ReceivedText { headers, body })
}
