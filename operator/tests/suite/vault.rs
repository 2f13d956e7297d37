//! The Vault backend against a real OpenBao server: the access matrix,
//! idempotency, drift, ownership, write-ahead credentials, deletion
//! isolation, hostile names, and running with only Enclave's own policy.

use std::{collections::BTreeMap, fmt::Write as _};

use enclave::{
    backends::vault::{
        Change, VaultAuth, VaultBackend, VaultClientBackend, VaultError, VaultSettings,
        delete_developer, delete_tenant, ensure_company, ensure_developer,
    },
    builders::{self, CompanyContext, Observed, operator_policy},
    config::OperatorConfig,
    crd::Company,
    names::CompanyNames,
    plan::{Document, Plan, plan_documents},
};
use serde_json::{Value, json};
use vaultrs::client::VaultClient;

use crate::support::service;

const KV: &str = "secret";

struct Env {
    addr: String,
    token: String,
    root: VaultClient,
    /// A Kubernetes auth mount of this test's own.
    mount: String,
    /// Unique per test, so tests share one server without meeting.
    tag: String,
}

fn tag() -> String {
    crate::support::unique("t")
}

async fn env() -> Env {
    let addr = service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
    let token = service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = client(&addr, &token);
    let tag = tag();
    let mount = format!("k8s-{tag}");
    vaultrs::sys::auth::enable(&root, &mount, "kubernetes", None)
        .await
        .unwrap();
    Env {
        addr,
        token,
        root,
        mount,
        tag,
    }
}

fn client(addr: &str, token: &str) -> VaultClient {
    crate::support::vault_client(addr, token)
}

async fn backend(env: &Env, token: &str) -> VaultClientBackend {
    VaultClientBackend::connect(VaultSettings {
        address: env.addr.clone(),
        kv_mount: KV.into(),
        auth_mount: env.mount.clone(),
        ca_cert: None,
        auth: VaultAuth::Token(token.to_owned()),
    })
    .await
    .unwrap()
}

/// Companies named `names`, each with an Admin `dev-x` and a Developer `dev`.
fn tenants(names: &[String]) -> Plan {
    let mut docs = Vec::new();
    for (i, co) in names.iter().enumerate() {
        docs.push(json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Company", "metadata": {"name": co}, "spec": {}}));
        for (dev, role) in [("dev-x", "Admin"), ("dev", "Developer")] {
            docs.push(
                json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
                "metadata": {"name": dev, "namespace": format!("company-{co}")},
                "spec": {"subject": format!("subject-{i}-{dev}"), "role": role}}),
            );
        }
    }
    let docs = docs
        .into_iter()
        .enumerate()
        .map(|(i, value)| Document {
            source: "test".into(),
            index: i + 1,
            value,
        })
        .collect();
    plan_documents(docs, &OperatorConfig::default()).unwrap()
}

async fn ensure_all(vault: &VaultClientBackend, plan: &Plan) -> Vec<Change> {
    let mut changes = Vec::new();
    for t in &plan.tenants {
        changes.extend(ensure_company(vault, &t.company).await.unwrap());
        for d in &t.developers {
            changes.extend(ensure_developer(vault, &t.name, d, None).await.unwrap());
        }
    }
    changes
}

#[derive(Clone, Debug, PartialEq)]
enum Who {
    Controller,
    Admin(String),
    Developer(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Area {
    SharedDev,
    SharedProd,
    Platform,
    Personal(String),
}

/// What the security model promises, written independently of the builders.
/// One arm per promise, even where two give the same answer.
#[allow(clippy::match_same_arms)]
fn promised(who: &(String, Who), what: &(String, Area)) -> (bool, bool) {
    if who.0 != what.0 {
        return (false, false);
    }
    match (&who.1, &what.1) {
        (Who::Controller, Area::SharedDev | Area::SharedProd | Area::Platform) => (true, false),
        (Who::Admin(me) | Who::Developer(me), Area::Personal(owner)) if me == owner => (true, true),
        // Every workspace runs third-party code, an admin's too: it reads the
        // development secrets and never writes shared ones (the admin person
        // does, with their own login; tested in the controller tests).
        (Who::Admin(_), Area::SharedDev) => (true, false),
        (Who::Developer(_), Area::SharedDev) => (true, false),
        _ => (false, false),
    }
}

fn area_path(company: &str, area: &Area) -> String {
    match area {
        Area::SharedDev => format!("companies/{company}/shared/dev"),
        Area::SharedProd => format!("companies/{company}/shared/prod"),
        Area::Platform => format!("companies/{company}/platform"),
        Area::Personal(key) => format!("companies/{company}/developers/{key}"),
    }
}

#[tokio::test]
async fn access_matrix_matches_the_security_model() {
    let env = env().await;
    // `x` and `x-a` share a prefix: a policy one glob too broad shows here.
    let names = [env.tag.clone(), format!("{}-a", env.tag)];
    let plan = tenants(&names);
    let vault = backend(&env, &env.token).await;
    ensure_all(&vault, &plan).await;

    let mut principals: Vec<((String, Who), Vec<String>)> = Vec::new();
    let mut areas: Vec<(String, Area)> = Vec::new();
    for t in &plan.tenants {
        principals.push((
            (t.name.clone(), Who::Controller),
            t.company.roles[0].token_policies.clone(),
        ));
        for area in [Area::SharedDev, Area::SharedProd, Area::Platform] {
            areas.push((t.name.clone(), area));
        }
        for d in &t.developers {
            let key = d.roles[0].name.split("--").nth(1).unwrap().to_owned();
            let who = match d.settings.role {
                enclave::crd::DeveloperRole::Admin => Who::Admin(key.clone()),
                enclave::crd::DeveloperRole::Developer => Who::Developer(key.clone()),
            };
            principals.push(((t.name.clone(), who), d.roles[0].token_policies.clone()));
            areas.push((t.name.clone(), Area::Personal(key)));
        }
    }
    let seed = BTreeMap::from([("value".to_owned(), "seed".to_owned())]);
    for (company, area) in &areas {
        vaultrs::kv2::set(
            &env.root,
            KV,
            &format!("{}/probe", area_path(company, area)),
            &seed,
        )
        .await
        .unwrap();
    }

    let mut table =
        String::from("principal \\ path (r = read, w = write, ! = differs from the model)\n");
    let mut wrong = 0;
    for (who, policies) in &principals {
        let mut opts = vaultrs::api::token::requests::CreateTokenRequest::builder();
        opts.policies(policies.clone())
            .no_default_policy(true)
            .ttl("5m");
        let token = vaultrs::token::new(&env.root, Some(&mut opts))
            .await
            .unwrap()
            .client_token;
        let as_who = client(&env.addr, &token);
        let _ = write!(table, "{:<44}", format!("{}/{:?}", who.0, who.1));
        for what in &areas {
            let base = area_path(&what.0, &what.1);
            let read = vaultrs::kv2::read::<BTreeMap<String, String>>(
                &as_who,
                KV,
                &format!("{base}/probe"),
            )
            .await
            .is_ok();
            let write = vaultrs::kv2::set(&as_who, KV, &format!("{base}/written"), &seed)
                .await
                .is_ok();
            let ok = (read, write) == promised(who, what);
            wrong += usize::from(!ok);
            let _ = write!(
                table,
                " {}{}{}",
                if read { 'r' } else { '-' },
                if write { 'w' } else { '-' },
                if ok { ' ' } else { '!' }
            );
        }
        table.push('\n');
    }
    let _ = writeln!(
        table,
        "columns: {}",
        areas
            .iter()
            .map(|(c, a)| format!("{c}/{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("{table}");
    assert_eq!(principals.len(), 6);
    assert_eq!(areas.len(), 10);
    assert_eq!(
        wrong, 0,
        "{wrong} cells differ from the security model:\n{table}"
    );
}

/// Create, update and delete requests OpenBao's audit log records for the
/// token with `accessor`.
fn audited_writes(log: &str, accessor: &str) -> u64 {
    let text = std::fs::read_to_string(log).unwrap();
    let count = text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| {
            entry["type"] == "request"
                && entry["auth"]["accessor"] == accessor
                && matches!(
                    entry["request"]["operation"].as_str(),
                    Some("create" | "update" | "delete")
                )
        })
        .count();
    u64::try_from(count).unwrap()
}

#[tokio::test]
async fn ensure_is_idempotent_and_corrects_drift() {
    let env = env().await;
    let audit_log = service("ENCLAVE_TEST_VAULT_AUDIT_LOG", "OpenBao's audit log");
    let plan = tenants(std::slice::from_ref(&env.tag));
    // A token of its own, so the audit log tells this backend's requests apart.
    let mut opts = vaultrs::api::token::requests::CreateTokenRequest::builder();
    opts.policies(vec!["root".to_owned()]).ttl("10m");
    let auth = vaultrs::token::new(&env.root, Some(&mut opts))
        .await
        .unwrap();
    let vault = backend(&env, &auth.client_token).await;
    let first = ensure_all(&vault, &plan).await;
    assert!(first.iter().all(|c| *c == Change::Created), "{first:?}");
    let writes = vault.writes();
    assert_eq!(
        audited_writes(&audit_log, &auth.accessor),
        writes,
        "the counter matches what OpenBao saw"
    );
    let second = ensure_all(&vault, &plan).await;
    assert!(second.iter().all(|c| *c == Change::Unchanged), "{second:?}");
    assert_eq!(
        vault.writes(),
        writes,
        "an unchanged tenant costs no writes"
    );
    assert_eq!(
        audited_writes(&audit_log, &auth.accessor),
        writes,
        "OpenBao saw no write either"
    );

    // Someone widens a developer's policy and rebinds its role in Vault.
    let dev = &plan.tenants[0].developers[1];
    let policy = &dev.policies[0];
    let widened = format!(
        "{}\npath \"secret/data/*\" {{ capabilities = [\"read\"] }}\n",
        policy.hcl
    );
    vaultrs::sys::policy::set(&env.root, &policy.name, &widened)
        .await
        .unwrap();
    let role = &dev.roles[0];
    let mut opts = vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
    opts.bound_service_account_names(vec!["*".to_owned()])
        .bound_service_account_namespaces(vec!["*".to_owned()]);
    vaultrs::auth::kubernetes::role::create(&env.root, &env.mount, &role.name, Some(&mut opts))
        .await
        .unwrap();

    assert_eq!(vault.ensure_policy(policy).await.unwrap(), Change::Updated);
    assert_eq!(
        vault
            .ensure_role(&plan.tenants[0].name, role)
            .await
            .unwrap(),
        Change::Updated
    );
    let stored = vaultrs::sys::policy::read(&env.root, &policy.name)
        .await
        .unwrap()
        .rules;
    assert_eq!(stored, policy.hcl);
    let stored = vaultrs::auth::kubernetes::role::read(&env.root, &env.mount, &role.name)
        .await
        .unwrap();
    assert_eq!(
        stored.bound_service_account_names,
        role.bound_service_account_names
    );
    assert_eq!(
        stored.bound_service_account_namespaces,
        role.bound_service_account_namespaces
    );
    assert!(
        ensure_all(&vault, &plan)
            .await
            .iter()
            .all(|c| *c == Change::Unchanged)
    );
}

#[tokio::test]
async fn what_enclave_did_not_create_is_never_overwritten() {
    let env = env().await;
    let plan = tenants(std::slice::from_ref(&env.tag));
    let vault = backend(&env, &env.token).await;
    let dev = &plan.tenants[0].developers[0];
    let foreign = "path \"secret/data/elsewhere/*\" { capabilities = [\"read\"] }\n";
    vaultrs::sys::policy::set(&env.root, &dev.policies[0].name, foreign)
        .await
        .unwrap();
    let err = vault.ensure_policy(&dev.policies[0]).await.unwrap_err();
    assert!(
        matches!(err, VaultError::NotOwned { what: "policy", .. }),
        "{err}"
    );
    assert!(vault.delete_policy(&dev.policies[0].name).await.is_err());
    assert_eq!(
        vaultrs::sys::policy::read(&env.root, &dev.policies[0].name)
            .await
            .unwrap()
            .rules,
        foreign
    );

    let role = &dev.roles[0];
    let mut opts = vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
    opts.bound_service_account_names(vec!["someone".to_owned()])
        .bound_service_account_namespaces(vec!["elsewhere".to_owned()]);
    vaultrs::auth::kubernetes::role::create(&env.root, &env.mount, &role.name, Some(&mut opts))
        .await
        .unwrap();
    let err = vault
        .ensure_role(&plan.tenants[0].name, role)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::NotOwned { what: "role", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("will not overwrite"));
    let stored = vaultrs::auth::kubernetes::role::read(&env.root, &env.mount, &role.name)
        .await
        .unwrap();
    assert_eq!(stored.bound_service_account_names, ["someone"]);
}

#[tokio::test]
async fn credentials_are_written_ahead_reused_after_a_crash_and_rotated_as_new_versions() {
    let env = env().await;
    let path = format!("companies/{}/platform/database", env.tag);
    let first = backend(&env, &env.token).await;
    let written = first
        .ensure_credentials(&path, "enclave_admin")
        .await
        .unwrap();
    assert_eq!(written.version, 1);
    // Crash: the process dies before the database was created with them.
    drop(first);
    let restarted = backend(&env, &env.token).await;
    let reread = restarted
        .ensure_credentials(&path, "enclave_admin")
        .await
        .unwrap();
    assert_eq!(reread, written, "the same credential, never regenerated");

    // Two reconciles racing on a fresh path agree on one credential.
    let path2 = format!("companies/{}/platform/racing", env.tag);
    let (a, b) = (
        backend(&env, &env.token).await,
        backend(&env, &env.token).await,
    );
    let (x, y) = tokio::join!(
        a.ensure_credentials(&path2, "u"),
        b.ensure_credentials(&path2, "u")
    );
    assert_eq!(x.unwrap(), y.unwrap());

    let rotated = restarted.rotate_credentials(&path).await.unwrap();
    assert_eq!(rotated.version, 2);
    assert_ne!(rotated.password, written.password);
    assert_eq!(rotated.username, "enclave_admin");
    assert_eq!(
        restarted
            .ensure_credentials(&path, "enclave_admin")
            .await
            .unwrap(),
        rotated
    );
    let old: BTreeMap<String, String> = vaultrs::kv2::read_version(&env.root, KV, &path, 1)
        .await
        .unwrap();
    assert_eq!(
        old["password"],
        written.password.expose(),
        "the previous version stays readable"
    );
}

async fn snapshot(env: &Env, plan: &Plan, company: &str) -> Value {
    let t = plan.tenants.iter().find(|t| t.name == company).unwrap();
    let mut out = serde_json::Map::new();
    for p in t
        .company
        .policies
        .iter()
        .chain(t.developers.iter().flat_map(|d| d.policies.iter()))
    {
        out.insert(
            format!("policy {}", p.name),
            json!(
                vaultrs::sys::policy::read(&env.root, &p.name)
                    .await
                    .unwrap()
                    .rules
            ),
        );
    }
    for r in t
        .company
        .roles
        .iter()
        .chain(t.developers.iter().flat_map(|d| d.roles.iter()))
    {
        let role = vaultrs::auth::kubernetes::role::read(&env.root, &env.mount, &r.name)
            .await
            .unwrap();
        out.insert(format!("role {}", r.name), json!(format!("{role:?}")));
    }
    let mut pending = vec![format!("companies/{company}")];
    while let Some(path) = pending.pop() {
        for key in vaultrs::kv2::list(&env.root, KV, &path)
            .await
            .unwrap_or_default()
        {
            let child = format!("{path}/{}", key.trim_end_matches('/'));
            if key.ends_with('/') {
                pending.push(child);
            } else {
                let data: Value = vaultrs::kv2::read(&env.root, KV, &child).await.unwrap();
                let meta = vaultrs::kv2::read_metadata(&env.root, KV, &child)
                    .await
                    .unwrap();
                out.insert(
                    format!("secret {child}"),
                    json!({"data": data, "version": meta.current_version}),
                );
            }
        }
    }
    Value::Object(out)
}

#[tokio::test]
async fn deleting_one_tenant_leaves_every_other_tenant_unchanged() {
    let env = env().await;
    let (gone, kept) = (env.tag.clone(), format!("{}-a", env.tag));
    let plan = tenants(&[gone.clone(), kept.clone()]);
    let vault = backend(&env, &env.token).await;
    ensure_all(&vault, &plan).await;
    for co in [&gone, &kept] {
        vault
            .ensure_credentials(
                &format!("companies/{co}/platform/database"),
                "enclave_admin",
            )
            .await
            .unwrap();
        let data = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        vaultrs::kv2::set(
            &env.root,
            KV,
            &format!("companies/{co}/shared/dev/warehouse"),
            &data,
        )
        .await
        .unwrap();
    }
    let before = snapshot(&env, &plan, &kept).await;
    assert!(before.as_object().unwrap().len() >= 10);

    let t = plan.tenants.iter().find(|t| t.name == gone).unwrap();
    let names = CompanyNames::new(&gone, None);
    for d in &t.developers {
        let key = d.roles[0].name.split("--").nth(1).unwrap().to_owned();
        delete_developer(
            &vault,
            &gone,
            d,
            &format!("companies/{gone}/developers/{key}"),
            true,
        )
        .await
        .unwrap();
    }
    delete_tenant(&vault, &t.company, &names.kv_company_root(), true)
        .await
        .unwrap();

    assert_eq!(
        snapshot(&env, &plan, &kept).await,
        before,
        "the other tenant is byte-for-byte unchanged"
    );
    for p in t
        .company
        .policies
        .iter()
        .chain(t.developers.iter().flat_map(|d| d.policies.iter()))
    {
        assert!(
            vaultrs::sys::policy::read(&env.root, &p.name)
                .await
                .is_err(),
            "{} remains",
            p.name
        );
    }
    for r in t
        .company
        .roles
        .iter()
        .chain(t.developers.iter().flat_map(|d| d.roles.iter()))
    {
        assert!(
            vaultrs::auth::kubernetes::role::read(&env.root, &env.mount, &r.name)
                .await
                .is_err(),
            "{} remains",
            r.name
        );
    }
    assert!(
        vaultrs::kv2::list(&env.root, KV, &format!("companies/{gone}"))
            .await
            .is_err(),
        "no secret of {gone} remains"
    );
    // Deleting again is a no-op.
    delete_tenant(&vault, &t.company, &names.kv_company_root(), true)
        .await
        .unwrap();
}

#[tokio::test]
async fn hostile_names_never_reach_vault() {
    let env = env().await;
    let vault = backend(&env, &env.token).await;
    let config = OperatorConfig::default();
    let hostile = [
        "*", "a*", "a+b", "..", "a/../b", "a\"b", "a}b{", "a\nb", "A", "", "a b", "a/b",
    ];
    for name in hostile {
        // Bypass the CRD schema on purpose: the backend is the last line.
        let company = Company::new(name, serde_json::from_value(json!({})).unwrap());
        let ctx = CompanyContext::new(&company, &config, Observed::default());
        let plan = builders::build_company(&ctx);
        let writes = vault.writes();
        let err = vault.ensure_policy(&plan.policies[0]).await.unwrap_err();
        assert!(matches!(err, VaultError::Unsafe { .. }), "{name:?}: {err}");
        let err = vault.ensure_role(name, &plan.roles[0]).await.unwrap_err();
        assert!(matches!(err, VaultError::Unsafe { .. }), "{name:?}: {err}");
        assert!(
            vault
                .ensure_credentials(&format!("companies/{name}/platform/database"), "u")
                .await
                .is_err(),
            "{name:?}"
        );
        assert!(
            vault
                .delete_secrets(&format!("companies/{name}"))
                .await
                .is_err(),
            "{name:?}"
        );
        assert_eq!(vault.writes(), writes, "{name:?} caused a write");
    }
}

#[tokio::test]
async fn the_backend_works_with_only_enclaves_own_policy() {
    let env = env().await;
    // Not named enclave-*: the operator must not be able to rewrite its own policy.
    let own = format!("enclave{}", env.tag);
    vaultrs::sys::policy::set(&env.root, &own, &operator_policy(KV, &env.mount, ""))
        .await
        .unwrap();
    let mut opts = vaultrs::api::token::requests::CreateTokenRequest::builder();
    opts.policies(vec![own.clone()])
        .no_default_policy(true)
        .ttl("10m")
        .renewable(true);
    let token = vaultrs::token::new(&env.root, Some(&mut opts))
        .await
        .unwrap()
        .client_token;
    let vault = backend(&env, &token).await;

    let plan = tenants(std::slice::from_ref(&env.tag));
    assert!(
        ensure_all(&vault, &plan)
            .await
            .iter()
            .all(|c| *c == Change::Created)
    );
    let path = format!("companies/{}/platform/database", env.tag);
    let creds = vault
        .ensure_credentials(&path, "enclave_admin")
        .await
        .unwrap();
    assert_eq!(
        vault.rotate_credentials(&path).await.unwrap().version,
        creds.version + 1
    );
    vault.refresh().await.unwrap();
    assert!(vault.token_ttl().await.unwrap() > 0);
    let t = &plan.tenants[0];
    for d in &t.developers {
        let key = d.roles[0].name.split("--").nth(1).unwrap().to_owned();
        delete_developer(
            &vault,
            &t.name,
            d,
            &format!("companies/{}/developers/{key}", t.name),
            true,
        )
        .await
        .unwrap();
    }
    delete_tenant(&vault, &t.company, &format!("companies/{}", t.name), true)
        .await
        .unwrap();

    // And nothing beyond it: not its own policy, not other mounts or paths.
    let operator = client(&env.addr, &token);
    let mut opts = vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
    opts.bound_service_account_names(vec!["x".to_owned()])
        .bound_service_account_namespaces(vec!["y".to_owned()]);
    assert!(
        vaultrs::auth::kubernetes::role::create(
            &operator,
            &env.mount,
            "not-enclaves",
            Some(&mut opts)
        )
        .await
        .is_err()
    );
    let data = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
    assert!(
        vaultrs::kv2::set(&operator, KV, "elsewhere/x", &data)
            .await
            .is_err()
    );
}

/// Points this test's auth mount at the shared real API server.
async fn configure_kubernetes_auth(env: &Env) -> crate::control_plane::ControlPlane {
    let cp = crate::control_plane::ControlPlane::shared().await;
    cp.configure_vault_auth(&env.mount).await;
    cp
}

#[tokio::test]
async fn workspaces_log_in_with_their_own_service_account_only() {
    let env = env().await;
    let cp = configure_kubernetes_auth(&env).await;
    let plan = tenants(std::slice::from_ref(&env.tag));
    let vault = backend(&env, &env.token).await;
    ensure_all(&vault, &plan).await;
    let (ns, dev) = (
        &plan.tenants[0].company.settings.namespace,
        &plan.tenants[0].developers[1],
    );
    let role = &dev.roles[0];
    let sa = &role.bound_service_account_names[0];
    let anonymous = client(&env.addr, "");
    let login = |ns: &str, sa: &str, aud: &str| {
        let (anonymous, mount, role, cp) = (&anonymous, env.mount.clone(), role.name.clone(), &cp);
        let (ns, sa, aud) = (ns.to_owned(), sa.to_owned(), aud.to_owned());
        async move {
            // A real token of that account, from the TokenRequest API.
            let jwt = cp.service_account_token(&ns, &sa, &aud).await;
            vaultrs::auth::kubernetes::login(anonymous, &mount, &role, &jwt).await
        }
    };
    let auth = login(ns, sa, "vault")
        .await
        .expect("the bound ServiceAccount logs in");
    assert_eq!(
        auth.policies
            .iter()
            .filter(|p| *p != "default")
            .collect::<Vec<_>>(),
        [&role.name]
    );
    assert!(auth.lease_duration <= 3600);
    let err = login(ns, "developer-someone-else", "vault")
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
        .unwrap_err();
    assert!(err.contains("not authorized"), "{err}");
    let err = login("company-other", sa, "vault")
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
        .unwrap_err();
    assert!(err.contains("not authorized"), "{err}");
    assert!(
        login(ns, sa, "not-vault").await.is_err(),
        "a token for another audience is refused"
    );
}

#[tokio::test]
async fn the_operator_logs_in_with_kubernetes_auth_and_refreshes() {
    let env = env().await;
    let cp = configure_kubernetes_auth(&env).await;
    let own = format!("enclave{}", env.tag);
    vaultrs::sys::policy::set(&env.root, &own, &operator_policy(KV, &env.mount, ""))
        .await
        .unwrap();
    let mut opts = vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
    opts.bound_service_account_names(vec!["enclave".to_owned()])
        .bound_service_account_namespaces(vec!["enclave-system".to_owned()])
        .audience("vault")
        .token_policies(vec![own])
        .token_ttl("600");
    vaultrs::auth::kubernetes::role::create(&env.root, &env.mount, "operator", Some(&mut opts))
        .await
        .unwrap();
    let jwt_path = std::env::temp_dir().join(format!("enclave-jwt-{}", env.tag));
    std::fs::write(
        &jwt_path,
        cp.service_account_token("enclave-system", "enclave", "vault")
            .await,
    )
    .unwrap();
    let settings = VaultSettings {
        address: env.addr.clone(),
        kv_mount: KV.into(),
        auth_mount: env.mount.clone(),
        ca_cert: None,
        auth: VaultAuth::Kubernetes {
            mount: env.mount.clone(),
            role: "operator".into(),
            jwt_path: jwt_path.clone(),
        },
    };
    let vault = VaultClientBackend::connect(settings.clone()).await.unwrap();
    let plan = tenants(std::slice::from_ref(&env.tag));
    assert!(
        ensure_all(&vault, &plan)
            .await
            .iter()
            .all(|c| *c == Change::Created)
    );
    let ttl = vault.token_ttl().await.unwrap();
    assert!(ttl > 0 && ttl <= 600, "{ttl}");
    vault.refresh().await.unwrap();
    assert!(
        ensure_all(&vault, &plan)
            .await
            .iter()
            .all(|c| *c == Change::Unchanged)
    );

    // A token for another ServiceAccount is refused with a message saying what to check.
    std::fs::write(
        &jwt_path,
        cp.service_account_token("enclave-system", "intruder", "vault")
            .await,
    )
    .unwrap();
    let err = VaultClientBackend::connect(settings)
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .contains("binds the operator's ServiceAccount"),
        "{err}"
    );
    std::fs::remove_file(&jwt_path).unwrap();
}

/// `enclave vault-setup` with `config`, as an administrator (root here).
fn vault_setup(config: &std::path::Path, extra: &[&std::ffi::OsStr]) -> (bool, String) {
    let out = crate::support::enclave()
        .arg("vault-setup")
        .arg("--config")
        .arg(config)
        .args(extra)
        .env(
            "VAULT_TOKEN",
            service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token"),
        )
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn vault_setup_prepares_a_fresh_vault_once_and_the_operator_logs_in_with_it() {
    let addr = service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
    let token = service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = client(&addr, &token);
    let cp = crate::control_plane::ControlPlane::shared().await;
    cp.install_operator_identity().await;
    let tag = tag();
    let (kv, auth) = (format!("kv-{tag}"), format!("k8s-{tag}"));
    let dir = std::env::temp_dir().join(format!("vault-setup-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!("vault:\n  address: {addr}\n  kvMount: {kv}\n  authMount: {auth}\n"),
    )
    .unwrap();
    let (ca, jwt) = (dir.join("ca.crt"), dir.join("reviewer.jwt"));
    std::fs::write(&ca, &cp.ca_pem).unwrap();
    std::fs::write(&jwt, cp.token_reviewer().await).unwrap();
    let flags = [
        "--kubernetes-host".as_ref(),
        cp.api.as_ref(),
        "--kubernetes-ca-file".as_ref(),
        ca.as_os_str(),
    ];

    // A fresh Vault: everything is created.
    let mut first = flags.to_vec();
    first.extend(["--token-reviewer-jwt-file".as_ref(), jwt.as_os_str()]);
    let (ok, out) = vault_setup(&config, &first);
    assert!(ok, "{out}");
    println!("{out}");
    // (The policy's name is global: an earlier run against this server
    // left it with other mounts, so it may be updated rather than created.)
    let written = out
        .lines()
        .filter(|l| l.starts_with("created") || l.starts_with("updated    policy"))
        .count();
    assert_eq!(
        written, 5,
        "two mounts, the auth configuration, the policy and the role:\n{out}"
    );

    // A second run changes nothing.
    let (ok, again) = vault_setup(&config, &flags);
    assert!(ok, "{again}");
    assert!(
        again.lines().all(|l| l.starts_with("unchanged")),
        "a second run writes nothing:\n{again}"
    );

    // The KV mount is version 2, and the operator's own policy is Enclave's
    // policy under a name the operator itself cannot write.
    let mounts = vaultrs::sys::mount::list(&root).await.unwrap();
    let mount = &mounts[&format!("{kv}/")];
    assert_eq!(mount.mount_type, "kv");
    assert_eq!(
        mount
            .options
            .as_ref()
            .and_then(|o| o.get("version"))
            .map(String::as_str),
        Some("2")
    );
    let policy = vaultrs::sys::policy::read(&root, enclave::backends::vault::OPERATOR_POLICY)
        .await
        .unwrap();
    assert_eq!(
        policy.rules,
        enclave::builders::operator_policy(&kv, &auth, "")
    );
    assert!(!enclave::backends::vault::OPERATOR_POLICY.starts_with("enclave-"));

    // The operator's ServiceAccount logs in with the role and gets the policy.
    let sa_token = cp
        .token(
            crate::control_plane::OPERATOR_NAMESPACE,
            crate::control_plane::OPERATOR_ACCOUNT,
            &[],
        )
        .await;
    let anonymous = client(&addr, "");
    let login = vaultrs::auth::kubernetes::login(&anonymous, &auth, "enclave", &sa_token)
        .await
        .unwrap();
    assert!(
        login.policies.contains(&"enclave".to_owned()),
        "{:?}",
        login.policies
    );
    // Another account of the same namespace is refused.
    let other = cp
        .token(
            crate::control_plane::OPERATOR_NAMESPACE,
            "enclave-storage-prep",
            &[],
        )
        .await;
    assert!(
        vaultrs::auth::kubernetes::login(&anonymous, &auth, "enclave", &other)
            .await
            .is_err()
    );

    // A KV version 1 mount where the configuration names the KV mount is
    // refused, untouched.
    let v1 = format!("kv1-{tag}");
    vaultrs::sys::mount::enable(&root, &v1, "kv", None)
        .await
        .unwrap();
    std::fs::write(
        &config,
        format!("vault:\n  address: {addr}\n  kvMount: {v1}\n  authMount: {auth}\n"),
    )
    .unwrap();
    let (ok, out) = vault_setup(&config, &[]);
    assert!(!ok);
    assert!(out.contains("Enclave needs kv v2"), "{out}");
    let mounts = vaultrs::sys::mount::list(&root).await.unwrap();
    assert!(
        mounts[&format!("{v1}/")]
            .options
            .as_ref()
            .and_then(|o| o.get("version"))
            .is_none_or(|v| v == "1")
    );
}
