//! A loopback proxy in front of moto that records every AWS request (time
//! and action) and can answer some with AWS's throttling error, which moto
//! never does. The SDK under test parses a real error response.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const THROTTLED_JSON: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
const INTERNAL_JSON: &str = r#"{"__type":"InternalServerError","message":"injected: the request was processed, the answer lost"}"#;
const THROTTLED: &str = "<ErrorResponse xmlns=\"http://rds.amazonaws.com/doc/2014-10-31/\"><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>enclave-test</RequestId></ErrorResponse>";

/// One request that reached the proxy.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When it arrived.
    pub at: Instant,
    /// Its `Action=` (e.g. `CreateDBInstance`).
    pub action: String,
    /// Whether the proxy answered it with throttling.
    pub throttled: bool,
    /// The request body.
    pub body: String,
}

/// See the module documentation.
#[derive(Clone)]
pub struct AwsProxy {
    /// Point the SDK here.
    pub url: String,
    log: Arc<Mutex<Vec<Seen>>>,
    throttle_every: Arc<AtomicU64>,
    lose_answer_of: Arc<Mutex<Option<String>>>,
}

impl AwsProxy {
    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// Actions of requests after the first `from`.
    pub fn actions_since(&self, from: usize) -> Vec<String> {
        self.seen()
            .into_iter()
            .skip(from)
            .map(|s| s.action)
            .collect()
    }

    /// Forward the next request with `action` but answer it with a 500, as
    /// if the answer was lost after AWS processed it.
    pub fn lose_next_answer_of(&self, action: &str) {
        *self.lose_answer_of.lock().unwrap() = Some(action.to_owned());
    }

    /// Requests with `action`, in order.
    pub fn requests(&self, action: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.action == action)
            .collect()
    }

    /// Throttle every `n`th request (0: none).
    pub fn throttle_every(&self, n: u64) {
        self.throttle_every.store(n, Ordering::SeqCst);
    }
}

async fn read_request(socket: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = socket.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf);
        }
    }
}

/// The request with `Connection: close`, so the upstream answer ends at EOF.
fn close_after(request: &[u8]) -> Vec<u8> {
    let end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(request.len());
    let head = String::from_utf8_lossy(&request[..end]);
    let mut out: Vec<String> = head
        .split("\r\n")
        .filter(|l| !l.to_lowercase().starts_with("connection:"))
        .map(str::to_owned)
        .collect();
    out.push("Connection: close".into());
    let mut bytes = out.join("\r\n").into_bytes();
    bytes.extend_from_slice(&request[end..]);
    bytes
}

/// Starts a proxy to `upstream` (`http://host:port`).
pub async fn start(upstream: &str) -> AwsProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = AwsProxy {
        url: format!("http://{}", listener.local_addr().unwrap()),
        log: Arc::default(),
        throttle_every: Arc::new(AtomicU64::new(0)),
        lose_answer_of: Arc::default(),
    };
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let state = proxy.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (state, upstream) = (state.clone(), upstream.clone());
            tokio::spawn(async move {
                while let Some(request) = read_request(&mut socket).await {
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let end = request
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .unwrap_or(0);
                    let body = String::from_utf8_lossy(&request[(end + 4).min(request.len())..])
                        .into_owned();
                    // Query protocol (RDS): Action= in the body; JSON protocol (FSx): X-Amz-Target.
                    let target = text.split("\r\n").find_map(|l| {
                        l.to_lowercase()
                            .starts_with("x-amz-target:")
                            .then(|| l.rsplit('.').next().unwrap_or("?").trim().to_owned())
                    });
                    let json = target.is_some();
                    let action = target
                        .or_else(|| {
                            body.split('&')
                                .find_map(|p| p.strip_prefix("Action="))
                                .map(str::to_owned)
                        })
                        .unwrap_or_else(|| "?".into());
                    let lose = {
                        let mut lose = state.lose_answer_of.lock().unwrap();
                        if lose.as_deref() == Some(action.as_str()) {
                            lose.take().is_some()
                        } else {
                            false
                        }
                    };
                    let throttled = {
                        let mut log = state.log.lock().unwrap();
                        let every = state.throttle_every.load(Ordering::SeqCst);
                        let throttled = every > 0 && (log.len() as u64 + 1).is_multiple_of(every);
                        log.push(Seen {
                            at: Instant::now(),
                            action,
                            throttled,
                            body,
                        });
                        throttled
                    };
                    let error = |status: &str, body: &str, json: bool| {
                        let kind = if json {
                            "application/x-amz-json-1.1"
                        } else {
                            "text/xml"
                        };
                        format!("HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_bytes()
                    };
                    let response = if throttled {
                        if json {
                            error("400 Bad Request", THROTTLED_JSON, true)
                        } else {
                            error("400 Bad Request", THROTTLED, false)
                        }
                    } else {
                        let Ok(mut up) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        if up.write_all(&close_after(&request)).await.is_err() {
                            return;
                        }
                        let mut response = Vec::new();
                        if up.read_to_end(&mut response).await.is_err() {
                            return;
                        }
                        // Keep our side open: strip the upstream's close.
                        let end = response
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .unwrap_or(0);
                        let head = String::from_utf8_lossy(&response[..end]);
                        let has_length = head.to_lowercase().contains("content-length:");
                        let mut lines: Vec<String> = head
                            .split("\r\n")
                            .filter(|l| {
                                !l.to_lowercase().starts_with("connection:")
                                    && !l.to_lowercase().starts_with("transfer-encoding:")
                            })
                            .map(str::to_owned)
                            .collect();
                        let body = &response[(end + 4).min(response.len())..];
                        if !has_length {
                            lines.push(format!("content-length: {}", body.len()));
                        }
                        let mut out = lines.join("\r\n").into_bytes();
                        out.extend_from_slice(b"\r\n\r\n");
                        out.extend_from_slice(body);
                        if lose {
                            error("500 Internal Server Error", INTERNAL_JSON, true)
                        } else {
                            out
                        }
                    };
                    if socket.write_all(&response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    proxy
}
