//! HTTP: routing, request parsing and responses, including watch streams.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, channel::Channel, combinators::BoxBody};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::{
    error::ApiError,
    resources::Resource,
    selectors::{FieldSelector, LabelSelector},
    store::{PatchType, Store, WriteOptions, bookmark},
};

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut response = json_response(e.code, &e.status());
    if let Some(secs) = e.retry_after
        && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
    {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// Query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// Percent-decoding (and `+` as space) of a query component.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request to a resource.
struct Target {
    res: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(store: &Store, path: &str) -> Result<Result<Target, Value>, ApiError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => {
            return Ok(Err(
                json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-enclave-emulator", "platform": "linux/amd64"}),
            ));
        }
        ["api"] => {
            return Ok(Err(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            ));
        }
        ["apis"] => return Ok(Err(groups(store))),
        ["api", "v1"] => return Ok(Err(resource_list(store, "", "v1"))),
        ["apis", g, v] => return Ok(Err(resource_list(store, g, v))),
        ["api", "v1", rest @ ..] => ("", "v1", rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::not_found("path", path)),
    };
    let namespaced = |plural: &str| {
        store
            .resource(group, version, plural)
            .filter(|r| r.namespaced)
    };
    let (namespace, rest): (Option<String>, &[&str]) = match rest {
        ["namespaces", ns, plural, ..] if namespaced(plural).is_some() => {
            (Some((*ns).to_owned()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return Err(ApiError::not_found("path", path)),
    };
    let res = store
        .resource(group, version, plural)
        .ok_or_else(|| ApiError::not_found("resource", plural))?;
    Ok(Ok(Target {
        res,
        namespace,
        name,
        subresource: sub,
    }))
}

fn res_is(res: &Resource, plural: &str) -> bool {
    res.plural == plural
}

fn groups(store: &Store) -> Value {
    let mut seen: Vec<(String, String)> = Vec::new();
    for r in store.resources() {
        if !r.group.is_empty() && !seen.iter().any(|(g, _)| *g == r.group) {
            seen.push((r.group.clone(), r.version.clone()));
        }
    }
    let groups: Vec<Value> = seen
        .iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut list = Vec::new();
    for r in store
        .resources()
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        list.push(r.discovery());
        if r.status {
            list.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
}

/// Serves one request.
pub async fn handle(
    store: Arc<Store>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match serve(&store, req).await {
        Ok(response) => response,
        Err(e) => error_response(&e),
    })
}

/// The emulator's own API, for tests in another process: `GET
/// /emulator/counters`, `POST /emulator/faults` (a [`crate::Fault`] as
/// JSON), `POST /emulator/cut-watches`, `POST /emulator/compact`.
async fn control(
    store: &Arc<Store>,
    method: &Method,
    path: &str,
    body: Incoming,
) -> Result<Response<Body>, ApiError> {
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .to_bytes();
    match (method, path) {
        (&Method::GET, "/emulator/counters") => Ok(json_response(200, &json!(store.counters()))),
        (&Method::POST, "/emulator/faults") => {
            let fault: crate::Fault = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("invalid fault: {e}")))?;
            store.inject(fault);
            Ok(json_response(201, &json!({})))
        }
        (&Method::POST, "/emulator/cut-watches") => {
            store.cut_watches();
            Ok(json_response(200, &json!({})))
        }
        (&Method::POST, "/emulator/freeze-lists") => {
            store.freeze_lists();
            Ok(json_response(200, &json!({})))
        }
        (&Method::POST, "/emulator/thaw") => {
            store.thaw();
            Ok(json_response(200, &json!({})))
        }
        (&Method::POST, "/emulator/compact") => {
            store.compact();
            Ok(json_response(200, &json!({})))
        }
        _ => Err(ApiError::not_found("emulator endpoint", path)),
    }
}

async fn serve(store: &Arc<Store>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    if req.uri().path().starts_with("/emulator/") {
        let (parts, body) = req.into_parts();
        return control(store, &parts.method, parts.uri.path(), body).await;
    }
    let (parts, body) = req.into_parts();
    let query = Query::parse(parts.uri.query());
    let target = match route(store, parts.uri.path())? {
        Ok(t) => t,
        Err(document) => return Ok(json_response(200, &document)),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = body
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .to_bytes();
    let opts = WriteOptions {
        manager: query.get("fieldManager").map(str::to_owned),
        force: query.flag("force"),
        status: target.subresource.as_deref() == Some("status"),
        strict: query.get("fieldValidation") == Some("Strict"),
    };
    if res_is(&target.res, "serviceaccounts")
        && target.subresource.as_deref() == Some("token")
        && parts.method == Method::POST
    {
        store.admit(
            "create",
            "serviceaccounts/token",
            target.name.as_deref(),
            None,
        )?;
        let request: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
        let ns = target.namespace.as_deref().unwrap_or_default();
        return Ok(json_response(
            201,
            &store.token_request(ns, target.name.as_deref().unwrap_or_default(), &request)?,
        ));
    }
    if res_is(&target.res, "tokenreviews") {
        store.admit("create", "tokenreviews", None, None)?;
        let request: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
        return Ok(json_response(201, &store.token_review(&request)));
    }
    if let Some(sub) = &target.subresource
        && sub != "status"
    {
        return Err(ApiError::not_found("subresource", sub));
    }
    let ns = target.namespace.as_deref();
    let res = &target.res;
    let verb = match (&parts.method, &target.name) {
        (&Method::GET, None) if query.flag("watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, None) => "create",
        (&Method::PUT, Some(_)) => "update",
        (&Method::PATCH, Some(_)) => "patch",
        (&Method::DELETE, Some(_)) => "delete",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let client = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("-");
    store.count_client(verb, &res.plural, client);
    store.admit(
        verb,
        &res.plural,
        target.name.as_deref(),
        opts.manager.as_deref(),
    )?;
    let parse_body = || -> Result<Value, ApiError> {
        if content_type.contains("yaml") {
            serde_saphyr::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("invalid YAML: {e}")))
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
        }
    };
    let name = target.name.clone().unwrap_or_default();
    match verb {
        "get" => Ok(json_response(200, &store.get(res, ns, &name)?)),
        "list" => {
            let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
            let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())?;
            let limit = query
                .get("limit")
                .and_then(|l| l.parse().ok())
                .filter(|l: &usize| *l > 0);
            let (items, rv, cont) = store.list(
                res,
                ns,
                &labels,
                &fields,
                limit,
                query.get("continue").filter(|c| !c.is_empty()),
            );
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            Ok(json_response(
                200,
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta, "items": items}),
            ))
        }
        "watch" => watch(store, res.clone(), target.namespace.clone(), &query),
        "create" => Ok(json_response(
            201,
            &store.create(res, ns, parse_body()?, &opts)?,
        )),
        "update" => Ok(json_response(
            200,
            &store.update(res, ns, &name, parse_body()?, &opts)?,
        )),
        "patch" => {
            let kind = match content_type.split(';').next().unwrap_or_default().trim() {
                "application/merge-patch+json" => PatchType::Merge,
                "application/strategic-merge-patch+json" => PatchType::Strategic,
                "application/json-patch+json" => PatchType::Json,
                "application/apply-patch+yaml" | "application/apply-patch+json" => PatchType::Apply,
                other => {
                    return Err(ApiError {
                        code: 415,
                        reason: "UnsupportedMediaType",
                        message: format!("unsupported patch type {other:?}"),
                        causes: vec![],
                        retry_after: None,
                    });
                }
            };
            // Apply is always strict about fields the schema does not declare.
            let opts = WriteOptions {
                strict: opts.strict || kind == PatchType::Apply,
                ..opts
            };
            Ok(json_response(
                200,
                &store.patch(res, ns, &name, kind, &parse_body()?, &opts)?,
            ))
        }
        "delete" => {
            let propagation = query
                .get("propagationPolicy")
                .map(str::to_owned)
                .or_else(|| {
                    serde_json::from_slice::<Value>(&bytes)
                        .ok()
                        .and_then(|b| b["propagationPolicy"].as_str().map(str::to_owned))
                });
            Ok(json_response(
                200,
                &store.delete(res, ns, &name, propagation.as_deref())?,
            ))
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

fn watch(
    store: &Arc<Store>,
    res: Resource,
    ns: Option<String>,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    let labels = LabelSelector::parse(query.get("labelSelector").unwrap_or_default())?;
    let fields = FieldSelector::parse(query.get("fieldSelector").unwrap_or_default())?;
    let initial = query.flag("sendInitialEvents");
    let rv = if initial {
        None
    } else {
        query
            .get("resourceVersion")
            .and_then(|r| r.parse::<u64>().ok())
    };
    let bookmarks = query.flag("allowWatchBookmarks");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .unwrap_or(1800u64);
    let (backlog, mut live, current) = store.since(&res, ns.as_deref(), rv)?;
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(64);
    let rk = format!("{}/{}", res.group, res.plural);
    tokio::spawn(async move {
        let to_line = |v: &Value| Bytes::from(format!("{v}\n"));
        let matches = |o: &Value| labels.matches(o) && fields.matches(o);
        let mut last = current;
        for e in backlog {
            if matches(&e.object)
                && tx
                    .send_data(to_line(&json!({"type": e.kind, "object": e.object})))
                    .await
                    .is_err()
            {
                return;
            }
            last = last.max(e.rv);
        }
        if initial
            && tx
                .send_data(to_line(&bookmark(&res, current, true)))
                .await
                .is_err()
        {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        loop {
            let next = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
                live.recv(),
            )
            .await;
            match next {
                Ok(Ok(e)) if e.kind == "CUT" => return,
                Ok(Ok(e)) => {
                    if e.rv <= last
                        || e.resource != rk
                        || ns
                            .as_deref()
                            .is_some_and(|n| e.namespace.as_deref() != Some(n))
                    {
                        continue;
                    }
                    last = e.rv;
                    if !matches(&e.object) {
                        continue;
                    }
                    if tx
                        .send_data(to_line(&json!({"type": e.kind, "object": e.object})))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Too slow to keep up: end the stream, the client re-lists.
                Ok(Err(RecvError::Lagged(_) | RecvError::Closed)) => return,
                Err(_) if tokio::time::Instant::now() >= deadline => return,
                Err(_) => {
                    if bookmarks
                        && tx
                            .send_data(to_line(&bookmark(&res, last, false)))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let mut response = Response::new(body.boxed());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}
