//! The real `enclave run` binary against the Kubernetes API emulator.

use std::{process::Child, time::Duration};

use enclave::crd::Company;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kube_emulator::Emulator;
use serde_json::json;

use crate::support::enclave;

/// The operator process; killed when dropped.
struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Vault for the operator under test: a Kubernetes auth mount of its own
/// on the harness's OpenBao, and a root client to look at what it wrote.
pub struct Vault {
    mount: String,
    root: vaultrs::client::VaultClient,
    config: std::path::PathBuf,
    /// The shared PostgreSQL admin's credentials, written to Vault by setup.
    admin: std::collections::BTreeMap<&'static str, String>,
}

fn vault() -> Vault {
    let addr =
        crate::support::service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server").expect("OpenBao");
    let token = crate::support::service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token")
        .expect("token");
    let root = crate::support::vault_client(&addr, &token);
    let mount = crate::support::unique("op");
    let conninfo = crate::support::service("ENCLAVE_TEST_POSTGRES", "a PostgreSQL server")
        .expect("PostgreSQL");
    let pg = |key: &str| {
        conninfo
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap()
            .to_owned()
    };
    let moto = crate::support::service("ENCLAVE_TEST_AWS_ENDPOINT", "moto_server").expect("moto");
    let config = std::env::temp_dir().join(format!("enclave-config-{mount}.yaml"));
    std::fs::write(
        &config,
        format!(
            "clusterId: {mount}\nvault:\n  address: {addr}\n  authMount: {mount}\naws:\n  endpointUrl: {moto}\nstorage:\n  fsxMissingLifecycleIsAvailable: true\ndatabase:\n  subnetGroup: \"\"\n  shared:\n    host: {}\n    port: {}\n    adminCredentialsPath: enclave/pg-admin-{mount}\n    tls: false\n",
            pg("host"),
            pg("port")
        ),
    )
    .unwrap();
    let admin =
        std::collections::BTreeMap::from([("username", pg("user")), ("password", pg("password"))]);
    Vault {
        mount,
        root,
        config,
        admin,
    }
}

/// One operator under test with everything it talks to.
pub struct Harness {
    /// The API client (as a user).
    pub client: Client,
    /// Vault as root, and the operator's mount.
    pub vault: Vault,
    /// Runs Jobs and readies workspaces.
    pub kubelet: crate::kubelet::Kubelet,
    operator: Option<Operator>,
    /// The emulator (kept alive).
    pub emulator: Emulator,
}

impl Harness {
    /// Starts (or restarts) the operator process.
    pub fn start_operator(&mut self) {
        self.operator = None;
        let child = enclave()
            .arg("run")
            .arg("--config")
            .arg(&self.vault.config)
            .env("KUBECONFIG", &self.emulator.kubeconfig)
            .env(
                "VAULT_TOKEN",
                crate::support::service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token")
                    .unwrap(),
            )
            .env("RUST_LOG", "warn,rustify=off,vaultrs=off")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .spawn()
            .unwrap();
        self.operator = Some(Operator(child));
    }
}

async fn setup() -> Harness {
    let vault = vault();
    vaultrs::sys::auth::enable(&vault.root, &vault.mount, "kubernetes", None)
        .await
        .unwrap();
    vaultrs::kv2::set(
        &vault.root,
        "secret",
        &format!("enclave/pg-admin-{}", vault.mount),
        &vault.admin,
    )
    .await
    .unwrap();
    let emulator = Emulator::start().await.unwrap();
    let client = Client::try_from(Config::new(emulator.url.parse().unwrap())).unwrap();
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for crd in enclave::cli::crds() {
        crds.create(&PostParams::default(), &crd).await.unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let system: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "enclave-system"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &system)
        .await
        .unwrap();
    let kubelet = crate::kubelet::start(client.clone(), "enclave-system");
    let mut harness = Harness {
        client,
        vault,
        kubelet,
        operator: None,
        emulator,
    };
    harness.start_operator();
    harness
}

async fn wait<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..600 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until `name` is gone from `api`.
async fn wait_gone<K>(what: &str, api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait(what, async || {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

fn condition(company: &Company, type_: &str) -> Option<(String, String)> {
    company
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

#[tokio::test]
async fn a_company_gets_its_namespace_and_loses_it_on_deletion() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let acme = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "acme"}, "spec": {"quota": {"cpu": "8"}}});
    companies
        .patch("acme", &PatchParams::apply("user"), &Patch::Apply(&acme))
        .await
        .unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = wait("the namespace", async || {
        namespaces.get_opt("company-acme").await.unwrap()
    })
    .await;
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    assert_eq!(
        ns.labels().get("enclave.dev/company").map(String::as_str),
        Some("acme")
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "company-acme");
    let quota = wait("the quota", async || {
        quotas.get_opt("company-quota").await.unwrap()
    })
    .await;
    assert_eq!(quota.spec.unwrap().hard.unwrap()["requests.cpu"].0, "8");
    let ready = wait("NamespaceReady", async || {
        let c = companies.get("acme").await.unwrap();
        (condition(&c, "NamespaceReady").map(|(s, _)| s).as_deref() == Some("True")).then_some(c)
    })
    .await;
    assert_eq!(
        ready.status.as_ref().unwrap().observed_generation,
        ready.metadata.generation
    );
    assert_eq!(ready.finalizers(), ["enclave.dev/cleanup"]);
    assert_eq!(
        condition(&ready, "VaultReady").unwrap().0,
        "True",
        "the company controller's policy and role are in Vault"
    );
    let ready = wait("Ready", async || {
        let c = companies.get("acme").await.unwrap();
        (condition(&c, "Ready").map(|(s, _)| s).as_deref() == Some("True")).then_some(c)
    })
    .await;
    let storage = ready.status.as_ref().unwrap().storage.clone().unwrap();
    assert_eq!(
        storage.kind.as_deref(),
        Some("Fsx"),
        "the default backend, recorded"
    );
    assert!(storage.file_system_id.unwrap().starts_with("fs-"));

    // An edited label is put back.
    namespaces.patch("company-acme", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}))).await.unwrap();
    wait("the PSA label re-asserted", async || {
        let ns = namespaces.get("company-acme").await.unwrap();
        (ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str)
            == Some("restricted"))
        .then_some(())
    })
    .await;

    companies
        .delete("acme", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the namespace to go", &namespaces, "company-acme").await;
    wait_gone("the Company to go", &companies, "acme").await;
}

#[tokio::test]
async fn a_namespace_that_is_not_ours_is_a_conflict_and_left_untouched() {
    let h = setup().await;
    let client = h.client.clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let taken: Namespace = serde_json::from_value(
        json!({"metadata": {"name": "taken", "labels": {"team": "someone"}}}),
    )
    .unwrap();
    namespaces
        .create(&PostParams::default(), &taken)
        .await
        .unwrap();
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "grabby"}, "spec": {"namespace": "taken"}});
    companies
        .patch("grabby", &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let conflicted = wait("the Conflict condition", async || {
        let c = companies.get("grabby").await.unwrap();
        (condition(&c, "NamespaceReady").map(|(_, r)| r).as_deref() == Some("Conflict"))
            .then_some(c)
    })
    .await;
    let message = &conflicted
        .status
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("taken") && message.contains("untouched"),
        "{message}"
    );
    let ns = namespaces.get("taken").await.unwrap();
    assert_eq!(ns.labels().get("team").map(String::as_str), Some("someone"));
    assert!(
        ns.labels().get("enclave.dev/company").is_none(),
        "not relabelled"
    );
    // Deleting the Company does not delete a namespace that is not ours.
    companies
        .delete("grabby", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company to go", &companies, "grabby").await;
    assert!(namespaces.get_opt("taken").await.unwrap().is_some());
}

#[tokio::test]
async fn deletion_protection_holds_deletion_until_lifted() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let co = |protected: bool| json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "safe"}, "spec": {"deletionProtection": protected}});
    companies
        .patch(
            "safe",
            &PatchParams::apply("user"),
            &Patch::Apply(&co(true)),
        )
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait("the namespace", async || {
        namespaces.get_opt("company-safe").await.unwrap()
    })
    .await;
    wait("the finalizer", async || {
        (companies.get("safe").await.unwrap().finalizers() == ["enclave.dev/cleanup"]).then_some(())
    })
    .await;
    companies
        .delete("safe", &DeleteParams::default())
        .await
        .unwrap();
    let held = wait("DeletionProtected", async || {
        let c = companies.get("safe").await.unwrap();
        (condition(&c, "Ready").map(|(_, r)| r).as_deref() == Some("DeletionProtected"))
            .then_some(c)
    })
    .await;
    assert!(held.metadata.deletion_timestamp.is_some());
    assert!(
        namespaces.get_opt("company-safe").await.unwrap().is_some(),
        "the tenant is untouched"
    );
    companies
        .patch(
            "safe",
            &PatchParams::apply("user"),
            &Patch::Apply(&co(false)),
        )
        .await
        .unwrap();
    wait_gone("the Company to go", &companies, "safe").await;
    assert!(namespaces.get_opt("company-safe").await.unwrap().is_none());
}

#[tokio::test]
async fn developers_get_a_uid_and_a_workspace_and_nothing_without_a_company() {
    use enclave::crd::Developer;
    use k8s_openapi::api::{
        apps::v1::StatefulSet,
        core::v1::{PersistentVolumeClaim, ServiceAccount},
    };
    let h = setup().await;
    let (client, vault) = (h.client.clone(), &h.vault);
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "globex"}, "spec": {"storage": {"volume": {"storageClassName": "gp3"}}}});
    companies
        .patch("globex", &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait("the namespace", async || {
        namespaces.get_opt("company-globex").await.unwrap()
    })
    .await;

    let devs: Api<Developer> = Api::namespaced(client.clone(), "company-globex");
    for (name, subject) in [("carol", "sub-carol"), ("dave", "sub-dave")] {
        let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer", "metadata": {"name": name, "namespace": "company-globex"}, "spec": {"subject": subject}});
        devs.patch(name, &PatchParams::apply("user"), &Patch::Apply(&dev))
            .await
            .unwrap();
    }
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "company-globex");
    let carol = wait("carol's workspace", async || {
        sets.get_opt("workspace-carol").await.unwrap()
    })
    .await;
    wait("dave's workspace", async || {
        sets.get_opt("workspace-dave").await.unwrap()
    })
    .await;
    let uids: Vec<i64> = devs
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|d| d.status.as_ref()?.uid)
        .collect();
    let mut sorted = uids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [200_000, 200_001], "unique ids from the range");
    let pod_uid = carol
        .spec
        .template
        .spec
        .unwrap()
        .security_context
        .unwrap()
        .run_as_user
        .unwrap();
    let carol_status = devs.get("carol").await.unwrap().status.unwrap();
    assert_eq!(
        Some(pod_uid),
        carol_status.uid,
        "the pod runs as the recorded uid"
    );
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "company-globex");
    assert!(sas.get_opt("developer-carol").await.unwrap().is_some());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "company-globex");
    assert_eq!(
        claims
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2,
        "one volume per developer"
    );

    // Vault: the workspace's role is bound to exactly its ServiceAccount.
    let carol_dev = wait("carol's VaultReady", async || {
        let d = devs.get("carol").await.unwrap();
        let ready = d
            .status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == "VaultReady" && c.status == "True");
        ready.then_some(d)
    })
    .await;
    let role_name = carol_dev.status.unwrap().vault_role.unwrap();
    let role = vaultrs::auth::kubernetes::role::read(&vault.root, &vault.mount, &role_name)
        .await
        .unwrap();
    assert_eq!(role.bound_service_account_names, ["developer-carol"]);
    assert_eq!(role.bound_service_account_namespaces, ["company-globex"]);
    let company_policy = "enclave-globex--company-controller";
    assert!(
        vaultrs::sys::policy::read(&vault.root, company_policy)
            .await
            .is_ok()
    );
    let dave_role = devs
        .get("dave")
        .await
        .unwrap()
        .status
        .unwrap()
        .vault_role
        .unwrap();
    wait("dave's role", async || {
        vaultrs::auth::kubernetes::role::read(&vault.root, &vault.mount, &dave_role)
            .await
            .ok()
    })
    .await;

    // Deleting a Developer takes its workspace (owner references) but not its data claim.
    devs.delete("dave", &DeleteParams::default()).await.unwrap();
    wait_gone("dave's workspace to go", &sets, "workspace-dave").await;
    assert_eq!(
        claims
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2,
        "the data claim follows the deletion policy, not a cascade"
    );
    wait("dave's role to go", async || {
        vaultrs::auth::kubernetes::role::read(&vault.root, &vault.mount, &dave_role)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(
        vaultrs::auth::kubernetes::role::read(&vault.root, &vault.mount, &role_name)
            .await
            .is_ok(),
        "carol's stays"
    );

    // A Developer in a namespace no Company owns: a condition, nothing created.
    let stray_ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "nobody"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &stray_ns)
        .await
        .unwrap();
    let strays: Api<Developer> = Api::namespaced(client.clone(), "nobody");
    let stray = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer", "metadata": {"name": "eve", "namespace": "nobody"}, "spec": {"subject": "sub-eve"}});
    strays
        .patch("eve", &PatchParams::apply("user"), &Patch::Apply(&stray))
        .await
        .unwrap();
    let refused = wait("NoCompany", async || {
        let d = strays.get("eve").await.unwrap();
        d.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.reason == "NoCompany")
            .cloned()
    })
    .await;
    assert!(refused.message.contains("nobody"), "{}", refused.message);
    let nothing: Api<ServiceAccount> = Api::namespaced(client.clone(), "nobody");
    assert!(
        nothing
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn company_databases_follow_their_mode_and_deletion_policy() {
    use aws_sdk_rds::config::{BehaviorVersion, Credentials, Region};
    let h = setup().await;
    let (client, vault) = (h.client.clone(), &h.vault);
    let companies: Api<Company> = Api::all(client.clone());
    let shared_name = crate::support::unique("sh");
    let dedicated_name = crate::support::unique("rd");
    for (name, database) in [
        (
            &shared_name,
            json!({"mode": "Shared", "deletionPolicy": "Delete"}),
        ),
        (
            &dedicated_name,
            json!({"mode": "Dedicated", "instanceClass": "db.t4g.micro", "deletionPolicy": "Snapshot"}),
        ),
    ] {
        let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name}, "spec": {"database": database, "storage": {"volume": {}}}});
        companies
            .patch(name, &PatchParams::apply("user"), &Patch::Apply(&co))
            .await
            .unwrap();
    }
    for name in [&shared_name, &dedicated_name] {
        let ready = wait("DatabaseReady", async || {
            let c = companies.get(name).await.unwrap();
            (condition(&c, "DatabaseReady").map(|(s, _)| s).as_deref() == Some("True")).then_some(c)
        })
        .await;
        let db = ready.status.unwrap().database.unwrap();
        assert_eq!(
            db.credentials_path.as_deref(),
            Some(format!("secret/data/companies/{name}/platform/database").as_str())
        );
        assert_eq!(db.credentials_version, Some(1));
    }

    // The shared database answers to the credentials in Vault.
    let creds: std::collections::BTreeMap<String, String> = vaultrs::kv2::read(
        &vault.root,
        "secret",
        &format!("companies/{shared_name}/platform/database"),
    )
    .await
    .unwrap();
    let status = companies
        .get(&shared_name)
        .await
        .unwrap()
        .status
        .unwrap()
        .database
        .unwrap();
    let (host, port, dbname) = (
        status.endpoint.clone().unwrap(),
        u16::try_from(status.port.unwrap()).unwrap(),
        status.name.clone().unwrap(),
    );
    let mut pg = tokio_postgres::Config::new();
    pg.host(&host)
        .port(port)
        .user(&creds["username"])
        .password(&creds["password"])
        .dbname(&dbname);
    let (db, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the company's credentials log in");
    tokio::spawn(connection);
    db.simple_query("SELECT 1").await.unwrap();
    drop(db);

    // Deletion follows each policy: Delete drops the shared database, Snapshot keeps a final snapshot.
    for name in [&shared_name, &dedicated_name] {
        companies
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone("the Company to go", &companies, name).await;
    }
    let mut admin = tokio_postgres::Config::new();
    admin
        .host(&host)
        .port(port)
        .user(&vault.admin["username"])
        .password(&vault.admin["password"])
        .dbname("postgres");
    let (admin, connection) = admin.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&dbname],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "deletionPolicy Delete dropped the database");
    let rds = aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(crate::support::service("ENCLAVE_TEST_AWS_ENDPOINT", "moto").unwrap())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "static"))
            .build(),
    );
    let instance = format!("enclave-{dedicated_name}");
    let snapshots = rds.describe_db_snapshots().send().await.unwrap();
    assert!(
        snapshots
            .db_snapshots()
            .iter()
            .any(|s| s.db_instance_identifier() == Some(instance.as_str())),
        "deletionPolicy Snapshot left a final snapshot"
    );
    assert!(
        rds.describe_db_instances()
            .db_instance_identifier(&instance)
            .send()
            .await
            .is_err(),
        "the instance is gone"
    );
}

/// Waits until condition `type_` of the Developer `name` is True.
async fn developer_condition(
    devs: &Api<enclave::crd::Developer>,
    name: &str,
    type_: &str,
) -> enclave::crd::Developer {
    wait(&format!("{type_} of {name}"), async || {
        let d = devs.get(name).await.unwrap();
        d.status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
            .then_some(d.clone())
    })
    .await
}

#[tokio::test]
async fn fsx_developers_get_private_directories_removed_per_policy() {
    use enclave::crd::Developer;
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use std::os::unix::fs::MetadataExt;
    if rustix::process::geteuid().as_raw() != 0 {
        eprintln!(
            "SKIPPED: storage-prep must chown, so this test runs only as root (CI runs as root)"
        );
        return;
    }
    let h = setup().await;
    let client = h.client.clone();
    let name = crate::support::unique("fs");
    let namespace = format!("company-{name}");
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"}, "storage": {"fsx": {"type": "OpenZfs"}, "deletionPolicy": "Delete"}}});
    companies
        .patch(&name, &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let devs: Api<Developer> = Api::namespaced(client.clone(), &namespace);
    wait("the namespace", async || {
        Api::<Namespace>::all(client.clone())
            .get_opt(&namespace)
            .await
            .unwrap()
    })
    .await;
    for (dev, subject) in [("peter", "sub-peter"), ("milton", "sub-milton")] {
        let d = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer", "metadata": {"name": dev, "namespace": namespace}, "spec": {"subject": subject}});
        devs.patch(dev, &PatchParams::apply("user"), &Patch::Apply(&d))
            .await
            .unwrap();
    }
    let company = wait("the Company Ready", async || {
        let c = companies.get(&name).await.unwrap();
        (condition(&c, "Ready").map(|(s, _)| s).as_deref() == Some("True")).then_some(c)
    })
    .await;
    let fs_id = company
        .status
        .unwrap()
        .storage
        .unwrap()
        .file_system_id
        .unwrap();
    let root = h.kubelet.root_of(&format!("enclave-{name}--root"));
    let mut dirs = Vec::new();
    for dev in ["peter", "milton"] {
        let d = developer_condition(&devs, dev, "Ready").await;
        let status = d.status.unwrap();
        let path = status.storage_path.unwrap();
        let dir = root.join(path.trim_start_matches('/'));
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(
            i64::from(meta.uid()),
            status.uid.unwrap(),
            "{dev} owns {path}"
        );
        assert_eq!(meta.mode() & 0o7777, 0o700, "{dev}'s directory is private");
        // The volume exposes only that directory.
        let pv = Api::<PersistentVolume>::all(client.clone())
            .get(&format!(
                "enclave-{name}--{}",
                path.rsplit('/').next().unwrap()
            ))
            .await
            .unwrap();
        assert_eq!(pv.spec.unwrap().nfs.unwrap().path, format!("/fsx{path}"));
        dirs.push(dir);
    }

    // Deleting milton removes his directory (policy Delete) and volume; peter's stays.
    devs.delete("milton", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("milton to go", &devs, "milton").await;
    assert!(!dirs[1].exists(), "milton's directory is removed");
    assert!(dirs[0].exists(), "peter's directory stays");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    assert!(claims.get_opt("home-peter").await.is_ok());

    // Deleting the Company removes peter first, then the file system (Delete: no backup).
    companies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company to go", &companies, &name).await;
    assert!(!dirs[0].exists(), "peter's directory is removed");
    let fsx = aws_sdk_fsx::Client::from_conf(
        aws_sdk_fsx::Config::builder()
            .behavior_version(aws_sdk_fsx::config::BehaviorVersion::latest())
            .endpoint_url(crate::support::service("ENCLAVE_TEST_AWS_ENDPOINT", "moto").unwrap())
            .region(aws_sdk_fsx::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_fsx::config::Credentials::new(
                "test", "test", None, None, "static",
            ))
            .build(),
    );
    let left = fsx.describe_file_systems().send().await.unwrap();
    assert!(
        left.file_systems()
            .iter()
            .all(|f| f.file_system_id() != Some(fs_id.as_str())),
        "the file system is deleted"
    );
    let volumes = Api::<PersistentVolume>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await
        .unwrap();
    assert!(
        volumes.items.iter().all(|v| !v.name_any().contains(&name)),
        "no volume object is left"
    );
}
