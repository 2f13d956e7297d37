//! In-memory Vault, database and file-system backends for the pipeline
//! tests: they keep what was written, answer like the real ones (created /
//! unchanged, phases that advance on each call) and fail on request.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use crate::{
    backends::{
        database::{DatabaseBackend, DatabaseError, DatabaseState, Deletion, Phase},
        storage::{FileSystemBackend, FileSystemState, FsDeletion, FsPhase, StorageError},
        vault::{Change, Password, StoredCredentials, VaultBackend, VaultError},
    },
    builders::{DatabaseRequest, FileSystemRequest, JwtAuthRole, KubernetesAuthRole, VaultPolicy},
    controllers::Backends,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A KV secret: its data and version.
type Secret = (HashMap<String, String>, u64);

/// What a fake backend does on its next calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Behaviour {
    /// Works.
    #[default]
    Works,
    /// Fails as a network error would (transient).
    Unreachable,
    /// Refuses: a resource with Enclave's name is someone else's.
    Conflict,
    /// Not sent: the AWS call budget is in use for this long.
    Busy(std::time::Duration),
}

/// The fakes as [`Backends`].
pub struct Fakes;

impl Backends for Fakes {
    type Vault = FakeVault;
    type Rds = FakeDatabase;
    type Shared = FakeDatabase;
    type FileSystems = FakeFileSystems;
}

/// Vault in memory.
#[derive(Default)]
pub struct FakeVault {
    /// Policies by name (their HCL).
    pub policies: Mutex<BTreeMap<String, String>>,
    /// Roles by name.
    pub roles: Mutex<BTreeMap<String, KubernetesAuthRole>>,
    /// People's JWT-auth roles by mount and name.
    pub person_roles: Mutex<BTreeMap<(String, String), JwtAuthRole>>,
    /// KV secrets by path, with their version.
    pub kv: Mutex<BTreeMap<String, Secret>>,
    /// Every call, in order (`ensure_policy <name>`, …).
    pub calls: Mutex<Vec<String>>,
    /// What the next calls do.
    pub behaviour: Mutex<Behaviour>,
}

impl FakeVault {
    fn call(&self, what: String) -> Result<(), VaultError> {
        lock(&self.calls).push(what.clone());
        match *lock(&self.behaviour) {
            // Vault has no call budget.
            Behaviour::Works | Behaviour::Busy(_) => Ok(()),
            Behaviour::Unreachable => Err(VaultError::Login(format!("{what}: connection refused"))),
            Behaviour::Conflict => Err(VaultError::NotOwned {
                what: "policy",
                name: what,
            }),
        }
    }

    fn credentials(&self, path: &str) -> Option<StoredCredentials> {
        lock(&self.kv)
            .get(path)
            .map(|(data, version)| StoredCredentials {
                username: data.get("username").cloned().unwrap_or_default(),
                password: Password::new(data.get("password").cloned().unwrap_or_default()),
                version: *version,
            })
    }

    fn write(&self, path: &str, data: HashMap<String, String>) -> u64 {
        let mut kv = lock(&self.kv);
        let version = kv.get(path).map_or(1, |(_, v)| v + 1);
        kv.insert(path.to_owned(), (data, version));
        version
    }
}

impl VaultBackend for FakeVault {
    async fn ensure_policy(&self, policy: &VaultPolicy) -> Result<Change, VaultError> {
        self.call(format!("ensure_policy {}", policy.name))?;
        let previous = lock(&self.policies).insert(policy.name.clone(), policy.hcl.clone());
        Ok(match previous {
            None => Change::Created,
            Some(hcl) if hcl == policy.hcl => Change::Unchanged,
            Some(_) => Change::Updated,
        })
    }

    async fn delete_policy(&self, name: &str) -> Result<Change, VaultError> {
        self.call(format!("delete_policy {name}"))?;
        Ok(match lock(&self.policies).remove(name) {
            Some(_) => Change::Deleted,
            None => Change::Unchanged,
        })
    }

    async fn ensure_role(
        &self,
        _company: &str,
        role: &KubernetesAuthRole,
    ) -> Result<Change, VaultError> {
        self.call(format!("ensure_role {}", role.name))?;
        let previous = lock(&self.roles).insert(role.name.clone(), role.clone());
        Ok(match previous {
            None => Change::Created,
            Some(r) if r == *role => Change::Unchanged,
            Some(_) => Change::Updated,
        })
    }

    async fn delete_role(&self, _company: &str, name: &str) -> Result<Change, VaultError> {
        self.call(format!("delete_role {name}"))?;
        Ok(match lock(&self.roles).remove(name) {
            Some(_) => Change::Deleted,
            None => Change::Unchanged,
        })
    }

    async fn ensure_person_role(
        &self,
        _company: &str,
        mount: &str,
        role: &JwtAuthRole,
    ) -> Result<Change, VaultError> {
        self.call(format!("ensure_person_role {mount} {}", role.name))?;
        let key = (mount.to_owned(), role.name.clone());
        let previous = lock(&self.person_roles).insert(key, role.clone());
        Ok(match previous {
            None => Change::Created,
            Some(r) if r == *role => Change::Unchanged,
            Some(_) => Change::Updated,
        })
    }

    async fn delete_person_role(
        &self,
        _company: &str,
        mount: &str,
        name: &str,
    ) -> Result<Change, VaultError> {
        self.call(format!("delete_person_role {mount} {name}"))?;
        let key = (mount.to_owned(), name.to_owned());
        Ok(match lock(&self.person_roles).remove(&key) {
            Some(_) => Change::Deleted,
            None => Change::Unchanged,
        })
    }

    async fn ensure_credentials(
        &self,
        path: &str,
        username: &str,
    ) -> Result<StoredCredentials, VaultError> {
        self.call(format!("ensure_credentials {path}"))?;
        if let Some(stored) = self.credentials(path) {
            return Ok(stored);
        }
        let data = HashMap::from([
            ("username".to_owned(), username.to_owned()),
            ("password".to_owned(), "first".to_owned()),
        ]);
        self.write(path, data);
        self.credentials(path)
            .ok_or_else(|| VaultError::Conflict { path: path.into() })
    }

    async fn rotate_credentials(&self, path: &str) -> Result<StoredCredentials, VaultError> {
        self.call(format!("rotate_credentials {path}"))?;
        let current = self
            .credentials(path)
            .ok_or_else(|| VaultError::Missing { path: path.into() })?;
        let data = HashMap::from([
            ("username".to_owned(), current.username),
            ("password".to_owned(), format!("v{}", current.version + 1)),
        ]);
        self.write(path, data);
        self.credentials(path)
            .ok_or_else(|| VaultError::Conflict { path: path.into() })
    }

    async fn read_platform_secret(
        &self,
        path: &str,
    ) -> Result<HashMap<String, String>, VaultError> {
        self.call(format!("read_platform_secret {path}"))?;
        lock(&self.kv)
            .get(path)
            .map(|(data, _)| data.clone())
            .ok_or_else(|| VaultError::Missing { path: path.into() })
    }

    async fn delete_secrets(&self, prefix: &str) -> Result<usize, VaultError> {
        self.call(format!("delete_secrets {prefix}"))?;
        let mut kv = lock(&self.kv);
        let before = kv.len();
        // Whole path segments, as the real client: `companies/acme` is not
        // a prefix of `companies/acme-corp`.
        kv.retain(|path, _| path != prefix && !path.starts_with(&format!("{prefix}/")));
        Ok(before - kv.len())
    }

    async fn recorded_posix_ids(
        &self,
        prefix: &str,
        skip: &std::collections::BTreeSet<String>,
    ) -> Result<BTreeMap<String, i64>, VaultError> {
        self.call(format!("recorded_posix_ids {prefix}"))?;
        let recorded: BTreeMap<String, i64> = lock(&self.kv)
            .iter()
            .filter_map(|(path, (data, _))| {
                let key = path.strip_prefix(prefix)?.trim_start_matches('/');
                (!skip.contains(key)).then_some(())?;
                Some((key.to_owned(), data.get("uid")?.parse().ok()?))
            })
            .collect();
        // One read per record, as the real client.
        for key in recorded.keys() {
            self.call(format!("read posix id {key}"))?;
        }
        Ok(recorded)
    }

    async fn record_posix_id(&self, path: &str, uid: i64) -> Result<i64, VaultError> {
        self.call(format!("record_posix_id {path}"))?;
        let mut kv = lock(&self.kv);
        let (data, _) = kv
            .entry(path.to_owned())
            .or_insert_with(|| (HashMap::from([("uid".to_owned(), uid.to_string())]), 1));
        data.get("uid")
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| VaultError::Conflict { path: path.into() })
    }

    async fn claim(&self, path: &str, owner: &str) -> Result<String, VaultError> {
        self.call(format!("claim {path}"))?;
        let mut kv = lock(&self.kv);
        let (data, _) = kv
            .entry(path.to_owned())
            .or_insert_with(|| (HashMap::from([("uid".to_owned(), owner.to_owned())]), 1));
        data.get("uid")
            .cloned()
            .ok_or_else(|| VaultError::Conflict { path: path.into() })
    }

    async fn forget_posix_id(&self, path: &str) -> Result<(), VaultError> {
        self.call(format!("forget_posix_id {path}"))?;
        lock(&self.kv).remove(path);
        Ok(())
    }
}

/// A database backend in memory: a new database is `Creating` for
/// `creating_calls` ensures, then `Available`; a deletion takes as many
/// calls.
pub struct FakeDatabase {
    /// The Vault the credentials go to (written before the database, as
    /// the real backends do).
    pub vault: Arc<FakeVault>,
    /// Ensures a new database stays `Creating` for.
    pub creating_calls: u32,
    /// Databases by company, with the ensures they have seen.
    pub databases: Mutex<BTreeMap<String, u32>>,
    /// Deletion calls by company.
    pub deletions: Mutex<BTreeMap<String, u32>>,
    /// What the next calls do.
    pub behaviour: Mutex<Behaviour>,
}

impl FakeDatabase {
    /// A backend whose databases take `creating_calls` ensures to create.
    pub fn new(vault: Arc<FakeVault>, creating_calls: u32) -> Self {
        Self {
            vault,
            creating_calls,
            databases: Mutex::default(),
            deletions: Mutex::default(),
            behaviour: Mutex::default(),
        }
    }

    fn check(&self, req: &DatabaseRequest) -> Result<(), DatabaseError> {
        match *lock(&self.behaviour) {
            Behaviour::Works => Ok(()),
            Behaviour::Unreachable => Err(DatabaseError::Aws {
                operation: "DescribeDBInstances",
                message: "connection refused".into(),
                transient: true,
            }),
            Behaviour::Conflict => Err(DatabaseError::Conflict {
                what: "RDS instance",
                name: format!("enclave-{}", req.company),
                reason: "another Company's uid in its tags".into(),
            }),
            Behaviour::Busy(retry_after) => {
                Err(DatabaseError::Busy(crate::backends::aws_calls::Busy {
                    service: "RDS",
                    cause: crate::backends::aws_calls::BUDGET_IN_USE,
                    retry_after,
                }))
            }
        }
    }
}

impl DatabaseBackend for FakeDatabase {
    async fn ensure(
        &self,
        req: &DatabaseRequest,
        _applied_version: Option<u64>,
    ) -> Result<DatabaseState, DatabaseError> {
        self.check(req)?;
        let credentials = self
            .vault
            .ensure_credentials(&req.credentials_path, &req.username)
            .await?;
        let calls = {
            let mut databases = lock(&self.databases);
            let calls = databases.entry(req.company.clone()).or_insert(0);
            *calls += 1;
            *calls
        };
        let available = calls > self.creating_calls;
        Ok(DatabaseState {
            identifier: format!("enclave-{}", req.company),
            endpoint: available.then(|| "db.example".to_owned()),
            port: available.then_some(5432),
            database_name: req.database_name.clone(),
            credentials_path: req.credentials_path.clone(),
            phase: if available {
                Phase::Available
            } else {
                Phase::Creating
            },
            credentials_version: available.then_some(credentials.version),
            unapplied: Vec::new(),
        })
    }

    async fn delete(&self, req: &DatabaseRequest) -> Result<Deletion, DatabaseError> {
        self.check(req)?;
        let calls = {
            let mut deletions = lock(&self.deletions);
            let calls = deletions.entry(req.company.clone()).or_insert(0);
            *calls += 1;
            *calls
        };
        if calls <= self.creating_calls {
            return Ok(Deletion::InProgress);
        }
        lock(&self.databases).remove(&req.company);
        Ok(Deletion::Deleted { snapshot: None })
    }
}

/// File systems in memory (volume storage never calls them).
#[derive(Default)]
pub struct FakeFileSystems {
    /// File systems by company.
    pub file_systems: Mutex<BTreeMap<String, FileSystemState>>,
}

impl FileSystemBackend for FakeFileSystems {
    async fn ensure(&self, req: &FileSystemRequest) -> Result<FileSystemState, StorageError> {
        let state = FileSystemState {
            file_system_id: format!("fs-{}", req.company),
            dns_name: Some(format!("fs-{}.fsx.example", req.company)),
            mount_name: Some("abcdef".into()),
            phase: FsPhase::Available,
            owned: true,
        };
        lock(&self.file_systems).insert(req.company.clone(), state.clone());
        Ok(state)
    }

    async fn delete(&self, req: &FileSystemRequest) -> Result<FsDeletion, StorageError> {
        lock(&self.file_systems).remove(&req.company);
        Ok(FsDeletion::Deleted {
            final_backup: false,
        })
    }
}
