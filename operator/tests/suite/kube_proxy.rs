//! A fault-injecting proxy between the operator and the real API server:
//! plain HTTP on loopback towards the operator, TLS towards the API server,
//! the operator's own bearer token passed through (so the API server
//! authenticates and authorises the operator, not the proxy). It can answer
//! chosen requests with an error instead (409, 429, 500, a watch's 410
//! Gone), cut every open watch, and freeze list answers while watches go on
//! (a stale view). It counts requests by verb and resource.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::{
    client::legacy::{Client as HttpClient, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::{net::TcpListener, sync::watch};

type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An error to answer instead of forwarding.
#[derive(Clone, Debug)]
pub struct Fault {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`; any when `None`.
    pub verb: Option<String>,
    /// Plural, e.g. `statefulsets` (`companies/status` for a subresource); any when `None`.
    pub resource: Option<String>,
    /// How many more requests it answers.
    pub remaining: u32,
    /// The status code (410 on a watch: an ERROR event with code 410).
    pub status: u16,
    /// `Retry-After` seconds, for 429.
    pub retry_after: Option<u32>,
}

#[derive(Default)]
struct State {
    faults: Vec<Fault>,
    /// While set, list answers come from the last answer seen per URL.
    frozen: bool,
    lists: HashMap<String, (StatusCode, Bytes)>,
    counts: BTreeMap<String, u64>,
}

/// See the module documentation.
pub struct KubeProxy {
    /// `http://127.0.0.1:<port>`: the operator's kubeconfig points here.
    pub url: String,
    state: Arc<Mutex<State>>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeProxy {
    /// Answers the next `fault.remaining` matching requests with the fault.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().unwrap().faults.push(fault);
    }

    /// Ends every open watch (the clients re-list and re-watch).
    pub fn cut_watches(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    /// From now on lists answer what they answered last (a stale view).
    pub fn freeze_lists(&self) {
        self.state.lock().unwrap().frozen = true;
    }

    /// Lists answer from the API server again.
    pub fn thaw(&self) {
        self.state.lock().unwrap().frozen = false;
    }

    /// Requests so far by `"<verb> <resource>"`.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.state.lock().unwrap().counts.clone()
    }
}

/// The verb and resource (with subresource) of an API request.
pub fn classify(method: &hyper::Method, path: &str, query: &str) -> (String, String) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (["api", _version, rest @ ..] | ["apis", _, _version, rest @ ..]) = parts.as_slice() else {
        return (method.as_str().to_lowercase(), path.to_owned());
    };
    let rest = match rest {
        // A namespace's own subresources (status, finalize) are not kinds.
        ["namespaces", _ns, "status" | "finalize"] => rest,
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let resource = match rest {
        [resource] | [resource, _] => (*resource).to_owned(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [] => String::new(),
    };
    let named = rest.len() >= 2;
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match *method {
        hyper::Method::GET if watch => "watch",
        hyper::Method::GET if named => "get",
        hyper::Method::GET => "list",
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        hyper::Method::DELETE if named => "delete",
        hyper::Method::DELETE => "deletecollection",
        _ => "other",
    };
    (verb.to_owned(), resource)
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).map_err(|e| match e {}).boxed())
        .unwrap()
}

fn status_body(code: u16) -> String {
    let reason = match code {
        409 => "Conflict",
        410 => "Expired",
        429 => "TooManyRequests",
        _ => "InternalError",
    };
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("injected by the test proxy: {code}"), "reason": reason, "code": code})
    .to_string()
}

/// Starts a proxy to `upstream` (the API server) trusting `ca_pem`.
/// Synchronous (must run inside a tokio runtime) so that sync code such as
/// `Harness::spawn_operator` can start one.
pub fn start(upstream: &str, ca_pem: &str) -> KubeProxy {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The TLS layer checks the scheme; the TCP layer must let https pass.
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(tcp);
    let client: HttpClient<_, Incoming> = HttpClient::builder(TokioExecutor::new()).build(https);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(State::default()));
    let (cut, _) = watch::channel(0u64);
    let upstream = upstream.trim_end_matches('/').to_owned();
    let (shared, cut_tx) = (Arc::clone(&state), cut.clone());
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (state, client, upstream, cut) = (
                Arc::clone(&shared),
                client.clone(),
                upstream.clone(),
                cut_tx.subscribe(),
            );
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    handle(
                        req,
                        Arc::clone(&state),
                        client.clone(),
                        upstream.clone(),
                        cut.clone(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    KubeProxy {
        url,
        state,
        cut,
        task,
    }
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    client: HttpClient<hyper_rustls::HttpsConnector<HttpConnector>, Incoming>,
    upstream: String,
    mut cut: watch::Receiver<u64>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let (verb, resource) = classify(req.method(), &path, &query);
    let key = format!("{path}?{query}");
    let (fault, frozen) = {
        let mut s = state.lock().unwrap();
        *s.counts.entry(format!("{verb} {resource}")).or_default() += 1;
        let fault = s.faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == resource)
        });
        let fault = fault.map(|f| {
            f.remaining -= 1;
            f.clone()
        });
        let frozen = (s.frozen && verb == "list")
            .then(|| s.lists.get(&key).cloned())
            .flatten();
        (fault, frozen)
    };
    if let Some(fault) = fault {
        if verb == "watch" && fault.status == 410 {
            let event = format!("{{\"type\":\"ERROR\",\"object\":{}}}\n", status_body(410));
            return Ok(full(StatusCode::OK, event));
        }
        let mut response = full(
            StatusCode::from_u16(fault.status).unwrap(),
            status_body(fault.status),
        );
        if let Some(seconds) = fault.retry_after {
            response
                .headers_mut()
                .insert("retry-after", seconds.to_string().parse().unwrap());
        }
        return Ok(response);
    }
    if let Some((status, body)) = frozen {
        return Ok(full(status, body));
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("{upstream}{key}").parse().unwrap();
    parts.headers.remove(hyper::header::HOST);
    let response = match client.request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            return Ok(full(
                StatusCode::BAD_GATEWAY,
                status_body(502) + &format!("{e:?}"),
            ));
        }
    };
    let (parts, body) = response.into_parts();
    if verb == "list" {
        let Ok(collected) = body.collect().await else {
            return Ok(full(StatusCode::BAD_GATEWAY, status_body(502)));
        };
        let bytes = collected.to_bytes();
        state
            .lock()
            .unwrap()
            .lists
            .insert(key, (parts.status, bytes.clone()));
        let mut out = full(parts.status, bytes);
        *out.headers_mut() = parts.headers;
        out.headers_mut().remove(hyper::header::CONTENT_LENGTH);
        out.headers_mut().remove(hyper::header::TRANSFER_ENCODING);
        return Ok(out);
    }
    if verb != "watch" {
        return Ok(Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
                .boxed(),
        ));
    }
    // A watch streams until the API server ends it or the test cuts it.
    cut.mark_unchanged();
    let stream = futures::stream::unfold((body, cut), |(mut body, mut cut)| async move {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(frame)) => Some((Ok::<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>(frame), (body, cut))),
                _ => None,
            },
            _ = cut.changed() => None,
        }
    });
    Ok(Response::from_parts(parts, StreamBody::new(stream).boxed()))
}

#[cfg(test)]
mod tests {
    use hyper::Method;

    use super::classify;

    #[test]
    fn requests_are_classified_by_verb_and_resource() {
        let c = |m: Method, p: &str, q: &str| {
            let (v, r) = classify(&m, p, q);
            format!("{v} {r}")
        };
        assert_eq!(c(Method::GET, "/api/v1/namespaces", ""), "list namespaces");
        assert_eq!(c(Method::GET, "/api/v1/namespaces/a", ""), "get namespaces");
        assert_eq!(
            c(Method::PATCH, "/api/v1/namespaces/a/serviceaccounts/b", ""),
            "patch serviceaccounts"
        );
        assert_eq!(
            c(Method::GET, "/apis/apps/v1/statefulsets", "watch=true&rv=1"),
            "watch statefulsets"
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/enclave.dev/v1alpha1/companies/x/status",
                ""
            ),
            "patch companies/status"
        );
        assert_eq!(
            c(
                Method::PATCH,
                "/apis/enclave.dev/v1alpha1/namespaces/n/developers/x/status",
                ""
            ),
            "patch developers/status"
        );
        assert_eq!(
            c(Method::DELETE, "/apis/batch/v1/namespaces/n/jobs/j", ""),
            "delete jobs"
        );
    }
}
