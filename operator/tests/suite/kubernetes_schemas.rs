//! Every object the builders produce is valid against the official
//! Kubernetes JSON schemas (strict: no unknown fields), shipped by the
//! `kubernetes-validate` package the harness installs.

use enclave::{builders::KubeObject, plan::all_objects};
use serde_json::{Value, json};

use crate::support::{all_plans, service};

/// The name of the official definition of `value`'s kind.
fn definition_of(value: &Value) -> String {
    let api_version = value["apiVersion"].as_str().unwrap();
    let kind = value["kind"].as_str().unwrap();
    if api_version == "apiextensions.k8s.io/v1" {
        return format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.{kind}");
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("core", api_version));
    let group = group
        .trim_end_matches(".k8s.io")
        .trim_end_matches(".authorization");
    format!("io.k8s.api.{group}.{version}.{kind}")
}

/// Why `value` does not match its official definition (empty: it does).
fn violations(definitions: &Value, value: &Value) -> Vec<String> {
    let name = definition_of(value);
    assert!(definitions.get(&name).is_some(), "no schema {name}");
    let schema = json!({"definitions": definitions, "$ref": format!("#/definitions/{name}")});
    let validator = jsonschema::draft7::new(&schema).unwrap();
    validator
        .iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_chart_renders_valid_objects_with_every_values_file() {
    let definitions = definitions();
    let mut checked = 0;
    for values in crate::chart::values_files() {
        for object in crate::chart::render(values.as_deref()) {
            // The Prometheus Operator's kind is not Kubernetes'.
            if object["kind"] == "ServiceMonitor" {
                continue;
            }
            let errors = violations(&definitions, &object);
            assert!(
                errors.is_empty(),
                "{values:?}: {} {}: {errors:?}",
                object["kind"],
                object["metadata"]["name"]
            );
            checked += 1;
        }
    }
    println!("{checked} rendered objects match the official schemas");
    assert!(checked > 30);
}

/// The official definitions.
fn definitions() -> Value {
    let path = service(
        "ENCLAVE_TEST_K8S_SCHEMAS",
        "the Kubernetes JSON schemas of the kubernetes-validate package",
    );
    // The files use `$defs`; a draft-7 validator wants `definitions`.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("#/$defs/", "#/definitions/");
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    doc.as_object_mut()
        .unwrap()
        .remove("$defs")
        .expect("the schema file has $defs")
}

#[test]
fn planned_objects_match_the_official_kubernetes_schemas() {
    let definitions = definitions();
    let plans = all_plans();
    let objects: Vec<&KubeObject> = plans
        .iter()
        .flat_map(|(_, plan)| all_objects(plan))
        .collect();
    let mut checked = 0;
    for o in &objects {
        let errors = violations(&definitions, &o.to_json());
        assert!(
            errors.is_empty(),
            "{} {}: {errors:?}",
            o.kind(),
            o.display_name()
        );
        checked += 1;
    }
    assert_eq!(checked, objects.len());
    assert!(checked > 30);
}

#[test]
fn the_schema_check_rejects_a_broken_object() {
    let definitions = definitions();
    let schema =
        json!({"definitions": definitions, "$ref": "#/definitions/io.k8s.api.core.v1.Namespace"});
    let validator = jsonschema::draft7::new(&schema).unwrap();
    let bad = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}, "spec": {"finalizer": ["x"]}});
    assert!(
        !validator.is_valid(&bad),
        "strict schemas reject unknown fields"
    );
}
