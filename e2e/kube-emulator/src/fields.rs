//! Field ownership for server-side apply: which manager owns which leaf
//! fields, and the apply merge itself.
//!
//! A field path is dotted keys with keyed list items as `[key=value]`
//! (containers by name, ports by port, conditions by type, owner references
//! by uid, …); lists without a merge key are atomic leaves.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

/// Manager name → the leaf paths it owns.
pub type Managers = BTreeMap<String, BTreeSet<String>>;

/// Keys list items are merged by, in order of preference.
const MERGE_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "port",
    "mountPath",
    "uid",
    "type",
    "ip",
];

/// Fields no manager owns.
const SYSTEM: &[&str] = &[
    ".apiVersion",
    ".kind",
    ".metadata.name",
    ".metadata.namespace",
    ".metadata.uid",
    ".metadata.resourceVersion",
    ".metadata.generation",
    ".metadata.creationTimestamp",
    ".metadata.deletionTimestamp",
    ".metadata.deletionGracePeriodSeconds",
    ".metadata.managedFields",
    ".metadata.selfLink",
];

/// The merge key of a list, if every item is an object carrying it.
fn merge_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() {
        return None;
    }
    MERGE_KEYS.iter().copied().find(|k| {
        items
            .iter()
            .all(|i| i.get(*k).is_some_and(|v| v.is_string() || v.is_number()))
    })
}

fn key_text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// Leaf paths of `value`, excluding system fields and (unless `with_status`) status.
pub fn leaves(value: &Value, with_status: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    walk(value, String::new(), &mut out);
    out.retain(|p| {
        !SYSTEM
            .iter()
            .any(|s| p == s || p.starts_with(&format!("{s}.")) || p.starts_with(&format!("{s}[")))
    });
    if !with_status {
        out.retain(|p| p != ".status" && !p.starts_with(".status.") && !p.starts_with(".status["));
    }
    out
}

fn walk(value: &Value, prefix: String, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                walk(v, format!("{prefix}.{k}"), out);
            }
        }
        Value::Array(items) => match merge_key(items) {
            Some(key) => {
                for item in items {
                    let here = format!("{prefix}[{key}={}]", key_text(&item[key]));
                    out.insert(here.clone());
                    walk(item, here, out);
                }
            }
            None => {
                out.insert(prefix);
            }
        },
        _ => {
            out.insert(prefix);
        }
    }
}

/// Splits a path into segments: `Key(k)` or `Item(key, value)`.
fn segments(path: &str) -> Vec<(String, Option<(String, String)>)> {
    let mut out = Vec::new();
    for part in path.split('.').skip(1) {
        // A key may be followed by one or more [k=v] item selectors.
        let mut pieces = part.split('[');
        let key = pieces.next().unwrap_or_default().to_owned();
        if !key.is_empty() {
            out.push((key, None));
        }
        for item in pieces {
            let item = item.trim_end_matches(']');
            if let Some((k, v)) = item.split_once('=') {
                out.push((String::new(), Some((k.to_owned(), v.to_owned()))));
            }
        }
    }
    out
}

/// The value at `path`, if any.
pub fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut here = value;
    for (key, item) in segments(path) {
        here = match item {
            None => here.get(&key)?,
            Some((k, v)) => here
                .as_array()?
                .iter()
                .find(|i| i.get(&k).map(key_text).as_deref() == Some(v.as_str()))?,
        };
    }
    Some(here)
}

/// Removes the field or list item at `path`.
pub fn remove(value: &mut Value, path: &str) {
    let segs = segments(path);
    let Some((last, parents)) = segs.split_last() else {
        return;
    };
    let mut here = value;
    for (key, item) in parents {
        let next = match item {
            None => here.get_mut(key.as_str()),
            Some((k, v)) => here.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|i| i.get(k.as_str()).map(key_text).as_deref() == Some(v.as_str()))
            }),
        };
        let Some(next) = next else { return };
        here = next;
    }
    match last {
        (key, None) => {
            if let Some(map) = here.as_object_mut() {
                map.remove(key);
            }
        }
        (_, Some((k, v))) => {
            if let Some(items) = here.as_array_mut() {
                items.retain(|i| i.get(k.as_str()).map(key_text).as_deref() != Some(v.as_str()));
            }
        }
    }
}

/// Apply's merge: maps recursively, keyed lists item by item, everything
/// else replaced by the applied value.
pub fn merge(base: &mut Value, applied: &Value) {
    match (base, applied) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in a {
                match b.get_mut(k) {
                    Some(existing) if !v.is_null() => merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            match merge_key(a).filter(|k| b.iter().all(|i| i.get(*k).is_some())) {
                Some(key) => {
                    for item in a {
                        match b.iter_mut().find(|i| i.get(key) == item.get(key)) {
                            Some(existing) => merge(existing, item),
                            None => b.push(item.clone()),
                        }
                    }
                }
                None => b.clone_from(a),
            }
        }
        (b, a) => *b = a.clone(),
    }
}

/// Drops objects left empty by removals (but never the object itself).
pub fn prune_empty(value: &mut Value) {
    if let Value::Object(map) = value {
        for v in map.values_mut() {
            prune_empty(v);
        }
        map.retain(|k, v| {
            k == "metadata" || k == "spec" || !matches!(v, Value::Object(m) if m.is_empty())
        });
    }
}

/// A conflict: the field and the manager owning it.
pub type Conflict = (String, String);

/// Server-side apply of `applied` by `manager` onto `current`.
pub fn apply(
    current: Option<&Value>,
    managers: &mut Managers,
    manager: &str,
    applied: &Value,
    force: bool,
    with_status: bool,
) -> Result<Value, Vec<Conflict>> {
    let new_set = leaves(applied, with_status);
    let mut conflicts = Vec::new();
    if let Some(current) = current {
        for path in &new_set {
            if get(current, path).is_some_and(|have| Some(have) != get(applied, path)) {
                for (other, owned) in managers.iter() {
                    if other != manager && owned.contains(path) {
                        conflicts.push((path.clone(), other.clone()));
                    }
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    for (path, other) in &conflicts {
        if let Some(owned) = managers.get_mut(other) {
            owned.remove(path);
        }
    }
    let mut merged = current
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let old_set = managers.get(manager).cloned().unwrap_or_default();
    for path in old_set.difference(&new_set) {
        let shared = managers
            .iter()
            .any(|(m, owned)| m != manager && owned.contains(path));
        if !shared {
            remove(&mut merged, path);
        }
    }
    prune_empty(&mut merged);
    merge(&mut merged, applied);
    managers.insert(manager.to_owned(), new_set);
    Ok(merged)
}

/// After an update or patch by `manager` (not apply): it owns what it
/// changed, and removed fields belong to nobody.
pub fn record_update(
    old: Option<&Value>,
    new: &Value,
    managers: &mut Managers,
    manager: &str,
    with_status: bool,
) {
    let new_leaves = leaves(new, with_status);
    let changed: Vec<String> = new_leaves
        .iter()
        .filter(|p| old.and_then(|o| get(o, p)) != get(new, p))
        .cloned()
        .collect();
    for owned in managers.values_mut() {
        owned.retain(|p| new_leaves.contains(p) && !changed.contains(p));
    }
    managers
        .entry(manager.to_owned())
        .or_default()
        .extend(changed);
    managers.retain(|_, owned| !owned.is_empty());
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn leaves_key_lists_by_name() {
        let v = json!({"spec": {"containers": [{"name": "a", "image": "x"}], "args": ["1", "2"]}});
        let l = leaves(&v, false);
        assert!(l.contains(".spec.containers[name=a].image"));
        assert!(l.contains(".spec.args"));
        assert_eq!(get(&v, ".spec.containers[name=a].image"), Some(&json!("x")));
    }
}
