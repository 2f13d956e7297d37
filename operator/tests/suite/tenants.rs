//! `examples/` end to end: the real `enclave run` binary converges the
//! example tenants in the emulator, OpenBao, moto and PostgreSQL; every
//! workspace's real init step reads exactly its own secrets through a real
//! Kubernetes-auth login; deleting the tenants follows each policy.

use std::{collections::BTreeMap, time::Instant};

use enclave::{
    crd::{Company, Developer},
    names::CompanyNames,
};
use k8s_openapi::api::core::v1::{PersistentVolume, ServiceAccount};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::harness::{Harness, setup, wait, wait_gone, wait_ready};

/// The example tenants, as `(company, developer, subject, role)`.
const PEOPLE: [(&str, &str, &str, &str); 3] = [
    ("acme", "alice", "auth0|5f7c8a1b2c3d4e5f6a7b8c9d", "Admin"),
    ("acme", "bob", "auth0|60a1b2c3d4e5f60718293a4b", "Developer"),
    ("globex", "carol", "00u1a2b3c4d5e6f7g8h9", "Developer"),
];

/// Rewrites every quantity of `value` in a form the API server does not
/// keep (`64Gi` as `65536Mi`, `16` CPUs as `16000m`): what a user may
/// write, and what the steady state must not turn into writes.
fn non_canonical(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let lower = key.to_ascii_lowercase();
                match v.as_str() {
                    Some(q)
                        if q.ends_with("Gi")
                            && (lower.contains("memory")
                                || lower.contains("size")
                                || lower == "storage") =>
                    {
                        if let Ok(n) = q.trim_end_matches("Gi").parse::<u64>() {
                            *v = Value::String(format!("{}Mi", n * 1024));
                        }
                    }
                    Some(q) if lower.contains("cpu") && q.parse::<u64>().is_ok() => {
                        *v = Value::String(format!("{q}000m"));
                    }
                    _ => non_canonical(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(non_canonical),
        _ => {}
    }
}

fn documents() -> Vec<Value> {
    let mut docs = Vec::new();
    for file in ["acme.yaml", "globex.yaml"] {
        let text =
            std::fs::read_to_string(crate::support::root().join("examples").join(file)).unwrap();
        docs.extend(
            serde_saphyr::from_multiple_with_options::<Value>(
                &text,
                serde_saphyr::Options::default(),
            )
            .unwrap(),
        );
    }
    docs.iter_mut().for_each(non_canonical);
    let text = Value::Array(docs.clone()).to_string();
    assert!(
        text.contains("\"65536Mi\"") && text.contains("\"16000m\""),
        "the examples' quantities were rewritten"
    );
    docs
}

/// `kubectl apply --server-side` of every example document.
async fn apply_examples(client: &Client) {
    for doc in documents() {
        let name = doc["metadata"]["name"].as_str().unwrap().to_owned();
        let params = PatchParams::apply("kubectl");
        if doc["kind"] == "Company" {
            Api::<Company>::all(client.clone())
                .patch(&name, &params, &Patch::Apply(&doc))
                .await
                .unwrap();
        } else {
            // The namespace appears once the operator made it; a GitOps
            // tool retries the same way.
            let ns = doc["metadata"]["namespace"].as_str().unwrap();
            let devs = Api::<Developer>::namespaced(client.clone(), ns);
            wait(&format!("Developer {name} applied"), async || {
                devs.patch(&name, &params, &Patch::Apply(&doc)).await.ok()
            })
            .await;
        }
    }
}

fn key_path(company: &str, developer: &str, subject: &str) -> String {
    CompanyNames::new(company, None)
        .developer(developer, subject)
        .kv_developer()
}

/// Seeds what admins and people would have put in Vault.
async fn seed_secrets(h: &Harness) {
    let root = &h.vault.root;
    for company in ["acme", "globex"] {
        for (scope, value) in [("dev", "dev-warehouse"), ("prod", "prod-warehouse")] {
            let env = BTreeMap::from([("WAREHOUSE", format!("{company}-{value}"))]);
            vaultrs::kv2::set(
                root,
                "secret",
                &format!("companies/{company}/shared/{scope}/env"),
                &env,
            )
            .await
            .unwrap();
        }
        let dbt = BTreeMap::from([("profiles.yml", format!("{company}:\n  target: dev\n"))]);
        vaultrs::kv2::set(
            root,
            "secret",
            &format!("companies/{company}/shared/dev/dbt"),
            &dbt,
        )
        .await
        .unwrap();
    }
    for (company, developer, subject, _) in PEOPLE {
        let path = key_path(company, developer, subject);
        let env = BTreeMap::from([("WHO", developer.to_owned())]);
        vaultrs::kv2::set(root, "secret", &format!("{path}/env"), &env)
            .await
            .unwrap();
        let git = BTreeMap::from([("ssh_private_key", format!("key-of-{developer}"))]);
        vaultrs::kv2::set(root, "secret", &format!("{path}/git"), &git)
            .await
            .unwrap();
    }
}

/// A Vault token for the workspace of `developer`, through a real
/// Kubernetes-auth login with a token the API issued for its ServiceAccount.
pub(crate) async fn workspace_login(
    h: &Harness,
    company: &str,
    developer: &str,
    subject: &str,
) -> Option<vaultrs::client::VaultClient> {
    let names = CompanyNames::new(company, None).developer(developer, subject);
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["vault"], "expirationSeconds": 600}}))
            .unwrap();
    let jwt = Api::<ServiceAccount>::namespaced(h.client.clone(), &format!("company-{company}"))
        .create_token_request(&names.service_account(), &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let addr = crate::support::service("ENCLAVE_TEST_VAULT_ADDR", "OpenBao");
    let anonymous = crate::support::vault_client(&addr, "");
    let auth =
        vaultrs::auth::kubernetes::login(&anonymous, &h.vault.mount, &names.vault_role(), &jwt)
            .await
            .ok()?;
    Some(crate::support::vault_client(&addr, &auth.client_token))
}

/// Removes what an earlier, interrupted run against the same long-lived
/// services left under the examples' fixed names (CI starts fresh ones).
async fn forget_earlier_runs(h: &Harness) {
    // Vault: which Company each name's secrets belonged to.
    for company in ["acme", "globex"] {
        let _ = vaultrs::kv2::delete_metadata(
            &h.vault.root,
            "secret",
            &format!("companies/{company}/platform/owner"),
        )
        .await;
    }
    let (rds, fsx) = crate::support::aws_clients();
    let _ = rds
        .delete_db_instance()
        .db_instance_identifier("enclave-acme")
        .skip_final_snapshot(true)
        .send()
        .await;
    for fs in fsx
        .describe_file_systems()
        .send()
        .await
        .unwrap()
        .file_systems()
    {
        if fs
            .tags()
            .iter()
            .any(|t| t.key() == Some("enclave.dev/company") && t.value() == Some("acme"))
        {
            let _ = fsx
                .delete_file_system()
                .file_system_id(fs.file_system_id().unwrap())
                .send()
                .await;
        }
    }
    let conninfo = crate::support::service("ENCLAVE_TEST_POSTGRES", "PostgreSQL");
    let (db, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    for (name, role) in db
        .query("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE '%globex%'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
    {
        db.simple_query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)")).await.unwrap();
        if role != "postgres" {
            let _ = db.simple_query(&format!("DROP ROLE IF EXISTS \"{role}\"")).await;
        }
    }
    for row in db
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE '%globex%'",
            &[],
        )
        .await
        .unwrap()
    {
        let role: String = row.get(0);
        db.simple_query(&format!("DROP ROLE \"{role}\""))
            .await
            .unwrap();
    }
    for company in ["acme", "globex"] {
        let path = format!("companies/{company}/platform/database");
        let _ = vaultrs::kv2::delete_metadata(&h.vault.root, "secret", &path).await;
    }
}

#[tokio::test]
#[allow(clippy::too_many_lines)]
async fn examples_converge_and_each_workspace_reads_only_its_own_secrets() {
    crate::harness::require_root();
    let h = setup().await;
    let client = h.client.clone();
    h.kubelet
        .git_repository("acme/analytics.git", &["feature/revenue-model"]);
    forget_earlier_runs(&h).await;
    seed_secrets(&h).await;

    let started = Instant::now();
    let initial = Counts::take(&h).await;
    apply_examples(&client).await;
    let companies: Api<Company> = Api::all(client.clone());
    wait_ready(&client, "acme", &["alice", "bob"]).await;
    wait_ready(&client, "globex", &["carol"]).await;
    // Every object `enclave plan` shows for the examples exists.
    let config = enclave::config::OperatorConfig::load(&h.vault.config).unwrap();
    let plan =
        enclave::plan::plan_paths(&[crate::support::root().join("examples")], &config).unwrap();
    let mut checked = 0;
    for tenant in &plan.tenants {
        for object in tenant.objects() {
            let json = object.to_json();
            let gvk = kube::api::GroupVersionKind::try_from(&kube::api::TypeMeta {
                api_version: json["apiVersion"].as_str().unwrap().to_owned(),
                kind: object.kind().to_owned(),
            })
            .unwrap();
            let resource = kube::api::ApiResource::from_gvk(&gvk);
            let api: Api<kube::api::DynamicObject> = match &object.metadata().namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let name = object.metadata().name.clone().unwrap();
            assert!(
                api.get_opt(&name).await.unwrap().is_some(),
                "{} {} is missing",
                object.kind(),
                object.display_name()
            );
            checked += 1;
        }
    }
    println!("all {checked} Kubernetes objects enclave plan shows for examples/ exist");
    println!(
        "time to Ready for examples/ (2 Companies, 3 Developers): {:?}",
        started.elapsed()
    );
    println!("full apply: {}", Counts::take(&h).await.since(&initial));
    let (code, body) = h.http_get("/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, metrics) = h.http_get("/metrics").unwrap();
    for family in [
        "enclave_reconciles_total",
        "enclave_reconcile_duration_seconds",
        "enclave_backend_calls_total",
        "enclave_leader 1",
    ] {
        assert!(
            metrics.contains(family),
            "/metrics lacks {family}:\n{metrics}"
        );
    }

    // Each workspace's init step wrote exactly its own secrets, 0400, as its uid.
    let runs = h.kubelet.workspaces.lock().unwrap().clone();
    for (company, developer, _, role) in PEOPLE {
        let run = &runs[&format!("company-{company}/workspace-{developer}")];
        assert!(run.ok, "{developer}: {}", run.output);
        let read = |name: &str| std::fs::read_to_string(run.secrets.join(name)).unwrap();
        assert_eq!(
            read("env"),
            format!("WAREHOUSE={company}-dev-warehouse\nWHO={developer}\n"),
            "{developer} ({role}) gets the company's development values and their own"
        );
        assert_eq!(read("git-ssh-key"), format!("key-of-{developer}\n"));
        assert_eq!(read("profiles.yml"), format!("{company}:\n  target: dev\n"));
        for file in ["env", "git-ssh-key", "profiles.yml"] {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(run.secrets.join(file)).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o400, "{developer}/{file}");
            assert_eq!(meta.uid(), run.uid, "{developer}/{file}");
        }
        if company == "acme" {
            let readme = run.home.join("analytics/README.md");
            assert!(
                readme.exists(),
                "{developer}: the company repository is cloned into their directory: {}",
                run.output
            );
        }
    }
    let bob = &runs["company-acme/workspace-bob"];
    let head = std::fs::read_to_string(bob.home.join("analytics/.git/HEAD")).unwrap();
    assert_eq!(
        head.trim(),
        "ref: refs/heads/feature/revenue-model",
        "bob's branch"
    );

    // The access matrix, through real logins of each workspace's ServiceAccount.
    let mut targets: Vec<(String, String)> = Vec::new();
    for (company, developer, subject, _) in PEOPLE {
        targets.push((
            format!("{developer}/env"),
            format!("{}/env", key_path(company, developer, subject)),
        ));
    }
    for company in ["acme", "globex"] {
        for path in ["shared/dev/env", "shared/prod/env", "platform/database"] {
            targets.push((
                format!("{company}/{path}"),
                format!("companies/{company}/{path}"),
            ));
        }
    }
    let mut matrix = String::from("workspace \\ secret");
    for (label, _) in &targets {
        matrix.push_str(" | ");
        matrix.push_str(label);
    }
    matrix.push('\n');
    let mut wrong = Vec::new();
    for (company, developer, subject, _role) in PEOPLE {
        let token = workspace_login(&h, company, developer, subject)
            .await
            .expect("the workspace logs in");
        matrix.push_str(developer);
        for (label, path) in &targets {
            let allowed = vaultrs::kv2::read::<BTreeMap<String, String>>(&token, "secret", path)
                .await
                .is_ok();
            let own_company = path.starts_with(&format!("companies/{company}/"));
            let expected = if path.contains("/developers/") {
                path.starts_with(&key_path(company, developer, subject))
            } else if path.ends_with("shared/dev/env") {
                own_company
            } else {
                // Production secrets: no workspace, an admin's neither
                // (the company controller reads them).
                false
            };
            if allowed != expected {
                wrong.push(format!(
                    "{developer} reading {label}: {allowed}, expected {expected}"
                ));
            }
            matrix.push_str(if allowed { " | read" } else { " | denied" });
        }
        matrix.push('\n');
    }
    println!("{matrix}");
    assert!(wrong.is_empty(), "{wrong:#?}");
    // A token of one workspace's ServiceAccount is refused for another's role.
    let alice = CompanyNames::new("acme", None).developer("alice", PEOPLE[0].2);
    let bob_names = CompanyNames::new("acme", None).developer("bob", PEOPLE[1].2);
    let request: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": ["vault"]}})).unwrap();
    let bob_jwt = Api::<ServiceAccount>::namespaced(client.clone(), "company-acme")
        .create_token_request(
            &bob_names.service_account(),
            &PostParams::default(),
            &request,
        )
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap();
    let addr = crate::support::service("ENCLAVE_TEST_VAULT_ADDR", "OpenBao");
    assert!(
        vaultrs::auth::kubernetes::login(
            &crate::support::vault_client(&addr, ""),
            &h.vault.mount,
            &alice.vault_role(),
            &bob_jwt
        )
        .await
        .is_err(),
        "bob's ServiceAccount cannot log in as alice's workspace"
    );

    // Steady state: three resyncs of the unchanged tenants (their
    // quantities written in non-canonical form) write nothing. A Company's
    // cycle is its resync (5 s, at its slice of the interval) plus the 1 s debounce plus the
    // reconcile itself, so the window waits for the count rather than for
    // a fixed time; the deadline allows twice the slowest cycle.
    let before = Counts::take(&h).await;
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let resync = Counts::take(&h).await.since(&before);
        if resync.company_reconciles >= 6 && resync.developer_reconciles >= 9 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(45),
            "every tenant is resynced three times within 45 s: {resync}"
        );
    }
    // The backends' counters reach /metrics every 5 s: wait for the last
    // resync's to be sampled.
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let after = Counts::take(&h).await;
    let resync = after.since(&before);
    println!(
        "steady state ({:.1} s, resync interval 5 s): {resync}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        resync.kubernetes_writes,
        0,
        "{resync}\n{:#?}",
        after.kubernetes_detail(&before)
    );
    assert_eq!(resync.vault_writes, 0, "{resync}");
    assert_eq!(resync.aws_writes, 0, "{resync}");
    assert_eq!(resync.postgres_writes, 0, "{resync}");
    // The backends' own request counters reach /metrics (sampled every 5 s).
    let (_, metrics) = h.http_get("/metrics").unwrap();
    for series in [
        "enclave_aws_requests_total{service=\"rds\"}",
        "enclave_aws_requests_total{service=\"fsx\"}",
        "enclave_vault_writes_total",
    ] {
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0);
        assert!(value > 0, "{series} in /metrics:\n{metrics}");
    }

    // globex's database credentials log in to its own database.
    let globex = companies
        .get("globex")
        .await
        .unwrap()
        .status
        .unwrap()
        .database
        .unwrap();
    let creds: BTreeMap<String, String> = vaultrs::kv2::read(
        &h.vault.root,
        "secret",
        "companies/globex/platform/database",
    )
    .await
    .unwrap();
    let mut pg = tokio_postgres::Config::new();
    pg.host(globex.endpoint.as_ref().unwrap())
        .port(u16::try_from(globex.port.unwrap()).unwrap())
        .user(&creds["username"])
        .password(&creds["password"])
        .dbname(globex.name.as_ref().unwrap());
    let (db, connection) = pg
        .connect(tokio_postgres::NoTls)
        .await
        .expect("globex's credentials work");
    tokio::spawn(connection);
    db.simple_query("CREATE TABLE kept (id int); INSERT INTO kept VALUES (1)")
        .await
        .unwrap();
    drop(db);

    // Deleting the tenants follows each policy.
    for company in ["acme", "globex"] {
        companies
            .delete(company, &DeleteParams::default())
            .await
            .unwrap();
    }
    for company in ["acme", "globex"] {
        wait_gone(&format!("Company {company}"), &companies, company).await;
    }
    // Vault: no role or policy of either tenant is left.
    let policies = vaultrs::sys::policy::list(&h.vault.root)
        .await
        .unwrap()
        .policies;
    let mut ours: Vec<String> = PEOPLE
        .iter()
        .map(|(company, developer, subject, _)| {
            CompanyNames::new(company, None)
                .developer(developer, subject)
                .vault_role()
        })
        .collect();
    ours.extend([
        "enclave-acme--company-controller".to_owned(),
        "enclave-globex--company-controller".to_owned(),
    ]);
    let left: Vec<_> = policies.iter().filter(|p| ours.contains(p)).collect();
    assert!(left.is_empty(), "policies left: {left:?}");
    let roles = vaultrs::auth::kubernetes::role::list(&h.vault.root, &h.vault.mount)
        .await
        .map(|r| r.keys)
        .unwrap_or_default();
    assert!(roles.is_empty(), "roles left: {roles:?}");
    // globex (volume, Retain): each developer's volume is kept and no longer reclaimed with its claim.
    let volumes = Api::<PersistentVolume>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let kept: Vec<_> = volumes
        .items
        .iter()
        .filter(|v| {
            v.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| c.namespace.as_deref())
                == Some("company-globex")
        })
        .collect();
    assert_eq!(kept.len(), 1, "carol's volume is kept");
    assert_eq!(
        kept[0]
            .spec
            .as_ref()
            .unwrap()
            .persistent_volume_reclaim_policy
            .as_deref(),
        Some("Retain"),
        "{}: retained, so deleting its claim does not delete the data",
        kept[0].name_any()
    );
    // globex's database (Snapshot): kept with its data, its login role dropped.
    let admin = &h.vault.admin;
    let mut pg = tokio_postgres::Config::new();
    pg.host(globex.endpoint.as_ref().unwrap())
        .port(u16::try_from(globex.port.unwrap()).unwrap())
        .user(&admin["username"])
        .password(&admin["password"])
        .dbname(globex.name.as_ref().unwrap());
    let (db, connection) = pg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let rows = db
        .query_one("SELECT count(*) FROM kept", &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 1, "the data is kept");
    drop(db);
    let mut pg_admin = pg.clone();
    pg_admin.dbname("postgres");
    let (db, connection) = pg_admin.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    db.simple_query(&format!(
        "DROP DATABASE \"{}\" WITH (FORCE)",
        globex.name.as_ref().unwrap()
    ))
    .await
    .unwrap();
}

/// What the operator did, counted outside it where possible.
#[derive(Clone, Debug, Default)]
struct Counts {
    company_reconciles: u64,
    developer_reconciles: u64,
    kubernetes: BTreeMap<String, u64>,
    kubernetes_writes: u64,
    vault_writes: u64,
    aws_calls: u64,
    aws_writes: u64,
    backend_calls: u64,
    postgres_writes: u64,
}

impl Counts {
    async fn take(h: &Harness) -> Self {
        let metrics = h.http_get("/metrics").map(|(_, b)| b).unwrap_or_default();
        let metric = |prefix: &str| -> u64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(prefix))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        // Requests of the operator's ServiceAccount, from the API server's
        // audit log; writes are those that change state, but not the leader
        // Lease's renewals.
        let kubernetes = h.control_plane.operator_requests();
        let kubernetes_writes = kubernetes
            .iter()
            .filter(|(key, _)| {
                let verb = key.split(' ').next().unwrap_or_default();
                matches!(
                    verb,
                    "create" | "update" | "patch" | "delete" | "deletecollection"
                ) && !key.contains("leases")
            })
            .map(|(_, n)| n)
            .sum();
        let audit = std::env::var("ENCLAVE_TEST_VAULT_AUDIT_LOG")
            .ok()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let vault_writes = audit
            .lines()
            .filter(|l| l.contains("\"type\":\"request\""))
            .filter(|l| {
                [
                    "\"operation\":\"create\"",
                    "\"operation\":\"update\"",
                    "\"operation\":\"delete\"",
                ]
                .iter()
                .any(|o| l.contains(o))
            })
            .filter(|l| {
                l.contains("enclave-acme")
                    || l.contains("enclave-globex")
                    || l.contains("companies/acme")
                    || l.contains("companies/globex")
            })
            .count() as u64;
        let seen = h.aws.seen();
        let aws_writes = seen
            .iter()
            .filter(|s| !s.action.starts_with("Describe") && !s.action.starts_with("List"))
            .count() as u64;
        let postgres_writes = postgres_writes("globex").await;
        Self {
            postgres_writes,
            company_reconciles: metric("enclave_reconciles_total{kind=\"Company\""),
            developer_reconciles: metric("enclave_reconciles_total{kind=\"Developer\""),
            backend_calls: metric("enclave_backend_calls_total"),
            kubernetes,
            kubernetes_writes,
            vault_writes,
            aws_calls: seen.len() as u64,
            aws_writes,
        }
    }

    fn since(&self, before: &Self) -> Self {
        Self {
            company_reconciles: self.company_reconciles - before.company_reconciles,
            developer_reconciles: self.developer_reconciles - before.developer_reconciles,
            kubernetes: BTreeMap::new(),
            kubernetes_writes: self.kubernetes_writes - before.kubernetes_writes,
            vault_writes: self.vault_writes - before.vault_writes,
            aws_calls: self.aws_calls - before.aws_calls,
            aws_writes: self.aws_writes - before.aws_writes,
            backend_calls: self.backend_calls - before.backend_calls,
            postgres_writes: self.postgres_writes - before.postgres_writes,
        }
    }

    fn kubernetes_detail(&self, before: &Self) -> BTreeMap<String, u64> {
        self.kubernetes
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    n - before.kubernetes.get(k).copied().unwrap_or(0),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} Company and {} Developer reconciles, {} backend steps; writes: Kubernetes {}, Vault {}, AWS {} (of {} AWS calls), PostgreSQL {}",
            self.company_reconciles,
            self.developer_reconciles,
            self.backend_calls,
            self.kubernetes_writes,
            self.vault_writes,
            self.aws_writes,
            self.aws_calls,
            self.postgres_writes
        )
    }
}

/// Statements that change the shared PostgreSQL (DDL, grants, passwords)
/// naming `company`, as pg_stat_statements (loaded by the harness) counts them.
async fn postgres_writes(company: &str) -> u64 {
    let conninfo = crate::support::service("ENCLAVE_TEST_POSTGRES", "PostgreSQL");
    let (db, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Tests race to create it; one wins, the others see it.
    let _ = db
        .simple_query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await;
    let row = db
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
             WHERE query ILIKE '%' || $1 || '%' \
             AND query ~* '^\\s*(begin|create|alter|drop|grant|revoke|comment|reassign)'",
            &[&company],
        )
        .await
        .expect("pg_stat_statements is loaded (e2e/run-tests.sh starts PostgreSQL with it)");
    u64::try_from(row.get::<_, i64>(0)).unwrap()
}
