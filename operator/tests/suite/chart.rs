//! The Helm chart and the plain manifests rendered from it: lint, a strict
//! values schema, no drift between the chart, `crds/` and
//! `manifests/enclave.yaml`, and `helm install`/`upgrade`/`uninstall` on a
//! real control plane (RBAC and Pod Security admission on).

use std::{path::PathBuf, process::Command};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
    policy::v1::PodDisruptionBudget,
    rbac::v1::ClusterRole,
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};

use crate::{
    control_plane::{ControlPlane, binaries},
    harness::wait,
    support::root,
};

/// The arguments that render `manifests/enclave.yaml` (also in
/// `manifests/render.sh`).
pub const RENDER_ARGS: &[&str] = &[
    "template",
    "enclave",
    "charts/enclave",
    "--namespace",
    "enclave-system",
    "--include-crds",
    "--set",
    "namespace.create=true",
    "--kube-version",
    "1.37.0",
];

fn helm() -> Command {
    let mut cmd = Command::new(binaries().join("helm"));
    cmd.current_dir(root())
        // No repository cache or config of the machine's user.
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("enclave-helm/cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("enclave-helm/config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("enclave-helm/data"),
        );
    cmd
}

/// Runs `cmd`: success and its stdout, or failure and stdout + stderr.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        (true, stdout)
    } else {
        (
            false,
            format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
        )
    }
}

/// The committed rendering, without its header comment.
fn committed_manifests() -> String {
    let text = std::fs::read_to_string(root().join("manifests/enclave.yaml")).unwrap();
    text.lines()
        .skip_while(|l| l.starts_with("# "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_chart_lints_and_the_committed_manifests_are_its_rendering() {
    let (ok, out) = run(helm().args([
        "lint",
        "--strict",
        "--kube-version",
        "1.37.0",
        "charts/enclave",
    ]));
    assert!(ok, "helm lint: {out}");
    let (ok, rendered) = run(helm().args(RENDER_ARGS));
    assert!(ok, "helm template: {rendered}");
    assert_eq!(
        rendered.trim_end(),
        committed_manifests().trim_end(),
        "manifests/enclave.yaml is stale: run manifests/render.sh"
    );
    // The operator accepts the configuration the chart renders.
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&rendered).unwrap();
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .and_then(|d| d["data"]["config.yaml"].as_str())
        .expect("the chart renders the operator's ConfigMap");
    let path = std::env::temp_dir().join(crate::support::unique("chart-config-"));
    std::fs::write(&path, config).unwrap();
    let loaded = enclave::config::OperatorConfig::load(&path).unwrap();
    assert_eq!(loaded.operator_namespace, "enclave-system");
    assert_eq!(loaded.operator_image, "ghcr.io/enclave-dev/enclave:0.1.0");
    // The chart carries the generated CRDs unchanged.
    for entry in std::fs::read_dir(root().join("crds")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        let in_chart: PathBuf = root().join("charts/enclave/crds").join(name);
        assert_eq!(
            std::fs::read_to_string(&in_chart).unwrap_or_default(),
            std::fs::read_to_string(&path).unwrap(),
            "{} differs from crds/: run `cargo run -p enclave-operator -- crdgen --out-dir crds` (it writes both)",
            in_chart.display()
        );
    }
}

#[test]
fn the_values_schema_refuses_unknown_keys_and_bad_values_naming_them() {
    for (set, expect) in [
        ("replicsa=2", "replicsa"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("config.vualt.address=x", "vualt"),
        ("config.aws.maxCallsPerSecond=fast", "maxCallsPerSecond"),
        ("config.operatorNamespace=other", "operatorNamespace"),
        ("leaderElection.leaseSeconds=1", "leaseSeconds"),
    ] {
        let (ok, out) = run(helm().args([
            "template",
            "enclave",
            "charts/enclave",
            "--kube-version",
            "1.37.0",
            "--set",
            set,
        ]));
        assert!(!ok, "--set {set} was accepted");
        assert!(out.contains(expect), "--set {set}: {out}");
    }
}

#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_the_chart_on_a_real_control_plane() {
    let cp = ControlPlane::start().await;
    let kubeconfig = cp.dir.join("kubeconfig");
    let helm_on = || {
        let mut cmd = helm();
        cmd.arg("--kubeconfig").arg(&kubeconfig);
        cmd
    };
    let (ok, out) = run(cp.kubectl().args(["create", "namespace", "enclave-system"]));
    assert!(ok, "{out}");
    let (ok, out) = run(cp.kubectl().args([
        "label",
        "namespace",
        "enclave-system",
        "pod-security.kubernetes.io/enforce=baseline",
    ]));
    assert!(ok, "{out}");
    let (ok, out) = run(helm_on().args([
        "install",
        "enclave",
        "charts/enclave",
        "--namespace",
        "enclave-system",
    ]));
    assert!(ok, "helm install: {out}");

    // The CRDs came from the chart: tenants can be applied.
    let company: enclave::crd::Company = serde_json::from_value(serde_json::json!({
        "apiVersion": "enclave.dev/v1alpha1", "kind": "Company",
        "metadata": {"name": "acme"},
        "spec": {"storage": {"volume": {"storageClassName": "gp3"}}},
    }))
    .unwrap();
    Api::<enclave::crd::Company>::all(cp.admin.clone())
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &company,
        )
        .await
        .expect("a Company against the chart's CRDs");

    // Two replicas: the Deployment controller creates their pods, which
    // Pod Security admitted (no kubelet runs them here).
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "enclave-system");
    let selector = "app.kubernetes.io/component=operator";
    let created = wait("the operator's two pods", async || {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(list.items)
    })
    .await;
    // And `restricted` admits them too: Pod Security checks the existing
    // pods when a namespace would be labelled, and warns about violators.
    let out = cp
        .kubectl()
        .args([
            "label",
            "--dry-run=server",
            "--overwrite",
            "namespace",
            "enclave-system",
            "pod-security.kubernetes.io/enforce=restricted",
        ])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("violate"),
        "the operator pods break Pod Security restricted: {said}"
    );
    let spec = created[0].spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("enclave"));
    let args = spec.containers[0].args.clone().unwrap_or_default();
    assert!(
        args.contains(&"--leader-election=true".to_owned()),
        "{args:?}"
    );
    let pdb = Api::<PodDisruptionBudget>::namespaced(cp.admin.clone(), "enclave-system")
        .get("enclave-operator")
        .await
        .unwrap();
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );

    // The operator's account holds the chart's rules and nothing more.
    let can = |verb: &str, resource: &str| {
        run(cp.kubectl().args([
            "auth",
            "can-i",
            verb,
            resource,
            "--all-namespaces",
            "--as",
            "system:serviceaccount:enclave-system:enclave",
        ]))
        .0
    };
    assert!(can("create", "namespaces"));
    assert!(can("patch", "statefulsets.apps"));
    assert!(!can("get", "secrets"));
    assert!(!can("escalate", "clusterroles.rbac.authorization.k8s.io"));
    assert!(!can("create", "pods/exec"));

    // An upgrade with new values rolls the pods (the config's checksum).
    let deployments: Api<Deployment> = Api::namespaced(cp.admin.clone(), "enclave-system");
    let before = deployments.get("enclave-operator").await.unwrap();
    let (ok, out) = run(helm_on().args([
        "upgrade",
        "enclave",
        "charts/enclave",
        "--namespace",
        "enclave-system",
        "--set",
        "config.controller.resyncSeconds=300",
    ]));
    assert!(ok, "helm upgrade: {out}");
    let after = deployments.get("enclave-operator").await.unwrap();
    let checksum = |d: &Deployment| -> String {
        let spec = &d.spec;
        let annotations = spec.template.metadata.as_ref().unwrap().annotations.clone();
        annotations.unwrap()["checksum/config"].clone()
    };
    assert_ne!(checksum(&before), checksum(&after));
    wait(
        "a second ReplicaSet for the new configuration",
        async || {
            let sets = Api::<ReplicaSet>::namespaced(cp.admin.clone(), "enclave-system")
                .list(&ListParams::default().labels(selector))
                .await
                .ok()?;
            (sets.items.len() == 2).then_some(())
        },
    )
    .await;

    // Uninstall removes the operator and its rights; the CRDs, and with
    // them every tenant, stay (Helm never deletes crds/).
    let (ok, out) = run(helm_on().args(["uninstall", "enclave", "--namespace", "enclave-system"]));
    assert!(ok, "helm uninstall: {out}");
    assert!(
        Api::<ClusterRole>::all(cp.admin.clone())
            .get_opt("enclave-operator")
            .await
            .unwrap()
            .is_none()
    );
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(cp.admin.clone());
    for name in ["companies.enclave.dev", "developers.enclave.dev"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name}");
    }
}
