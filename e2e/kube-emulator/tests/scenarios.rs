//! End-to-end scenarios that use only the Kubernetes API, so they run
//! unchanged on the emulator (default) and on a real cluster
//! (`ENCLAVE_E2E_CLUSTER=1`, e.g. kind in `.github/workflows/e2e-kind.yml`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{path::PathBuf, time::Duration};

use enclave::crd::Company;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use kube_emulator::cluster::TestCluster;
use serde_json::json;

const WAIT: Duration = Duration::from_mins(1);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", nanos & 0xff_ffff)
}

async fn install_crds(cluster: &TestCluster) {
    assert_eq!(
        cluster
            .apply_dir(&repo().join("crds"), "e2e")
            .await
            .unwrap(),
        2
    );
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    for name in ["companies.enclave.dev", "developers.enclave.dev"] {
        cluster
            .wait_for(&crds, name, WAIT, |crd| {
                crd.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            })
            .await
            .unwrap();
    }
}

fn rejection(err: &kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.message.clone()),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn examples_apply_and_the_crd_rules_refuse_bad_changes() {
    let cluster = TestCluster::start().await.unwrap();
    install_crds(&cluster).await;
    for ns in ["company-acme", "company-globex"] {
        cluster
            .apply_yaml(
                &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
                "e2e",
            )
            .await
            .unwrap();
    }
    for file in ["acme.yaml", "globex.yaml"] {
        let yaml = std::fs::read_to_string(repo().join("examples").join(file)).unwrap();
        cluster.apply_yaml(&yaml, "e2e").await.unwrap();
    }
    let companies: Api<Company> = Api::all(cluster.client.clone());
    let acme = cluster
        .wait_for(&companies, "acme", WAIT, |_| true)
        .await
        .unwrap();
    assert_eq!(acme.spec.display_name.as_deref(), Some("Acme Analytics"));

    let system = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "sys"}, "spec": {"namespace": "kube-system"}});
    let (code, message) = rejection(
        &companies
            .patch("sys", &PatchParams::apply("e2e"), &Patch::Apply(&system))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("must not be a system namespace"),
        "{message}"
    );

    let switch = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "acme"}, "spec": {"database": {"mode": "Shared"}}});
    let (code, message) = rejection(
        &companies
            .patch(
                "acme",
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&switch),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(message.contains("database.mode is immutable"), "{message}");

    for name in ["acme", "globex"] {
        companies
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    for ns in ["company-acme", "company-globex"] {
        Api::<Namespace>::all(cluster.client.clone())
            .delete(ns, &DeleteParams::default())
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_finalizer_holds_a_namespace_until_it_is_removed() {
    let cluster = TestCluster::start().await.unwrap();
    let ns = format!("e2e-{}", suffix());
    cluster
        .apply_yaml(
            &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"),
            "e2e",
        )
        .await
        .unwrap();
    cluster
        .apply_yaml(
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: plain\n  namespace: {ns}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: held\n  namespace: {ns}\n  finalizers: [e2e.enclave.dev/hold]\n"),
            "e2e",
        )
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), &ns);
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    cluster.wait_gone(&configmaps, "plain", WAIT).await.unwrap();
    cluster
        .wait_for(&configmaps, "held", WAIT, |c| {
            c.metadata.deletion_timestamp.is_some()
        })
        .await
        .unwrap();
    let terminating = namespaces.get(&ns).await.unwrap();
    assert_eq!(
        terminating.status.and_then(|s| s.phase).as_deref(),
        Some("Terminating")
    );
    configmaps
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    cluster.wait_gone(&namespaces, &ns, WAIT).await.unwrap();
}
