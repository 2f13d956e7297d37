//! The real `enclave run` under crashes, API faults and a second replica.

use std::{collections::BTreeMap, time::Duration};

use crate::kube_proxy::Fault;
use enclave::crd::{Company, Developer};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, ResourceQuota,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

use crate::harness::{Harness, free_port, setup, wait, wait_gone, wait_or, wait_ready};

/// A small tenant: `flavour` 0 is Shared database + FSx, 1 is a
/// Dedicated RDS instance + per-developer volumes; both deleted with
/// policy Delete so nothing may be left.
fn tenant(name: &str, flavour: usize, cpu: &str) -> (Value, Vec<Value>) {
    let (database, storage) = if flavour.is_multiple_of(2) {
        (
            json!({"mode": "Shared", "deletionPolicy": "Delete"}),
            json!({"fsx": {"type": "OpenZfs"}, "deletionPolicy": "Delete"}),
        )
    } else {
        (
            json!({"mode": "Dedicated", "instanceClass": "db.t4g.micro", "deletionPolicy": "Delete"}),
            json!({"volume": {"storageClassName": "gp3"}, "deletionPolicy": "Delete"}),
        )
    };
    let company = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
        "spec": {"quota": {"cpu": cpu}, "database": database, "storage": storage}});
    let developers = ["dev-a", "dev-b"]
        .iter()
        .map(|dev| {
            json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
                "metadata": {"name": dev, "namespace": format!("company-{name}")},
                "spec": {"subject": format!("{name}-{dev}")}})
        })
        .collect();
    (company, developers)
}

async fn apply_tenant(client: &Client, company: &Value, developers: &[Value]) {
    let name = company["metadata"]["name"].as_str().unwrap();
    Api::<Company>::all(client.clone())
        .patch(name, &PatchParams::apply("user"), &Patch::Apply(company))
        .await
        .unwrap();
    for dev in developers {
        let ns = dev["metadata"]["namespace"].as_str().unwrap();
        let dev_name = dev["metadata"]["name"].as_str().unwrap();
        let api = Api::<Developer>::namespaced(client.clone(), ns);
        wait("the Developer applied", async || {
            api.patch(dev_name, &PatchParams::apply("user"), &Patch::Apply(dev))
                .await
                .ok()
        })
        .await;
    }
}

/// What exists anywhere for company `name`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Footprint {
    rds_instances: usize,
    file_systems: usize,
    databases: usize,
    roles: usize,
    vault_policies: usize,
    vault_roles: usize,
    namespace: bool,
    volumes: usize,
}

/// The PersistentVolumes of tenant `name`: named for it, or bound to a
/// claim in its namespace.
async fn tenant_volumes(h: &Harness, name: &str) -> Vec<PersistentVolume> {
    let namespace = format!("company-{name}");
    Api::<PersistentVolume>::all(h.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|v| {
            v.name_any().contains(name)
                || v.spec
                    .as_ref()
                    .and_then(|s| s.claim_ref.as_ref())
                    .and_then(|c| c.namespace.as_deref())
                    == Some(namespace.as_str())
        })
        .collect()
}

/// Waits until no volume of tenant `name` is going: being deleted (it goes
/// once the volume controller has released it from its claim and the
/// volume-protection controller sees that, which may be after the Company:
/// three controllers, one of which resyncs every 15 s), or released with
/// reclaim policy Delete (its provisioner deletes it next). 90 s at most
/// while a going volume's claim is still there and not being deleted (the
/// operator's part: it deletes the claims); 240 s while only the
/// controller-manager's part is left (claims gone or going: under load its
/// chain of pod, claim and volume protection takes minutes). A volume
/// nobody deleted is still counted as left behind.
async fn volumes_deleted(h: &Harness, name: &str) {
    let going = |v: &PersistentVolume| {
        let released = v.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        let reclaimed = v
            .spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
            == Some("Delete");
        v.metadata.deletion_timestamp.is_some() || (released && reclaimed)
    };
    let started = std::time::Instant::now();
    loop {
        let volumes: Vec<_> = tenant_volumes(h, name)
            .await
            .into_iter()
            .filter(going)
            .collect();
        if volumes.is_empty() {
            return;
        }
        // Within 90 s both limits agree; past them, whose part is left
        // decides (each claim read only then).
        if started.elapsed() > Duration::from_secs(90) {
            let claims_left = live_claims(h, &volumes).await;
            let limit = Duration::from_secs(if claims_left.is_empty() { 240 } else { 90 });
            if started.elapsed() > limit {
                eprintln!(
                    "{name}: after {:?}, volumes still going: {:?}; their claims not being deleted: {claims_left:?}",
                    started.elapsed(),
                    volumes
                        .iter()
                        .map(ResourceExt::name_any)
                        .collect::<Vec<_>>()
                );
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The claims of `volumes` that are still there and not being deleted
/// (`namespace/name`): the operator's part of their deletion is not done.
async fn live_claims(h: &Harness, volumes: &[PersistentVolume]) -> Vec<String> {
    let mut live = Vec::new();
    for v in volumes {
        let Some(claim) = v.spec.as_ref().and_then(|s| s.claim_ref.as_ref()) else {
            continue;
        };
        let (Some(namespace), Some(claim_name)) = (&claim.namespace, &claim.name) else {
            continue;
        };
        let there = Api::<PersistentVolumeClaim>::namespaced(h.client.clone(), namespace)
            .get_opt(claim_name)
            .await
            .unwrap()
            .is_some_and(|c| {
                c.metadata.uid == claim.uid && c.metadata.deletion_timestamp.is_none()
            });
        if there {
            live.push(format!("{namespace}/{claim_name}"));
        }
    }
    live
}

async fn footprint(h: &Harness, name: &str) -> Footprint {
    let (rds, fsx) = crate::support::aws_clients();
    let tagged = |tags: Vec<(Option<String>, Option<String>)>| {
        tags.iter()
            .any(|(k, v)| k.as_deref() == Some("enclave.dev/company") && v.as_deref() == Some(name))
    };
    // By identifier (unique by construction): moto pages long lists.
    let rds_instances = rds
        .describe_db_instances()
        .db_instance_identifier(format!("enclave-{name}"))
        .send()
        .await
        .map_or(0, |r| r.db_instances().len());
    let mut file_systems = 0;
    let mut pages = fsx.describe_file_systems().into_paginator().send();
    while let Some(page) = pages.next().await {
        file_systems += page
            .unwrap()
            .file_systems()
            .iter()
            .filter(|f| {
                tagged(
                    f.tags()
                        .iter()
                        .map(|t| (t.key().map(str::to_owned), t.value().map(str::to_owned)))
                        .collect(),
                )
            })
            .count();
    }
    let conninfo = crate::support::service("ENCLAVE_TEST_POSTGRES", "PostgreSQL");
    let (db, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let pattern = format!("%{}%", name.replace('-', "_"));
    let count = |sql: &'static str| {
        let db = &db;
        let pattern = pattern.clone();
        async move {
            db.query_one(sql, &[&pattern])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let databases =
        usize::try_from(count("SELECT count(*) FROM pg_database WHERE datname LIKE $1").await)
            .unwrap();
    let roles = usize::try_from(count("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1").await)
        .unwrap();
    let vault_policies = vaultrs::sys::policy::list(&h.vault.root)
        .await
        .unwrap()
        .policies
        .iter()
        .filter(|p| p.starts_with(&format!("enclave-{name}--")))
        .count();
    let vault_roles = vaultrs::auth::kubernetes::role::list(&h.vault.root, &h.vault.mount)
        .await
        .map(|r| r.keys)
        .unwrap_or_default()
        .iter()
        .filter(|r| r.starts_with(&format!("enclave-{name}--")))
        .count();
    let namespace = Api::<Namespace>::all(h.client.clone())
        .get_opt(&format!("company-{name}"))
        .await
        .unwrap()
        .is_some();
    let volumes = tenant_volumes(h, name).await.len();
    Footprint {
        rds_instances,
        file_systems,
        databases,
        roles,
        vault_policies,
        vault_roles,
        namespace,
        volumes,
    }
}

/// Whether the database credentials in Vault log in (Shared mode: a real
/// PostgreSQL login; Dedicated: moto runs no database, so the check is that
/// the instance's master user is the stored one).
async fn credentials_work(h: &Harness, name: &str) -> bool {
    let company = Api::<Company>::all(h.client.clone())
        .get(name)
        .await
        .unwrap();
    let db = company.status.unwrap().database.unwrap();
    let creds: BTreeMap<String, String> = vaultrs::kv2::read(
        &h.vault.root,
        "secret",
        &format!("companies/{name}/platform/database"),
    )
    .await
    .unwrap();
    if db.identifier.as_deref() == Some(&format!("enclave-{name}")) {
        let (rds, _) = crate::support::aws_clients();
        let instance = rds
            .describe_db_instances()
            .db_instance_identifier(format!("enclave-{name}"))
            .send()
            .await
            .unwrap();
        return instance.db_instances()[0].master_username() == Some(creds["username"].as_str());
    }
    let mut pg = tokio_postgres::Config::new();
    pg.host(db.endpoint.as_ref().unwrap())
        .port(u16::try_from(db.port.unwrap()).unwrap())
        .user(&creds["username"])
        .password(&creds["password"])
        .dbname(db.name.as_ref().unwrap());
    pg.connect(tokio_postgres::NoTls).await.is_ok()
}

#[tokio::test]
async fn crash_campaign_converges_with_no_orphans_duplicates_or_broken_credentials() {
    crate::harness::require_root();
    let runs: usize = std::env::var("ENCLAVE_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut h = setup().await;
    let client = h.client.clone();
    let companies: Api<Company> = Api::all(client.clone());
    let (mut orphans, mut duplicates, mut broken, mut kills) = (0, 0, 0, 0);
    for run in 0..runs {
        let name = crate::support::unique(&format!("k{run}x"));
        let (company, developers) = tenant(&name, run, "8");
        apply_tenant(&client, &company, &developers).await;
        // Crash at a random point of the apply, then once more, perhaps.
        for _ in 0..=(run % 2) {
            tokio::time::sleep(Duration::from_millis(rand_ms(50, 1500))).await;
            h.kill_operator();
            kills += 1;
            h.start_operator();
        }
        wait_ready(&client, &name, &["dev-a", "dev-b"]).await;
        let seen = footprint(&h, &name).await;
        if seen.rds_instances > 1 || seen.file_systems > 1 || seen.databases > 1 {
            duplicates += 1;
            eprintln!("run {run}: duplicates {seen:?}");
        }
        // The footprint check sees the tenant while it exists (so the
        // orphan check after deletion is not vacuous).
        let expected = if run % 2 == 0 { (0, 1, 1) } else { (1, 0, 0) };
        assert_eq!(
            (seen.rds_instances, seen.file_systems, seen.databases),
            expected,
            "run {run}: {seen:?}"
        );
        assert!(
            seen.namespace && seen.vault_policies == 3 && seen.vault_roles == 3,
            "run {run}: {seen:?}"
        );
        if !credentials_work(&h, &name).await {
            broken += 1;
            eprintln!("run {run}: the stored database credentials do not log in");
        }
        // Crash at a random point of the deletion.
        companies
            .delete(&name, &DeleteParams::default())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rand_ms(20, 800))).await;
        h.kill_operator();
        kills += 1;
        h.start_operator();
        wait_gone(&format!("Company {name}"), &companies, &name).await;
        volumes_deleted(&h, &name).await;
        let left = footprint(&h, &name).await;
        if left != Footprint::default() {
            orphans += 1;
            eprintln!("run {run}: left behind {left:?}");
            for v in tenant_volumes(&h, &name).await {
                eprintln!(
                    "run {run}: volume {} created at {:?} phase {:?} deleted at {:?} finalizers {:?} claim {:?}",
                    v.name_any(),
                    v.metadata.creation_timestamp,
                    v.status.as_ref().and_then(|s| s.phase.as_deref()),
                    v.metadata.deletion_timestamp,
                    v.metadata.finalizers,
                    v.spec
                        .as_ref()
                        .and_then(|s| s.claim_ref.as_ref())
                        .map(|c| (&c.namespace, &c.name)),
                );
            }
        }
    }
    println!(
        "crash campaign: {runs} runs, {kills} kills (SIGKILL during apply and during delete): {orphans} runs with orphans, {duplicates} with duplicates, {broken} with credentials that do not work"
    );
    assert_eq!((orphans, duplicates, broken), (0, 0, 0));
}

fn rand_ms(low: u64, high: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    low + u64::from(nanos) % (high - low)
}

/// Writes (not reads, not Lease renewals) each replica sent, by replica
/// (each talks through a proxy of its own).
fn writes_by_client(h: &Harness) -> BTreeMap<String, u64> {
    let writes = |counts: BTreeMap<String, u64>| -> u64 {
        counts
            .iter()
            .filter(|(key, _)| {
                let (verb, resource) = key.split_once(' ').unwrap();
                matches!(verb, "create" | "update" | "patch" | "delete") && resource != "leases"
            })
            .map(|(_, n)| n)
            .sum()
    };
    let mut out = BTreeMap::from([("replica-a".to_owned(), writes(h.kube_proxy.counts()))]);
    for (identity, proxy) in h.replica_proxies.lock().unwrap().iter() {
        out.insert(identity.clone(), writes(proxy.counts()));
    }
    out
}

#[tokio::test]
async fn two_replicas_only_the_leader_writes_and_a_standby_takes_over() {
    crate::harness::require_root();
    let mut h = setup().await;
    let client = h.client.clone();
    let port_b = free_port();
    let replica_b = h.spawn_operator("replica-b", port_b);
    let name = crate::support::unique("two");
    let (company, developers) = tenant(&name, 1, "8");
    apply_tenant(&client, &company, &developers).await;
    wait_ready(&client, &name, &["dev-a", "dev-b"]).await;
    let writes = writes_by_client(&h);
    println!("writes by client with two replicas: {writes:?}");
    let a = writes.get("replica-a").copied().unwrap_or(0);
    let b = writes.get("replica-b").copied().unwrap_or(0);
    assert!((a > 0) != (b > 0), "exactly one replica writes: {writes:?}");
    let leader_is_a = a > 0;
    // The other one reports itself as standing by.
    let standby_port = if leader_is_a { port_b } else { h.http_port };
    let (_, metrics) = crate::harness::http_get(standby_port, "/metrics").unwrap();
    assert!(metrics.contains("enclave_leader 0"), "{metrics}");

    // The leader dies (SIGKILL: it cannot release the Lease); the standby
    // takes over once the Lease expires and follows a change.
    let _replica_b = if leader_is_a {
        h.kill_operator();
        Some(replica_b)
    } else {
        drop(replica_b);
        None
    };
    let (company, _) = tenant(&name, 1, "2");
    Api::<Company>::all(client.clone())
        .patch(&name, &PatchParams::apply("user"), &Patch::Apply(&company))
        .await
        .unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &format!("company-{name}"));
    wait("the standby to follow the change", async || {
        let q = quotas.get("company-quota").await.unwrap();
        (q.spec.unwrap().hard.unwrap()["requests.cpu"].0 == "2").then_some(())
    })
    .await;
    let after = writes_by_client(&h);
    let new_leader = if leader_is_a {
        "replica-b"
    } else {
        "replica-a"
    };
    assert!(after.get(new_leader).copied().unwrap_or(0) > 0, "{after:?}");
    println!("writes by client after the leader died: {after:?}");
}

#[tokio::test]
async fn api_faults_during_a_full_apply_converge_and_show_in_metrics() {
    crate::harness::require_root();
    let h = setup().await;
    let store = &h.kube_proxy;
    let fault = |verb: &str, resource: &str, status: u16, remaining: u32| Fault {
        verb: Some(verb.into()),
        resource: Some(resource.into()),
        remaining,
        status,
        retry_after: (status == 429).then_some(1),
    };
    // Each failure of one object doubles its next delay (0.5 s, 1 s, …),
    // so the faults stay few enough to converge well within the wait.
    store.inject(fault("patch", "statefulsets", 409, 2));
    store.inject(fault("patch", "namespaces", 500, 1));
    store.inject(fault("patch", "serviceaccounts", 500, 2));
    store.inject(fault("patch", "resourcequotas", 429, 1));
    store.inject(fault("get", "networkpolicies", 500, 1));
    let name = crate::support::unique("flt");
    let (company, developers) = tenant(&name, 1, "8");
    apply_tenant(&h.client, &company, &developers).await;
    // After the user's own writes: the operator's status writes fail too.
    store.inject(fault("patch", "companies/status", 409, 1));
    store.inject(fault("patch", "developers/status", 500, 2));
    // A watch told its resource version is too old (410 Gone) re-lists.
    store.inject(fault("watch", "statefulsets", 410, 1));
    // Watches cut and lists stale for a moment, mid-apply.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.cut_watches();
    store.freeze_lists();
    tokio::time::sleep(Duration::from_millis(500)).await;
    store.thaw();
    store.cut_watches();
    wait_ready(&h.client, &name, &["dev-a", "dev-b"]).await;
    let (_, metrics) = h.http_get("/metrics").unwrap();
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("enclave_reconcile_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    println!(
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("enclave_reconcile_failures_total{")
                || l.starts_with("enclave_reconciles_total{"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        failures > 0,
        "the injected faults are visible in /metrics:\n{metrics}"
    );
    let left = footprint(&h, &name).await;
    assert_eq!(left.rds_instances, 1, "one instance despite the retries");
}

#[tokio::test]
async fn the_operator_keeps_a_short_lived_vault_token_alive() {
    let mut h = setup().await;
    // A renewable token that expires 4 s after its last renewal.
    let mut opts = vaultrs::api::token::requests::CreateTokenRequest::builder();
    opts.ttl("4s").explicit_max_ttl("10m").renewable(true);
    let token = vaultrs::token::new(&h.vault.root, Some(&mut opts))
        .await
        .unwrap()
        .client_token;
    h.vault_token = Some(token);
    h.start_operator();
    // Well past the first TTL, a new tenant still reaches Vault.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let name = crate::support::unique("ttl");
    let company = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"}, "storage": {"volume": {}, "deletionPolicy": "Delete"}}});
    let companies: Api<Company> = Api::all(h.client.clone());
    companies
        .patch(&name, &PatchParams::apply("user"), &Patch::Apply(&company))
        .await
        .unwrap();
    wait_or(
        "VaultReady after the first token TTL",
        async || {
            let c = companies.get(&name).await.ok()?;
            c.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "VaultReady" && c.status == "True")
                .then_some(())
        },
        async || {
            format!(
                "{:#?}",
                companies.get(&name).await.ok().and_then(|c| c.status)
            )
        },
    )
    .await;
    companies
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone("the Company", &companies, &name).await;
}

/// Whether `conditions` say deletion is held by deletion protection.
fn deletion_protected(conditions: &[enclave::crd::Condition]) -> bool {
    conditions.iter().any(|c| c.reason == "DeletionProtected")
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn deleting_and_reinstalling_the_crds_with_deletion_protection_loses_nothing() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    crate::harness::require_root();
    let h = setup().await;
    let client = h.client.clone();
    let name = crate::support::unique("crd");
    let namespace = format!("company-{name}");
    let company = |annotations: Value| {
        json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name, "annotations": annotations},
            "spec": {"deletionProtection": true, "database": {"mode": "Shared"}, "storage": {"fsx": {"type": "OpenZfs"}}}})
    };
    let developer = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
        "metadata": {"name": "kim", "namespace": namespace}, "spec": {"subject": "person-kim"}});
    let companies: Api<Company> = Api::all(client.clone());
    let devs: Api<Developer> = Api::namespaced(client.clone(), &namespace);
    let apply = async |company: &Value| {
        companies
            .patch(&name, &PatchParams::apply("user"), &Patch::Apply(company))
            .await
            .unwrap();
        wait("the Developer applied", async || {
            devs.patch(
                "kim",
                &PatchParams::apply("user"),
                &Patch::Apply(&developer),
            )
            .await
            .ok()
        })
        .await;
    };
    apply(&company(json!({}))).await;
    wait_ready(&client, &name, &["kim"]).await;
    let before = companies.get(&name).await.unwrap();
    let old_uid = before.uid().unwrap();
    let status = before.status.clone().unwrap();
    let kim = devs.get("kim").await.unwrap().status.unwrap();
    let notes = h
        .kubelet
        .root_of(&format!("enclave-{name}--root"))
        .join(kim.storage_path.as_ref().unwrap().trim_start_matches('/'))
        .join("notes.txt");
    std::fs::write(&notes, "kim's work").unwrap();
    let footprint_before = footprint(&h, &name).await;

    // The CRDs are deleted (a chart uninstalled, say): the tenant is held.
    // The Developers' CRD first, alone: its Developers are deleted while
    // their Company is not (yet) — an uninstall, not a person leaving.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete("developers.enclave.dev", &DeleteParams::default())
        .await
        .unwrap();
    wait("the Developer held while only its CRD goes", async || {
        deletion_protected(&devs.get("kim").await.ok()?.status?.conditions).then_some(())
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&notes).unwrap(),
        "kim's work",
        "kim's directory was not archived"
    );
    crds.delete("companies.enclave.dev", &DeleteParams::default())
        .await
        .unwrap();
    wait("the Company held by its protection", async || {
        deletion_protected(&companies.get(&name).await.ok()?.status?.conditions).then_some(())
    })
    .await;
    wait("the Developer held with it", async || {
        deletion_protected(&devs.get("kim").await.ok()?.status?.conditions).then_some(())
    })
    .await;
    assert_eq!(
        footprint(&h, &name).await,
        footprint_before,
        "nothing was cleaned up"
    );

    // To finish the uninstall an administrator drops the finalizers: the
    // objects go without any cleanup, and the tenant's data stays.
    for api_name in ["kim"] {
        devs.patch(
            api_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    }
    companies
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait("the CRDs gone", async || {
        crds.get_opt("companies.enclave.dev")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let kept = footprint(&h, &name).await;
    assert!(
        kept.namespace && kept.file_systems == 1 && kept.databases == 1,
        "{kept:?}"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "kim's work");

    // Re-installed and re-applied, the new Company (another uid) takes
    // nothing over silently: the earlier Company's namespace (its uid in
    // the annotation) is a conflict that names the way to adopt it...
    h.control_plane.install_crds().await;
    apply(&company(json!({}))).await;
    let conflicted = wait("the conflict reported", async || {
        let c = companies.get(&name).await.ok()?;
        let conditions = c.status?.conditions;
        conditions
            .iter()
            .find(|c| c.type_ == "NamespaceReady" && c.reason == "Conflict")
            .map(|c| c.message.clone())
    })
    .await;
    assert!(
        conflicted.contains(&format!("enclave.dev/adopt-uid={old_uid}")),
        "{conflicted}"
    );
    println!("{conflicted:#?}");
    assert_eq!(
        footprint(&h, &name).await.file_systems,
        1,
        "no second file system"
    );
    // ...until an administrator names the Company whose resources it adopts.
    apply(&company(json!({"enclave.dev/adopt-uid": old_uid}))).await;
    wait_ready(&client, &name, &["kim"]).await;
    let after = companies.get(&name).await.unwrap().status.unwrap();
    assert_eq!(
        after.storage.unwrap().file_system_id,
        status.storage.unwrap().file_system_id
    );
    assert_eq!(
        after.database.unwrap().credentials_version,
        Some(1),
        "the same credentials"
    );
    let kim_after = devs.get("kim").await.unwrap().status.unwrap();
    assert_eq!(
        (kim_after.uid, &kim_after.storage_path),
        (kim.uid, &kim.storage_path),
        "kim gets her uid and directory back"
    );
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "kim's work");
    assert!(credentials_work(&h, &name).await);
    assert_eq!(
        footprint(&h, &name).await,
        footprint_before,
        "one of everything, as before"
    );
}

#[tokio::test]
async fn without_vault_the_operator_is_alive_but_not_ready_and_says_why() {
    let h = setup().await;
    let text = std::fs::read_to_string(&h.vault.config).unwrap();
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let address = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("address: "))
        .unwrap()
        .to_owned();
    let config = h.vault.config.with_extension("no-vault.yaml");
    std::fs::write(&config, text.replace(&address, &unreachable)).unwrap();
    let port = free_port();
    let _operator = h.spawn_operator_with("replica-c", port, &config);
    let (code, body) = wait("the readiness probe to answer", async || {
        crate::harness::http_get(port, "/readyz")
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("Vault"), "{body}");
    assert_eq!(crate::harness::http_get(port, "/healthz").unwrap().0, 200);
}

#[tokio::test]
async fn a_brief_api_error_while_setting_up_leader_election_is_retried() {
    let mut h = setup().await;
    h.kill_operator();
    let count = |h: &Harness, what: &str| h.kube_proxy.counts().get(what).copied().unwrap_or(0);
    let (reads, renewals) = (count(&h, "get leases"), count(&h, "patch leases"));
    // The next two reads of the Lease fail, as from an API server that is
    // restarting: the operator retries instead of exiting.
    h.kube_proxy.inject(Fault {
        verb: Some("get".into()),
        resource: Some("leases".into()),
        remaining: 2,
        status: 500,
        retry_after: None,
    });
    h.start_operator();
    wait(
        "the operator to take the Lease after retrying",
        async || (count(&h, "patch leases") > renewals).then_some(()),
    )
    .await;
    assert!(
        count(&h, "get leases") >= reads + 3,
        "two failed reads, then a good one: {:?}",
        h.kube_proxy.counts()
    );
    wait("the operator to lead", async || {
        let (_, metrics) = h.http_get("/metrics")?;
        metrics.contains("enclave_leader 1").then_some(())
    })
    .await;
}

/// The AWS service an action of the recording proxy belongs to.
fn aws_service(action: &str) -> &'static str {
    // GetResources finds file systems by tag and goes through the FSx gate.
    if action.contains("FileSystem") || action.contains("Backup") || action == "GetResources" {
        "fsx"
    } else {
        "rds"
    }
}

/// The most calls of each AWS service that reached the proxy within
/// `window`.
fn busiest(seen: &[crate::aws_proxy::Seen], window: Duration) -> BTreeMap<&'static str, usize> {
    let mut most = BTreeMap::new();
    for (i, first) in seen.iter().enumerate() {
        let service = aws_service(&first.action);
        let within = seen[i..]
            .iter()
            .take_while(|s| s.at.duration_since(first.at) < window)
            .filter(|s| aws_service(&s.action) == service)
            .count();
        let entry = most.entry(service).or_insert(0);
        *entry = (*entry).max(within);
    }
    most
}

#[tokio::test]
async fn deleting_thirty_companies_with_rds_and_fsx_stays_within_the_aws_call_budget() {
    const COMPANIES: usize = 30;
    const BUDGET: usize = 4;
    let mut h = setup().await;
    h.kill_operator();
    let text = std::fs::read_to_string(&h.vault.config).unwrap();
    assert!(text.contains("maxCallsPerSecond: 5"), "{text}");
    let config = h.vault.config.with_extension("budget.yaml");
    std::fs::write(
        &config,
        text.replace("resyncSeconds: 5", "resyncSeconds: 60")
            .replace(
                "maxCallsPerSecond: 5",
                &format!("maxCallsPerSecond: {BUDGET}"),
            ),
    )
    .unwrap();
    let _operator = h.spawn_operator_with("replica-a", h.http_port, &config);

    let companies = Api::<Company>::all(h.client.clone());
    let names: Vec<String> = (0..COMPANIES)
        .map(|i| crate::support::unique(&format!("b{i}")))
        .collect();
    let onboarding = std::time::Instant::now();
    for name in &names {
        let company = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": name},
            "spec": {"database": {"mode": "Dedicated", "instanceClass": "db.t4g.micro", "deletionPolicy": "Delete"},
                     "storage": {"fsx": {"type": "OpenZfs"}, "deletionPolicy": "Delete"}}});
        companies
            .patch(name, &PatchParams::apply("user"), &Patch::Apply(&company))
            .await
            .unwrap();
    }
    // A company that needs no AWS call, created behind the thirty: the
    // workers are not held by the budget, so it need not wait for them.
    let quick = crate::support::unique("quick");
    let company = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": quick},
        "spec": {"database": {"mode": "Shared", "deletionPolicy": "Delete"}, "storage": {"volume": {}}}});
    companies
        .patch(&quick, &PatchParams::apply("user"), &Patch::Apply(&company))
        .await
        .unwrap();
    let mut quick_ready = None;
    let deadline = |minutes| std::time::Instant::now() + Duration::from_mins(minutes);
    let until = deadline(6);
    loop {
        let list = companies.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|c| names.contains(&c.name_any()))
            .filter(|c| {
                ["DatabaseReady", "StorageReady"]
                    .iter()
                    .all(|t| crate::harness::condition(c, t).is_some_and(|(s, _)| s == "True"))
            })
            .count();
        if quick_ready.is_none()
            && list.items.iter().any(|c| {
                c.name_any() == quick
                    && crate::harness::condition(c, "Ready").is_some_and(|(s, _)| s == "True")
            })
        {
            quick_ready = Some((onboarding.elapsed(), ready));
        }
        if ready == COMPANIES {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{ready} of {COMPANIES} companies have their database and file system"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let created = h.aws.seen().len();
    let onboarded = onboarding.elapsed();
    // Thirty companies at once overrun the budget: calls that could not
    // start at once were deferred (the reconcile requeued for its turn)
    // instead of holding a worker. The counters reach /metrics every 5 s.
    let deferred = wait("deferred AWS calls in /metrics", async || {
        let (_, metrics) = h.http_get("/metrics")?;
        let total: u64 = metrics
            .lines()
            .filter_map(|l| l.strip_prefix("enclave_aws_deferred_total{service="))
            .filter_map(|l| l.split_once("} ")?.1.trim().parse::<u64>().ok())
            .sum();
        (total > 0).then_some(total)
    })
    .await;
    println!(
        "{COMPANIES} companies got their database and file system in {onboarded:?}; {deferred} AWS calls deferred; a company without AWS resources created after them was Ready after {quick_ready:?} (time, companies done by then)"
    );
    let Some((_, done_before_quick)) = quick_ready else {
        panic!("{quick} was not Ready while the others onboarded");
    };
    // Measured: Ready after 4.4 s with none of the thirty done, where a
    // gate that held workers while they waited made it wait 18 s, for half.
    assert!(
        done_before_quick < COMPANIES / 3,
        "{quick} waited behind the AWS-bound companies: {quick_ready:?}"
    );
    companies
        .delete(&quick, &DeleteParams::default())
        .await
        .unwrap();

    let started = std::time::Instant::now();
    for name in &names {
        companies
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    let until = deadline(6);
    loop {
        let list = companies.list(&ListParams::default()).await.unwrap();
        let left = list
            .items
            .iter()
            .filter(|c| names.contains(&c.name_any()))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "{left} of {COMPANIES} companies still being deleted"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = started.elapsed();
    let seen = h.aws.seen();
    let deletion = &seen[created..];
    let mut per_service: BTreeMap<&str, usize> = BTreeMap::new();
    for s in deletion {
        *per_service.entry(aws_service(&s.action)).or_default() += 1;
    }
    // The gate starts calls 1/BUDGET s apart; they reach the proxy after
    // their latency, which varies by up to about half a second while the
    // suite loads both cores (one second's window once held BUDGET + 2
    // arrivals). So a window of `window_seconds` holds at most
    // (window_seconds + 0.5) x BUDGET + 1 calls, over creation and deletion alike;
    // an unpaced gate, or one 20 % too fast, exceeds it.
    let window_seconds: u64 = 5;
    let most_in_a_second = busiest(&seen, Duration::from_secs(1));
    let most_in_a_window = busiest(&seen, Duration::from_secs(window_seconds));
    println!(
        "deleted {COMPANIES} companies in {took:?}: {per_service:?} AWS calls; over creation and deletion the busiest second {most_in_a_second:?}, the busiest {window_seconds} s {most_in_a_window:?} (budget {BUDGET}/s per service)"
    );
    let bound = (usize::try_from(window_seconds).unwrap() * 2 + 1) * BUDGET / 2 + 1;
    for (service, most) in &most_in_a_window {
        assert!(
            *most <= bound,
            "{service}: {most} calls within {window_seconds} s, budget {BUDGET}/s (at most {bound} with latency's jitter)"
        );
    }
    for (service, calls) in &per_service {
        assert!(
            u128::try_from(*calls).unwrap() * 1000
                <= u128::try_from(BUDGET).unwrap() * took.as_millis() + 2000,
            "{service}: {calls} calls in {took:?}"
        );
    }
    for name in &names {
        let left = footprint(&h, name).await;
        assert_eq!(
            (left.rds_instances, left.file_systems, left.namespace),
            (0, 0, false),
            "{name}: {left:?}"
        );
    }
}
