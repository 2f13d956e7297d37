//! A stand-in for the Kubernetes API's TokenReview endpoint, until the
//! emulator (e2e/) serves the real TokenRequest/TokenReview pair. It does
//! what the API server does after checking a token's signature: report the
//! ServiceAccount named in the token's claims. OpenBao, the real service
//! under test, then enforces its roles' bindings against that identity.

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// A JWT for ServiceAccount `namespace/name` with audience `audience`.
/// Unsigned: with no `pem_keys`, OpenBao relies on the TokenReview.
pub fn service_account_token(namespace: &str, name: &str, audience: &str) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": "https://kubernetes.default.svc",
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "aud": [audience],
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + 600,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": format!("uid-{namespace}-{name}")}},
    });
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&json!({"alg": "RS256", "typ": "JWT"})),
        b64(&claims)
    )
}

fn review(body: &[u8]) -> Value {
    let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let token = request["spec"]["token"].as_str().unwrap_or_default();
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok());
    let status = match claims {
        Some(c) => {
            let k = &c["kubernetes.io"];
            let (ns, sa) = (
                k["namespace"].as_str().unwrap_or_default(),
                k["serviceaccount"]["name"].as_str().unwrap_or_default(),
            );
            json!({"authenticated": true, "audiences": c["aud"], "user": {
                "username": format!("system:serviceaccount:{ns}:{sa}"),
                "uid": k["serviceaccount"]["uid"],
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")]}})
        }
        None => json!({"authenticated": false, "error": "invalid token"}),
    };
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status})
}

/// Serves TokenReviews on a free loopback port; returns its base URL.
pub async fn serve() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let (head_end, length) = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let length = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (end + 4, length);
                    }
                };
                while buf.len() < head_end + length {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = review(&buf[head_end..head_end + length]).to_string();
                let response = format!(
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}
