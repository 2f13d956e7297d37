//! The Company controller.

use std::{sync::Arc, time::Duration};

use k8s_openapi::Resource as _;
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};

use super::{
    Backends, Context, Error, RetryClass, apply_status,
    conditions::{reasons, set, set_outcome, set_ready},
    lean::Lean,
    prune::{Owner, prune},
    storage,
    unmanaged::Unmanaged,
};
use crate::{
    backends::{
        database::{DatabaseBackend, DatabaseState, Deletion, Phase},
        vault::{Change, VaultBackend, VaultError, delete_tenant, ensure_company},
    },
    builders::{
        ADOPT_UID_ANNOTATION, CompanyContext, CompanyPlan, build_company, database_request,
    },
    crd::{
        Company, CompanyStatus, DatabaseMode, DatabaseStatus, DeletionPolicies, DeletionPolicy,
        Developer,
    },
    names::{ANNOTATION_COMPANY_UID, LABEL_COMPANY},
};

/// Guards what only the operator can clean up (the namespace now; Vault,
/// database and storage as they are wired in).
pub const FINALIZER: &str = "enclave.dev/cleanup";

/// Reconciles one Company.
pub async fn reconcile<B: Backends>(
    company: Arc<Company>,
    ctx: Arc<Context<B>>,
) -> Result<Action, Error> {
    let api: Api<Company> = Api::all(ctx.client.clone());
    let company = super::with_finalizer(
        &Api::<Unmanaged<Company>>::all(ctx.client.clone()),
        FINALIZER,
        company,
    )
    .await?;
    // Boxed: the pipeline's future is large (backend calls inside).
    let result = Box::pin(finalizer(&api, FINALIZER, company, |event| async {
        match event {
            Event::Apply(company) => Box::pin(apply(&company, &ctx)).await,
            Event::Cleanup(company) => Box::pin(cleanup(&company, &ctx)).await,
        }
    }))
    .await;
    super::finalized(result)
}

/// Whether the namespace is this Company's (or free).
enum NamespaceOwner {
    Free,
    Ours,
    Other(String),
}

/// Whose namespace `build`'s namespace is: the Company's only when it
/// carries both the Company's name label and its uid annotation (a label
/// alone can be set by anyone allowed to label namespaces).
async fn namespace_owner<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
) -> Result<NamespaceOwner, Error> {
    let (name, company, uid) = (build.names.namespace(), build.names.company(), build.uid());
    // The watch cache answers only "ours": anything else is read, so a
    // namespace someone just created is never taken for free.
    if let Some((Some(owner), Some(owner_uid))) = ctx.cache.namespace_owner(name)
        && owner == company
        && owner_uid == uid
    {
        return Ok(NamespaceOwner::Ours);
    }
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    Ok(match api.get_opt(name).await? {
        None => NamespaceOwner::Free,
        Some(ns) => match (
            ns.labels().get(LABEL_COMPANY),
            ns.annotations().get(ANNOTATION_COMPANY_UID),
        ) {
            (Some(owner), Some(owner_uid)) if owner == company && owner_uid == uid => {
                NamespaceOwner::Ours
            }
            (Some(owner), Some(owner_uid)) if owner == company => NamespaceOwner::Other(format!(
                "an earlier Company {company} (uid {owner_uid}); to take it over with its data, annotate this Company {ADOPT_UID_ANNOTATION}={owner_uid}"
            )),
            (Some(owner), None) if owner == company => NamespaceOwner::Other(format!(
                "no Company: it carries the label {LABEL_COMPANY}={company} but not this Company's uid (annotation {ANNOTATION_COMPANY_UID}), so someone else labelled it"
            )),
            (Some(owner), _) => NamespaceOwner::Other(format!("Company {owner}")),
            (None, _) => NamespaceOwner::Other("no Company (it was not created by Enclave)".into()),
        },
    })
}

async fn write_status<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    status: &CompanyStatus,
) -> Result<(), Error> {
    let mut status = status.clone();
    super::conditions::set_stalled(&mut status.conditions, status.observed_generation);
    // An unchanged status is not written (no write, no watch event, no
    // reconcile it would trigger).
    if company.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Lean<Company>> = Api::all(ctx.client.clone());
    Ok(apply_status(&api, &company.name_any(), &status).await?)
}

async fn apply<B: Backends>(company: &Company, ctx: &Context<B>) -> Result<Action, Error> {
    let build = ctx.company(company);
    let generation = company.metadata.generation;
    let mut status = company.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.namespace = Some(build.names.namespace().to_owned());
    status.deletion_policies = Some(DeletionPolicies {
        database: build.settings.database.deletion_policy,
        storage: build.settings.storage_deletion_policy,
        secrets: Some(build.settings.secrets_deletion_policy),
    });

    // Validate: the namespace must be free or already ours.
    if let Some(message) = namespace_conflict(ctx, &build).await? {
        for type_ in ["NamespaceReady", "Ready"] {
            set(
                &mut status.conditions,
                type_,
                Some(false),
                reasons::CONFLICT,
                &message,
                generation,
            );
        }
        write_status(ctx, company, &status).await?;
        return Ok(Action::await_change());
    }
    // Build (pure), apply, prune; then the external systems.
    let plan = build_company(&build);
    apply_objects(ctx, company, &build, &plan).await?;
    status.developer_count = developer_count(ctx, &build).await?;
    let message = format!(
        "namespace {} with quota, limits, network policies and RBAC",
        build.names.namespace()
    );
    set(
        &mut status.conditions,
        "NamespaceReady",
        Some(true),
        reasons::READY,
        &message,
        generation,
    );
    let outcome = external_systems(ctx, company, &build, &plan, &mut status).await;

    // Status, then any failed step goes up: the error policy chooses the
    // retry by its category.
    let pending = outcome.pending(&status.conditions);
    set_ready(
        &mut status.conditions,
        &pending,
        "the tenant's namespace, Vault, database and storage are in place",
        generation,
    );
    write_status(ctx, company, &status).await?;
    // The objects were built from the facts the status recorded before
    // this reconcile (a database endpoint, a credentials version): new
    // facts mean building again now. The Company's own status writes do
    // not wake it (the watch passes spec and metadata changes only).
    let next = outcome.next()?;
    if crate::builders::Observed::recorded(Some(&status))
        != crate::builders::Observed::recorded(company.status.as_ref())
    {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(next)
}

/// What the external-systems steps of one reconcile found.
struct Outcome {
    vault: Result<(), Error>,
    /// `Ok(true)` once the database is available.
    database: Result<bool, Error>,
    /// `Ok(Some(delay))` while the file system is not ready.
    storage: Result<Option<Duration>, Error>,
}

impl Outcome {
    /// What the Company still waits for. A step deferred by the AWS call
    /// budget is as its condition says (it did not run): a ready Company
    /// stays Ready while its periodic check waits for a turn.
    fn pending(&self, conditions: &[crate::crd::Condition]) -> Vec<&'static str> {
        let as_before = |e: &Error, type_: &str| {
            e.retry_class() == RetryClass::Deferred && super::conditions::is_true(conditions, type_)
        };
        [
            ("Vault", self.vault.is_ok()),
            (
                "the database",
                match &self.database {
                    Ok(available) => *available,
                    Err(e) => as_before(e, "DatabaseReady"),
                },
            ),
            (
                "storage",
                match &self.storage {
                    Ok(retry) => retry.is_none(),
                    Err(e) => as_before(e, "StorageReady"),
                },
            ),
        ]
        .into_iter()
        .filter_map(|(what, ok)| (!ok).then_some(what))
        .collect()
    }

    /// Whether every step ran and found its system ready.
    fn converged(&self) -> bool {
        self.vault.is_ok() && matches!(self.database, Ok(true)) && matches!(self.storage, Ok(None))
    }

    /// The first failed step as the reconcile's error, before a cloud
    /// resource still being created (polled ever more slowly by the error
    /// policy); otherwise unfinished work is looked at again soon, a
    /// converged tenant at the periodic resync (or at a change).
    fn next(self) -> Result<Action, Error> {
        let database = match self.database {
            Ok(true) => Ok(None),
            Ok(false) => Err(Error::CloudInProgress(
                "the company database is not available yet (see DatabaseReady)".into(),
            )),
            Err(e) => Err(e),
        };
        let mut in_progress = None;
        let mut retry = None;
        for step in [self.vault.map(|()| None), database, self.storage] {
            match step {
                Ok(delay) => retry = retry.into_iter().chain(delay).min(),
                Err(e) if matches!(e.retry_class(), RetryClass::Polling | RetryClass::Deferred) => {
                    in_progress = in_progress.or(Some(e));
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = in_progress {
            return Err(e);
        }
        Ok(retry.map_or_else(Action::await_change, Action::requeue))
    }
}

/// Vault, the database and the file system, with their conditions: at the
/// resync interval, on a spec change and while anything is not ready; other
/// events (a Developer's status, a namespace edit) do not repeat them.
/// The Company's key in [`Context::checked`].
pub(super) fn checked_key(company: &Company) -> String {
    format!("Company/{}", company.name_any())
}

async fn external_systems<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
    plan: &CompanyPlan,
    status: &mut CompanyStatus,
) -> Outcome {
    let key = checked_key(company);
    if external_systems_converged(ctx, company, status, &key) {
        return Outcome {
            vault: Ok(()),
            database: Ok(true),
            storage: Ok(None),
        };
    }
    let vault = vault_step(ctx, company, build, plan).await;
    set_outcome(
        &mut status.conditions,
        "VaultReady",
        &vault,
        "the company controller's Vault policy and role are in place",
        reasons::VAULT_ERROR,
        company.metadata.generation,
    );
    let outcome = Outcome {
        vault,
        database: database_step(ctx, company, build, status).await,
        storage: storage_step(ctx, company, build, status).await,
    };
    if outcome.converged() {
        ctx.mark_checked(&key);
    }
    outcome
}

/// Why the Company's namespace cannot be used, if it cannot: it exists and
/// belongs to someone else.
async fn namespace_conflict<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
) -> Result<Option<String>, Error> {
    let namespace = build.names.namespace();
    Ok(match namespace_owner(ctx, build).await? {
        NamespaceOwner::Other(owner) => Some(format!(
            "namespace {namespace} exists and belongs to {owner}; Enclave leaves it untouched: choose another spec.namespace (a new Company) or remove that namespace"
        )),
        NamespaceOwner::Free | NamespaceOwner::Ours => None,
    })
}

/// Applies the Company's in-cluster objects and prunes those it no longer
/// implies (the volumes that mount its file system are in the plan once
/// the file system was observed).
async fn apply_objects<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
    plan: &CompanyPlan,
) -> Result<(), Error> {
    let name = build.names.company();
    let namespace = build.names.namespace();
    ctx.apply_all(plan.objects.iter().collect()).await?;
    tracing::debug!(company = %name, %namespace, objects = plan.objects.len(), "applied the company's objects");
    // The set of children changes only with the spec (or a restart with
    // another configuration, which also reconciles every object).
    if company.status.as_ref().and_then(|s| s.observed_generation) != company.metadata.generation
        || !ctx.pruned_since_start(&format!("Company/{name}"))
    {
        let owner = Owner::Company {
            name,
            uid: company.metadata.uid.as_deref().unwrap_or_default(),
        };
        let pruned = prune(ctx, namespace, &owner, &plan.objects).await?;
        if !pruned.is_empty() {
            let why = format!("no longer implied by the spec: {}", pruned.join(", "));
            ctx.audit(company, name, "ObjectsPruned", &why, true).await;
        }
    }
    Ok(())
}

/// How many Developers the Company's namespace holds: from the watch that
/// wakes the Company for each arrival and departure, or a LIST until it
/// has listed.
async fn developer_count<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
) -> Result<Option<i32>, Error> {
    let namespace = build.names.namespace();
    let watched = ctx.membership.lock().ok().and_then(|m| m.count(namespace));
    let count = if let Some(count) = watched {
        count
    } else {
        let developers: Api<Lean<Developer>> = Api::namespaced(ctx.client.clone(), namespace);
        developers.list(&ListParams::default()).await?.items.len()
    };
    Ok(i32::try_from(count).ok())
}

/// Whether Vault, the database and storage were all ready for this
/// generation and checked within half the resync interval, with no
/// rotation asked for.
fn external_systems_converged<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    status: &CompanyStatus,
    key: &str,
) -> bool {
    company.status.as_ref().is_some_and(|s| {
        s.observed_generation == company.metadata.generation
            && ["VaultReady", "DatabaseReady", "StorageReady"]
                .iter()
                .all(|t| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == *t && c.status == "True")
                })
    }) && !rotation_due(company, status)
        && ctx.checked_recently(key)
}

/// The company's Vault data claimed for this Company (never an earlier
/// one's, kept by its deletion policy), then the company controller's
/// Vault policy and role.
async fn vault_step<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
    plan: &CompanyPlan,
) -> Result<(), Error> {
    let result = async {
        let path = build.names.kv_company_owner();
        let owner = ctx.vault.claim(&path, build.uid()).await?;
        if owner != build.uid() {
            return Err(VaultError::EarlierTenant {
                company: build.names.company().to_owned(),
                owner,
                path,
            });
        }
        ensure_company(ctx.vault.as_ref(), plan).await
    }
    .await
    .map_err(Error::from);
    ctx.vault_step(
        company,
        &company.name_any(),
        "the company controller",
        result,
    )
    .await
}

/// The database (credentials written to Vault first, inside the backend):
/// records it in `status` with its condition and audit lines; `Ok(true)`
/// once it is available.
async fn database_step<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
    status: &mut CompanyStatus,
) -> Result<bool, Error> {
    let generation = company.metadata.generation;
    // The status this process last wrote may not be back through the watch
    // yet: from a stale copy the backend would reset a password (or repeat
    // a rotation) nobody asked for.
    let uid = company.uid().unwrap_or_default();
    if let Some(newer) = ctx.database_written(&uid).filter(|written| {
        written.credentials_version > status.database.as_ref().and_then(|d| d.credentials_version)
    }) {
        status.database = Some(newer);
    }
    let result = ensure_database(ctx, build, status).await;
    let state = match result {
        // A call deferred by the budget is not an outcome: the condition stays.
        Err(e) if e.retry_class() == RetryClass::Deferred => {
            super::conditions::deferred(&mut status.conditions, "DatabaseReady", generation);
            return Err(e);
        }
        Ok(state) => {
            ctx.health.metrics.backend("database", true);
            state
        }
        Err(e) => {
            ctx.health.metrics.backend("database", false);
            let message = e.to_string();
            set(
                &mut status.conditions,
                "DatabaseReady",
                Some(false),
                reasons::DATABASE_ERROR,
                &message,
                generation,
            );
            return Err(e);
        }
    };
    let previous = status.database.clone();
    let written = database_status(ctx, company, status, &state);
    ctx.remember_database(&uid, &written);
    status.database = Some(written);
    let available = state.phase == Phase::Available;
    let mut message = if available {
        "the database is available".to_owned()
    } else {
        format!("the database is {}", state.phase)
    };
    if !state.unapplied.is_empty() {
        message = format!("{message}; not applied: {}", state.unapplied.join("; "));
    }
    let reason = if available {
        reasons::READY
    } else {
        reasons::WAITING
    };
    set(
        &mut status.conditions,
        "DatabaseReady",
        Some(available),
        reason,
        &message,
        generation,
    );
    audit_database(ctx, company, previous.as_ref(), status.database.as_ref()).await;
    Ok(available)
}

/// What `status.database` says of `state`, including for which value of
/// the rotation annotation credentials were last rotated.
fn database_status<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    status: &CompanyStatus,
    state: &DatabaseState,
) -> DatabaseStatus {
    let before = status.database.as_ref().and_then(|d| d.credentials_version);
    let now = state
        .credentials_version
        .and_then(|v| i64::try_from(v).ok());
    let rotated_for = match (&status.database, rotation_requested(company, status)) {
        // Fresh credentials: an annotation present at creation asks for nothing more.
        (None, _) => company.annotations().get(ROTATE_ANNOTATION).cloned(),
        (Some(_), Some(wanted)) if now > before => Some(wanted.to_owned()),
        (Some(db), _) => db.rotated_for.clone(),
    };
    // When the credentials in use were made: kept while the version is.
    let rotated_at = match status.database.as_ref().and_then(|d| d.rotated_at.clone()) {
        Some(at) if now <= before => Some(at),
        _ => now.map(|_| Time(k8s_openapi::jiff::Timestamp::now())),
    };
    DatabaseStatus {
        rotated_for,
        rotated_at,
        identifier: Some(state.identifier.clone()),
        endpoint: state.endpoint.clone(),
        port: state.port,
        name: Some(state.database_name.clone()),
        credentials_path: Some(format!(
            "{}/data/{}",
            ctx.config.vault.kv_mount, state.credentials_path
        )),
        phase: Some(state.phase.to_string()),
        credentials_version: now,
    }
}

/// One audit line (and Event) per change of the database's status: a
/// rotation carried out, a new phase or credentials version.
async fn audit_database<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    previous: Option<&DatabaseStatus>,
    current: Option<&DatabaseStatus>,
) {
    let name = company.name_any();
    let rotated_for = |d: Option<&DatabaseStatus>| d.and_then(|d| d.rotated_for.clone());
    let version = |d: Option<&DatabaseStatus>| d.and_then(|d| d.credentials_version);
    if let (Some(before), Some(db)) = (version(previous), current)
        && db.credentials_version > Some(before)
    {
        let cause = if rotated_for(current) == rotated_for(previous) {
            format!(
                "on schedule (spec.database.rotateEveryDays {})",
                company.spec.database.rotate_every_days.unwrap_or_default()
            )
        } else {
            format!("as asked by annotation {ROTATE_ANNOTATION}")
        };
        let why = format!(
            "database credentials rotated to version {} {cause}",
            db.credentials_version.unwrap_or_default()
        );
        ctx.audit(company, &name, "CredentialsRotated", &why, true)
            .await;
    }
    if current != previous
        && let Some(db) = current
    {
        let why = format!(
            "database {} is {} (credentials version {})",
            db.identifier.as_deref().unwrap_or_default(),
            db.phase.as_deref().unwrap_or("unknown"),
            db.credentials_version.unwrap_or_default()
        );
        ctx.audit(company, &name, "DatabaseEnsured", &why, true)
            .await;
    }
}

/// The file system (see `storage`): `Ok(Some(delay))` while it is not ready.
async fn storage_step<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
    status: &mut CompanyStatus,
) -> Result<Option<Duration>, Error> {
    let previous = status.storage.clone();
    let retry = Box::pin(storage::ensure_company(ctx, build, status)).await?;
    if status.storage != previous
        && let Some(id) = status
            .storage
            .as_ref()
            .and_then(|s| s.file_system_id.as_deref())
    {
        let why = format!("FSx file system {id} recorded for the company");
        ctx.audit(
            company,
            &company.name_any(),
            "FileSystemEnsured",
            &why,
            true,
        )
        .await;
    }
    Ok(retry)
}

/// Ensures the company database with the backend of its mode.
async fn ensure_database<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
    status: &CompanyStatus,
) -> Result<DatabaseState, Error> {
    let databases = &ctx.databases;
    let req = database_request(build);
    let applied = status
        .database
        .as_ref()
        .and_then(|d| d.credentials_version)
        .and_then(|v| u64::try_from(v).ok());
    // Rotation on request: a new KV version first (unless an interrupted
    // rotation already wrote one), then the backend applies it below.
    if rotation_due(build.company, status)
        && let Some(applied) = applied
    {
        // Not deferred between the new version and the database applying it.
        match req.mode {
            DatabaseMode::Dedicated => databases.rds.reserve()?,
            DatabaseMode::Shared => databases.shared.reserve()?,
        }
        let vault = &ctx.vault;
        let current = vault
            .ensure_credentials(&req.credentials_path, &req.username)
            .await?;
        if current.version <= applied {
            vault.rotate_credentials(&req.credentials_path).await?;
        }
    }
    let result = match req.mode {
        DatabaseMode::Dedicated => databases.rds.ensure(&req, applied).await,
        DatabaseMode::Shared => databases.shared.ensure(&req, applied).await,
    };
    Ok(result?)
}

/// Annotation that asks for new database credentials: set it to a new
/// value (a date, a ticket number) to rotate once more.
pub const ROTATE_ANNOTATION: &str = "enclave.dev/rotate-credentials";

/// The annotation's value, when it asks for a rotation not yet carried out.
fn rotation_requested<'a>(company: &'a Company, status: &CompanyStatus) -> Option<&'a str> {
    let wanted = company.annotations().get(ROTATE_ANNOTATION)?;
    let done = status.database.as_ref()?.rotated_for.as_deref();
    (done != Some(wanted.as_str())).then_some(wanted.as_str())
}

/// Whether `spec.database.rotateEveryDays` asks for a rotation at `now`.
fn rotation_scheduled(
    company: &Company,
    status: &CompanyStatus,
    now: k8s_openapi::jiff::Timestamp,
) -> bool {
    let (Some(days), Some(at)) = (
        company.spec.database.rotate_every_days,
        status.database.as_ref().and_then(|d| d.rotated_at.as_ref()),
    ) else {
        return false;
    };
    let every = k8s_openapi::jiff::SignedDuration::from_hours(24 * i64::from(days));
    now.duration_since(at.0) >= every
}

/// Whether a rotation is due, asked for or scheduled.
fn rotation_due(company: &Company, status: &CompanyStatus) -> bool {
    rotation_requested(company, status).is_some()
        || rotation_scheduled(company, status, k8s_openapi::jiff::Timestamp::now())
}

async fn cleanup<B: Backends>(company: &Company, ctx: &Context<B>) -> Result<Action, Error> {
    let name = company.name_any();
    if let Ok(mut written) = ctx.databases_written.lock() {
        written.remove(&company.uid().unwrap_or_default());
    }
    if company.spec.deletion_protection {
        let mut status = company.status.clone().unwrap_or_default();
        set(
            &mut status.conditions,
            "Ready",
            Some(false),
            reasons::DELETION_PROTECTED,
            "deletion is held by spec.deletionProtection: set it to false to delete this Company and its tenant",
            company.metadata.generation,
        );
        write_status(ctx, company, &status).await?;
        return Err(Error::DeletionProtected(name));
    }
    let build = ctx.company(company);
    // A Company that never got its namespace (a Conflict) never created
    // anything: what carries its name outside (a Vault policy, a database,
    // a file system) belongs to someone else, e.g. an earlier Company.
    // Whose namespace it is does not change during the cleanup: asked once.
    let owner = namespace_owner(ctx, &build).await?;
    if never_owned_anything(company, &owner) {
        tracing::info!(company = %name, "never had its namespace: nothing to clean up");
        return Ok(Action::await_change());
    }
    // Developers first: each carries out the storage deletion policy on
    // its own directory and removes its Vault role while the company's
    // file system and namespace still exist.
    let ours = matches!(owner, NamespaceOwner::Ours);
    // Once the Vault data went (after the Developers were confirmed gone)
    // and the namespace is seen going, only the namespace is waited for: a
    // terminating namespace takes no new Developer and the namespace
    // controller removes any left, so no LIST per retry meanwhile.
    let only_namespace_left = company
        .status
        .as_ref()
        .is_some_and(|s| carried_out(s, DeletionStep::Vault))
        && ctx
            .cache
            .stopping(Namespace::KIND, "", build.names.namespace());
    if ours && !only_namespace_left {
        delete_developers(ctx, &build).await?;
    }
    carry_out_deletion_steps(ctx, company, &build).await?;
    if ours {
        delete_namespace(ctx, company, &build).await?; // never one not ours
    }
    tracing::info!(company = %name, "cleaned up");
    Ok(Action::await_change())
}

/// A step of a Company's deletion that reaches outside the cluster, carried
/// out once and recorded in `status.carriedOut`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeletionStep {
    /// The database, per its deletion policy.
    Database,
    /// The file system (or the company's storage), per its deletion policy.
    Storage,
    /// The company's Vault role and policy, its secrets per policy.
    Vault,
}

impl DeletionStep {
    /// In order: the data before the Vault role and policy that guard it.
    const ALL: [Self; 3] = [Self::Database, Self::Storage, Self::Vault];

    /// Its name in `status.carriedOut`.
    fn as_str(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Storage => "storage",
            Self::Vault => "vault",
        }
    }
}

/// Whether the deletion step was carried out and recorded in status.
fn carried_out(status: &CompanyStatus, step: DeletionStep) -> bool {
    status.carried_out.iter().any(|d| d == step.as_str())
}

/// The deletion steps not yet carried out, each recorded in status once
/// done, so the passes that follow (while the namespace goes) neither repeat
/// one nor report it again: no Vault read, and no new claim of the ownership
/// record the secrets policy has just removed, per retry.
async fn carry_out_deletion_steps<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
) -> Result<(), Error> {
    let mut status = company.status.clone().unwrap_or_default();
    for step in DeletionStep::ALL {
        if carried_out(&status, step) {
            continue;
        }
        match step {
            DeletionStep::Database => delete_database(ctx, company, build).await?,
            DeletionStep::Storage => {
                if let Some(why) = storage::cleanup_company(ctx, build).await? {
                    let name = build.names.company();
                    ctx.audit(company, name, "FileSystemDeletionPolicyApplied", &why, true)
                        .await;
                }
            }
            DeletionStep::Vault => remove_vault_data(ctx, company, build).await?,
        }
        status.carried_out.push(step.as_str().into());
        write_status(ctx, company, &status).await?;
    }
    Ok(())
}

/// The company's Vault role and policy, and its secrets per the secrets
/// deletion policy.
async fn remove_vault_data<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
) -> Result<(), Error> {
    let root = build.names.kv_company_root();
    let removed = delete_tenant(ctx.vault.as_ref(), &build_company(build), &root, false).await?;
    if removed.contains(&Change::Deleted) {
        let why = "the company controller's Vault role and policy removed with the Company";
        let name = build.names.company();
        ctx.audit(company, name, "VaultPoliciesDeleted", why, true)
            .await;
    }
    delete_secrets(ctx, company, build).await
}

/// Whether the Company's namespace is not its own and its status records
/// no database or file system of its own.
fn never_owned_anything(company: &Company, owner: &NamespaceOwner) -> bool {
    let recorded = company.status.as_ref().is_some_and(|s| {
        s.database.is_some()
            || s.storage
                .as_ref()
                .is_some_and(|st| st.file_system_id.is_some())
    });
    !recorded && matches!(owner, NamespaceOwner::Other(_))
}

/// Deletes the Company's Developers (in its own namespace); waits until
/// they are gone.
async fn delete_developers<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
) -> Result<(), Error> {
    let (name, namespace) = (build.names.company(), build.names.namespace());
    let developers: Api<Lean<Developer>> = Api::namespaced(ctx.client.clone(), namespace);
    // While the watch shows Developers, they are asked to go and waited
    // for (each one gone wakes the Company); that none is left, the step
    // after which the company's storage and namespace go, is the API's word.
    let watched = ctx
        .membership
        .lock()
        .ok()
        .and_then(|m| m.members(namespace))
        .filter(|members| !members.is_empty());
    let remaining = match watched {
        Some(members) => members,
        None => developers
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .map(|d| (d.name_any(), d.metadata.deletion_timestamp.is_some()))
            .collect(),
    };
    if remaining.is_empty() {
        return Ok(());
    }
    for (developer, _) in remaining.iter().filter(|(_, deleting)| !deleting) {
        match developers.delete(developer, &DeleteParams::default()).await {
            Ok(_) => {}
            // Gone since the watch saw it.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::WaitingWatched(format!(
        "{} Developer(s) of Company {name} to be removed first",
        remaining.len()
    )))
}

/// Carries out the database's deletion policy; polls while it is in
/// progress.
async fn delete_database<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
) -> Result<(), Error> {
    let databases = &ctx.databases;
    let name = build.names.company();
    let req = database_request(build);
    let outcome = match req.mode {
        DatabaseMode::Dedicated => databases.rds.delete(&req).await?,
        DatabaseMode::Shared => databases.shared.delete(&req).await?,
    };
    if outcome == Deletion::InProgress {
        return Err(Error::CloudInProgress(format!(
            "the database of Company {name} to be deleted"
        )));
    }
    // Credentials of a database deleted for good open nothing any more
    // (a snapshot or a retained database still needs them).
    if req.deletion_policy == DeletionPolicy::Delete && matches!(outcome, Deletion::Deleted { .. })
    {
        ctx.vault.delete_secrets(&req.credentials_path).await?;
    }
    let why = format!(
        "database deletion policy {:?} carried out: {outcome:?}",
        req.deletion_policy
    );
    ctx.audit(company, name, "DatabaseDeletionPolicyApplied", &why, true)
        .await;
    Ok(())
}

/// Carries out the secrets deletion policy on the company's shared secrets
/// and any personal ones its Developers left (`Delete`: every version and
/// the metadata; `Retain`: nothing). The uid/gid records and the database
/// credentials follow the storage and database policies instead.
async fn delete_secrets<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
) -> Result<(), Error> {
    if build.settings.secrets_deletion_policy != DeletionPolicy::Delete
        || !owns_vault_data(ctx, build).await?
    {
        return Ok(());
    }
    let mut removed = 0;
    for prefix in [
        build.names.kv_company_shared(),
        build.names.kv_company_developers(),
    ] {
        removed += ctx.vault.delete_secrets(&prefix).await?;
    }
    // Nothing of the tenant kept: the name is free for a new Company.
    let settings = &build.settings;
    if settings.database.deletion_policy == DeletionPolicy::Delete
        && settings.storage_deletion_policy == DeletionPolicy::Delete
    {
        ctx.vault
            .delete_secrets(&build.names.kv_company_owner())
            .await?;
    }
    if removed > 0 {
        let why = format!(
            "secrets deletion policy Delete: {removed} secret(s) of the company removed from Vault with every version"
        );
        ctx.audit(company, build.names.company(), "SecretsDeleted", &why, true)
            .await;
    }
    Ok(())
}

/// Whether the company's Vault data is this Company's (not an earlier
/// one's of the same name, kept by its deletion policy).
pub(super) async fn owns_vault_data<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
) -> Result<bool, Error> {
    let owner = ctx
        .vault
        .claim(&build.names.kv_company_owner(), build.uid())
        .await?;
    Ok(owner == build.uid())
}

/// Deletes the Company's namespace (its own); waits until it is gone.
async fn delete_namespace<B: Backends>(
    ctx: &Context<B>,
    company: &Company,
    build: &CompanyContext<'_>,
) -> Result<(), Error> {
    let (name, namespace) = (build.names.company(), build.names.namespace());
    let waiting = || Error::WaitingWatched(format!("namespace {namespace} to be deleted"));
    // Seen going (the namespace controller empties it first, which takes a
    // while at scale): nothing to read on every retry meanwhile.
    if ctx.cache.stopping(Namespace::KIND, "", namespace) {
        return Err(waiting());
    }
    // Read, not cached, before it is asked to go and to confirm it gone:
    // a watch that lags behind must neither leave it nor end the wait.
    let api: Api<Lean<Namespace>> = Api::all(ctx.client.clone());
    match api.get_opt(namespace).await? {
        None => return Ok(()),
        Some(ns) if ns.metadata.deletion_timestamp.is_some() => {
            // Read now: the watch's mark is good for another while.
            ctx.cache.still_stopping(Namespace::KIND, "", namespace);
        }
        Some(_) => {
            match api.delete(namespace, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            let why = format!("namespace {namespace} deleted with the Company");
            ctx.audit(company, name, "NamespaceDeleted", &why, true)
                .await;
        }
    }
    Err(waiting())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use kube::runtime::controller::Action;

    use super::{Error, Outcome};
    use crate::{backends::storage::StorageError, controllers::RetryClass};

    fn conflict() -> Error {
        Error::Storage(StorageError::Conflict {
            id: "fs-1".into(),
            company: "acme".into(),
            reason: "tags".into(),
        })
    }

    #[test]
    fn a_failed_step_goes_up_before_a_cloud_resource_in_progress() {
        let outcome = Outcome {
            vault: Ok(()),
            database: Ok(false),
            storage: Err(conflict()),
        };
        assert_eq!(outcome.pending(&[]), ["the database", "storage"]);
        let error = outcome.next().unwrap_err();
        assert_eq!(error.retry_class(), RetryClass::NeedsPerson, "{error}");
    }

    #[test]
    fn a_database_in_progress_is_polled_and_a_converged_tenant_waits_for_a_change_or_the_resync() {
        let creating = Outcome {
            vault: Ok(()),
            database: Ok(false),
            storage: Ok(None),
        };
        let error = creating.next().unwrap_err();
        assert_eq!(error.retry_class(), RetryClass::Polling);
        assert!(error.to_string().contains("DatabaseReady"), "{error}");

        let recording = Outcome {
            vault: Ok(()),
            database: Ok(true),
            storage: Ok(Some(Duration::from_secs(2))),
        };
        assert_eq!(
            recording.next().unwrap(),
            Action::requeue(Duration::from_secs(2))
        );
        let converged = Outcome {
            vault: Ok(()),
            database: Ok(true),
            storage: Ok(None),
        };
        assert!(converged.pending(&[]).is_empty() && converged.converged());
        assert_eq!(converged.next().unwrap(), Action::await_change());
    }

    #[test]
    fn vault_failing_fails_the_reconcile_even_when_the_rest_is_ready() {
        let outcome = Outcome {
            vault: Err(Error::InvalidSpec("x".into())),
            database: Ok(true),
            storage: Ok(None),
        };
        assert_eq!(outcome.pending(&[]), ["Vault"]);
        assert!(matches!(outcome.next(), Err(Error::InvalidSpec(_))));
    }
}
