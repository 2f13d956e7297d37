//! What watches and lists read: history, live events, stale views.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Backlog, Event, Store, lock, meta_str, res_key};
use crate::{error::ApiError, resources::Resource};

impl Store {
    /// From now on lists answer with what is stored now (and this
    /// resourceVersion) while writes go on: a stale view, as a lagging cache
    /// or API server would give. `thaw` ends it.
    pub fn freeze_lists(&self) {
        let mut st = lock(&self.state);
        let snapshot = st
            .objects
            .iter()
            .map(|(k, e)| (k.clone(), e.object.clone()))
            .collect();
        st.frozen = Some((snapshot, st.rv));
    }

    /// Lists answer with the current state again.
    pub fn thaw(&self) {
        lock(&self.state).frozen = None;
    }

    /// Ends every open watch stream (clients must re-watch).
    pub fn cut_watches(&self) {
        let _ = self.events.send(Arc::new(Event {
            rv: u64::MAX,
            resource: String::new(),
            namespace: None,
            kind: "CUT",
            object: Value::Null,
        }));
    }

    /// Forgets the event history, so watches from any earlier resourceVersion get 410.
    pub fn compact(&self) {
        lock(&self.state).history.clear();
    }

    /// Events after `rv` for `res` (and `ns`), or 410 if they were forgotten;
    /// with `rv` 0, synthetic ADDED events for everything now stored.
    pub fn since(
        &self,
        res: &Resource,
        ns: Option<&str>,
        rv: Option<u64>,
    ) -> Result<Backlog, ApiError> {
        let st = lock(&self.state);
        let receiver = self.events.subscribe();
        let rk = res_key(res);
        let matches =
            |e: &Event| e.resource == rk && ns.is_none_or(|n| e.namespace.as_deref() == Some(n));
        let backlog = match rv {
            None | Some(0) => {
                let prefix = match ns {
                    Some(ns) => format!("{rk}/{ns}/"),
                    None => format!("{rk}/"),
                };
                st.objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(_, e)| {
                        Arc::new(Event {
                            rv: e.object["metadata"]["resourceVersion"]
                                .as_str()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0),
                            resource: rk.clone(),
                            namespace: meta_str(&e.object, "namespace").map(str::to_owned),
                            kind: "ADDED",
                            object: e.object.clone(),
                        })
                    })
                    .collect()
            }
            Some(rv) => {
                let oldest = st.history.front().map_or(st.rv + 1, |e| e.rv);
                if rv < st.rv && rv + 1 < oldest {
                    return Err(ApiError::gone(rv));
                }
                st.history
                    .iter()
                    .filter(|e| e.rv > rv && matches(e))
                    .cloned()
                    .collect()
            }
        };
        Ok((backlog, receiver, st.rv))
    }
}

/// An empty metadata map, for bookmarks.
pub fn bookmark(res: &Resource, rv: u64, initial_end: bool) -> Value {
    let mut meta = Map::new();
    meta.insert("resourceVersion".into(), json!(rv.to_string()));
    if initial_end {
        meta.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    json!({"type": "BOOKMARK", "object": {"apiVersion": res.api_version(), "kind": res.kind, "metadata": meta}})
}
