//! The Helm chart and the plain manifests rendered from it: lint, a strict
//! values schema, no drift between the chart, `crds/` and
//! `manifests/enclave.yaml`, and `helm install`/`upgrade`/`uninstall` on a
//! real control plane (RBAC and Pod Security admission on).

use std::{path::PathBuf, process::Command};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        authentication::v1::TokenRequest,
        core::v1::{Pod, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::ClusterRole,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
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
    "--set",
    "crds.upgradeHook=false",
    "--kube-version",
    "1.37.0",
];

/// `helm` as the tests run it (the one the control plane build made).
pub fn helm() -> Command {
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

/// The chart's value files the tests render: the defaults and each
/// `charts/enclave/ci/*-values.yaml`.
pub fn values_files() -> Vec<Option<PathBuf>> {
    let mut files: Vec<Option<PathBuf>> = std::fs::read_dir(root().join("charts/enclave/ci"))
        .unwrap()
        .map(|e| Some(e.unwrap().path()))
        .filter(|p| {
            p.as_ref()
                .is_some_and(|p| p.to_string_lossy().ends_with("-values.yaml"))
        })
        .collect();
    files.sort();
    files.insert(0, None);
    files
}

/// The objects the chart renders with `values` (its defaults: `None`),
/// hooks and CRDs included.
pub fn render(values: Option<&std::path::Path>) -> Vec<serde_json::Value> {
    let mut cmd = helm();
    cmd.args([
        "template",
        "enclave",
        "charts/enclave",
        "--namespace",
        "enclave-system",
        "--include-crds",
        "--kube-version",
        "1.37.0",
    ]);
    if let Some(values) = values {
        cmd.arg("-f").arg(values);
    }
    let (ok, out) = run(&mut cmd);
    assert!(ok, "helm template with {values:?}: {out}");
    serde_saphyr::from_multiple::<serde_json::Value>(&out)
        .unwrap()
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The operator configuration (`config.yaml` of the ConfigMap) the chart
/// renders for values `config: <config>`.
pub fn rendered_config(config: &serde_json::Value) -> String {
    let mut cmd = helm();
    cmd.args([
        "template",
        "enclave",
        "charts/enclave",
        "--namespace",
        "enclave-system",
        "--kube-version",
        "1.37.0",
        "--show-only",
        "templates/configmap.yaml",
        "--set-json",
    ])
    .arg(format!("config={config}"));
    let (ok, out) = run(&mut cmd);
    assert!(ok, "helm template with config {config}: {out}");
    let map: serde_json::Value = serde_saphyr::from_str(&out).unwrap();
    map["data"]["config.yaml"].as_str().unwrap().to_owned()
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
    for values in values_files() {
        let mut lint = helm();
        lint.args([
            "lint",
            "--strict",
            "--kube-version",
            "1.37.0",
            "charts/enclave",
        ]);
        if let Some(values) = &values {
            lint.arg("-f").arg(values);
        }
        let (ok, out) = run(&mut lint);
        assert!(ok, "helm lint with {values:?}: {out}");
        let mut kinds = std::collections::BTreeMap::<String, usize>::new();
        for object in render(values.as_deref()) {
            *kinds
                .entry(object["kind"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        println!("{values:?}: {kinds:?}");
    }
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
    Api::<enclave::crd::Company>::all(cp.admin.clone())
        .create(&PostParams::default(), &company)
        .await
        .unwrap();

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

    // An upgrade with new values rolls the pods (the config's checksum),
    // and its hook puts back the CRDs of this version (someone emptied the
    // Company printer columns): this test runs the hook pod's real command
    // with its account's token, as a kubelet would.
    let (ok, out) = run(cp.kubectl().args([
        "patch",
        "crd",
        "companies.enclave.dev",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/versions/0/additionalPrinterColumns", "value": []}]"#,
    ]));
    assert!(ok, "{out}");
    let deployments: Api<Deployment> = Api::namespaced(cp.admin.clone(), "enclave-system");
    let before = deployments.get("enclave-operator").await.unwrap();
    let mut upgrade = helm_on();
    upgrade.args([
        "upgrade",
        "enclave",
        "charts/enclave",
        "--namespace",
        "enclave-system",
        "--timeout",
        "2m",
        "--set",
        "config.controller.resyncSeconds=300",
    ]);
    let (hook_output, upgraded) = tokio::join!(
        run_hook_pod(cp.admin.clone(), cp.api.clone(), cp.dir.clone()),
        tokio::task::spawn_blocking(move || run(&mut upgrade)),
    );
    let (ok, out) = upgraded.unwrap();
    assert!(ok, "helm upgrade: {out}");
    assert!(
        hook_output.contains("applied companies.enclave.dev"),
        "{hook_output}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(cp.admin.clone());
    let company = crds.get("companies.enclave.dev").await.unwrap();
    assert!(
        company.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .is_some_and(|c| !c.is_empty()),
        "the hook restored the CRD of this version"
    );
    assert!(
        Api::<ClusterRole>::all(cp.admin.clone())
            .get_opt("enclave-crd-upgrade")
            .await
            .unwrap()
            .is_none(),
        "the hook's rights are removed once it succeeded"
    );
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
    for name in ["companies.enclave.dev", "developers.enclave.dev"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name}");
    }
    assert!(
        Api::<enclave::crd::Company>::all(cp.admin.clone())
            .get_opt("acme")
            .await
            .unwrap()
            .is_some(),
        "the tenant outlives the uninstall"
    );
}

/// Plays the kubelet for the chart's CRD upgrade hook: once its pod is
/// bound to the Node, runs the pod's command (`enclave crdgen --apply`)
/// with a token of the pod's ServiceAccount and reports how it exited.
async fn run_hook_pod(admin: Client, api_url: String, dir: PathBuf) -> String {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "enclave-system");
    let pod = wait("the CRD upgrade hook's pod on the Node", async || {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=crd-upgrade"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
    })
    .await;
    let spec = pod.spec.as_ref().unwrap();
    let account = spec.service_account_name.clone().unwrap();
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"expirationSeconds": 600}})).unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), "enclave-system")
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let kubeconfig = dir.join("hook.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {api_url}\n    certificate-authority: {}\nusers:\n- name: hook\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: hook}}\ncurrent-context: c\n",
            dir.join("ca.crt").display()
        ),
    )
    .unwrap();
    let args = spec.containers[0].args.clone().unwrap();
    let out = crate::support::enclave()
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = crate::kubelet::terminated(out.status.success(), said.trim());
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": status})),
    )
    .await
    .unwrap();
    said
}

#[tokio::test]
async fn kubectl_apply_of_the_plain_manifests_installs_enclave_on_a_real_control_plane() {
    let cp = ControlPlane::start().await;
    // The CRD hook's command before any CRD exists (an Argo CD PreSync):
    // it creates nothing and says so.
    let (ok, out) = run(crate::support::enclave()
        .args(["crdgen", "--apply"])
        .env("KUBECONFIG", cp.dir.join("kubeconfig")));
    assert!(ok, "{out}");
    assert!(
        out.contains("skipped companies.enclave.dev: not installed"),
        "{out}"
    );
    let (ok, out) = run(cp
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(root().join("manifests/enclave.yaml")));
    assert!(ok, "kubectl apply: {out}");
    // The namespace came labelled for Pod Security baseline, the CRDs serve,
    // and the Deployment's two pods were admitted.
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(cp.admin.clone())
        .get("enclave-system")
        .await
        .unwrap();
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("baseline")
    );
    let pods: Api<Pod> = Api::namespaced(cp.admin.clone(), "enclave-system");
    wait("the operator's two pods", async || {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
            .await
            .ok()?;
        (list.items.len() == 2).then_some(())
    })
    .await;
    let (ok, out) = run(cp.kubectl().args(["get", "companies,developers", "-A"]));
    assert!(ok, "the CRDs serve: {out}");
    // Applying it again (a GitOps re-sync) conflicts with nothing.
    let (ok, out) = run(cp
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(root().join("manifests/enclave.yaml")));
    assert!(ok, "a second apply: {out}");
}
