//! `OpenAPI` v3 structural schema → JSON Schema, and JSON Schema errors →
//! API-server-style field problems.

use std::fmt::Write as _;

use jsonschema::error::ValidationErrorKind;
use serde_json::{Map, Value};

use super::FieldProblem;

/// Converts a CRD's `OpenAPI` v3 schema into an equivalent JSON Schema:
/// `nullable` becomes a `null` type, `x-kubernetes-int-or-string` an
/// `anyOf`, and objects with declared properties reject unknown fields.
pub fn to_json_schema(openapi: &Value) -> Value {
    let Some(map) = openapi.as_object() else {
        return openapi.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "properties" => {
                let props = value
                    .as_object()
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), to_json_schema(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if value.is_object() => {
                out.insert(key.clone(), to_json_schema(value));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = value
                    .as_array()
                    .map(|l| l.iter().map(to_json_schema).collect())
                    .unwrap_or_default();
                out.insert(key.clone(), Value::Array(list));
            }
            "not" => {
                out.insert(key.clone(), to_json_schema(value));
            }
            // Annotations, Kubernetes extensions and OpenAPI-only keywords.
            "nullable" | "format" | "description" | "default" | "example" => {}
            k if k.starts_with("x-kubernetes-") => {}
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    let flag = |name: &str| map.get(name).and_then(Value::as_bool).unwrap_or(false);
    if flag("x-kubernetes-int-or-string") {
        out.remove("type");
        out.insert(
            "anyOf".into(),
            serde_json::json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    if map.contains_key("properties")
        && !map.contains_key("additionalProperties")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

/// [`to_json_schema`] of a CRD's root schema, which (as in the API server)
/// implicitly declares `apiVersion`, `kind` and `metadata`; metadata is
/// checked as ObjectMeta separately.
pub fn root_json_schema(openapi: &Value) -> Value {
    let mut schema = to_json_schema(openapi);
    if let Some(Value::Object(props)) = schema.get_mut("properties") {
        props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
        props.insert("kind".into(), serde_json::json!({"type": "string"}));
        props.insert("metadata".into(), serde_json::json!({"type": "object"}));
    }
    schema
}

/// Drops the fields of `value` that `openapi` does not declare (unless it
/// preserves unknown fields). At the root, `apiVersion`, `kind` and
/// `metadata` are implicit and kept.
pub fn prune(value: &mut Value, openapi: &Value, root: bool) {
    let preserve = openapi
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match value {
        Value::Object(map) => {
            if let Some(props) = openapi.get("properties").and_then(Value::as_object) {
                if !preserve {
                    map.retain(|k, _| {
                        props.contains_key(k)
                            || (root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata"))
                    });
                }
                for (k, v) in map.iter_mut() {
                    if let Some(sub) = props.get(k) {
                        prune(v, sub, false);
                    }
                }
            } else if let Some(extra) = openapi
                .get("additionalProperties")
                .filter(|a| a.is_object())
            {
                for v in map.values_mut() {
                    prune(v, extra, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = openapi.get("items") {
                for v in items {
                    prune(v, item_schema, false);
                }
            }
        }
        _ => {}
    }
}

/// `value` with null object members removed: the API server treats an
/// explicit null like an absent field.
pub fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(list) => Value::Array(list.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// JSON pointer `/spec/egress/0/cidr` → `spec.egress[0].cidr`.
fn dotted(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
            let _ = write!(out, "[{segment}]");
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Problems of one JSON Schema error.
pub fn describe(error: &jsonschema::ValidationError<'_>) -> Vec<FieldProblem> {
    let path = dotted(error.instance_path().as_str());
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => unexpected
            .iter()
            .map(|field| {
                FieldProblem::new(
                    join(&path, field),
                    "unknown field (not in the schema; check its spelling and indentation)",
                )
            })
            .collect(),
        ValidationErrorKind::Required { property } => {
            let field = property
                .as_str()
                .map_or_else(|| property.to_string(), str::to_owned);
            vec![FieldProblem::new(
                join(&path, &field),
                "required field is missing",
            )]
        }
        ValidationErrorKind::Enum { options } => {
            vec![FieldProblem::new(
                path,
                format!(
                    "unsupported value {}: must be one of {options}",
                    error.instance()
                ),
            )]
        }
        ValidationErrorKind::Pattern { pattern } => {
            vec![FieldProblem::new(
                path,
                format!("invalid value {}: must match '{pattern}'", error.instance()),
            )]
        }
        ValidationErrorKind::MaxLength { limit } => {
            vec![FieldProblem::new(
                path,
                format!("too long: may have at most {limit} characters"),
            )]
        }
        ValidationErrorKind::MinLength { limit } => {
            vec![FieldProblem::new(
                path,
                format!("too short: needs at least {limit} characters"),
            )]
        }
        ValidationErrorKind::MaxItems { limit } => {
            vec![FieldProblem::new(
                path,
                format!("too many items: at most {limit}"),
            )]
        }
        _ => vec![FieldProblem::new(path, format!("invalid value: {error}"))],
    }
}
