//! The real `enclave run` binary against the emulator and the real
//! services: one behaviour per test.

use enclave::crd::Company;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use crate::harness::{condition, developer_condition, setup, wait, wait_gone};

#[tokio::test]
async fn a_company_gets_its_namespace_and_loses_it_on_deletion() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let anvil = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "anvil"}, "spec": {"quota": {"cpu": "8"}}});
    companies
        .patch("anvil", &PatchParams::apply("user"), &Patch::Apply(&anvil))
        .await
        .unwrap();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = wait("the namespace", async || {
        namespaces.get_opt("company-anvil").await.unwrap()
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
        Some("anvil")
    );
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), "company-anvil");
    let quota = wait("the quota", async || {
        quotas.get_opt("company-quota").await.unwrap()
    })
    .await;
    assert_eq!(quota.spec.unwrap().hard.unwrap()["requests.cpu"].0, "8");
    let ready = wait("NamespaceReady", async || {
        let c = companies.get("anvil").await.unwrap();
        (condition(&c, "NamespaceReady").map(|(s, _)| s).as_deref() == Some("True")).then_some(c)
    })
    .await;
    // The namespace carries the Company's uid; the policies in force show.
    assert_eq!(
        ns.annotations().get("enclave.dev/company-uid"),
        ready.metadata.uid.as_ref()
    );
    let policies = ready
        .status
        .as_ref()
        .unwrap()
        .deletion_policies
        .clone()
        .unwrap();
    assert_eq!(
        (policies.database, policies.storage),
        (
            enclave::crd::DeletionPolicy::Snapshot,
            enclave::crd::DeletionPolicy::Snapshot
        ),
        "the defaults: a final snapshot, an archive"
    );
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
        let c = companies.get("anvil").await.unwrap();
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
    namespaces.patch("company-anvil", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}}))).await.unwrap();
    wait("the PSA label re-asserted", async || {
        let ns = namespaces.get("company-anvil").await.unwrap();
        (ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str)
            == Some("restricted"))
        .then_some(())
    })
    .await;

    companies
        .delete("anvil", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the namespace to go", &namespaces, "company-anvil").await;
    wait_gone("the Company to go", &companies, "anvil").await;
}

#[tokio::test]
async fn a_namespace_that_is_not_ours_is_a_conflict_and_left_untouched() {
    let h = setup().await;
    let client = h.client.clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let companies: Api<Company> = Api::all(client.clone());
    // Someone else's namespace; and one someone labelled for the Company,
    // which a label alone does not make its own (no uid annotation).
    for (company, namespace, labels, says) in [
        (
            "grabby",
            "taken",
            json!({"team": "someone"}),
            "not created by Enclave",
        ),
        (
            "forged",
            "forged-ns",
            json!({"team": "someone", "enclave.dev/company": "forged"}),
            "someone else labelled it",
        ),
    ] {
        let taken: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace, "labels": labels}}))
                .unwrap();
        namespaces
            .create(&PostParams::default(), &taken)
            .await
            .unwrap();
        let held: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "their-data", "namespace": namespace}, "data": {"k": "v"}}),
        )
        .unwrap();
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace)
            .create(&PostParams::default(), &held)
            .await
            .unwrap();
        let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": company}, "spec": {"namespace": namespace}});
        companies
            .patch(company, &PatchParams::apply("user"), &Patch::Apply(&co))
            .await
            .unwrap();
        let conflicted = wait("the Conflict condition", async || {
            let c = companies.get(company).await.unwrap();
            (condition(&c, "NamespaceReady").map(|(_, r)| r).as_deref() == Some("Conflict"))
                .then_some(c)
        })
        .await;
        let conditions = conflicted.status.unwrap().conditions;
        let message = &conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .message
            .clone();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == "Conflict"),
            "{conditions:?}"
        );
        assert!(
            message.contains(namespace) && message.contains("untouched") && message.contains(says),
            "{message}"
        );
        let ns = namespaces.get(namespace).await.unwrap();
        assert_eq!(ns.labels().get("team").map(String::as_str), Some("someone"));
        assert!(
            ns.labels()
                .get("pod-security.kubernetes.io/enforce")
                .is_none()
                && ns.annotations().get("enclave.dev/company-uid").is_none(),
            "not taken over: {:?}",
            ns.metadata
        );
        // Deleting the Company deletes neither the namespace nor what is in it.
        companies
            .delete(company, &DeleteParams::default())
            .await
            .unwrap();
        wait_gone("the Company to go", &companies, company).await;
        let ns = namespaces.get(namespace).await.unwrap();
        assert!(
            ns.metadata.deletion_timestamp.is_none(),
            "{namespace} is being deleted"
        );
        assert!(
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace)
                .get_opt("their-data")
                .await
                .unwrap()
                .is_some()
        );
    }
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
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "hooli"}, "spec": {"storage": {"volume": {"storageClassName": "gp3"}}}});
    companies
        .patch("hooli", &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    wait("the namespace", async || {
        namespaces.get_opt("company-hooli").await.unwrap()
    })
    .await;

    let devs: Api<Developer> = Api::namespaced(client.clone(), "company-hooli");
    for (name, subject) in [("carol", "sub-carol"), ("dave", "sub-dave")] {
        let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer", "metadata": {"name": name, "namespace": "company-hooli"}, "spec": {"subject": subject}});
        devs.patch(name, &PatchParams::apply("user"), &Patch::Apply(&dev))
            .await
            .unwrap();
    }
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), "company-hooli");
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
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "company-hooli");
    assert!(sas.get_opt("developer-carol").await.unwrap().is_some());
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "company-hooli");
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
    assert_eq!(role.bound_service_account_namespaces, ["company-hooli"]);
    let company_policy = "enclave-hooli--company-controller";
    assert!(
        vaultrs::sys::policy::read(&vault.root, company_policy)
            .await
            .is_ok()
    );
    let dave_role = wait("dave's status names his role", async || {
        devs.get("dave").await.unwrap().status?.vault_role
    })
    .await;
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
    // The only ServiceAccount there is the one Kubernetes makes in every
    // namespace.
    let nothing: Api<ServiceAccount> = Api::namespaced(client.clone(), "nobody");
    let accounts: Vec<String> = nothing
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    assert_eq!(accounts, ["default"]);

    // A namespace someone labelled with the company's name is not the company's.
    let forged: Namespace = serde_json::from_value(
        json!({"metadata": {"name": "forged", "labels": {"enclave.dev/company": "hooli"}}}),
    )
    .unwrap();
    namespaces
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    let intruders: Api<Developer> = Api::namespaced(client.clone(), "forged");
    let intruder = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer", "metadata": {"name": "mallory", "namespace": "forged"}, "spec": {"subject": "sub-mallory", "role": "Admin"}});
    intruders
        .patch(
            "mallory",
            &PatchParams::apply("user"),
            &Patch::Apply(&intruder),
        )
        .await
        .unwrap();
    wait("NoCompany for the forged namespace", async || {
        let d = intruders.get("mallory").await.unwrap();
        d.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.reason == "NoCompany")
            .cloned()
    })
    .await;
    let roles = vaultrs::auth::kubernetes::role::list(&vault.root, &vault.mount)
        .await
        .unwrap()
        .keys;
    assert!(
        roles.iter().all(|r| !r.contains("mallory")),
        "no Vault role for a Developer outside its company's namespace: {roles:?}"
    );
}

#[tokio::test]
async fn company_databases_follow_their_mode_and_deletion_policy() {
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

    // Rotation on request: version 2 in Vault, applied to the role; the old password stops working.
    companies
        .patch(
            &shared_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"enclave.dev/rotate-credentials": "2026-11-23"}}})),
        )
        .await
        .unwrap();
    let rotated = wait("the rotation carried out", async || {
        let db = companies
            .get(&shared_name)
            .await
            .unwrap()
            .status?
            .database?;
        (db.rotated_for.as_deref() == Some("2026-11-23")).then_some(db)
    })
    .await;
    assert_eq!(rotated.credentials_version, Some(2));
    let new: std::collections::BTreeMap<String, String> = vaultrs::kv2::read(
        &vault.root,
        "secret",
        &format!("companies/{shared_name}/platform/database"),
    )
    .await
    .unwrap();
    assert_ne!(new["password"], creds["password"]);
    let mut fresh = pg.clone();
    fresh.password(&new["password"]);
    let (db, connection) = fresh
        .connect(tokio_postgres::NoTls)
        .await
        .expect("the new password works");
    tokio::spawn(connection);
    drop(db);
    assert!(
        pg.connect(tokio_postgres::NoTls).await.is_err(),
        "the old password no longer works"
    );

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
    let (rds, _) = crate::support::aws_clients();
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

#[tokio::test]
async fn fsx_developers_get_private_directories_removed_per_policy() {
    use enclave::crd::Developer;
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    use std::os::unix::fs::MetadataExt;
    crate::harness::require_root();
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
    let (_, fsx) = crate::support::aws_clients();
    // Asked for by id (a long list is paged): not found, or nothing.
    let left = fsx
        .describe_file_systems()
        .file_system_ids(&fs_id)
        .send()
        .await
        .map_or(0, |r| r.file_systems().len());
    assert_eq!(left, 0, "the file system is deleted");
    let volumes = Api::<PersistentVolume>::all(client.clone())
        .list(&kube::api::ListParams::default())
        .await
        .unwrap();
    assert!(
        volumes.items.iter().all(|v| !v.name_any().contains(&name)),
        "no volume object is left"
    );
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn changes_to_tenants_are_followed_exactly() {
    use enclave::crd::Developer;
    use k8s_openapi::api::{
        apps::v1::StatefulSet, networking::v1::NetworkPolicy, rbac::v1::RoleBinding,
    };
    crate::harness::require_root();
    let h = setup().await;
    let client = h.client.clone();
    let name = crate::support::unique("ch");
    let namespace = format!("company-{name}");
    let companies: Api<Company> = Api::all(client.clone());
    let company = |cpu: &str, egress: serde_json::Value| {
        json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
            "spec": {"quota": {"cpu": cpu}, "network": {"egress": egress},
                     "database": {"mode": "Shared", "deletionPolicy": "Delete"},
                     "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"}}})
    };
    let two =
        json!([{"cidr": "10.1.0.0/16", "ports": [443]}, {"cidr": "10.2.0.0/16", "ports": [5439]}]);
    companies
        .patch(
            &name,
            &PatchParams::apply("user"),
            &Patch::Apply(company("8", two)),
        )
        .await
        .unwrap();
    let devs: Api<Developer> = Api::namespaced(client.clone(), &namespace);
    let developer = |dev: &str, role: &str, suspended: bool| {
        json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer", "metadata": {"name": dev, "namespace": namespace},
            "spec": {"subject": format!("sub-{dev}"), "role": role, "workspace": {"suspended": suspended}}})
    };
    for (dev, role) in [("ann", "Admin"), ("ben", "Developer")] {
        wait("the Developer applied", async || {
            devs.patch(
                dev,
                &PatchParams::apply("user"),
                &Patch::Apply(developer(dev, role, false)),
            )
            .await
            .ok()
        })
        .await;
    }
    for dev in ["ann", "ben"] {
        developer_condition(&devs, dev, "Ready").await;
    }
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &namespace);
    // Besides her workspace-access binding, which every person has.
    let admin_bindings = async || {
        bindings
            .list(&kube::api::ListParams::default().labels("enclave.dev/developer=ann"))
            .await
            .unwrap()
            .items
            .iter()
            .filter(|b| b.role_ref.name == "enclave-company-admin")
            .count()
    };
    assert_eq!(admin_bindings().await, 1, "ann is bound as an Admin");
    let ann_policy_name = devs
        .get("ann")
        .await
        .unwrap()
        .status
        .unwrap()
        .vault_policy
        .unwrap();
    let policy = async || {
        vaultrs::sys::policy::read(&h.vault.root, &ann_policy_name)
            .await
            .unwrap()
            .rules
    };
    assert!(
        !policy()
            .await
            .contains(&format!("companies/{name}/shared/*")),
        "an Admin's workspace does not write shared secrets"
    );
    // The person does, with their own login.
    let person = devs
        .get("ann")
        .await
        .unwrap()
        .status
        .unwrap()
        .person_vault_role
        .expect("an Admin person role");
    let person_policy = async || {
        vaultrs::sys::policy::read(&h.vault.root, &person)
            .await
            .ok()
            .map(|p| p.rules)
    };
    assert!(
        person_policy()
            .await
            .is_some_and(|r| r.contains(&format!("companies/{name}/shared/*"))),
        "an Admin person writes shared secrets"
    );

    // A policy someone else made, with Enclave's labels copied onto it:
    // not Enclave's (no owner reference to the Company), never pruned.
    let forged: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "someone-elses", "namespace": namespace, "labels": {
            "app.kubernetes.io/managed-by": "enclave", "enclave.dev/company": name}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }))
    .unwrap();
    Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();

    // Quota down, one egress entry dropped.
    let one = json!([{"cidr": "10.1.0.0/16", "ports": [443]}]);
    companies
        .patch(
            &name,
            &PatchParams::apply("user"),
            &Patch::Apply(company("4", one)),
        )
        .await
        .unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &namespace);
    wait("the quota lowered", async || {
        let q = quotas.get("company-quota").await.unwrap();
        (q.spec.unwrap().hard.unwrap()["requests.cpu"].0 == "4").then_some(())
    })
    .await;
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    wait("the egress entry gone", async || {
        let p = policies.get("allow-company-egress").await.unwrap();
        let rules = serde_json::to_string(&p.spec.unwrap().egress).unwrap();
        (!rules.contains("10.2.0.0/16") && rules.contains("10.1.0.0/16")).then_some(())
    })
    .await;
    // Its ports removed ("every port"): the ports go from the policy too
    // (a field Enclave no longer sets is removed, not left behind).
    companies
        .patch(
            &name,
            &PatchParams::apply("user"),
            &Patch::Apply(company("4", json!([{"cidr": "10.1.0.0/16"}]))),
        )
        .await
        .unwrap();
    wait("the egress ports gone", async || {
        let p = policies.get("allow-company-egress").await.unwrap();
        let egress = p.spec.unwrap().egress.unwrap_or_default();
        (egress.len() == 1 && egress[0].ports.is_none()).then_some(())
    })
    .await;
    // The last entry dropped: the policy itself goes.
    companies
        .patch(
            &name,
            &PatchParams::apply("user"),
            &Patch::Apply(company("4", json!([]))),
        )
        .await
        .unwrap();
    wait_gone(
        "the company egress policy",
        &policies,
        "allow-company-egress",
    )
    .await;
    assert!(
        policies.get_opt("someone-elses").await.unwrap().is_some(),
        "a labelled policy the Company does not own is left alone"
    );

    // ben suspended: no pod, data kept; ann turned Developer: her admin binding goes, Vault follows.
    devs.patch(
        "ben",
        &PatchParams::apply("user"),
        &Patch::Apply(developer("ben", "Developer", true)),
    )
    .await
    .unwrap();
    devs.patch(
        "ann",
        &PatchParams::apply("user"),
        &Patch::Apply(developer("ann", "Developer", false)),
    )
    .await
    .unwrap();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    wait("ben's workspace scaled to zero", async || {
        (sets.get("workspace-ben").await.unwrap().spec.replicas == Some(0)).then_some(())
    })
    .await;
    wait("ann's admin binding gone", async || {
        (admin_bindings().await == 0).then_some(())
    })
    .await;
    wait("ann's person policy follows her role", async || {
        person_policy().await.is_none().then_some(())
    })
    .await;
    assert!(
        policy()
            .await
            .contains(&format!("companies/{name}/shared/dev/*"))
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(client.clone(), &namespace);
    let ben = devs.get("ben").await.unwrap().status.unwrap();
    assert!(
        claims
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            == 2,
        "ben's data is kept while suspended"
    );
    assert!(ben.uid.is_some());

    companies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company", &companies, &name).await;
}

#[tokio::test]
async fn a_person_recreated_gets_their_retained_directory_and_uid_back_and_no_one_else_does() {
    use enclave::crd::Developer;
    crate::harness::require_root();
    let h = setup().await;
    let client = h.client.clone();
    let name = crate::support::unique("rt");
    let namespace = format!("company-{name}");
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"}, "storage": {"fsx": {"type": "OpenZfs"}, "deletionPolicy": "Retain"}}});
    companies
        .patch(&name, &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let devs: Api<Developer> = Api::namespaced(client.clone(), &namespace);
    let apply = async |dev: &str, subject: &str| {
        let d = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer", "metadata": {"name": dev, "namespace": namespace}, "spec": {"subject": subject}});
        wait("the Developer applied", async || {
            devs.patch(dev, &PatchParams::apply("user"), &Patch::Apply(&d))
                .await
                .ok()
        })
        .await;
        let status = developer_condition(&devs, dev, "Ready")
            .await
            .status
            .unwrap();
        (status.uid.unwrap(), status.storage_path.unwrap())
    };
    let root = h.kubelet.root_of(&format!("enclave-{name}--root"));
    let (zed_uid, zed_path) = apply("zed", "person-1").await;
    let notes = root
        .join(zed_path.trim_start_matches('/'))
        .join("notes.txt");
    std::fs::write(&notes, "mine").unwrap();

    devs.delete("zed", &DeleteParams::default()).await.unwrap();
    wait_gone("zed", &devs, "zed").await;
    assert!(notes.exists(), "policy Retain keeps the directory");

    let (amy_uid, _) = apply("amy", "person-2").await;
    assert_ne!(
        amy_uid, zed_uid,
        "a retained person's uid is not handed to anyone else"
    );

    let (again_uid, again_path) = apply("zed", "person-1").await;
    assert_eq!(
        (again_uid, &again_path),
        (zed_uid, &zed_path),
        "the same person gets their uid and directory back"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");

    // Same name, another person: another directory and uid; the first person's data untouched.
    devs.delete("zed", &DeleteParams::default()).await.unwrap();
    wait_gone("zed", &devs, "zed").await;
    let (other_uid, other_path) = apply("zed", "person-3").await;
    assert_ne!(other_path, zed_path);
    assert!(other_uid != zed_uid && other_uid != amy_uid);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "mine");

    companies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company", &companies, &name).await;
}

#[tokio::test]
async fn a_workspace_pod_orphaned_from_its_statefulset_holds_the_developers_cleanup() {
    use enclave::crd::Developer;
    use k8s_openapi::api::{
        apps::v1::StatefulSet,
        core::v1::{Pod, ServiceAccount},
    };
    let mut h = setup().await;
    let client = h.client.clone();
    let name = crate::support::unique("orph");
    let namespace = format!("company-{name}");
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                 "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"}}});
    companies
        .patch(&name, &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let devs: Api<Developer> = Api::namespaced(client.clone(), &namespace);
    let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
        "metadata": {"name": "olga", "namespace": namespace}, "spec": {"subject": "sub-olga"}});
    wait("the Developer applied", async || {
        devs.patch("olga", &PatchParams::apply("user"), &Patch::Apply(&dev))
            .await
            .ok()
    })
    .await;
    let role = developer_condition(&devs, "olga", "Ready")
        .await
        .status
        .unwrap()
        .vault_role
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    wait("olga's pod", async || {
        pods.get_opt("workspace-olga-0").await.unwrap()
    })
    .await;

    // While the operator is down (a running one re-creates the StatefulSet,
    // which adopts the pod), someone deletes the StatefulSet orphaning its
    // pod, and the Developer: the pod stays, running as olga, with nothing
    // that will ever delete it.
    h.kill_operator();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    sets.delete("workspace-olga", &DeleteParams::orphan())
        .await
        .unwrap();
    wait_gone("the orphaning deletion", &sets, "workspace-olga").await;
    devs.delete("olga", &DeleteParams::default()).await.unwrap();
    h.start_operator();
    let held = wait("WorkspaceOrphaned", async || {
        let d = devs.get("olga").await.unwrap();
        d.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "WorkspaceOrphaned")
    })
    .await;
    assert!(
        held.message.contains(&format!(
            "kubectl delete pod -n {namespace} workspace-olga-0"
        )),
        "{}",
        held.message
    );
    // Nothing of the person's went while the pod runs: its token's
    // ServiceAccount and its Vault role are there; the pod too (the
    // operator may not delete pods).
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
    assert!(accounts.get_opt("developer-olga").await.unwrap().is_some());
    assert!(
        vaultrs::auth::kubernetes::role::read(&h.vault.root, &h.vault.mount, &role)
            .await
            .is_ok()
    );
    let pod = pods.get("workspace-olga-0").await.unwrap();
    assert!(pod.metadata.deletion_timestamp.is_none());

    // The person deletes it: the cleanup goes on to the end.
    pods.delete("workspace-olga-0", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("olga", &devs, "olga").await;
    assert!(accounts.get_opt("developer-olga").await.unwrap().is_none());
    assert!(
        vaultrs::auth::kubernetes::role::read(&h.vault.root, &h.vault.mount, &role)
            .await
            .is_err()
    );
    companies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company", &companies, &name).await;
}

#[tokio::test]
async fn a_company_namespace_deleted_directly_lets_its_developers_cleanup_finish() {
    use enclave::crd::Developer;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    let h = setup().await;
    let client = h.client.clone();
    let name = crate::support::unique("nsdel");
    let namespace = format!("company-{name}");
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                 "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Retain"}}});
    companies
        .patch(&name, &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let devs: Api<Developer> = Api::namespaced(client.clone(), &namespace);
    let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
        "metadata": {"name": "nina", "namespace": namespace}, "spec": {"subject": "sub-nina"}});
    wait("the Developer applied", async || {
        devs.patch("nina", &PatchParams::apply("user"), &Patch::Apply(&dev))
            .await
            .ok()
    })
    .await;
    let role = developer_condition(&devs, "nina", "Ready")
        .await
        .status
        .unwrap()
        .vault_role
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    wait("nina's pod", async || {
        pods.get_opt("workspace-nina-0").await.unwrap()
    })
    .await;

    // `kubectl delete namespace`: its controller deletes the operator's
    // RoleBinding with everything else, so the operator may no longer read
    // the pods there; the Developer's cleanup must still finish (it holds
    // the namespace's deletion with its finalizer).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("nina's cleanup", &devs, "nina").await;
    assert!(
        vaultrs::auth::kubernetes::role::read(&h.vault.root, &h.vault.mount, &role)
            .await
            .is_err(),
        "nina's Vault role outlived her"
    );
    // The Company still defines the tenancy: its namespace comes back.
    wait("the namespace restored", async || {
        namespaces
            .get_opt(&namespace)
            .await
            .unwrap()
            .filter(|ns| ns.metadata.deletion_timestamp.is_none())
    })
    .await;
    companies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company", &companies, &name).await;
}

#[tokio::test]
async fn a_workspace_image_outside_the_companys_allow_list_is_refused_and_nothing_rolls() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": "imgco"},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                 "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"},
                 "workspace": {"image": "registry.example.com/ws:1",
                               "allowedImages": ["registry.example.com/tools/", "registry.example.com/dbt:1.8"]}}});
    companies
        .patch("imgco", &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let devs: Api<enclave::crd::Developer> = Api::namespaced(client.clone(), "company-imgco");
    let apply_dev = |image: Option<&str>| {
        let mut workspace = json!({});
        if let Some(image) = image {
            workspace["image"] = json!(image);
        }
        json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
            "metadata": {"name": "dana", "namespace": "company-imgco"},
            "spec": {"subject": "imgco-dana", "workspace": workspace}})
    };
    wait("the Developer applied", async || {
        devs.patch(
            "dana",
            &PatchParams::apply("admin"),
            &Patch::Apply(apply_dev(None)),
        )
        .await
        .ok()
    })
    .await;
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), "company-imgco");
    let image_of = async || {
        let set = sets.get_opt("workspace-dana").await.unwrap()?;
        set.spec.template.spec?.containers[0].image.clone()
    };
    wait("the workspace with the company's image", async || {
        (image_of().await.as_deref() == Some("registry.example.com/ws:1")).then_some(())
    })
    .await;

    // An admin points dana's workspace at an image of their choosing.
    devs.patch(
        "dana",
        &PatchParams::apply("admin"),
        &Patch::Apply(apply_dev(Some("attacker.example.com/miner:latest"))),
    )
    .await
    .unwrap();
    let refused = wait("ImageNotAllowed", async || {
        let d = devs.get("dana").await.unwrap();
        let c = d
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "WorkspaceReady" && c.reason == "ImageNotAllowed")?;
        Some(c.message)
    })
    .await;
    assert!(refused.contains("allowedImages"), "{refused}");
    // Stalled, so Flux and Argo CD stop waiting and say why.
    let stalled = wait("Stalled", async || {
        let d = devs.get("dana").await.unwrap();
        d.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Stalled" && c.status == "True")
    })
    .await;
    assert_eq!(stalled.reason, "ImageNotAllowed");
    // And a Warning Event on the Developer, for `kubectl describe` and for
    // alerts on Events.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), "company-imgco");
    let warning = wait("the Warning Event", async || {
        events
            .list(&kube::api::ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("InvalidSpec")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("dana")
            })
    })
    .await;
    let note = warning.note.unwrap_or_default();
    assert!(note.contains("allowedImages"), "{note}");
    // Resyncs later, the workspace still runs the company's image.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert_eq!(
        image_of().await.as_deref(),
        Some("registry.example.com/ws:1")
    );

    // An allowed image rolls out.
    devs.patch(
        "dana",
        &PatchParams::apply("admin"),
        &Patch::Apply(apply_dev(Some("registry.example.com/tools/dbt:2"))),
    )
    .await
    .unwrap();
    wait("the allowed image rolled out", async || {
        (image_of().await.as_deref() == Some("registry.example.com/tools/dbt:2")).then_some(())
    })
    .await;
    developer_condition(&devs, "dana", "Ready").await;
}

#[tokio::test]
async fn each_person_reaches_only_their_own_workspace() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    // Two companies, each with one admin and two developers.
    let people = [("ann", "Admin"), ("bo", "Developer"), ("cy", "Developer")];
    let companies_of_test = [
        crate::support::unique("rbaca"),
        crate::support::unique("rbacb"),
    ];
    for company in companies_of_test.iter().map(String::as_str) {
        let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": company},
            "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                     "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"}}});
        companies
            .patch(company, &PatchParams::apply("user"), &Patch::Apply(&co))
            .await
            .unwrap();
        let ns = format!("company-{company}");
        let devs: Api<enclave::crd::Developer> = Api::namespaced(client.clone(), &ns);
        for (name, role) in people {
            let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"subject": format!("{company}-{name}"), "role": role}});
            wait("the Developer applied", async || {
                devs.patch(name, &PatchParams::apply("user"), &Patch::Apply(&dev))
                    .await
                    .ok()
            })
            .await;
        }
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
            Api::namespaced(client.clone(), &ns);
        for (name, _) in people {
            wait("the person's workspace-access binding", async || {
                bindings
                    .get_opt(&format!("workspace-access-{name}"))
                    .await
                    .unwrap()
            })
            .await;
        }
        wait("the admin's company-admin binding", async || {
            bindings.get_opt("company-admin-ann").await.unwrap()
        })
        .await;
    }

    let cp = &h.control_plane;
    let mut table = vec![format!(
        "{:<30} {:<9} {:<46} {:<22} want got",
        "user", "verb", "resource", "namespace"
    )];
    let mut wrong = Vec::new();
    for (i, company) in companies_of_test.iter().enumerate() {
        let other = &companies_of_test[1 - i];
        let (ns, other_ns) = (format!("company-{company}"), format!("company-{other}"));
        for (name, role) in people {
            let admin = role == "Admin";
            let peer = people.iter().map(|p| p.0).find(|p| *p != name).unwrap();
            let own_pod = format!("pods/workspace-{name}-0");
            let peer_pod = format!("pods/workspace-{peer}-0");
            let checks: Vec<(&str, String, &str, bool)> = vec![
                ("create", format!("{own_pod}#exec"), &ns, true),
                ("create", format!("{own_pod}#attach"), &ns, true),
                ("create", format!("{own_pod}#portforward"), &ns, true),
                ("get", format!("{own_pod}#log"), &ns, true),
                ("get", format!("developers.enclave.dev/{name}"), &ns, true),
                ("create", format!("{peer_pod}#exec"), &ns, false),
                ("create", format!("{peer_pod}#attach"), &ns, false),
                ("create", format!("{peer_pod}#portforward"), &ns, false),
                ("get", format!("{peer_pod}#log"), &ns, false),
                (
                    "create",
                    format!("pods/workspace-{name}-0#exec"),
                    &other_ns,
                    false,
                ),
                ("get", "pods".into(), &other_ns, false),
                ("list", "developers.enclave.dev".into(), &other_ns, false),
                ("get", "secrets".into(), &ns, false),
                ("list", "secrets".into(), &ns, false),
                (
                    "create",
                    "rolebindings.rbac.authorization.k8s.io".into(),
                    &ns,
                    false,
                ),
                (
                    "create",
                    "roles.rbac.authorization.k8s.io".into(),
                    &ns,
                    false,
                ),
                (
                    "patch",
                    format!("roles.rbac.authorization.k8s.io/workspace-access-{name}"),
                    &ns,
                    false,
                ),
                ("create", "developers.enclave.dev".into(), &ns, admin),
                (
                    "patch",
                    format!("developers.enclave.dev/{peer}"),
                    &ns,
                    admin,
                ),
                (
                    "delete",
                    format!("developers.enclave.dev/{peer}"),
                    &ns,
                    admin,
                ),
                ("create", "pods".into(), &ns, false),
            ];
            let user = format!("oidc:{company}-{name}");
            for (verb, resource, namespace, want) in checks {
                let got = crate::real_api::can_i(cp, &user, verb, &resource, Some(namespace));
                table.push(format!(
                    "{user:<30} {verb:<9} {resource:<46} {namespace:<22} {:<4} {}",
                    if want { "yes" } else { "no" },
                    if got { "yes" } else { "no" }
                ));
                if got != want {
                    wrong.push(format!(
                        "{user}: {verb} {resource} in {namespace}: want {want}"
                    ));
                }
            }
        }
    }
    println!("kubectl auth can-i --as=<user>\n{}", table.join("\n"));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Every secret below `root` in the harness's KV mount: path → (data, version).
async fn kv_tree(
    root_client: &vaultrs::client::VaultClient,
    root: &str,
) -> std::collections::BTreeMap<String, (serde_json::Value, u64)> {
    let mut out = std::collections::BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        for key in vaultrs::kv2::list(root_client, "secret", &path)
            .await
            .unwrap_or_default()
        {
            let child = format!("{path}/{}", key.trim_end_matches('/'));
            if key.ends_with('/') {
                pending.push(child);
            } else {
                let data: serde_json::Value = vaultrs::kv2::read(root_client, "secret", &child)
                    .await
                    .unwrap();
                let meta = vaultrs::kv2::read_metadata(root_client, "secret", &child)
                    .await
                    .unwrap();
                out.insert(child, (data, meta.current_version));
            }
        }
    }
    out
}

#[tokio::test]
async fn secrets_follow_the_deletion_policy_and_no_other_tenant_is_touched() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let (del, keep, other) = (
        crate::support::unique("kvd"),
        crate::support::unique("kvk"),
        crate::support::unique("kvo"),
    );
    // del deletes everything, keep keeps its secrets (default), other
    // stands by.
    for (company, secrets) in [
        (del.as_str(), json!({"deletionPolicy": "Delete"})),
        (keep.as_str(), json!({})),
        (other.as_str(), json!({"deletionPolicy": "Delete"})),
    ] {
        let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": company},
            "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                     "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"},
                     "secrets": secrets}});
        companies
            .patch(company, &PatchParams::apply("user"), &Patch::Apply(&co))
            .await
            .unwrap();
        let ns = format!("company-{company}");
        let devs: Api<enclave::crd::Developer> = Api::namespaced(client.clone(), &ns);
        let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
            "metadata": {"name": "pat", "namespace": ns}, "spec": {"subject": format!("{company}-pat")}});
        wait("the Developer applied", async || {
            devs.patch("pat", &PatchParams::apply("user"), &Patch::Apply(&dev))
                .await
                .ok()
        })
        .await;
        crate::harness::wait_or(
            "the Company Ready",
            async || {
                condition(&companies.get(company).await.unwrap(), "Ready")
                    .filter(|(status, _)| status == "True")
            },
            async || format!("{:#?}", companies.get(company).await.unwrap().status),
        )
        .await;
        developer_condition(&devs, "pat", "VaultReady").await;
        // What people put into Vault: shared and personal secrets.
        let personal = enclave::names::CompanyNames::new(company, None)
            .developer("pat", &format!("{company}-pat"))
            .kv_developer();
        for (path, value) in [
            (format!("companies/{company}/shared/dev/env"), "dev"),
            (format!("companies/{company}/shared/prod/env"), "prod"),
            (format!("{personal}/git"), "key"),
        ] {
            let data = std::collections::BTreeMap::from([("value", format!("{company}-{value}"))]);
            vaultrs::kv2::set(&h.vault.root, "secret", &path, &data)
                .await
                .unwrap();
        }
    }
    let status = companies.get(del.as_str()).await.unwrap().status.unwrap();
    assert_eq!(
        status.deletion_policies.unwrap().secrets,
        Some(enclave::crd::DeletionPolicy::Delete)
    );
    let keep_before = kv_tree(&h.vault.root, &format!("companies/{keep}")).await;
    let other_before = kv_tree(&h.vault.root, &format!("companies/{other}")).await;
    assert!(
        keep_before.contains_key(&format!("companies/{keep}/platform/database")),
        "{keep_before:#?}"
    );

    for company in [del.as_str(), keep.as_str()] {
        companies
            .delete(company, &DeleteParams::default())
            .await
            .unwrap();
    }
    for company in [del.as_str(), keep.as_str()] {
        wait_gone("the Company", &companies, company).await;
    }

    let deleted = kv_tree(&h.vault.root, &format!("companies/{del}")).await;
    assert!(
        deleted.is_empty(),
        "Delete: every Vault path of the tenant is gone: {deleted:#?}"
    );
    let kept = kv_tree(&h.vault.root, &format!("companies/{keep}")).await;
    let mut expected = keep_before.clone();
    // The database was deleted (its policy): its credentials open nothing.
    expected.remove(&format!("companies/{keep}/platform/database"));
    for path in ["shared/dev/env", "shared/prod/env"] {
        assert!(
            kept.contains_key(&format!("companies/{keep}/{path}")),
            "{kept:#?}"
        );
    }
    for (path, value) in &expected {
        if path.contains("/shared/") || path.contains("/developers/") {
            assert_eq!(kept.get(path), Some(value), "Retain keeps {path}");
        }
    }
    assert!(!kept.contains_key(&format!("companies/{keep}/platform/database")));
    assert_eq!(
        kv_tree(&h.vault.root, &format!("companies/{other}")).await,
        other_before,
        "another tenant's secrets are byte-identical"
    );
    println!(
        "kvdel after deletion: {} paths; kvkeep: {} of {} kept; kvother: {} unchanged",
        deleted.len(),
        kept.len(),
        keep_before.len(),
        other_before.len()
    );

    // A new Company of a name whose secrets were retained gets no Vault
    // access to them; one of a name that kept nothing starts afresh.
    for company in [del.as_str(), keep.as_str()] {
        let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": company},
            "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                     "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"}}});
        companies
            .patch(company, &PatchParams::apply("user"), &Patch::Apply(&co))
            .await
            .unwrap();
    }
    crate::harness::wait_or(
        "the fresh Company Ready",
        async || {
            condition(&companies.get(&del).await.unwrap(), "Ready")
                .filter(|(status, _)| status == "True")
        },
        async || format!("{:#?}", companies.get(&del).await.unwrap().status),
    )
    .await;
    let refused = wait("the retained name refused", async || {
        let c = companies.get(&keep).await.unwrap();
        c.status?.conditions.into_iter().find(|c| {
            c.type_ == "VaultReady" && c.status == "False" && c.message.contains("adopt-uid")
        })
    })
    .await;
    println!("{}", refused.message);
    let kept_after = kv_tree(&h.vault.root, &format!("companies/{keep}")).await;
    for (path, value) in &kept {
        if path.contains("/shared/") || path.contains("/developers/") {
            assert_eq!(kept_after.get(path), Some(value), "still retained: {path}");
        }
    }
}

#[tokio::test]
async fn admins_write_shared_secrets_as_themselves_never_from_their_pod() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let root = &h.vault.root;
    let people = [("ann", "Admin"), ("bo", "Developer")];
    let (a, b) = (
        crate::support::unique("jwta"),
        crate::support::unique("jwtb"),
    );
    for company in [a.as_str(), b.as_str()] {
        let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": company},
            "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                     "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"}}});
        companies
            .patch(company, &PatchParams::apply("user"), &Patch::Apply(&co))
            .await
            .unwrap();
        let ns = format!("company-{company}");
        let devs: Api<enclave::crd::Developer> = Api::namespaced(client.clone(), &ns);
        for (name, role) in people {
            let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"subject": format!("{company}-{name}"), "role": role}});
            wait("the Developer applied", async || {
                devs.patch(name, &PatchParams::apply("user"), &Patch::Apply(&dev))
                    .await
                    .ok()
            })
            .await;
            developer_condition(&devs, name, "VaultReady").await;
        }
        for scope in ["dev", "prod"] {
            let data = std::collections::BTreeMap::from([("value", format!("{company}-{scope}"))]);
            vaultrs::kv2::set(
                root,
                "secret",
                &format!("companies/{company}/shared/{scope}/env"),
                &data,
            )
            .await
            .unwrap();
        }
    }
    let addr = crate::support::service("ENCLAVE_TEST_VAULT_ADDR", "OpenBao");
    let person_login = async |subject: &str, company: &str, name: &str| {
        let role = enclave::names::CompanyNames::new(company, None)
            .developer(name, subject)
            .vault_person();
        let jwt = h
            .vault
            .people
            .token(subject, crate::harness::PERSON_AUDIENCE);
        let anonymous = crate::support::vault_client(&addr, "");
        vaultrs::auth::oidc::login(&anonymous, &h.vault.person_mount, &jwt, Some(role))
            .await
            .ok()
            .map(|auth| crate::support::vault_client(&addr, &auth.client_token))
    };
    let can_read = async |client: &vaultrs::client::VaultClient, path: &str| {
        vaultrs::kv2::read::<serde_json::Value>(client, "secret", path)
            .await
            .is_ok()
    };
    let can_write = async |client: &vaultrs::client::VaultClient, path: &str| {
        let data = std::collections::BTreeMap::from([("value", "written")]);
        vaultrs::kv2::set(client, "secret", path, &data)
            .await
            .is_ok()
    };

    let mut table = vec![format!(
        "{:<34} {:<6} {:<40} want got",
        "who", "action", "path"
    )];
    let mut wrong = Vec::new();
    let mut check = |who: &str, action: &str, path: &str, want: bool, got: bool| {
        table.push(format!(
            "{who:<34} {action:<6} {path:<40} {:<4} {}",
            if want { "yes" } else { "no" },
            if got { "yes" } else { "no" }
        ));
        if want != got {
            wrong.push(format!("{who} {action} {path}: want {want}"));
        }
    };
    // The admin's workspace (its ServiceAccount) is like everyone's.
    let ann_status =
        Api::<enclave::crd::Developer>::namespaced(client.clone(), &format!("company-{a}"))
            .get("ann")
            .await
            .unwrap()
            .status
            .unwrap();
    assert_eq!(
        ann_status.person_vault_role,
        Some(
            enclave::names::CompanyNames::new(&a, None)
                .developer("ann", &format!("{a}-ann"))
                .vault_person()
        ),
        "the admin's status names their person role"
    );
    let pod = crate::tenants::workspace_login(&h, &a, "ann", &format!("{a}-ann"))
        .await
        .expect("the admin's workspace logs in");
    for (action, path, want) in [
        ("read", format!("companies/{a}/shared/dev/env"), true),
        ("read", format!("companies/{a}/shared/prod/env"), false),
        ("write", format!("companies/{a}/shared/dev/env"), false),
        ("write", format!("companies/{a}/shared/prod/new"), false),
    ] {
        let got = match action {
            "read" => can_read(&pod, &path).await,
            _ => can_write(&pod, &path).await,
        };
        check("workspace of admin jwta/ann", action, &path, want, got);
    }
    // The admin person, with their own identity-provider token.
    let ann = person_login(&format!("{a}-ann"), &a, "ann")
        .await
        .expect("the admin person logs in with their sub");
    for (action, path, want) in [
        ("write", format!("companies/{a}/shared/prod/env"), true),
        ("write", format!("companies/{a}/shared/dev/new"), true),
        ("read", format!("companies/{a}/shared/prod/env"), true),
        ("write", format!("companies/{b}/shared/prod/env"), false),
        ("read", format!("companies/{b}/shared/dev/env"), false),
        ("read", format!("companies/{a}/platform/database"), false),
    ] {
        let got = match action {
            "read" => can_read(&ann, &path).await,
            _ => can_write(&ann, &path).await,
        };
        check("person jwta-ann (Admin)", action, &path, want, got);
    }
    // Someone else's token for ann's role; a Developer person; the other
    // company's admin for this company.
    check(
        "person jwta-bo with ann's role",
        "login",
        "-",
        false,
        person_login(&format!("{a}-bo"), &a, "ann").await.is_some(),
    );
    check(
        "person jwta-bo (Developer)",
        "login",
        "-",
        false,
        person_login(&format!("{a}-bo"), &a, "bo").await.is_some(),
    );
    let wrong_audience = {
        let role = enclave::names::CompanyNames::new(&a, None)
            .developer("ann", &format!("{a}-ann"))
            .vault_person();
        let jwt = h
            .vault
            .people
            .token(&format!("{a}-ann"), "another-audience");
        vaultrs::auth::oidc::login(
            &crate::support::vault_client(&addr, ""),
            &h.vault.person_mount,
            &jwt,
            Some(role),
        )
        .await
        .is_ok()
    };
    check(
        "jwta-ann, token for another audience",
        "login",
        "-",
        false,
        wrong_audience,
    );

    // Ann is no admin any more: her person role is gone.
    let devs: Api<enclave::crd::Developer> =
        Api::namespaced(client.clone(), &format!("company-{a}"));
    devs.patch(
        "ann",
        &PatchParams::apply("user"),
        &Patch::Apply(
            json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
            "metadata": {"name": "ann", "namespace": format!("company-{a}")},
            "spec": {"subject": format!("{a}-ann"), "role": "Developer"}}),
        ),
    )
    .await
    .unwrap();
    wait("ann's person role gone", async || {
        person_login(&format!("{a}-ann"), &a, "ann")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    // And Vault holds no role of that name any more.
    let gone = vaultrs::auth::oidc::role::read(
        root,
        &h.vault.person_mount,
        &enclave::names::CompanyNames::new(&a, None)
            .developer("ann", &format!("{a}-ann"))
            .vault_person(),
    )
    .await
    .is_err();
    check(
        "person role of jwta-ann after Admin -> Developer",
        "exists",
        "-",
        false,
        !gone,
    );
    println!("Vault access\n{}", table.join("\n"));
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn a_company_controller_runs_with_production_secrets_and_restarts_on_rotation() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let (name, other) = (crate::support::unique("cc"), crate::support::unique("cco"));
    let namespace = format!("company-{name}");
    let company = |controller: Option<&str>| {
        let mut spec = json!({"database": {"mode": "Shared", "deletionPolicy": "Delete"},
            "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"},
            "network": {"egress": [{"cidr": "10.40.0.0/16", "ports": [443]}]}});
        if let Some(image) = controller {
            spec["controller"] = json!({"image": image});
        }
        json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name}, "spec": spec})
    };
    companies
        .patch(
            &name,
            &PatchParams::apply("user"),
            &Patch::Apply(company(Some("registry.example.com/acme/jobs:1"))),
        )
        .await
        .unwrap();
    let bystander = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": other},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                 "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"}}});
    companies
        .patch(
            &other,
            &PatchParams::apply("user"),
            &Patch::Apply(&bystander),
        )
        .await
        .unwrap();
    for (company, scope) in [(&name, "prod"), (&name, "dev"), (&other, "prod")] {
        let data = std::collections::BTreeMap::from([("WAREHOUSE", format!("{company}-{scope}"))]);
        vaultrs::kv2::set(
            &h.vault.root,
            "secret",
            &format!("companies/{company}/shared/{scope}/env"),
            &data,
        )
        .await
        .unwrap();
    }
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &namespace);
    let version_of = async || {
        deployments
            .get_opt("company-controller")
            .await
            .unwrap()?
            .spec
            .template
            .metadata?
            .annotations?
            .get("enclave.dev/credentials-version")
            .cloned()
    };
    let credentials = async || -> std::collections::BTreeMap<String, String> {
        vaultrs::kv2::read(
            &h.vault.root,
            "secret",
            &format!("companies/{name}/platform/database"),
        )
        .await
        .unwrap()
    };
    // The controller's pod, started (by the kubelet stand-in) with the
    // credentials of `version`: what its init step wrote.
    let run_with = async |version: &str| {
        wait(
            &format!("the controller with credentials {version}"),
            async || {
                (version_of().await.as_deref() == Some(version)).then_some(())?;
                let password = credentials().await["password"].clone();
                let runs = h.kubelet.workspaces.lock().unwrap().clone();
                runs.into_iter().find_map(|(key, run)| {
                    let env = std::fs::read_to_string(run.secrets.join("database.env")).ok()?;
                    (key.starts_with(&format!("{namespace}/company-controller-"))
                        && run.ok
                        && env.contains(&format!("PGPASSWORD='{password}'\n")))
                    .then_some(run)
                })
            },
        )
        .await
    };
    let first = run_with("1").await;
    // Vault's private CA reached the init step (a ConfigMap the operator
    // wrote into the namespace, mounted; its path in the arguments).
    let ca = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &namespace)
        .get("enclave-vault-ca")
        .await
        .unwrap();
    assert_eq!(
        ca.data.unwrap()["ca.crt"],
        h.control_plane.ca_pem,
        "the CA bundle of vault.caFile"
    );
    let template = deployments
        .get("company-controller")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap();
    let init_args = template.init_containers.unwrap()[0].args.clone().unwrap();
    assert!(
        init_args.windows(2).any(|w| w[0] == "--vault-ca-file"),
        "{init_args:?}"
    );
    let env = std::fs::read_to_string(first.secrets.join("env")).unwrap();
    assert_eq!(
        env,
        format!("WAREHOUSE={name}-prod\n"),
        "production secrets, not dev"
    );
    let db_env = std::fs::read_to_string(first.secrets.join("database.env")).unwrap();
    assert!(db_env.starts_with("PGUSER='"), "{db_env}");
    // A shell can source it: the password comes back intact.
    let sourced = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". {}; printf %s \"$PGPASSWORD\"",
            first.secrets.join("database.env").display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sourced.stdout),
        credentials().await["password"],
        "sourced by a shell"
    );
    assert_eq!(first.uid, 65_532);

    // Admitted by the real PodSecurity admission (restricted, enforced on
    // the namespace): the ReplicaSet's pod exists.
    // Waited for, not listed once: a list at the moment the ReplicaSet
    // replaces a pod saw none (one CI run).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &namespace);
    wait("exactly one company-controller pod", async || {
        let listed = pods
            .list(
                &kube::api::ListParams::default()
                    .labels("enclave.dev/component=company-controller"),
            )
            .await
            .unwrap();
        (listed.items.len() == 1).then_some(())
    })
    .await;
    let ns = Api::<Namespace>::all(client.clone())
        .get(&namespace)
        .await
        .unwrap();
    assert_eq!(
        ns.labels()
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
    let policy = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(
        client.clone(),
        &namespace,
    )
    .get("allow-company-controller-egress")
    .await
    .unwrap();
    assert!(
        serde_json::to_string(&policy.spec)
            .unwrap()
            .contains("10.40.0.0/16")
    );

    // Its Vault role reads this company's secrets and nothing of another's.
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["vault"], "expirationSeconds": 600}}))
            .unwrap();
    let jwt =
        Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &namespace)
            .create_token_request("company-controller", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
            .unwrap();
    let addr = crate::support::service("ENCLAVE_TEST_VAULT_ADDR", "OpenBao");
    let role = enclave::names::CompanyNames::new(&name, None).vault_controller();
    let auth = vaultrs::auth::kubernetes::login(
        &crate::support::vault_client(&addr, ""),
        &h.vault.mount,
        &role,
        &jwt,
    )
    .await
    .unwrap();
    let controller = crate::support::vault_client(&addr, &auth.client_token);
    let read = async |path: String| {
        vaultrs::kv2::read::<serde_json::Value>(&controller, "secret", &path)
            .await
            .is_ok()
    };
    assert!(read(format!("companies/{name}/shared/prod/env")).await);
    assert!(read(format!("companies/{name}/platform/database")).await);
    assert!(!read(format!("companies/{other}/shared/prod/env")).await);
    assert!(!read(format!("companies/{other}/platform/database")).await);

    // A rotation: new credentials, and the controller restarts onto them.
    companies
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"enclave.dev/rotate-credentials": "now"}}}),
            ),
        )
        .await
        .unwrap();
    let second = run_with("2").await;
    assert_ne!(
        std::fs::read_to_string(second.secrets.join("database.env")).unwrap(),
        db_env,
        "the restarted controller has the new password"
    );

    // The field removed: the Deployment goes.
    companies
        .patch(
            &name,
            &PatchParams::apply("user"),
            &Patch::Apply(company(None)),
        )
        .await
        .unwrap();
    wait_gone("the company controller", &deployments, "company-controller").await;
}

/// Every occurrence of an Event Enclave published about `kind/name`:
/// (reason, note) → occurrences (a repeat joins its Event's series).
async fn events_about(
    client: &kube::Client,
    kind: &str,
    name: &str,
) -> std::collections::BTreeMap<(String, String), u64> {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    let mut out = std::collections::BTreeMap::new();
    for event in events
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
    {
        let about = event.regarding.as_ref();
        // The audit trail's Events; a failed reconcile's Warning is not a change.
        if event.reporting_controller.as_deref() != Some("enclave")
            || event
                .action
                .as_deref()
                .is_some_and(|a| a.starts_with(enclave::controllers::RECONCILE_FAILED))
            || about.and_then(|r| r.kind.as_deref()) != Some(kind)
            || about.and_then(|r| r.name.as_deref()) != Some(name)
        {
            continue;
        }
        let count = event
            .series
            .as_ref()
            .map_or(1, |s| u64::try_from(s.count).unwrap_or(1));
        let key = (
            event.reason.clone().unwrap_or_default(),
            event.note.clone().unwrap_or_default(),
        );
        *out.entry(key).or_insert(0) += count;
    }
    out
}

/// The audit lines about `kind/name` in `log`: (action, why) → lines.
fn audit_lines(
    log: &str,
    kind: &str,
    name: &str,
) -> std::collections::BTreeMap<(String, String), u64> {
    let mut out = std::collections::BTreeMap::new();
    let object = format!("object={kind}/{name} ");
    for line in log
        .lines()
        .filter(|l| l.contains("enclave::audit") && l.contains(&object))
    {
        let field = |key: &str| {
            let start = line.find(&format!("{key}="))? + key.len() + 1;
            let rest = &line[start..];
            Some(if let Some(quoted) = rest.strip_prefix('"') {
                quoted[..quoted.find('"')?].to_owned()
            } else {
                rest.split(' ').next()?.to_owned()
            })
        };
        let (Some(action), Some(why)) = (field("action"), field("why")) else {
            continue;
        };
        *out.entry((action, why)).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn every_external_change_is_one_event_on_its_object_and_one_audit_line() {
    let h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let name = crate::support::unique("ev");
    let namespace = format!("company-{name}");
    let co = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"},
                 "storage": {"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"},
                 "secrets": {"deletionPolicy": "Delete"}}});
    companies
        .patch(&name, &PatchParams::apply("user"), &Patch::Apply(&co))
        .await
        .unwrap();
    let devs: Api<enclave::crd::Developer> = Api::namespaced(client.clone(), &namespace);
    let dev = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
        "metadata": {"name": "pat", "namespace": namespace}, "spec": {"subject": format!("{name}-pat")}});
    wait("the Developer applied", async || {
        devs.patch("pat", &PatchParams::apply("user"), &Patch::Apply(&dev))
            .await
            .ok()
    })
    .await;
    developer_condition(&devs, "pat", "Ready").await;
    let personal = enclave::names::CompanyNames::new(&name, None)
        .developer("pat", &format!("{name}-pat"))
        .kv_developer();
    let data = std::collections::BTreeMap::from([("value", "x")]);
    vaultrs::kv2::set(&h.vault.root, "secret", &format!("{personal}/env"), &data)
        .await
        .unwrap();
    // Three resyncs of the converged tenant (5 s each) add nothing.
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    devs.delete("pat", &DeleteParams::default()).await.unwrap();
    wait_gone("the Developer", &devs, "pat").await;
    // Its Events live in the company namespace, which goes with the Company.
    let developer_events = events_about(&client, "Developer", "pat").await;
    companies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company", &companies, &name).await;
    let company_events = events_about(&client, "Company", &name).await;
    let log = std::fs::read_to_string(h.operator_log("replica-a")).unwrap();

    let mut table = vec![format!(
        "{:<10} {:<32} {:>6} {:>6}  note",
        "object", "reason", "events", "audit"
    )];
    let mut wrong = Vec::new();
    for (kind, object, events) in [
        ("Developer", "pat", &developer_events),
        ("Company", name.as_str(), &company_events),
    ] {
        let audit = audit_lines(&log, kind, object);
        let keys: std::collections::BTreeSet<_> = events.keys().chain(audit.keys()).collect();
        for key in keys {
            let (e, a) = (
                events.get(key).copied().unwrap_or(0),
                audit.get(key).copied().unwrap_or(0),
            );
            table.push(format!("{kind:<10} {:<32} {e:>6} {a:>6}  {}", key.0, key.1));
            if e != 1 || a != 1 {
                wrong.push(format!(
                    "{kind} {} ({}): {e} Events, {a} audit lines",
                    key.0, key.1
                ));
            }
        }
    }
    println!("{}", table.join("\n"));
    let reasons: std::collections::BTreeSet<(&str, &str)> = developer_events
        .keys()
        .map(|k| ("Developer", k.0.as_str()))
        .chain(company_events.keys().map(|k| ("Company", k.0.as_str())))
        .collect();
    for expected in [
        ("Developer", "VaultPoliciesWritten"),
        ("Developer", "StoragePrepared"),
        ("Developer", "StorageDeletionPolicyApplied"),
        ("Developer", "SecretsDeleted"),
        ("Developer", "VaultPoliciesDeleted"),
        ("Company", "VaultPoliciesWritten"),
        ("Company", "DatabaseEnsured"),
        ("Company", "DatabaseDeletionPolicyApplied"),
        ("Company", "VaultPoliciesDeleted"),
        ("Company", "NamespaceDeleted"),
    ] {
        assert!(
            reasons.contains(&expected),
            "{expected:?} missing: {reasons:?}"
        );
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
