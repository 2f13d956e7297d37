//! The database backends: Dedicated against moto (through a recording,
//! throttling proxy), Shared against real PostgreSQL, both with real OpenBao
//! as the credential store.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc, time::Duration};

use aws_sdk_rds::config::{BehaviorVersion, Credentials, Region};
use enclave::{
    backends::{
        database::{
            CallLimits, DatabaseBackend, DatabaseError, Deletion, Phase, RdsDatabase,
            SharedPostgres, Step,
        },
        vault::{VaultAuth, VaultBackend, VaultClientBackend, VaultSettings},
    },
    builders::{CompanyContext, DatabaseRequest, Observed, database_request},
    config::{OperatorConfig, SharedDatabase},
    crd::{Company, DeletionPolicy},
};
use serde_json::json;

use crate::{aws_proxy, support::service};

fn tag() -> String {
    crate::support::unique("d")
}

async fn vault() -> Arc<VaultClientBackend> {
    let address = service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
    let token = service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
    let settings = VaultSettings {
        address,
        kv_mount: "secret".into(),
        auth_mount: "kubernetes".into(),
        ca_cert: None,
        auth: VaultAuth::Token(token),
    };
    Arc::new(VaultClientBackend::connect(settings).await.unwrap())
}

/// The request of Company `name` with `spec`, uid `uid`, no subnet group (moto checks it exists).
fn request(name: &str, spec: serde_json::Value, uid: &str) -> DatabaseRequest {
    let mut company = Company::new(name, serde_json::from_value(spec).unwrap());
    company.metadata.uid = Some(uid.to_owned());
    let mut config = OperatorConfig::default();
    config.database.subnet_group = String::new();
    database_request(&CompanyContext::new(&company, &config, Observed::default()))
}

// ---------- Dedicated: RDS on moto ----------

fn rds_config(endpoint: &str) -> aws_sdk_rds::Config {
    aws_sdk_rds::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .build()
}

struct Rds {
    proxy: aws_proxy::AwsProxy,
    /// Straight to moto, for checks that must not pass the backend's gate.
    direct: aws_sdk_rds::Client,
    vault: Arc<VaultClientBackend>,
}

async fn rds() -> Rds {
    let moto = service(
        "ENCLAVE_TEST_AWS_ENDPOINT",
        "moto_server (the AWS API emulator)",
    );
    let vault = vault().await;
    let proxy = aws_proxy::start(&moto).await;
    Rds {
        proxy,
        direct: aws_sdk_rds::Client::from_conf(rds_config(&moto)),
        vault,
    }
}

fn fast_limits() -> CallLimits {
    CallLimits {
        max_per_second: 50.0,
        base_backoff: Duration::from_millis(20),
        ..CallLimits::default()
    }
}

impl Rds {
    fn backend(&self, limits: CallLimits) -> RdsDatabase<VaultClientBackend> {
        RdsDatabase::new(
            &rds_config(&self.proxy.url),
            Arc::clone(&self.vault),
            limits,
        )
    }

    async fn instances(&self, identifier: &str) -> Vec<aws_sdk_rds::types::DbInstance> {
        match self
            .direct
            .describe_db_instances()
            .db_instance_identifier(identifier)
            .send()
            .await
        {
            Ok(out) => out.db_instances().to_vec(),
            Err(_) => vec![],
        }
    }
}

fn dedicated_spec() -> serde_json::Value {
    json!({"database": {"mode": "Dedicated", "instanceClass": "db.t4g.micro", "allocatedStorageGiB": 30, "backupRetentionDays": 3}})
}

#[tokio::test]
async fn dedicated_instance_is_created_once_with_tags_encryption_and_settings() {
    let env = rds().await;
    let name = tag();
    let req = request(&name, dedicated_spec(), &format!("uid-{name}"));
    let db = env.backend(fast_limits());
    let state = db.ensure(&req, None).await.unwrap();
    assert_eq!(state.identifier, format!("enclave-{name}"));
    assert_eq!(state.credentials_version, Some(1));
    let found = env.instances(&req.instance.identifier).await;
    assert_eq!(found.len(), 1);
    let i = &found[0];
    assert_eq!(i.storage_encrypted(), Some(true));
    assert_eq!(i.publicly_accessible(), Some(false));
    assert_eq!(i.db_instance_class(), Some("db.t4g.micro"));
    assert_eq!(i.allocated_storage(), Some(30));
    assert_eq!(i.backup_retention_period(), Some(3));
    assert_eq!(i.master_username(), Some("enclave_admin"));
    let tags: BTreeMap<_, _> = i
        .tag_list()
        .iter()
        .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
        .collect();
    assert_eq!(tags, req.tags);

    let before = env.proxy.seen().len();
    let again = db.ensure(&req, state.credentials_version).await.unwrap();
    assert_eq!(again.phase, Phase::Available);
    let actions = env.proxy.actions_since(before);
    assert!(
        !actions
            .iter()
            .any(|a| a.contains("Create") || a.contains("Modify")),
        "{actions:?}"
    );
    assert_eq!(env.instances(&req.instance.identifier).await.len(), 1);
}

#[tokio::test]
async fn an_instance_that_is_not_ours_is_refused_and_left_untouched() {
    let env = rds().await;
    let name = tag();
    let req = request(&name, dedicated_spec(), &format!("uid-{name}"));
    env.direct
        .create_db_instance()
        .db_instance_identifier(&req.instance.identifier)
        .db_instance_class("db.m5.large")
        .engine("postgres")
        .master_username("someone")
        .master_user_password("their-own-password-123")
        .allocated_storage(100)
        .send()
        .await
        .unwrap();
    let db = env.backend(fast_limits());
    let before = env.proxy.seen().len();
    let err = db.ensure(&req, None).await.unwrap_err();
    assert!(matches!(err, DatabaseError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("will not touch it"), "{err}");
    let mut deleting = req.clone();
    deleting.deletion_policy = DeletionPolicy::Delete;
    assert!(matches!(
        db.delete(&deleting).await.unwrap_err(),
        DatabaseError::Conflict { .. }
    ));
    let actions = env.proxy.actions_since(before);
    assert!(
        actions.iter().all(|a| a == "DescribeDBInstances"),
        "only looked: {actions:?}"
    );
    let i = &env.instances(&req.instance.identifier).await[0];
    assert_eq!(
        (
            i.db_instance_class(),
            i.allocated_storage(),
            i.master_username()
        ),
        (Some("db.m5.large"), Some(100), Some("someone"))
    );
}

#[tokio::test]
async fn dedicated_crash_after_each_step_converges_to_one_instance() {
    let env = rds().await;
    let mut table = String::from(
        "crash after          | then            | instances | credentials version (vault = instance)\n",
    );
    for step in [
        Step::CredentialsWritten,
        Step::InstanceCreated,
        Step::PasswordApplied,
    ] {
        let name = tag();
        let req = request(&name, dedicated_spec(), &format!("uid-{name}"));
        let mut applied = None;
        if step == Step::PasswordApplied {
            // A rotation: v1 is applied, v2 is written, the crash hits after applying it.
            applied = env
                .backend(fast_limits())
                .ensure(&req, None)
                .await
                .unwrap()
                .credentials_version;
            env.vault
                .rotate_credentials(&req.credentials_path)
                .await
                .unwrap();
        }
        let crashing = env
            .backend(fast_limits())
            .with_crash_hook(Arc::new(move |s| s == step));
        let err = crashing.ensure(&req, applied).await.unwrap_err();
        assert!(
            matches!(err, DatabaseError::Interrupted(s) if s == step),
            "{err}"
        );
        // The status write never happened: the next reconcile starts from `applied`.
        let state = env
            .backend(fast_limits())
            .ensure(&req, applied)
            .await
            .unwrap();
        let count = env.instances(&req.instance.identifier).await.len();
        let stored = env
            .vault
            .ensure_credentials(&req.credentials_path, &req.username)
            .await
            .unwrap();
        assert_eq!(count, 1, "{step}");
        assert_eq!(state.credentials_version, Some(stored.version), "{step}");
        let _ = writeln!(
            table,
            "{:<20} | fresh ensure ok | {count:>9} | v{} = v{}",
            step.to_string(),
            stored.version,
            state.credentials_version.unwrap()
        );
    }
    println!("{table}");
}

#[tokio::test]
async fn throttling_is_retried_with_backoff_within_the_call_rate() {
    let env = rds().await;
    let limits = CallLimits {
        max_per_second: 4.0,
        base_backoff: Duration::from_millis(50),
        ..CallLimits::default()
    };
    let db = env.backend(limits.clone());
    env.proxy.throttle_every(2);
    let name = tag();
    let mut req = request(&name, dedicated_spec(), &format!("uid-{name}"));
    let state = db.ensure(&req, None).await.unwrap();
    let state = db.ensure(&req, state.credentials_version).await.unwrap();
    req.deletion_policy = DeletionPolicy::Delete;
    assert!(matches!(
        db.delete(&req).await.unwrap(),
        Deletion::Deleted { .. }
    ));
    env.proxy.throttle_every(0);
    assert_eq!(state.phase, Phase::Available);
    let seen = env.proxy.seen();
    let throttled = seen.iter().filter(|s| s.throttled).count();
    let gate = db.calls();
    // The busiest one-second window, over every attempt that reached "AWS".
    let busiest = seen
        .iter()
        .map(|a| {
            seen.iter()
                .filter(|b| b.at >= a.at && b.at.duration_since(a.at) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    println!(
        "throttling: {} requests, {throttled} throttled, {} retried by the gate, busiest 1 s window {busiest} calls (limit {}/s)",
        seen.len(),
        gate.retried,
        limits.max_per_second
    );
    assert!(throttled > 0 && gate.retried >= u64::try_from(throttled).unwrap());
    assert!(
        busiest <= 5,
        "the gate allows 4 calls per second (+1 at a window's edge), saw {busiest}"
    );
}

#[tokio::test]
async fn dedicated_delete_follows_the_deletion_policy() {
    let env = rds().await;
    let db = env.backend(fast_limits());
    for policy in [
        DeletionPolicy::Snapshot,
        DeletionPolicy::Delete,
        DeletionPolicy::Retain,
    ] {
        let name = tag();
        let mut req = request(&name, dedicated_spec(), &format!("uid-{name}"));
        req.deletion_policy = policy;
        db.ensure(&req, None).await.unwrap();
        let outcome = db.delete(&req).await.unwrap();
        let remaining = env.instances(&req.instance.identifier).await.len();
        let snapshot = env
            .direct
            .describe_db_snapshots()
            .db_snapshot_identifier(&req.instance.final_snapshot)
            .send()
            .await
            .map_or(0, |o| o.db_snapshots().len());
        println!("{policy:?}: {outcome:?}, instances left {remaining}, final snapshot {snapshot}");
        match policy {
            DeletionPolicy::Snapshot => {
                assert_eq!(
                    outcome,
                    Deletion::Deleted {
                        snapshot: Some(req.instance.final_snapshot.clone())
                    }
                );
                assert_eq!((remaining, snapshot), (0, 1));
            }
            DeletionPolicy::Delete => {
                assert_eq!(outcome, Deletion::Deleted { snapshot: None });
                assert_eq!((remaining, snapshot), (0, 0));
            }
            DeletionPolicy::Retain => {
                assert_eq!(outcome, Deletion::Retained);
                assert_eq!((remaining, snapshot), (1, 0));
            }
        }
    }
}

#[tokio::test]
async fn dedicated_drift_is_applied_or_reported() {
    let env = rds().await;
    let name = tag();
    let uid = format!("uid-{name}");
    let db = env.backend(fast_limits());
    let state = db
        .ensure(&request(&name, dedicated_spec(), &uid), None)
        .await
        .unwrap();
    let changed = request(
        &name,
        json!({"database": {"mode": "Dedicated", "instanceClass": "db.t4g.large", "allocatedStorageGiB": 20, "backupRetentionDays": 7}}),
        &uid,
    );
    let after = db
        .ensure(&changed, state.credentials_version)
        .await
        .unwrap();
    let i = &env.instances(&changed.instance.identifier).await[0];
    assert_eq!(i.db_instance_class(), Some("db.t4g.large"));
    assert_eq!(i.backup_retention_period(), Some(7));
    assert_eq!(i.allocated_storage(), Some(30), "storage is never shrunk");
    assert!(
        after.unapplied.iter().any(|u| u.contains("cannot shrink")),
        "{:?}",
        after.unapplied
    );
}

// ---------- Shared: PostgreSQL ----------

struct Pg {
    host: String,
    port: u16,
    admin: tokio_postgres::Client,
    vault: Arc<VaultClientBackend>,
    settings: SharedDatabase,
}

async fn connect(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn pg() -> Pg {
    let conninfo = service("ENCLAVE_TEST_POSTGRES", "a PostgreSQL server");
    let vault = vault().await;
    let field = |key: &str| {
        conninfo
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap()
            .to_owned()
    };
    let (host, port) = (field("host"), field("port").parse().unwrap());
    let admin = connect(&host, port, &field("user"), &field("password"), "postgres")
        .await
        .unwrap();
    let path = format!("enclave/pg-admin-{}", tag());
    let token = service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
    let addr = service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
    let root = crate::support::vault_client(&addr, &token);
    let creds = BTreeMap::from([("username", field("user")), ("password", field("password"))]);
    vaultrs::kv2::set(&root, "secret", &path, &creds)
        .await
        .unwrap();
    let settings = SharedDatabase {
        name: "shared".into(),
        host: host.clone(),
        port,
        admin_credentials_path: path,
        tls: false,
        ca_file: String::new(),
    };
    Pg {
        host,
        port,
        admin,
        vault,
        settings,
    }
}

impl Pg {
    fn backend(&self) -> SharedPostgres<VaultClientBackend> {
        SharedPostgres::new(self.settings.clone(), Arc::clone(&self.vault))
    }

    async fn login(
        &self,
        req: &DatabaseRequest,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let creds = self
            .vault
            .ensure_credentials(&req.credentials_path, &req.username)
            .await
            .unwrap();
        connect(
            &self.host,
            self.port,
            &creds.username,
            creds.password.expose(),
            db,
        )
        .await
    }

    async fn count(&self, sql: &str, name: &str) -> i64 {
        self.admin.query_one(sql, &[&name]).await.unwrap().get(0)
    }

    async fn roles(&self, name: &str) -> i64 {
        self.count("SELECT count(*) FROM pg_roles WHERE rolname = $1", name)
            .await
    }

    async fn databases(&self, name: &str) -> i64 {
        self.count("SELECT count(*) FROM pg_database WHERE datname = $1", name)
            .await
    }
}

fn shared(name: &str) -> DatabaseRequest {
    request(
        name,
        json!({"database": {"mode": "Shared"}}),
        &format!("uid-{name}"),
    )
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| e.to_string(), |c| c.code().to_owned())
}

#[tokio::test]
async fn shared_credentials_reach_only_their_own_database() {
    let env = pg().await;
    let (a, b) = (shared(&tag()), shared(&format!("{}-b", tag())));
    let db = env.backend();
    db.ensure(&a, None).await.unwrap();
    let state_b = db.ensure(&b, None).await.unwrap();
    assert_eq!(state_b.database_name, b.database_name);

    let own = env
        .login(&a, &a.database_name)
        .await
        .expect("A logs in to A");
    let row = own
        .query_one("SELECT current_database()::text, current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        (a.database_name.clone(), a.username.clone())
    );
    own.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("A owns its database");
    // The password never travelled in SQL text: the statements PostgreSQL
    // recorded hold its SCRAM verifier only.
    let password = env
        .vault
        .ensure_credentials(&a.credentials_path, &a.username)
        .await
        .unwrap()
        .password
        .expose()
        .to_owned();
    env.admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .unwrap();
    let recorded: Vec<String> = env
        .admin
        .query(
            "SELECT query FROM pg_stat_statements WHERE query LIKE '%ROLE%' AND query LIKE $1",
            &[&format!("%{}%", a.username)],
        )
        .await
        .expect("pg_stat_statements is loaded (e2e/run-tests.sh starts PostgreSQL with it)")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        recorded.iter().any(|q| q.contains("SCRAM-SHA-256$")),
        "the role's statement was recorded: {recorded:?}"
    );
    assert!(
        recorded.iter().all(|q| !q.contains(&password)),
        "{recorded:?}"
    );

    let err = env
        .login(&a, &b.database_name)
        .await
        .expect_err("A is refused on B");
    assert_eq!(sqlstate(&err), "42501", "{err}");
    let probe = format!("probe_{}", tag());
    env.admin
        .batch_execute(&format!(
            "CREATE ROLE {probe} LOGIN PASSWORD 'probe-password'"
        ))
        .await
        .unwrap();
    let err = connect(
        &env.host,
        env.port,
        &probe,
        "probe-password",
        &a.database_name,
    )
    .await
    .expect_err("PUBLIC is refused");
    assert_eq!(sqlstate(&err), "42501", "{err}");

    let before = db.statements();
    db.ensure(&a, Some(1)).await.unwrap();
    assert_eq!(
        db.statements(),
        before,
        "an unchanged company costs no statements"
    );
    assert_eq!(db.connections(), 1, "one admin connection, kept");
}

#[tokio::test]
async fn the_admin_connection_is_renewed_when_its_credentials_change_or_it_drops() {
    let env = pg().await;
    let db = env.backend();
    db.ensure(&shared(&tag()), None).await.unwrap();
    assert_eq!(db.connections(), 1);

    // The platform rotates the admin to another role: the next call logs
    // in as that one.
    let admin = format!("admin_{}", tag().replace('-', "_"));
    env.admin
        .batch_execute(&format!(
            "CREATE ROLE {admin} SUPERUSER LOGIN PASSWORD 'rotated-password'"
        ))
        .await
        .unwrap();
    let token = service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
    let addr = service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
    let root = crate::support::vault_client(&addr, &token);
    let creds = BTreeMap::from([
        ("username", admin.as_str()),
        ("password", "rotated-password"),
    ]);
    vaultrs::kv2::set(
        &root,
        "secret",
        &env.settings.admin_credentials_path,
        &creds,
    )
    .await
    .unwrap();
    let b = shared(&format!("{}-b", tag()));
    db.ensure(&b, None).await.unwrap();
    assert_eq!(db.connections(), 2);
    let sessions = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1";
    assert_eq!(
        env.count(sessions, &admin).await,
        1,
        "the new admin's session is kept"
    );

    // Its session ends (a restart, a failover): the next call connects again.
    env.admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&admin],
        )
        .await
        .unwrap();
    // At once: the call may find out only when its statement fails, and
    // then runs again on a new connection.
    db.ensure(&b, Some(1))
        .await
        .expect("a dropped connection is replaced, not reported");
    assert_eq!(db.connections(), 3);
    // A conflict is the request's, not the session's: the session stays.
    let foreign = shared(&format!("{}-foreign", tag()));
    env.admin
        .batch_execute(&format!("CREATE ROLE {} LOGIN", foreign.username))
        .await
        .unwrap();
    let err = db
        .ensure(&foreign, None)
        .await
        .expect_err("a role not ours");
    assert!(matches!(err, DatabaseError::Conflict { .. }), "{err}");
    db.ensure(&b, Some(1)).await.unwrap();
    assert_eq!(db.connections(), 3);

    drop(db);
    let _ = env
        .admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&admin],
        )
        .await;
    let _ = env.admin.batch_execute(&format!("DROP ROLE {admin}")).await;
}

#[tokio::test]
async fn shared_crash_after_each_step_converges_and_the_credentials_work() {
    let env = pg().await;
    let mut table = String::from(
        "crash after          | roles | databases | login with Vault credentials | PUBLIC can connect\n",
    );
    for step in [
        Step::CredentialsWritten,
        Step::RoleCreated,
        Step::DatabaseCreated,
        Step::Granted,
    ] {
        let req = shared(&tag());
        let crashing = env.backend().with_crash_hook(Arc::new(move |s| s == step));
        let err = crashing.ensure(&req, None).await.unwrap_err();
        assert!(
            matches!(err, DatabaseError::Interrupted(s) if s == step),
            "{err}"
        );
        env.backend().ensure(&req, None).await.unwrap();
        let (roles, dbs) = (
            env.roles(&req.username).await,
            env.databases(&req.database_name).await,
        );
        let login = env.login(&req, &req.database_name).await.is_ok();
        let public: bool = env
            .admin
            .query_one(
                "SELECT has_database_privilege('public', $1, 'CONNECT')",
                &[&req.database_name],
            )
            .await
            .unwrap()
            .get(0);
        let _ = writeln!(
            table,
            "{:<20} | {roles:>5} | {dbs:>9} | {login:<28} | {public}",
            step.to_string()
        );
        assert_eq!((roles, dbs, login, public), (1, 1, true, false), "{step}");
    }
    println!("{table}");
}

#[tokio::test]
async fn hostile_names_stay_inside_their_quotes() {
    let env = pg().await;
    let db = env.backend();
    let hostile = [
        "x\"; DROP ROLE postgres; --",
        "a'b",
        "Robert'); DROP TABLE students;--",
        "$1",
        "back\\slash",
        "ü-ñ \"quoted\"",
    ];
    for name in hostile {
        let mut req = shared(&tag());
        req.username = format!("{name} r");
        req.database_name = format!("{name} d");
        req.deletion_policy = DeletionPolicy::Delete;
        db.ensure(&req, None)
            .await
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(
            env.roles(&req.username).await,
            1,
            "{name:?}: the role has exactly the hostile name"
        );
        assert_eq!(env.databases(&req.database_name).await, 1, "{name:?}");
        assert!(
            env.login(&req, &req.database_name).await.is_ok(),
            "{name:?}"
        );
        db.delete(&req).await.unwrap();
        assert_eq!(
            (
                env.roles(&req.username).await,
                env.databases(&req.database_name).await
            ),
            (0, 0)
        );
    }
    assert_eq!(env.roles("postgres").await, 1, "the superuser survived");
    let mut long = shared(&tag());
    long.username = "x".repeat(64);
    assert!(matches!(
        db.ensure(&long, None).await.unwrap_err(),
        DatabaseError::Unsafe { .. }
    ));
}

#[tokio::test]
async fn shared_delete_follows_the_deletion_policy_and_rotation_changes_the_password() {
    let env = pg().await;
    let db = env.backend();
    for policy in [
        DeletionPolicy::Retain,
        DeletionPolicy::Snapshot,
        DeletionPolicy::Delete,
    ] {
        let mut req = shared(&tag());
        req.deletion_policy = policy;
        db.ensure(&req, None).await.unwrap();
        let outcome = db.delete(&req).await.unwrap();
        let left = (
            env.roles(&req.username).await,
            env.databases(&req.database_name).await,
        );
        println!("{policy:?}: {outcome:?}, role/database left {left:?}");
        match policy {
            DeletionPolicy::Retain => assert_eq!((outcome, left), (Deletion::Retained, (1, 1))),
            DeletionPolicy::Snapshot => {
                assert_eq!((outcome, left), (Deletion::RoleDropped, (0, 1)));
            }
            DeletionPolicy::Delete => assert_eq!(
                (outcome, left),
                (Deletion::Deleted { snapshot: None }, (0, 0))
            ),
        }
    }

    let req = shared(&tag());
    let first = db.ensure(&req, None).await.unwrap();
    let old = env
        .vault
        .ensure_credentials(&req.credentials_path, &req.username)
        .await
        .unwrap();
    let new = env
        .vault
        .rotate_credentials(&req.credentials_path)
        .await
        .unwrap();
    let rotated = db.ensure(&req, first.credentials_version).await.unwrap();
    assert_eq!(rotated.credentials_version, Some(new.version));
    assert!(
        env.login(&req, &req.database_name).await.is_ok(),
        "the new password works"
    );
    let err = connect(
        &env.host,
        env.port,
        &old.username,
        old.password.expose(),
        &req.database_name,
    )
    .await
    .expect_err("the old one does not");
    assert_eq!(sqlstate(&err), "28P01", "{err}");
}
