//! Validates custom resources as the API server would, without one: the
//! CRD's structural schema (types, formats, ranges, enums, unknown fields
//! rejected as `kubectl --validate=strict` does) and its CEL rules, using
//! the same Kubernetes CEL libraries (kube's `cel` feature).

mod schema;

pub use schema::without_nulls;

use std::fmt;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::Value;

/// One problem with one object, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldProblem {
    /// Dotted path, e.g. `spec.network.egress[0].cidr`; empty for the object.
    pub path: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl FieldProblem {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Metadata fields a client may send; anything else is unknown.
const METADATA_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
    "managedFields",
    "selfLink",
];

/// A validator for the objects of one CRD (schema and CEL compiled once).
pub struct CrdValidator {
    kind: String,
    namespaced: bool,
    openapi: Value,
    structural: jsonschema::Validator,
    cel_schema: CompiledSchema,
    cel: Validator,
    name_rules: Vec<NameRule>,
    root_rules: RootRules,
}

/// A root CEL rule of the form `self.metadata.name.matches('<regex>')`,
/// evaluated here with its regex compiled once: the CEL library's
/// `matches()` compiles its pattern on every call (`cel` 0.13), which was a
/// quarter of `enclave plan`'s time at 11,000 documents. Same regex engine
/// as the CEL library's, same message as the rule's.
struct NameRule {
    regex: regex::Regex,
    message: String,
    /// Its position among the root rules, so problems keep the CRD's order.
    index: usize,
}

/// The root rules' text, in the CRD's order.
type RootRules = Vec<String>;

impl NameRule {
    /// The rule's regex, when `rule` is exactly a name match against a
    /// literal without quotes or escapes (nothing to interpret but the regex).
    fn pattern(rule: &str) -> Option<&str> {
        let pattern = rule
            .trim()
            .strip_prefix("self.metadata.name.matches('")?
            .strip_suffix("')")?;
        (!pattern.contains(['\\', '\'', '"'])).then_some(pattern)
    }

    /// Splits the root `x-kubernetes-validations` of `openapi` into the name
    /// rules and a schema holding the others, for the CEL compiler.
    /// Only rules with nothing but a message and a field path are lifted:
    /// anything else (a `messageExpression`, a `reason`) stays with CEL.
    fn lift(openapi: &Value) -> Result<(Vec<Self>, RootRules, Value), String> {
        let mut rest = openapi.clone();
        let mut lifted = Vec::new();
        let mut order = RootRules::new();
        if let Some(Value::Array(rules)) = rest.get_mut("x-kubernetes-validations") {
            let mut kept = Vec::new();
            for (index, rule) in rules.drain(..).enumerate() {
                let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
                order.push(text.to_owned());
                let plain = rule.as_object().is_some_and(|r| {
                    r.keys()
                        .all(|k| matches!(k.as_str(), "rule" | "message" | "fieldPath"))
                });
                match Self::pattern(text).filter(|_| plain) {
                    Some(pattern) => lifted.push(Self {
                        index,
                        regex: regex::Regex::new(pattern)
                            .map_err(|e| format!("rule {text:?} does not compile: {e}"))?,
                        message: rule
                            .get("message")
                            .and_then(Value::as_str)
                            .map_or_else(|| format!("failed rule: {text}"), str::to_owned),
                    }),
                    None => kept.push(rule),
                }
            }
            *rules = kept;
        }
        Ok((lifted, order, rest))
    }
}

impl CrdValidator {
    /// Compiles `crd`'s first version. Fails only for a broken CRD, which is
    /// a bug in Enclave, never a user error.
    pub fn new(crd: &CustomResourceDefinition) -> Result<Self, String> {
        let openapi = crd
            .spec
            .versions
            .first()
            .and_then(|v| v.schema.as_ref())
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .ok_or("CRD has no openAPIV3Schema")?;
        let openapi = serde_json::to_value(openapi).map_err(|e| e.to_string())?;
        let structural = jsonschema::validator_for(&schema::root_json_schema(&openapi))
            .map_err(|e| format!("CRD schema does not compile: {e}"))?;
        let (name_rules, root_rules, cel_rules) = NameRule::lift(&openapi)?;
        let cel_schema = compile_schema(&cel_rules);
        if cel_schema.has_errors() {
            let errors: Vec<String> = cel_schema
                .compilation_errors()
                .iter()
                .map(std::string::ToString::to_string)
                .collect();
            return Err(format!(
                "CRD CEL rules do not compile: {}",
                errors.join("; ")
            ));
        }
        Ok(Self {
            kind: crd.spec.names.kind.clone(),
            namespaced: crd.spec.scope == "Namespaced",
            openapi: openapi.clone(),
            structural,
            cel_schema,
            cel: Validator::new(),
            name_rules,
            root_rules,
        })
    }

    /// Every problem of `object` (a create when `old` is `None`, else an update).
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Vec<FieldProblem> {
        let object = schema::without_nulls(object);
        let mut problems = self.metadata_problems(&object);
        for error in self.structural.iter_errors(&object) {
            problems.extend(schema::describe(&error));
        }
        // CEL runs only on a structurally valid object, as in the API server.
        if !problems.is_empty() {
            return problems;
        }
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        // Root rules' problems in the CRD's order, lifted or not, then the rest.
        let mut root: Vec<(usize, FieldProblem)> = self
            .name_rules
            .iter()
            .filter(|rule| !rule.regex.is_match(name))
            .map(|rule| {
                let problem = FieldProblem::new("metadata.name", rule.message.clone());
                (rule.index, problem)
            })
            .collect();
        let mut nested = Vec::new();
        if let Err(errors) = self.cel.validate_compiled(&self.cel_schema, &object, old) {
            for e in &errors {
                // CEL reports a rule's fieldPath as written (`.metadata.name`);
                // root rules can only check the name (metadata has no schema
                // to attach a fieldPath to), so point the user at it.
                let path = match e.field_path.trim_start_matches('.') {
                    "" if e.rule.contains("self.metadata.name") => "metadata.name",
                    path => path,
                };
                let problem = FieldProblem::new(path, e.message.clone());
                match self.root_rules.iter().position(|r| *r == e.rule) {
                    Some(index) => root.push((index, problem)),
                    None => nested.push(problem),
                }
            }
        }
        root.sort_by_key(|(index, _)| *index);
        problems.extend(root.into_iter().map(|(_, p)| p));
        problems.extend(nested);
        problems
    }

    /// `object` as the API server stores it: schema defaults filled in and,
    /// with `prune`, fields the schema does not declare dropped (what the
    /// server does when a client does not ask for strict field validation).
    pub fn default_and_prune(&self, object: &Value, prune: bool) -> Value {
        let mut out = object.clone();
        if prune {
            schema::prune(&mut out, &self.openapi, true);
        }
        kube::core::cel::apply_defaults(&self.openapi, &out)
    }

    fn metadata_problems(&self, object: &Value) -> Vec<FieldProblem> {
        let mut problems = Vec::new();
        let Some(meta) = object.get("metadata").and_then(Value::as_object) else {
            return vec![FieldProblem::new(
                "metadata",
                "required: every object needs metadata.name",
            )];
        };
        for key in meta.keys() {
            if !METADATA_FIELDS.contains(&key.as_str()) {
                problems.push(FieldProblem::new(
                    format!("metadata.{key}"),
                    "unknown field (not part of ObjectMeta)",
                ));
            }
        }
        match meta.get("name").and_then(Value::as_str) {
            None => problems.push(FieldProblem::new("metadata.name", format!("required: a {} needs a name", self.kind))),
            Some(name) if !is_dns_subdomain(name) => problems.push(FieldProblem::new(
                "metadata.name",
                "must be lowercase letters, digits, '-' and '.', start and end alphanumeric, at most 253 characters",
            )),
            Some(_) => {}
        }
        match (self.namespaced, meta.get("namespace")) {
            (true, None) => problems.push(FieldProblem::new(
                "metadata.namespace",
                format!("required: a {} lives in its company's namespace", self.kind),
            )),
            (true, Some(ns)) if !ns.as_str().is_some_and(is_dns_label) => {
                problems.push(FieldProblem::new(
                    "metadata.namespace",
                    "must be a DNS-1123 label (lowercase letters, digits, '-', at most 63)",
                ));
            }
            (false, Some(_)) => problems.push(FieldProblem::new(
                "metadata.namespace",
                format!(
                    "a {} is cluster-scoped: remove metadata.namespace",
                    self.kind
                ),
            )),
            _ => {}
        }
        for map in ["labels", "annotations"] {
            if let Some(value) = meta.get(map)
                && !value
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string))
            {
                problems.push(FieldProblem::new(
                    format!("metadata.{map}"),
                    "must map strings to strings",
                ));
            }
        }
        problems
    }
}

/// A DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::json;

    use super::*;
    use crate::crd::{Company, Developer};

    fn company(spec: &Value) -> Value {
        json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "acme"}, "spec": spec})
    }

    fn paths(problems: &[FieldProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn quantities_accept_ints_and_strings_and_refuse_garbage() {
        let v = CrdValidator::new(&Company::crd()).unwrap();
        assert!(
            v.validate(
                &company(&json!({"quota": {"cpu": 4, "memory": "16Gi"}})),
                None
            )
            .is_empty()
        );
        let problems = v.validate(&company(&json!({"quota": {"cpu": true}})), None);
        assert_eq!(paths(&problems), ["spec.quota.cpu"], "{problems:?}");
        let problems = v.validate(&company(&json!({"quota": {"memory": "0"}})), None);
        assert_eq!(paths(&problems), ["spec.quota.memory"], "{problems:?}");
    }

    #[test]
    fn explicit_nulls_mean_unset() {
        let v = CrdValidator::new(&Company::crd()).unwrap();
        assert!(
            v.validate(&company(&json!({"namespace": null, "quota": null})), None)
                .is_empty()
        );
    }

    #[test]
    fn immutable_fields_are_refused_on_update() {
        let v = CrdValidator::new(&Company::crd()).unwrap();
        let old = company(
            &json!({"namespace": "tenant-a", "database": {"mode": "Dedicated"}, "storage": {"fsx": {"type": "OpenZfs"}}}),
        );
        let cases = [
            (
                json!({"namespace": "tenant-b", "database": {"mode": "Dedicated"}, "storage": {"fsx": {"type": "OpenZfs"}}}),
                "spec",
                "namespace is immutable",
            ),
            (
                json!({"database": {"mode": "Dedicated"}, "storage": {"fsx": {"type": "OpenZfs"}}}),
                "spec",
                "namespace is immutable",
            ),
            (
                json!({"namespace": "tenant-a", "database": {"mode": "Shared"}, "storage": {"fsx": {"type": "OpenZfs"}}}),
                "spec.database",
                "database.mode is immutable",
            ),
            (
                json!({"namespace": "tenant-a", "database": {"mode": "Dedicated"}, "storage": {"volume": {}}}),
                "spec.storage",
                "storage kind",
            ),
            (
                json!({"namespace": "tenant-a", "database": {"mode": "Dedicated"}, "storage": {"fsx": {"type": "Lustre", "storageCapacityGiB": 1200}}}),
                "spec.storage.fsx",
                "type is immutable",
            ),
        ];
        for (spec, path, message) in cases {
            let problems = v.validate(&company(&spec), Some(&old));
            assert!(
                problems
                    .iter()
                    .any(|p| p.path == path && p.message.contains(message)),
                "{spec}: {problems:?}"
            );
            assert!(
                v.validate(&company(&spec), None).is_empty(),
                "{spec} is a valid create"
            );
        }
        assert!(
            v.validate(&old, Some(&old)).is_empty(),
            "an unchanged update is valid"
        );
    }

    #[test]
    fn developer_subject_is_immutable() {
        let v = CrdValidator::new(&Developer::crd()).unwrap();
        let dev = |subject: &str| {
            json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
                   "metadata": {"name": "alice", "namespace": "company-acme"}, "spec": {"subject": subject}})
        };
        let problems = v.validate(&dev("u-2"), Some(&dev("u-1")));
        assert_eq!(paths(&problems), ["spec.subject"], "{problems:?}");
        assert!(v.validate(&dev("u-1"), Some(&dev("u-1"))).is_empty());
    }

    #[test]
    fn name_rules_are_checked_once_compiled_with_the_rules_own_message() {
        let developer = |name: &str| {
            json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
                   "metadata": {"name": name, "namespace": "company-acme"}, "spec": {"subject": "u-1"}})
        };
        let mut bad_company = company(&json!({}));
        bad_company["metadata"]["name"] = json!("acme.corp");
        for (v, good, bad) in [
            (
                CrdValidator::new(&Company::crd()).unwrap(),
                company(&json!({})),
                bad_company,
            ),
            (
                CrdValidator::new(&Developer::crd()).unwrap(),
                developer("al-ice"),
                developer("al--ice"),
            ),
        ] {
            assert_eq!(v.name_rules.len(), 1, "{}: the name rule is lifted", v.kind);
            assert!(v.validate(&good, None).is_empty(), "{good}");
            let problems = v.validate(&bad, None);
            assert_eq!(paths(&problems), ["metadata.name"], "{problems:?}");
            assert!(
                problems[0].message.starts_with(&format!(
                    "{} name must start with a lowercase letter",
                    v.kind
                )),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn only_plain_name_matches_are_lifted() {
        assert_eq!(
            NameRule::pattern("self.metadata.name.matches('^[a-z]+$')"),
            Some("^[a-z]+$")
        );
        for rule in [
            "self.metadata.name.matches('^a\\.b$')",
            "self.metadata.name.matches('^a$') && true",
            "self.spec.x.matches('^a$')",
            "self.metadata.name.size() <= 40",
        ] {
            assert_eq!(NameRule::pattern(rule), None, "{rule}");
        }
    }

    #[test]
    fn root_rules_report_at_metadata_name_in_the_crds_order() {
        let v = CrdValidator::new(&Company::crd()).unwrap();
        let mut object = company(&json!({}));
        // Fails the size rule (declared first) and the lifted name rule.
        object["metadata"]["name"] = json!(format!("1{}", "a".repeat(40)));
        let problems = v.validate(&object, None);
        assert_eq!(
            paths(&problems),
            ["metadata.name", "metadata.name"],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("at most 40"), "{problems:?}");
        assert!(
            problems[1]
                .message
                .contains("must start with a lowercase letter"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_name_rule_with_more_than_a_message_stays_with_cel() {
        let schema = json!({"type": "object", "x-kubernetes-validations": [
            {"rule": "self.metadata.name.matches('^a$')", "message": "m"},
            {"rule": "self.metadata.name.matches('^b$')", "messageExpression": "'x'"},
        ]});
        let (lifted, order, rest) = NameRule::lift(&schema).unwrap();
        assert_eq!(lifted.len(), 1);
        assert_eq!(order.len(), 2);
        assert_eq!(
            rest["x-kubernetes-validations"].as_array().unwrap().len(),
            1
        );
    }
}
