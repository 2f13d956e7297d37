//! `crds/` is generated from the Rust types and must not drift.

use enclave::cli::{crd_yaml, crds};
use serde_json::Value;

use crate::support::root;

#[test]
fn crds_directory_matches_the_rust_types() {
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap();
        let path = root().join("crds").join(format!("{name}.yaml"));
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == crd_yaml(&crd).unwrap(),
            "{} is stale: run `cargo run -p enclave-operator -- crdgen --out-dir crds`",
            path.display()
        );
    }
}

fn undocumented(path: &str, schema: &Value, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            // The API server documents the root `metadata` (ObjectMeta)
            // itself and refuses anything but `name` there.
            let object_meta = !path.contains('.') && name == "metadata";
            if !object_meta
                && prop
                    .get("description")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                out.push(here.clone());
            }
            undocumented(&here, prop, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(&format!("{path}[]"), items, out);
    }
}

#[test]
fn every_field_has_kubectl_explain_text() {
    for crd in crds() {
        let version = &crd.spec.versions[0];
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let mut missing = Vec::new();
        undocumented(&crd.spec.names.kind, &schema, &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }
}

#[test]
fn crds_have_names_columns_and_status() {
    let [company, developer] = <[_; 2]>::try_from(crds()).unwrap();
    assert_eq!(company.spec.scope, "Cluster");
    assert_eq!(developer.spec.scope, "Namespaced");
    assert_eq!(
        company.spec.names.short_names.as_deref(),
        Some(&["co".to_owned()][..])
    );
    assert_eq!(
        developer.spec.names.short_names.as_deref(),
        Some(&["dev".to_owned()][..])
    );
    for crd in [&company, &developer] {
        assert_eq!(crd.spec.group, "enclave.dev");
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["enclave".to_owned()][..])
        );
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let columns: Vec<_> = v
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert!(
            columns.contains(&"Ready") && columns.contains(&"Age"),
            "{columns:?}"
        );
    }
}

#[test]
fn chart_vault_policy_matches_the_code() {
    let path = root().join("charts/enclave/files/vault-policy.hcl");
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == enclave::builders::operator_policy("secret", "kubernetes", ""),
        "{} is stale: run `cargo run -p enclave-operator -- vault-policy > {}`",
        path.display(),
        path.display()
    );
}

/// Whether `rules` grant `verb` on `group`/`resource` (any name).
fn grants(
    rules: &[k8s_openapi::api::rbac::v1::PolicyRule],
    verb: &str,
    group: &str,
    resource: &str,
) -> bool {
    rules.iter().any(|r| {
        r.resource_names.as_ref().is_none_or(Vec::is_empty)
            && r.api_groups.iter().flatten().any(|g| g == group)
            && r.resources.iter().flatten().any(|x| x == resource)
            && r.verbs.iter().any(|v| v == verb)
    })
}

#[test]
fn the_charts_rules_let_the_operator_create_and_patch_every_kind_plan_renders() {
    let rules = crate::control_plane::chart_rules();
    let operator_namespace = enclave::config::OperatorConfig::default().operator_namespace;
    let mut kinds = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    for (_, plan) in crate::support::all_plans() {
        for tenant in &plan.tenants {
            for object in tenant.objects() {
                let (group, resource) = object.api_resource();
                let in_operator_namespace =
                    object.metadata().namespace.as_deref() == Some(&operator_namespace);
                for verb in ["create", "patch", "delete"] {
                    let granted = grants(&rules.operator, verb, group, resource)
                        || (in_operator_namespace
                            && grants(&rules.operator_namespace, verb, group, resource));
                    if !granted {
                        let qualified = if group.is_empty() {
                            resource.to_owned()
                        } else {
                            format!("{resource}.{group}")
                        };
                        missing.push(format!("{verb} {qualified} ({})", object.display_name()));
                    }
                }
                kinds.insert(object.kind());
            }
        }
    }
    assert!(kinds.len() >= 10, "the plans render every kind: {kinds:?}");
    assert!(
        missing.is_empty(),
        "charts/enclave/files/rbac.yaml lacks: {missing:#?}"
    );
}

#[test]
fn the_values_schema_of_config_is_the_operators() {
    let text =
        std::fs::read_to_string(crate::support::root().join("charts/enclave/values.schema.json"))
            .unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        schema["definitions"],
        enclave::config::chart_values_definitions(),
        "charts/enclave/values.schema.json is stale: run `cargo run -p enclave-operator -- crdgen --out-dir crds` (it writes its definitions)"
    );
}
