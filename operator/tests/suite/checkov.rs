//! checkov, the security scanner, finds nothing unjustified in what
//! `enclave plan --output yaml` renders for the examples. Skips live in
//! `e2e/checkov*.yaml`, each with its reason.

use std::path::Path;

use enclave::{builders::KubeObject, config::OperatorConfig};
use serde_json::Value;

use crate::support::{all_plans, root, service};

fn scan(checkov: &str, config: &Path, objects: &[&KubeObject]) -> Vec<String> {
    let values: Vec<Value> = objects.iter().map(|o| o.to_json()).collect();
    scan_values(checkov, config, &values)
}

fn scan_values(checkov: &str, config: &Path, values: &[Value]) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!(
        "enclave-checkov-{}-{}",
        std::process::id(),
        config.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("plan.yaml");
    std::fs::write(&file, serde_saphyr::to_string_multiple(values).unwrap()).unwrap();
    let out = std::process::Command::new(checkov)
        .arg("--config-file")
        .arg(config)
        .arg("-f")
        .arg(&file)
        .args(["-o", "json"])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {checkov}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON report ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let reports = if report.is_array() {
        report.as_array().unwrap().clone()
    } else {
        vec![report]
    };
    let passed: u64 = reports
        .iter()
        .map(|r| r["summary"]["passed"].as_u64().unwrap_or(0))
        .sum();
    assert!(passed > 0, "checkov checked nothing: {stdout}");
    reports
        .iter()
        .flat_map(|r| {
            r["results"]["failed_checks"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| format!("{} {} on {}", c["check_id"], c["check_name"], c["resource"]))
        .collect()
}

#[test]
fn checkov_finds_no_unjustified_failures() {
    let checkov = service("ENCLAVE_TEST_CHECKOV", "the checkov scanner");
    let plans = all_plans();
    let all: Vec<&KubeObject> = plans
        .iter()
        .flat_map(|(_, plan)| enclave::plan::all_objects(plan))
        .collect();
    // The operator namespace holds the storage-prep Jobs (and the policy
    // isolating them); they get their own, justified, skips.
    let operator_ns = OperatorConfig::default().operator_namespace;
    let (prep, rest): (Vec<&KubeObject>, Vec<&KubeObject>) = all
        .into_iter()
        .partition(|o| o.metadata().namespace.as_deref() == Some(operator_ns.as_str()));
    assert!(prep.iter().any(|o| o.kind() == "Job"));
    let mut failed = scan(&checkov, &root().join("e2e/checkov.yaml"), &rest);
    failed.extend(scan(
        &checkov,
        &root().join("e2e/checkov-storage-prep.yaml"),
        &prep,
    ));
    assert!(
        failed.is_empty(),
        "checkov failures:\n{}",
        failed.join("\n")
    );
}

#[test]
fn checkov_finds_no_unjustified_failures_in_what_the_chart_renders() {
    let checkov = service("ENCLAVE_TEST_CHECKOV", "the checkov scanner");
    for values in crate::chart::values_files() {
        let objects: Vec<Value> = crate::chart::render(values.as_deref())
            .into_iter()
            // checkov scans workloads and RBAC; the CRDs are schema.
            .filter(|o| o["kind"] != "CustomResourceDefinition")
            .collect();
        let failed = scan_values(&checkov, &root().join("e2e/checkov-chart.yaml"), &objects);
        assert!(
            failed.is_empty(),
            "{values:?}: unjustified checkov failures (fix them or add a reasoned skip to e2e/checkov-chart.yaml):\n{}",
            failed.join("\n")
        );
    }
}
