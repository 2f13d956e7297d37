//! Shared mode: a database and a login role per company inside the
//! operator's shared PostgreSQL (or RDS) instance.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use postgres_protocol::password::scram_sha_256;
use tokio_postgres::{Client, NoTls, config::SslMode};

use super::{
    CrashHook, DatabaseBackend, DatabaseError, DatabaseState, Deletion, Phase, Step, checkpoint,
    sql::{check_identifier, quote_ident, quote_literal},
};
use crate::{
    backends::vault::{StoredCredentials, VaultBackend, VaultError},
    builders::DatabaseRequest,
    config::SharedDatabase,
    crd::DeletionPolicy,
};

/// [`DatabaseBackend`] for `Shared` companies.
pub struct SharedPostgres<V> {
    vault: Arc<V>,
    settings: SharedDatabase,
    crash: Option<CrashHook>,
    statements: AtomicU64,
    /// The connection to the maintenance database, kept between calls,
    /// with a digest of the admin credentials it logged in with.
    admin: Mutex<Option<(u64, Arc<Client>)>>,
    connections: AtomicU64,
}

fn pg(operation: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> DatabaseError {
    let operation = operation.into();
    move |source| DatabaseError::Postgres { operation, source }
}

/// The comment that marks a role as this Company's.
fn marker(req: &DatabaseRequest) -> String {
    format!(
        "managed-by enclave; company {}; uid {}",
        req.company, req.company_uid
    )
}

impl<V: VaultBackend> SharedPostgres<V> {
    /// A backend on the shared instance of `settings`.
    pub fn new(settings: SharedDatabase, vault: Arc<V>) -> Self {
        Self {
            vault,
            settings,
            crash: None,
            statements: AtomicU64::new(0),
            admin: Mutex::default(),
            connections: AtomicU64::new(0),
        }
    }

    /// Simulates a crash after the step `hook` picks (tests).
    #[must_use]
    pub fn with_crash_hook(mut self, hook: CrashHook) -> Self {
        self.crash = Some(hook);
        self
    }

    /// Statements that changed something, so far.
    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }

    /// Connections opened so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// The admin's username and password, as Vault holds them now.
    async fn admin_credentials(&self) -> Result<(String, String), DatabaseError> {
        let path = &self.settings.admin_credentials_path;
        let mut admin = self.vault.read_platform_secret(path).await?;
        let (Some(user), Some(password)) = (admin.remove("username"), admin.remove("password"))
        else {
            return Err(VaultError::Malformed {
                path: path.clone(),
                reason: "needs username and password".into(),
            }
            .into());
        };
        Ok((user, password))
    }

    /// A connection to the maintenance database as the admin Vault names
    /// now: the one kept from an earlier call while it is open and the
    /// credentials are the same, a new one otherwise. A new connection
    /// costs PostgreSQL a backend process and both sides 4,096 rounds of
    /// SCRAM; one per Company reconcile was most of the operator's
    /// PostgreSQL cost. Callers use it concurrently (tokio-postgres
    /// pipelines their statements) and [`Self::discard_after`] an error.
    async fn admin(&self) -> Result<Arc<Client>, DatabaseError> {
        let (user, password) = self.admin_credentials().await?;
        let login = {
            let mut hasher = DefaultHasher::new();
            (&user, &password).hash(&mut hasher);
            hasher.finish()
        };
        let kept = self.admin.lock().ok().and_then(|slot| {
            slot.as_ref()
                .filter(|(l, client)| *l == login && !client.is_closed())
                .map(|(_, client)| Arc::clone(client))
        });
        if let Some(client) = kept {
            return Ok(client);
        }
        let client = Arc::new(self.connect_as(&user, &password, "postgres").await?);
        if let Ok(mut slot) = self.admin.lock() {
            *slot = Some((login, Arc::clone(&client)));
        }
        Ok(client)
    }

    /// Stops keeping `client` (if it is the one kept) after an error from
    /// PostgreSQL: its session's state is unknown, and the next call
    /// connects afresh. A conflict or a refused name leaves it kept.
    fn discard_after<T>(&self, client: &Arc<Client>, result: &Result<T, DatabaseError>) {
        if !matches!(result, Err(DatabaseError::Postgres { .. })) {
            return;
        }
        if let Ok(mut slot) = self.admin.lock()
            && slot
                .as_ref()
                .is_some_and(|(_, kept)| Arc::ptr_eq(kept, client))
        {
            *slot = None;
        }
    }

    /// Whether `result` failed because the kept session had ended (a
    /// restart, an idle timeout) before the call knew: then it runs once
    /// more, on a new connection (every call is safe to repeat).
    fn session_ended<T>(result: &Result<T, DatabaseError>) -> bool {
        matches!(result, Err(DatabaseError::Postgres { source, .. }) if source.is_closed())
    }

    /// A new connection to `dbname` as the admin.
    async fn connect(&self, dbname: &str) -> Result<Client, DatabaseError> {
        let (user, password) = self.admin_credentials().await?;
        self.connect_as(&user, &password, dbname).await
    }

    async fn connect_as(
        &self,
        user: &str,
        password: &str,
        dbname: &str,
    ) -> Result<Client, DatabaseError> {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.settings.host)
            .port(self.settings.port)
            .user(user)
            .password(password)
            .dbname(dbname)
            .application_name("enclave")
            .connect_timeout(Duration::from_secs(10))
            // A kept session whose server went silent (a failover, a
            // dropped route) is found dead in about half a minute, not
            // after the kernel's 15 minutes of retransmissions.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(30));
        let target = format!("{}:{}/{dbname}", self.settings.host, self.settings.port);
        let client = if self.settings.tls {
            config.ssl_mode(SslMode::Require);
            let (client, connection) = config
                .connect(self.tls()?)
                .await
                .map_err(pg(format!("connect to {target}")))?;
            tokio::spawn(connection);
            client
        } else {
            let (client, connection) = config
                .connect(NoTls)
                .await
                .map_err(pg(format!("connect to {target}")))?;
            tokio::spawn(connection);
            client
        };
        // One statement stuck on a lock must not hold up the other
        // Companies' statements queued behind it on the kept session.
        client
            .batch_execute(
                "SET standard_conforming_strings = on; \
                 SET lock_timeout = '30s'; SET statement_timeout = '5min'",
            )
            .await
            .map_err(pg("configure the session"))?;
        Ok(client)
    }

    fn tls(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DatabaseError> {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        if self.settings.ca_file.is_empty() {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        } else {
            let certs = CertificateDer::pem_file_iter(&self.settings.ca_file)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| {
                    DatabaseError::Config(format!(
                        "cannot read database.shared.caFile {}: {e}",
                        self.settings.ca_file
                    ))
                })?;
            for cert in certs {
                roots.add(cert).map_err(|e| {
                    DatabaseError::Config(format!("bad CA in {}: {e}", self.settings.ca_file))
                })?;
            }
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }

    async fn execute(&self, client: &Client, sql: &str, what: &str) -> Result<(), DatabaseError> {
        self.statements.fetch_add(1, Ordering::Relaxed);
        client.batch_execute(sql).await.map_err(pg(what))
    }

    fn check_names(req: &DatabaseRequest) -> Result<(), DatabaseError> {
        for (what, name) in [("role", &req.username), ("database", &req.database_name)] {
            check_identifier(name).map_err(|reason| DatabaseError::Unsafe {
                what,
                name: name.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    /// The role's ownership comment, if the role exists.
    async fn role_marker(
        client: &Client,
        role: &str,
    ) -> Result<Option<Option<String>>, DatabaseError> {
        let row = client
            .query_opt(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .map_err(pg("look up the role"))?;
        Ok(row.map(|r| r.get::<_, Option<String>>(0)))
    }

    async fn database_owner(
        client: &Client,
        database: &str,
    ) -> Result<Option<String>, DatabaseError> {
        let row = client
            .query_opt(
                "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
                &[&database],
            )
            .await
            .map_err(pg("look up the database"))?;
        Ok(row.map(|r| r.get::<_, String>(0)))
    }

    fn not_ours(what: &'static str, name: &str, reason: String) -> DatabaseError {
        DatabaseError::Conflict {
            what,
            name: name.to_owned(),
            reason,
        }
    }
}

impl<V: VaultBackend> SharedPostgres<V> {
    /// [`DatabaseBackend::ensure`] once the credentials are in Vault, on
    /// the admin connection `admin`.
    async fn ensure_on(
        &self,
        admin: &Client,
        req: &DatabaseRequest,
        applied_version: Option<u64>,
        creds: &StoredCredentials,
    ) -> Result<DatabaseState, DatabaseError> {
        let role = quote_ident(&req.username);
        let database = quote_ident(&req.database_name);
        // The SCRAM verifier, computed here, never the password: statement
        // logs and pg_stat_statements see only what PostgreSQL stores anyway.
        // Only when a role is created or its password set: it costs 4,096
        // rounds of HMAC, and a converged Company's check needs none.
        let password = || quote_literal(&scram_sha_256(creds.password.expose().as_bytes()));
        let mut version = applied_version;
        match Self::role_marker(admin, &req.username).await? {
            None => {
                // One transaction: the role never exists without its marker.
                // Statements sent as one simple query commit together or not
                // at all, and a failure leaves the kept session idle (an
                // explicit BEGIN would leave it in an aborted transaction).
                let sql = format!(
                    "CREATE ROLE {role} LOGIN PASSWORD {}; COMMENT ON ROLE {role} IS {};",
                    password(),
                    quote_literal(&marker(req))
                );
                self.execute(admin, &sql, "create the login role").await?;
                version = Some(creds.version);
                checkpoint(self.crash.as_ref(), Step::RoleCreated)?;
            }
            Some(comment) if comment.as_deref() != Some(marker(req).as_str()) => {
                return Err(Self::not_ours(
                    "role",
                    &req.username,
                    format!("its comment is {comment:?}"),
                ));
            }
            Some(_) if applied_version != Some(creds.version) => {
                self.execute(
                    admin,
                    &format!("ALTER ROLE {role} WITH LOGIN PASSWORD {}", password()),
                    "set the role's password",
                )
                .await?;
                version = Some(creds.version);
                checkpoint(self.crash.as_ref(), Step::PasswordApplied)?;
            }
            Some(_) => {}
        }
        match Self::database_owner(admin, &req.database_name).await? {
            None => {
                self.execute(
                    admin,
                    &format!("CREATE DATABASE {database} OWNER {role}"),
                    "create the database",
                )
                .await?;
                checkpoint(self.crash.as_ref(), Step::DatabaseCreated)?;
            }
            // The role is ours (marker), so a database it owns is ours too.
            Some(owner) if owner != req.username => {
                return Err(Self::not_ours(
                    "database",
                    &req.database_name,
                    format!("it is owned by {owner:?}"),
                ));
            }
            Some(_) => {}
        }
        let public: bool = admin
            .query_one(
                "SELECT has_database_privilege('public', $1, 'CONNECT')",
                &[&req.database_name],
            )
            .await
            .map_err(pg("check PUBLIC's access"))?
            .get(0);
        if public {
            self.execute(
                admin,
                &format!("REVOKE ALL ON DATABASE {database} FROM PUBLIC"),
                "revoke PUBLIC's access",
            )
            .await?;
            checkpoint(self.crash.as_ref(), Step::Granted)?;
        }
        Ok(DatabaseState {
            identifier: self.settings.name.clone(),
            endpoint: Some(self.settings.host.clone()),
            port: Some(i32::from(self.settings.port)),
            database_name: req.database_name.clone(),
            credentials_path: req.credentials_path.clone(),
            phase: Phase::Available,
            credentials_version: version,
            unapplied: vec![],
        })
    }

    /// [`DatabaseBackend::delete`] of a role and database not retained, on
    /// the admin connection `admin`.
    async fn delete_on(
        &self,
        admin: &Client,
        req: &DatabaseRequest,
    ) -> Result<Deletion, DatabaseError> {
        let role = quote_ident(&req.username);
        let database = quote_ident(&req.database_name);
        let role_exists = match Self::role_marker(admin, &req.username).await? {
            Some(comment) if comment.as_deref() != Some(marker(req).as_str()) => {
                return Err(Self::not_ours(
                    "role",
                    &req.username,
                    format!("its comment is {comment:?}"),
                ));
            }
            found => found.is_some(),
        };
        let owner = Self::database_owner(admin, &req.database_name).await?;
        match req.deletion_policy {
            DeletionPolicy::Snapshot => {
                if role_exists {
                    if owner.is_some() {
                        // Keep the data: hand the role's objects to the admin.
                        let company_db = self.connect(&req.database_name).await?;
                        self.execute(
                            &company_db,
                            &format!(
                                "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role};"
                            ),
                            "hand over the role's objects",
                        )
                        .await?;
                    }
                    self.execute(admin, &format!("DROP ROLE {role}"), "drop the login role")
                        .await?;
                }
                Ok(Deletion::RoleDropped)
            }
            DeletionPolicy::Delete | DeletionPolicy::Retain => {
                match owner {
                    // Only a database the company's own role owns is dropped;
                    // one handed over earlier (Snapshot) is no longer Enclave's.
                    Some(owner) if owner == req.username => {
                        self.execute(
                            admin,
                            &format!("DROP DATABASE {database} WITH (FORCE)"),
                            "drop the database",
                        )
                        .await?;
                    }
                    Some(owner) => {
                        return Err(Self::not_ours(
                            "database",
                            &req.database_name,
                            format!("it is owned by {owner:?}"),
                        ));
                    }
                    None => {}
                }
                if role_exists {
                    self.execute(admin, &format!("DROP ROLE {role}"), "drop the login role")
                        .await?;
                }
                Ok(Deletion::Deleted { snapshot: None })
            }
        }
    }
}

impl<V: VaultBackend> DatabaseBackend for SharedPostgres<V> {
    async fn ensure(
        &self,
        req: &DatabaseRequest,
        applied_version: Option<u64>,
    ) -> Result<DatabaseState, DatabaseError> {
        Self::check_names(req)?;
        // Write ahead: the password is in Vault before the role has it.
        let creds = self
            .vault
            .ensure_credentials(&req.credentials_path, &req.username)
            .await?;
        checkpoint(self.crash.as_ref(), Step::CredentialsWritten)?;

        let admin = self.admin().await?;
        let mut ensured = self.ensure_on(&admin, req, applied_version, &creds).await;
        self.discard_after(&admin, &ensured);
        if Self::session_ended(&ensured) {
            let admin = self.admin().await?;
            ensured = self.ensure_on(&admin, req, applied_version, &creds).await;
            self.discard_after(&admin, &ensured);
        }
        ensured
    }

    async fn delete(&self, req: &DatabaseRequest) -> Result<Deletion, DatabaseError> {
        Self::check_names(req)?;
        if req.deletion_policy == DeletionPolicy::Retain {
            return Ok(Deletion::Retained);
        }
        let admin = self.admin().await?;
        let mut deleted = self.delete_on(&admin, req).await;
        self.discard_after(&admin, &deleted);
        if Self::session_ended(&deleted) {
            let admin = self.admin().await?;
            deleted = self.delete_on(&admin, req).await;
            self.discard_after(&admin, &deleted);
        }
        deleted
    }
}
