//! `enclave run`: the controllers. Each reconcile is a pipeline — fetch,
//! validate, build (the pure builders), apply (server-side apply under one
//! field manager), status — and only fetch, apply and status talk to the API.
//!
//! This release reconciles a Company's in-cluster objects (namespace,
//! quota, limits, network policies, RBAC, controller ServiceAccount), its
//! Vault policy and role, its database (per mode, deleted per policy), its
//! finalizer and deletion protection; and a Developer's uid/gid, workspace
//! objects and Vault policy and role. Storage is reported as not yet
//! reconciled by the controller (its backend exists and is tested).

mod apply;
mod audit;
mod cache;
mod company;
mod conditions;
mod developer;
mod http;
mod lean;
mod metrics;
#[cfg(test)]
mod pipeline_tests;
mod prune;
mod runner;
mod storage;
mod triggers;
mod unmanaged;

pub use developer::FINALIZER as DEVELOPER_FINALIZER;

use std::{sync::Arc, time::Duration};

use kube::{
    Client,
    runtime::{controller::Action, reflector::ObjectRef},
};
use thiserror::Error;

pub use apply::{FIELD_MANAGER, apply_object, apply_status};
pub use audit::RECONCILE_FAILED;
pub use company::FINALIZER;
pub use runner::{RunOptions, run};

use crate::{
    backends::{
        database::{DatabaseBackend, DatabaseError, RdsDatabase, SharedPostgres},
        storage::{FileSystemBackend, FsxFileSystems, StorageError},
        vault::{VaultAuth, VaultBackend, VaultClientBackend, VaultError, VaultSettings},
    },
    builders::{CompanyContext, Observed},
    config::OperatorConfig,
    crd::Company,
};

/// The external systems a reconcile talks to besides the API, as types:
/// the real ones in `enclave run`, in-memory ones in the pipeline tests.
pub trait Backends: Send + Sync + 'static {
    /// Vault (policies, roles, credentials, uid/gid records).
    type Vault: VaultBackend + 'static;
    /// Dedicated databases (RDS).
    type Rds: DatabaseBackend;
    /// Databases in the shared instance.
    type Shared: DatabaseBackend;
    /// Company file systems (FSx).
    type FileSystems: FileSystemBackend;
}

/// The real backends.
pub struct Real;

impl Backends for Real {
    type Vault = VaultClientBackend;
    type Rds = RdsDatabase<VaultClientBackend>;
    type Shared = SharedPostgres<VaultClientBackend>;
    type FileSystems = FsxFileSystems;
}

/// What a reconcile needs.
pub struct Context<B: Backends = Real> {
    /// The API.
    pub client: Client,
    /// Operator configuration.
    pub config: OperatorConfig,
    /// Vault (the controllers start only once it accepted the operator's token).
    pub vault: Arc<B::Vault>,
    /// The database backends.
    pub databases: Databases<B>,
    /// Company file systems on FSx.
    pub file_systems: B::FileSystems,
    /// Serialises uid/gid allocation within a company (ids are unique per
    /// company; one active operator, leader-elected): see
    /// [`Context::allocation_lock`].
    pub allocation: Allocation,
    /// Metrics and readiness.
    pub health: Arc<http::Health>,
    /// Objects pruned since start (see [`Context::pruned_since_start`]),
    /// by [`hash_of`] their key: one per object, so no copy of its name.
    pub pruned: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// When each object's external resources were last all as desired
    /// (memory only: after a start everything is checked once), by
    /// [`hash_of`] its key.
    pub checked: std::sync::Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    /// Audit lines and Events.
    pub audit: audit::Audit,
    /// Consecutive failures per object, for the backoff (memory only: a
    /// restart simply starts the backoff again).
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Per failing object, a hash of the last Warning Event published for
    /// it (reason and note): see [`error_policy`].
    pub warned: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// What the operator's watches say of the objects it manages.
    pub cache: Arc<cache::WatchCache>,
    /// The Companies as the Developer controller's watch holds them.
    pub companies: kube::runtime::reflector::Store<Company>,
    /// The Developers per namespace, as the Company controller's watch
    /// holds them.
    pub membership: std::sync::Arc<std::sync::Mutex<triggers::Membership>>,
    /// The database status last recorded per Company uid (see
    /// [`Context::database_written`]).
    pub databases_written:
        std::sync::Mutex<std::collections::HashMap<String, crate::crd::DatabaseStatus>>,
}

/// Locks for uid/gid allocation, striped by namespace: companies allocate
/// in parallel, the Developers of one company one at a time. Also the
/// (person, uid) pairs seen to agree between a live status and the Vault
/// record since start, whose record an allocation need not read again.
pub struct Allocation {
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Hashes of (person key, uid): 8 bytes per Developer.
    matched: std::sync::Mutex<std::collections::HashSet<u64>>,
}

impl Default for Allocation {
    fn default() -> Self {
        Self {
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
            matched: std::sync::Mutex::default(),
        }
    }
}

/// How the failure counters and Warning Events name `object`.
fn object_key<K: kube::Resource<DynamicType = ()>>(object: &K) -> String {
    ObjectRef::from_obj(object).erase().to_string()
}

/// A 64-bit hash of `value`, stable within the process: what the
/// operator's per-object memory keeps instead of copies of names (at 10,000
/// Developers a key's strings cost more than the entry; two keys sharing a
/// hash is a chance of about one in 10^11).
pub(crate) fn hash_of(value: &(impl std::hash::Hash + ?Sized)) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(value)
}

impl Allocation {
    fn pair(key: &str, uid: i64) -> u64 {
        hash_of(&(key, uid))
    }

    /// Whether the record of person `key` was seen to hold `uid`.
    pub fn matches(&self, key: &str, uid: i64) -> bool {
        self.matched
            .lock()
            .is_ok_and(|m| m.contains(&Self::pair(key, uid)))
    }

    /// Notes that the record of person `key` holds `uid`.
    pub fn matched(&self, key: &str, uid: i64) {
        if let Ok(mut m) = self.matched.lock() {
            m.insert(Self::pair(key, uid));
        }
    }
}

impl<B: Backends> Context<B> {
    /// The lock that serialises uid/gid allocation in `namespace`.
    pub fn allocation_lock(&self, namespace: &str) -> &tokio::sync::Mutex<()> {
        let stripes = &self.allocation.stripes;
        let index = usize::try_from(hash_of(namespace) % stripes.len() as u64).unwrap_or(0);
        &stripes[index]
    }

    /// `company` resolved against the configuration and what its status
    /// records of its external resources (the builders' observed facts).
    pub fn company<'a>(&'a self, company: &'a Company) -> CompanyContext<'a> {
        CompanyContext::new(
            company,
            &self.config,
            Observed::recorded(company.status.as_ref()),
        )
    }

    /// Whether `key`'s external resources were all checked within half
    /// the resync interval (the periodic resync forgets the mark first:
    /// see [`Context::resync_due`]).
    pub fn checked_recently(&self, key: &str) -> bool {
        let half = self.resync_interval() / 2;
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&hash_of(key))
            .is_some_and(|at| at.elapsed() < half)
    }

    /// The database status this process last recorded for the Company
    /// with `uid`: newer than a cached copy the watch has not yet updated.
    pub fn database_written(&self, uid: &str) -> Option<crate::crd::DatabaseStatus> {
        self.databases_written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(uid)
            .cloned()
    }

    /// Remembers the database status recorded for the Company with `uid`.
    pub fn remember_database(&self, uid: &str, status: &crate::crd::DatabaseStatus) {
        self.databases_written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(uid.to_owned(), status.clone());
    }

    /// Whether the periodic resync should reconcile `object` now: not
    /// while it is in a failure's backoff (its retries pace it, as before
    /// it failed). When it is due, its external resources (`checked_key`)
    /// are checked again however recently a change looked at them.
    pub fn resync_due<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        checked_key: &str,
    ) -> bool {
        let failing = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&object_key(object));
        if !failing {
            self.checked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&hash_of(checked_key));
        }
        !failing
    }

    /// Records that `key`'s external resources were all found as desired.
    pub fn mark_checked(&self, key: &str) {
        self.checked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hash_of(key), std::time::Instant::now());
    }

    /// Whether `key`'s children were pruned since this process started
    /// (and marks them so): a restart with another configuration may imply
    /// other children, so each object is pruned once after a start.
    pub fn pruned_since_start(&self, key: &str) -> bool {
        !self
            .pruned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(hash_of(key))
    }

    /// Applies `object` (server-side apply), counted in the metrics.
    pub async fn apply(&self, object: &crate::builders::KubeObject) -> Result<bool, kube::Error> {
        let result = apply_object(&self.client, &self.cache, object).await;
        self.health.metrics.backend("kubernetes", result.is_ok());
        result
    }

    /// Applies `objects` in three waves, each side by side: namespaces,
    /// then what lives in them, then role bindings (the API server checks
    /// a binding against its role, which must exist first). What needs
    /// them all, the workspace, is applied by a later step. Stops at the
    /// first failure.
    pub async fn apply_all(
        &self,
        objects: Vec<&crate::builders::KubeObject>,
    ) -> Result<(), kube::Error> {
        use crate::builders::KubeObject;
        use futures::TryStreamExt;
        let wave = |o: &KubeObject| match o {
            KubeObject::Namespace(_) => 0,
            KubeObject::RoleBinding(_) => 2,
            _ => 1,
        };
        for current in 0..3 {
            let mut applying = futures::stream::FuturesUnordered::new();
            for object in objects.iter().filter(|o| wave(o) == current) {
                applying.push(self.apply(object));
            }
            while applying.try_next().await?.is_some() {}
        }
        Ok(())
    }

    /// Counts a Vault step in the metrics and records its writes, if any,
    /// as one audit line and Event for `object` (`whose` policy and role).
    pub async fn vault_step<K>(
        &self,
        object: &K,
        tenant: &str,
        whose: &str,
        result: Result<Vec<crate::backends::vault::Change>, Error>,
    ) -> Result<(), Error>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        self.health.metrics.backend("vault", result.is_ok());
        let changes = result?;
        let writes = changes
            .iter()
            .filter(|c| **c != crate::backends::vault::Change::Unchanged)
            .count();
        if writes > 0 {
            let why = format!(
                "{writes} Vault policy/role write(s) for {whose} (created, drift corrected, or its role changed)"
            );
            self.audit(object, tenant, "VaultPoliciesWritten", &why, true)
                .await;
        }
        Ok(())
    }

    /// Records a change made for `object` of company `tenant`.
    pub async fn audit<K>(
        &self,
        object: &K,
        tenant: &str,
        action: &'static str,
        why: &str,
        ok: bool,
    ) where
        K: kube::Resource<DynamicType = ()>,
    {
        self.audit
            .record(
                object,
                &audit::Change {
                    tenant,
                    action,
                    why,
                    ok,
                },
            )
            .await;
    }

    /// How often a converged object is checked for drift again (each
    /// object once per interval, spread over it: see the runner).
    pub fn resync_interval(&self) -> Duration {
        Duration::from_secs(self.config.controller.resync_seconds.max(1))
    }
}

/// The two database backends, one per `spec.database.mode`.
pub struct Databases<B: Backends = Real> {
    /// Dedicated RDS instances.
    pub rds: B::Rds,
    /// Databases in the shared PostgreSQL instance.
    pub shared: B::Shared,
}

/// The AWS SDK configuration: region and endpoint as configured,
/// credentials from the environment (IRSA in a cluster).
pub async fn aws_config(config: &OperatorConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(config.aws.region.clone()));
    if !config.aws.endpoint_url.is_empty() {
        loader = loader.endpoint_url(&config.aws.endpoint_url);
    }
    loader.load().await
}

/// Builds the database backends on `vault`.
pub fn databases(
    config: &OperatorConfig,
    sdk: &aws_config::SdkConfig,
    vault: &Arc<VaultClientBackend>,
) -> Databases {
    let rds = aws_sdk_rds::config::Builder::from(sdk).build();
    Databases {
        rds: RdsDatabase::new(&rds, Arc::clone(vault), config.aws.call_limits()),
        shared: SharedPostgres::new(config.database.shared.clone(), Arc::clone(vault)),
    }
}

/// Why a reconcile did not finish.
#[derive(Debug, Error)]
pub enum Error {
    /// A Kubernetes request failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Deletion waits for something in the cluster that no watch of the
    /// operator reports done (a pod to stop, a RoleBinding to come back).
    #[error("waiting: {0}")]
    Waiting(String),
    /// Deletion waits for something a watch reports done, which wakes the
    /// reconcile (its Developers gone, its namespace gone, a workspace
    /// StatefulSet stopped, a storage Job finished).
    #[error("waiting: {0}")]
    WaitingWatched(String),
    /// A cloud resource (an RDS instance, a file system) is being created
    /// or deleted.
    #[error("waiting: {0}")]
    CloudInProgress(String),
    /// Vault refused or failed a step.
    #[error("Vault: {0}")]
    Vault(#[from] VaultError),
    /// The database backend refused or failed a step.
    #[error("database: {0}")]
    Database(#[from] DatabaseError),
    /// The file system backend refused or failed a step.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// A storage cleanup Job failed; deletion waits for a person.
    #[error("storage cleanup: {0}")]
    StorageCleanup(String),
    /// The spec asks for what cannot be done; a person must change it.
    #[error("{0}")]
    InvalidSpec(String),
    /// A deleted Developer's workspace pod outlives its StatefulSet
    /// (deleted with `--cascade=orphan`): nothing will delete it, and the
    /// cleanup must not go on while it runs.
    #[error(
        "workspace pod {namespace}/{pod} was orphaned from its StatefulSet and still runs as the person; delete it (kubectl delete pod -n {namespace} {pod}); the Developer's deletion waits for it, looking again within 30 seconds"
    )]
    WorkspaceOrphaned {
        /// The company namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// Deletion is held by `spec.deletionProtection`.
    #[error(
        "deletion of Company {0} is held by spec.deletionProtection; set it to false to delete"
    )]
    DeletionProtected(String),
}

impl Error {
    /// The error of the reconcile step itself, through the finalizer helper.
    pub fn step(&self) -> &Self {
        use kube::runtime::finalizer::Error as F;
        match self {
            Self::Finalizer(inner) => match inner.as_ref() {
                F::ApplyFailed(e) | F::CleanupFailed(e) => e.step(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Short label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self.step() {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            step if step.retry_after().is_some() => "aws-deferred",
            Self::Waiting(_) | Self::WaitingWatched(_) | Self::CloudInProgress(_) => "waiting",
            Self::Vault(_) => "vault",
            Self::Database(_) => "database",
            Self::Storage(_) => "storage",
            Self::StorageCleanup(_) => "storage-cleanup",
            Self::DeletionProtected(_) => "deletion-protected",
            Self::InvalidSpec(_) => "invalid-spec",
            Self::WorkspaceOrphaned { .. } => "workspace-orphaned",
        }
    }

    /// The reason of the Warning Event a failure publishes (PascalCase).
    pub fn event_reason(&self) -> &'static str {
        match self.step() {
            Self::Kube(_) => "KubernetesRequestFailed",
            Self::Finalizer(_) => "FinalizerFailed",
            Self::Waiting(_) | Self::WaitingWatched(_) | Self::CloudInProgress(_) => "Waiting",
            Self::Vault(_) => "VaultFailed",
            Self::Database(_) => "DatabaseFailed",
            Self::Storage(_) => "StorageFailed",
            Self::StorageCleanup(_) => "StorageCleanupFailed",
            Self::DeletionProtected(_) => "DeletionProtected",
            Self::InvalidSpec(_) => "InvalidSpec",
            Self::WorkspaceOrphaned { .. } => "WorkspaceOrphaned",
        }
    }

    /// When a step deferred by the AWS call budget can run again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.step() {
            Self::Database(e) => e.busy(),
            Self::Storage(e) => e.busy(),
            _ => None,
        }
        .map(|busy| busy.retry_after)
    }

    /// How the error policy treats it.
    pub fn retry_class(&self) -> RetryClass {
        match self.step() {
            // An orphaned pod waits for a person, but their deleting it
            // wakes nothing: look again as for a pod that is stopping.
            Self::Waiting(_) | Self::WorkspaceOrphaned { .. } => RetryClass::Waiting,
            Self::WaitingWatched(_) => RetryClass::Watched,
            Self::CloudInProgress(_) => RetryClass::Polling,
            step if step.retry_after().is_some() => RetryClass::Deferred,
            Self::DeletionProtected(_) | Self::StorageCleanup(_) | Self::InvalidSpec(_) => {
                RetryClass::NeedsPerson
            }
            Self::Kube(kube::Error::Api(e)) if e.code == 429 => RetryClass::Throttled,
            Self::Kube(kube::Error::Api(e)) if e.code == 409 => RetryClass::Waiting,
            Self::Kube(kube::Error::Api(e)) if (400..500).contains(&e.code) => {
                RetryClass::NeedsPerson
            }
            Self::Vault(e) if !e.is_transient() => RetryClass::NeedsPerson,
            Self::Database(e) if !e.is_transient() => RetryClass::NeedsPerson,
            Self::Storage(e) if !e.is_transient() => RetryClass::NeedsPerson,
            _ => RetryClass::Transient,
        }
    }
}

/// `object` with finalizer `name`, added first when it is missing and the
/// object is not being deleted: the reconcile goes on in the same pass
/// instead of waiting for the watch to bring its own change back. The patch
/// carries the resourceVersion, so a stale cached copy gets a Conflict; its
/// answer is read without field managers.
pub(crate) async fn with_finalizer<K>(
    api: &kube::Api<unmanaged::Unmanaged<K>>,
    name: &str,
    object: Arc<K>,
) -> Result<Arc<K>, Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::ResourceExt;
    if object.meta().deletion_timestamp.is_some() || object.finalizers().iter().any(|f| f == name) {
        return Ok(object);
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(name.to_owned());
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": object.resource_version(),
    }});
    let patched = api
        .patch(
            &object.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
    Ok(Arc::new(patched.0))
}

/// The outcome of kube-runtime's finalizer helper as a reconcile result.
/// Removing the finalizer of an object that is already gone (a queued
/// reconcile of a deleted object) is success, not an error to retry.
pub(crate) fn finalized(
    result: Result<Action, kube::runtime::finalizer::Error<Error>>,
) -> Result<Action, Error> {
    use kube::runtime::finalizer::Error as F;
    match result {
        Err(F::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => Ok(Action::await_change()),
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    }
}

/// How a failed reconcile is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryClass {
    /// Something in the cluster is still in progress: look again shortly.
    Waiting,
    /// Something in the cluster is still in progress and a watch wakes the
    /// reconcile when it is done: the retry only guards against a missed
    /// event.
    Watched,
    /// A cloud resource is being created or deleted: poll, more slowly
    /// the longer it takes.
    Polling,
    /// A network or server error: exponential backoff with jitter.
    Transient,
    /// The API asked us to slow down: a longer backoff.
    Throttled,
    /// A state a person must change: look again rarely (a change to the
    /// object triggers a reconcile at once anyway).
    NeedsPerson,
    /// An AWS call was not sent because the operator's call budget is in
    /// use: run again when the gate said (not a failure).
    Deferred,
}

impl RetryClass {
    /// Whether it waits for something in progress rather than retrying a
    /// failure: counted apart from failures and logged as information.
    pub fn is_wait(self) -> bool {
        matches!(self, Self::Waiting | Self::Watched | Self::Polling)
    }

    /// The class as a metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Watched => "watched",
            Self::Polling => "polling",
            Self::Transient => "transient",
            Self::Throttled => "throttled",
            Self::NeedsPerson => "needs-person",
            Self::Deferred => "deferred",
        }
    }
}

/// How soon work that a watch wakes (a Company's readiness, a
/// StatefulSet's ready replica, a storage Job, Developers or a namespace
/// going) is looked at anyway: only a guard against a missed event, which a
/// watch's relist reports. At 1,000 × 10 a Developer can wait minutes for
/// its Company or its pod, and the garbage collector and the namespace
/// controller take half an hour to delete everything: a shorter guard
/// reconciles the waiting objects again for nothing.
pub(crate) const WATCHED_FALLBACK: Duration = Duration::from_mins(5);

/// The delay before retry number `failures` (1-based) of `class`.
pub fn retry_delay(class: RetryClass, failures: u32) -> Duration {
    let exponential = |base: Duration, cap: Duration| {
        let ceiling = base
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(cap);
        // Full jitter in the upper half: spread retries of many objects.
        ceiling / 2 + ceiling.mul_f64(rand::random_range(0.0..=0.5))
    };
    let second = Duration::from_secs(1);
    match class {
        // A wait no watch ends (a pod to stop, a RoleBinding restored by
        // the Company) is looked at again within 30 s.
        RetryClass::Waiting => exponential(second, Duration::from_secs(30)),
        // What a watch ends wakes it as soon as it is done; the retry backs
        // off to the missed-event guard (a 30 s ceiling was 61 retries per
        // Developer during a deletion at 1,000 x 10).
        RetryClass::Watched => exponential(second, WATCHED_FALLBACK),
        // An RDS instance or a file system takes minutes to create or
        // delete: polls slow down the longer it takes (one Describe per
        // resource every 10-20 s at most, well inside the AWS call budget
        // even for dozens of tenants at once).
        RetryClass::Polling => exponential(2 * second, Duration::from_secs(20)),
        RetryClass::Transient => exponential(second / 2, Duration::from_mins(5)),
        RetryClass::Throttled => exponential(5 * second, Duration::from_mins(10)),
        RetryClass::NeedsPerson => Duration::from_mins(5),
        // The error carries its own time (`Error::retry_after`); this is
        // the fallback.
        RetryClass::Deferred => exponential(second, Duration::from_secs(10)),
    }
}

#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime's Controller::run asks for
fn error_policy<K, B>(object: Arc<K>, error: &Error, ctx: Arc<Context<B>>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
    B: Backends,
{
    let key = object_key(object.as_ref());
    if let Some(delay) = error.retry_after() {
        // Pacing, not a failure: no backoff, no Warning Event.
        tracing::debug!(object = %key, %error, retry_in = ?delay, "deferred");
        return Action::requeue(delay);
    }
    let class = error.retry_class();
    let failures = {
        let mut failures = ctx
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Waiting for something in progress is counted apart: it is not a
        // failure that should lengthen the backoff of a real one.
        let counter = if class.is_wait() {
            waiting_key(&key)
        } else {
            key.clone()
        };
        let n = failures.entry(counter).or_insert(0);
        *n += 1;
        *n
    };
    let delay = retry_delay(class, failures);
    // An orphaned workspace pod waits like a stopping one, but for a person.
    let for_a_person = matches!(error.step(), Error::WorkspaceOrphaned { .. });
    if class.is_wait() && !for_a_person {
        tracing::info!(object = %key, %error, retry_in = ?delay, "waiting");
    } else {
        tracing::warn!(object = %key, category = error.category(), ?class, failures, retry_in = ?delay, %error, "reconcile failed");
        // A Warning Event on the object, for `kubectl describe` and alerting
        // on Events: a failure unlike the last one published for it at
        // once, the same failure again only on failures 8, 64, 512, ... (an
        // outage of Vault or the database that fails every tenant for hours
        // writes a few Events per tenant, not one per retry).
        let (reason, message) = (error.event_reason(), error.to_string());
        let digest = crate::names::short_hash(&[reason, &message]);
        let new = ctx
            .warned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, digest.clone())
            != Some(digest);
        let repeat_due = failures.is_power_of_two() && failures.trailing_zeros() % 3 == 0;
        if new || repeat_due {
            let reference = object.object_ref(&());
            tokio::spawn(async move { ctx.audit.failure(&reference, reason, &message).await });
        }
    }
    Action::requeue(delay)
}

/// The key of `object`'s count of waits in [`Context::failures`].
fn waiting_key(object: &str) -> String {
    format!("waiting {object}")
}

/// Forgets the failures and waits of objects whose reconcile succeeded.
fn reset_failures<B: Backends>(ctx: &Context<B>, object: &str) {
    let mut failures = ctx
        .failures
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    failures.remove(object);
    failures.remove(&waiting_key(object));
    drop(failures);
    ctx.warned
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .remove(object);
}

/// Connects to Vault as configured (a token file, `VAULT_TOKEN`, or
/// Kubernetes auth with the operator's own ServiceAccount token) and checks
/// that Vault accepts the token.
pub async fn connect_vault(config: &OperatorConfig) -> Result<Arc<VaultClientBackend>, String> {
    let vault = &config.vault;
    let auth = if !vault.token_file.is_empty() {
        VaultAuth::TokenFile(vault.token_file.clone().into())
    } else if let Ok(token) = std::env::var("VAULT_TOKEN") {
        VaultAuth::Token(token)
    } else {
        VaultAuth::Kubernetes {
            mount: vault.auth_mount.clone(),
            role: vault.operator_role.clone(),
            jwt_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
        }
    };
    let settings = VaultSettings {
        address: vault.address.clone(),
        kv_mount: vault.kv_mount.clone(),
        auth_mount: vault.auth_mount.clone(),
        ca_cert: (!vault.ca_file.is_empty()).then(|| vault.ca_file.clone().into()),
        auth,
    };
    let vault = VaultClientBackend::connect(settings)
        .await
        .map_err(|e| e.to_string())?
        .trusting_for(Duration::from_secs(u64::from(vault.reverify_seconds)));
    // A token is only known to work once Vault accepted it.
    vault.token_ttl().await.map_err(|e| e.to_string())?;
    Ok(Arc::new(vault))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Error, RetryClass, retry_delay};
    use crate::backends::database::DatabaseError;

    #[test]
    fn a_conflict_waits_for_a_person() {
        let conflict = Error::Database(DatabaseError::Conflict {
            what: "RDS instance",
            name: "enclave-acme".into(),
            reason: "another Company's uid in its tags".into(),
        });
        assert_eq!(conflict.retry_class(), RetryClass::NeedsPerson);
        assert_eq!(conflict.category(), "database");
        assert_eq!(
            retry_delay(conflict.retry_class(), 1),
            retry_delay(conflict.retry_class(), 50),
            "the longest delay at once"
        );
    }

    #[test]
    fn transient_retries_back_off_exponentially_within_bounds() {
        for failures in 1..40 {
            let delay = retry_delay(RetryClass::Transient, failures);
            let ceiling = Duration::from_millis((500u64 << (failures - 1).min(16)).min(300_000));
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{failures}: {delay:?}"
            );
        }
        assert!(retry_delay(RetryClass::Throttled, 1) >= Duration::from_millis(2500));
        assert!(retry_delay(RetryClass::Waiting, 1) <= Duration::from_secs(1));
        let later = retry_delay(RetryClass::Waiting, 30);
        assert!((Duration::from_secs(15)..=Duration::from_secs(30)).contains(&later));
        assert!(retry_delay(RetryClass::Watched, 1) <= Duration::from_secs(1));
        let later = retry_delay(RetryClass::Watched, 30);
        assert!((Duration::from_secs(150)..=Duration::from_mins(5)).contains(&later));
        let polls: Vec<Duration> = (1..=8)
            .map(|n| retry_delay(RetryClass::Polling, n))
            .collect();
        assert!(polls[0] <= Duration::from_secs(2), "{polls:?}");
        assert!(
            polls[4..]
                .iter()
                .all(|w| *w >= Duration::from_secs(10) && *w <= Duration::from_secs(20)),
            "a long deletion is polled every 10-20 s: {polls:?}"
        );
        assert_eq!(
            retry_delay(RetryClass::NeedsPerson, 1),
            Duration::from_mins(5)
        );
    }
}
