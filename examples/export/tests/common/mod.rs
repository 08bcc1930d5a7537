//! A small HTTP/1.1 client for the tests (hyper, one connection per
//! request) and a Server-Sent Events reader.

#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use jobctl_export_example::{Options, Running};
use serde_json::Value;
use tokio::net::TcpStream;

/// The longest any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts jobctl, the worker and the HTTP service on free ports, writing
/// into `out_dir`, with small fast chunks.
pub async fn start(out_dir: &Path, chunk_rows: u64, chunk_delay: Duration) -> Running {
    jobctl_export_example::start(options(out_dir, chunk_rows, chunk_delay))
        .await
        .unwrap()
}

/// The options [`start`] uses: 1000 rows by default, in chunks of
/// `chunk_rows` with a pause of `chunk_delay` each.
pub fn options(out_dir: &Path, chunk_rows: u64, chunk_delay: Duration) -> Options {
    let mut options = Options::new(out_dir);
    options.rows = 1000;
    options.chunk_rows = chunk_rows;
    options.chunk_delay = chunk_delay;
    options
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).unwrap()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request and returns the response head with its body unread.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    tokio::time::timeout(WAIT, sender.send_request(request))
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} {path} in {WAIT:?}"))
        .unwrap()
}

/// Sends one request and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let response = send(addr, method, path, headers, body).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("the body of {method} {path} did not end in {WAIT:?}"))
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[], "").await
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    request(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    pub fn seq(&self) -> u64 {
        self.id.as_deref().unwrap().parse().unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// Reads events off an SSE response body.
pub struct SseReader {
    body: Incoming,
    buf: Vec<u8>,
    pub comments: Vec<String>,
    pub retry: Option<String>,
}

impl SseReader {
    /// Opens `path` as an event stream, with `Last-Event-ID` if given.
    pub async fn open(addr: SocketAddr, path: &str, last_event_id: Option<u64>) -> SseReader {
        let id = last_event_id.map(|k| k.to_string());
        let mut headers = vec![("accept", "text/event-stream")];
        if let Some(id) = &id {
            headers.push(("last-event-id", id.as_str()));
        }
        let response = send(addr, "GET", path, &headers, "").await;
        assert_eq!(response.status(), 200, "GET {path}");
        assert_eq!(
            response.headers().get("content-type").unwrap(),
            "text/event-stream",
            "GET {path}"
        );
        SseReader {
            body: response.into_body(),
            buf: Vec::new(),
            comments: Vec::new(),
            retry: None,
        }
    }

    /// The next event with data, or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = find_blank_line(&self.buf) {
                let block: Vec<u8> = self.buf.drain(..end.1).collect();
                let block = String::from_utf8(block[..end.0].to_vec()).unwrap();
                if let Some(event) = self.parse(&block) {
                    return Some(event);
                }
                continue;
            }
            let frame = tokio::time::timeout(WAIT, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no event for {WAIT:?}"));
            match frame {
                None => {
                    assert!(
                        self.buf.iter().all(u8::is_ascii_whitespace),
                        "the stream ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    );
                    return None;
                }
                Some(frame) => {
                    if let Ok(data) = frame.unwrap().into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// Every remaining event, until the stream ends.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }

    fn parse(&mut self, block: &str) -> Option<SseEvent> {
        let mut event = SseEvent {
            id: None,
            event: None,
            data: String::new(),
        };
        let mut has_data = false;
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "" => self.comments.push(value.to_owned()),
                "id" => event.id = Some(value.to_owned()),
                "event" => event.event = Some(value.to_owned()),
                "retry" => self.retry = Some(value.to_owned()),
                "data" => {
                    if has_data {
                        event.data.push('\n');
                    }
                    event.data.push_str(value);
                    has_data = true;
                }
                other => panic!("unexpected SSE field {other:?}"),
            }
        }
        has_data.then_some(event)
    }
}

/// The end of the first event block: (where its text ends, where the next
/// block starts).
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    buf.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2))
}

/// Submits an export of `rows` rows; returns the 202 answer's JSON.
pub async fn submit(addr: SocketAddr, rows: u64) -> Value {
    let reply = post(addr, "/exports", &format!("{{\"rows\": {rows}}}")).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    reply.json()
}

/// Checks a CSV export: the header and rows 1..=rows, each once, in order.
pub fn check_csv(csv: &str, rows: u64) {
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(jobctl_export_example::worker::HEADER.trim_end())
    );
    let ids: Vec<u64> = lines
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ids.len() as u64, rows, "rows in the CSV");
    assert!(
        ids.iter().copied().eq(1..=rows),
        "the rows are 1..={rows}, each once, in order"
    );
}
