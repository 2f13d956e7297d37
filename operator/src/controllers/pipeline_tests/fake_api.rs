//! An in-memory Kubernetes API for the pipeline tests: enough of the REST
//! protocol for a reconcile (get, list with label selectors, create,
//! server-side apply, merge and JSON patches, delete with finalizers, the
//! status subresource) behind a real `kube::Client`. It keeps no schema and
//! runs no controllers; what it cannot prove (RBAC, admission, server-side
//! apply's field ownership) the end-to-end tests prove on the real API
//! server.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::http::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// Where an object lives: its collection's path and its name.
type Key = (String, String);

/// A request the fake refuses, chosen by the test.
pub type Fault = Box<dyn Fn(&Method, &str) -> Option<u16> + Send + Sync>;

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    version: u64,
    requests: Vec<(Method, String)>,
    /// Every Event written (created, or a repeat patched onto one).
    events: Vec<Value>,
    fault: Option<Fault>,
}

/// The fake API; clones share one store.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A client that talks to this fake.
    pub fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Stores `object` at `path` (the object's own URL) as if created.
    pub fn insert(&self, path: &str, mut object: Value) {
        let (collection, name) = split(path).expect("an object path");
        let mut state = self.state();
        state.version += 1;
        stamp_new(&mut object, state.version);
        state
            .objects
            .insert((collection, name.expect("a name")), object);
    }

    /// Replaces the object at `path` as it is (a test's edit: bump
    /// `metadata.generation` for a spec change).
    pub fn insert_raw(&self, path: &str, object: Value) {
        let (collection, name) = split(path).expect("an object path");
        let mut state = self.state();
        state.version += 1;
        state
            .objects
            .insert((collection, name.expect("a name")), object);
    }

    /// Deletes the object at `path` as a client's DELETE would.
    pub fn mark_deleted(&self, path: &str) {
        let (collection, name) = split(path).expect("an object path");
        delete(&mut self.state(), &(collection, name.expect("a name")));
    }

    /// Plays the namespace controller: terminating namespaces go.
    pub fn finish_namespaces(&self) {
        self.state().objects.retain(|(collection, _), object| {
            collection != "/api/v1/namespaces" || object["metadata"]["deletionTimestamp"].is_null()
        });
    }

    /// The object at `path`, if stored.
    pub fn get(&self, path: &str) -> Option<Value> {
        let (collection, name) = split(path)?;
        self.state().objects.get(&(collection, name?)).cloned()
    }

    /// Names stored in the collection at `path`.
    pub fn names(&self, path: &str) -> Vec<String> {
        self.state()
            .objects
            .keys()
            .filter(|(c, _)| c == path)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// Every request so far, as method and path.
    pub fn requests(&self) -> Vec<(Method, String)> {
        self.state().requests.clone()
    }

    /// Every Event occurrence written so far (a repeat of an Event is
    /// patched onto it: one occurrence each).
    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    /// Forgets the requests seen so far.
    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    /// Refuses requests with the status `fault` returns.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.state().fault = fault;
    }

    async fn handle(&self, request: Request<kube::client::Body>) -> Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status(400, "BadRequest", &e.to_string()),
        };
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut state = self.state();
        state.requests.push((parts.method.clone(), path.clone()));
        if let Some(code) = state.fault.as_ref().and_then(|f| f(&parts.method, &path)) {
            return status(code, "InternalError", "injected fault");
        }
        let Some((collection, subresource_path)) = split_subresource(&path) else {
            return status(404, "NotFound", &format!("no route {path}"));
        };
        let (collection, name, subresource) = match subresource_path {
            Some((name, sub)) => (collection, Some(name), sub),
            None => (collection, None, None),
        };
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", &e.to_string()),
            }
        };
        if collection.ends_with("/events") && parts.method != Method::GET {
            state.events.push(body.clone());
        }
        match (&parts.method, name) {
            (&Method::GET, None) => list(&state, &collection, &query),
            (&Method::GET, Some(name)) => match state.objects.get(&(collection, name.clone())) {
                Some(o) => ok(o),
                None => not_found(&name),
            },
            (&Method::POST, None) => create(&mut state, collection, body),
            (&Method::PATCH, Some(name)) => patch(
                &mut state,
                (collection, name),
                subresource.as_deref(),
                &content_type,
                body,
            ),
            (&Method::DELETE, Some(name)) => delete(&mut state, &(collection, name)),
            _ => status(405, "MethodNotAllowed", &format!("{} {path}", parts.method)),
        }
    }
}

/// `path` as collection and, for an object, name and subresource.
#[allow(clippy::type_complexity)]
fn split_subresource(path: &str) -> Option<(String, Option<(String, Option<String>)>)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let prefix = match *segments.first()? {
        "api" => 2,
        "apis" => 3,
        _ => return None,
    };
    let rest = segments.get(prefix..)?;
    let namespaced = rest.len() >= 3 && rest[0] == "namespaces" && rest[2] != "status";
    let (scope, rest) = if namespaced {
        (prefix + 2, &rest[2..])
    } else {
        (prefix, rest)
    };
    let collection = format!("/{}", segments[..=scope].join("/"));
    Some(match rest {
        [_] => (collection, None),
        [_, name] => (collection, Some(((*name).to_owned(), None))),
        [_, name, sub] => (
            collection,
            Some(((*name).to_owned(), Some((*sub).to_owned()))),
        ),
        _ => return None,
    })
}

fn split(path: &str) -> Option<(String, Option<String>)> {
    let (collection, object) = split_subresource(path)?;
    Some((collection, object.map(|(name, _)| name)))
}

fn ok(object: &Value) -> Response<Full<Bytes>> {
    respond(StatusCode::OK, object)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("a header"),
    );
    response
}

fn status(code: u16, reason: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    respond(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &body,
    )
}

fn not_found(name: &str) -> Response<Full<Bytes>> {
    status(404, "NotFound", &format!("{name} not found"))
}

fn stamp_new(object: &mut Value, version: u64) {
    let meta = &mut object["metadata"];
    meta["uid"] = json!(format!("uid-{version}"));
    meta["resourceVersion"] = json!(version.to_string());
    meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    meta["generation"] = json!(1);
}

/// Whether `labels` match a selector of `key=value`, `key!=value` and
/// `key` terms (what the operator sends).
fn matches(labels: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels.get(k).and_then(Value::as_str) != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels.get(k).and_then(Value::as_str) == Some(v.trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

fn list(state: &State, collection: &str, query: &str) -> Response<Full<Bytes>> {
    let selector = form_urlencoded::parse(query.as_bytes())
        .find_map(|(k, v)| (k == "labelSelector").then(|| v.into_owned()))
        .unwrap_or_default();
    let items: Vec<&Value> = state
        .objects
        .iter()
        .filter(|((c, _), o)| c == collection && matches(&o["metadata"]["labels"], &selector))
        .map(|(_, o)| o)
        .collect();
    ok(&json!({"kind": "List", "apiVersion": "v1",
        "metadata": {"resourceVersion": state.version.to_string()}, "items": items}))
}

fn create(state: &mut State, collection: String, mut object: Value) -> Response<Full<Bytes>> {
    let name = match object["metadata"]["name"].as_str() {
        Some(n) => n.to_owned(),
        None => match object["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{}", state.version + 1),
            None => return status(422, "Invalid", "metadata.name: Required value"),
        },
    };
    let key = (collection, name.clone());
    if state.objects.contains_key(&key) {
        return status(409, "AlreadyExists", &format!("{name} already exists"));
    }
    state.version += 1;
    object["metadata"]["name"] = json!(name);
    stamp_new(&mut object, state.version);
    state.objects.insert(key, object.clone());
    respond(StatusCode::CREATED, &object)
}

fn patch(
    state: &mut State,
    key: Key,
    subresource: Option<&str>,
    content_type: &str,
    body: Value,
) -> Response<Full<Bytes>> {
    let existing = state.objects.get(&key).cloned();
    let is_apply = content_type.starts_with("application/apply-patch");
    let mut object = match (existing, is_apply) {
        (Some(o), _) => o,
        (None, true) if subresource.is_none() => {
            let mut object = body.clone();
            state.version += 1;
            stamp_new(&mut object, state.version);
            state.objects.insert(key, object.clone());
            return ok(&object);
        }
        (None, _) => return not_found(&key.1),
    };
    let before = object.clone();
    match (subresource, content_type) {
        (Some("status"), _) if is_apply || content_type.contains("merge-patch") => {
            object["status"] = body["status"].clone();
        }
        (None, _) if is_apply => {
            // One field manager in these tests: the applied object is the
            // whole intent; server-set metadata and the status stay.
            let meta = object["metadata"].clone();
            let status_value = object.get("status").cloned();
            object = body;
            for field in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "finalizers",
                "deletionTimestamp",
            ] {
                if object["metadata"].get(field).is_none() && !meta[field].is_null() {
                    object["metadata"][field] = meta[field].clone();
                }
            }
            if let Some(s) = status_value {
                object["status"] = s;
            }
        }
        (None, t) if t.contains("merge-patch") => json_patch::merge(&mut object, &body),
        (None, t) if t.contains("json-patch") => {
            // As the API server does, a test for null passes on an absent path.
            let body: Vec<Value> = body
                .as_array()
                .into_iter()
                .flatten()
                .filter(|op| {
                    let path = op["path"].as_str().unwrap_or_default();
                    !(op["op"] == "test" && op["value"].is_null() && object.pointer(path).is_none())
                })
                .cloned()
                .collect();
            let operations: Vec<json_patch::PatchOperation> =
                match serde_json::from_value(body.into()) {
                    Ok(p) => p,
                    Err(e) => return status(400, "BadRequest", &e.to_string()),
                };
            if let Err(e) = json_patch::patch(&mut object, &operations) {
                return status(422, "Invalid", &e.to_string());
            }
        }
        _ => return status(415, "UnsupportedMediaType", content_type),
    }
    if object == before {
        return ok(&object);
    }
    state.version += 1;
    object["metadata"]["resourceVersion"] = json!(state.version.to_string());
    if subresource.is_none() && before.get("spec") != object.get("spec") {
        let generation = before["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        object["metadata"]["generation"] = json!(generation);
    }
    let finalized = object["metadata"]["deletionTimestamp"].is_string()
        && object["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty);
    if finalized {
        state.objects.remove(&key);
    } else {
        state.objects.insert(key, object.clone());
    }
    ok(&object)
}

fn delete(state: &mut State, key: &Key) -> Response<Full<Bytes>> {
    let Some(object) = state.objects.get_mut(key) else {
        return not_found(&key.1);
    };
    // A namespace terminates until its content is gone (the namespace
    // controller's work: `finish_namespaces`).
    let has_finalizers = key.0 == "/api/v1/namespaces"
        || object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if object["metadata"]["deletionTimestamp"].is_null() {
            state.version += 1;
            object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
            object["metadata"]["resourceVersion"] = json!(state.version.to_string());
        }
        return ok(object);
    }
    let object = state.objects.remove(key).unwrap_or_default();
    ok(&object)
}

#[cfg(test)]
mod tests {
    use super::split_subresource;

    #[test]
    fn paths_split_into_collection_name_and_subresource() {
        let s = |p: &str| split_subresource(p).expect(p);
        assert_eq!(s("/api/v1/namespaces"), ("/api/v1/namespaces".into(), None));
        assert_eq!(
            s("/api/v1/namespaces/acme"),
            ("/api/v1/namespaces".into(), Some(("acme".into(), None)))
        );
        assert_eq!(
            s("/api/v1/namespaces/acme/status"),
            (
                "/api/v1/namespaces".into(),
                Some(("acme".into(), Some("status".into())))
            )
        );
        assert_eq!(
            s("/api/v1/namespaces/acme/resourcequotas"),
            ("/api/v1/namespaces/acme/resourcequotas".into(), None)
        );
        assert_eq!(
            s("/apis/enclave.dev/v1alpha1/companies/acme/status"),
            (
                "/apis/enclave.dev/v1alpha1/companies".into(),
                Some(("acme".into(), Some("status".into())))
            )
        );
        assert_eq!(
            s("/apis/apps/v1/namespaces/t/statefulsets/ws"),
            (
                "/apis/apps/v1/namespaces/t/statefulsets".into(),
                Some(("ws".into(), None))
            )
        );
    }
}
