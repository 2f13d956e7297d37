//! The Company controller.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};

use super::{
    Context, Error, apply_status,
    conditions::{reasons, set},
    prune::{Owner, prune},
    storage,
};
use crate::{
    backends::{
        database::{DatabaseBackend, DatabaseState, Deletion, Phase},
        vault::{VaultBackend, delete_tenant, ensure_company},
    },
    builders::{CompanyContext, KubeObject, build_company, database_request},
    crd::{Company, CompanyStatus, DatabaseMode, DatabaseStatus, Developer},
    names::LABEL_COMPANY,
};

/// Guards what only the operator can clean up (the namespace now; Vault,
/// database and storage as they are wired in).
pub const FINALIZER: &str = "enclave.dev/cleanup";

/// Reconciles one Company.
pub async fn reconcile(company: Arc<Company>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Company> = Api::all(ctx.client.clone());
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

async fn namespace_owner(
    ctx: &Context,
    name: &str,
    company: &str,
) -> Result<NamespaceOwner, Error> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    Ok(match api.get_opt(name).await? {
        None => NamespaceOwner::Free,
        Some(ns) => match ns.labels().get(LABEL_COMPANY) {
            Some(owner) if owner == company => NamespaceOwner::Ours,
            Some(owner) => NamespaceOwner::Other(format!("Company {owner}")),
            None => NamespaceOwner::Other("no Company (it was not created by Enclave)".into()),
        },
    })
}

async fn write_status(
    ctx: &Context,
    company: &Company,
    status: &CompanyStatus,
) -> Result<(), Error> {
    // An unchanged status is not written (no write, no watch event, no
    // reconcile it would trigger).
    if company.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<Company> = Api::all(ctx.client.clone());
    Ok(apply_status(&api, &company.name_any(), status).await?)
}

async fn apply(company: &Company, ctx: &Context) -> Result<Action, Error> {
    let build = CompanyContext::new(company, &ctx.config);
    let name = company.name_any();
    let namespace = build.names.namespace().to_owned();
    let generation = company.metadata.generation;
    let mut status = company.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.namespace = Some(namespace.clone());

    // Validate: the namespace must be free or already ours.
    if let NamespaceOwner::Other(owner) = namespace_owner(ctx, &namespace, &name).await? {
        let message = format!(
            "namespace {namespace} exists and belongs to {owner}; Enclave leaves it untouched: choose another spec.namespace (a new Company) or remove that namespace"
        );
        set(
            &mut status.conditions,
            "NamespaceReady",
            Some(false),
            reasons::CONFLICT,
            &message,
            generation,
        );
        set(
            &mut status.conditions,
            "Ready",
            Some(false),
            reasons::CONFLICT,
            &message,
            generation,
        );
        write_status(ctx, company, &status).await?;
        return Ok(Action::await_change());
    }

    // Build (pure) and apply the in-cluster objects; the storage volumes
    // wait for the file system (see `storage`).
    let plan = build_company(&build);
    for object in &plan.objects {
        if matches!(
            object,
            KubeObject::PersistentVolume(_) | KubeObject::PersistentVolumeClaim(_)
        ) {
            continue;
        }
        if object.metadata().namespace.as_deref() == Some(ctx.config.operator_namespace.as_str()) {
            continue;
        }
        ctx.apply(object).await?;
    }
    tracing::debug!(company = %name, namespace = %namespace, objects = plan.objects.len(), "applied the company's objects");
    // The set of children changes only with the spec (or a restart with
    // another configuration, which also reconciles every object).
    if company.status.as_ref().and_then(|s| s.observed_generation) != generation
        || !ctx.pruned_since_start(&format!("Company/{name}"))
    {
        let owner = Owner::Company {
            name: &name,
            uid: company.metadata.uid.as_deref().unwrap_or_default(),
        };
        let pruned = prune(ctx, &namespace, &owner, &plan.objects).await?;
        if !pruned.is_empty() {
            let why = format!("no longer implied by the spec: {}", pruned.join(", "));
            ctx.audit(company, &name, "ObjectsPruned", &why, true).await;
        }
    }

    let developers: Api<Developer> = Api::namespaced(ctx.client.clone(), &namespace);
    let count = developers
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    status.developer_count = i32::try_from(count).ok();
    set(
        &mut status.conditions,
        "NamespaceReady",
        Some(true),
        reasons::READY,
        &format!("namespace {namespace} with quota, limits, network policies and RBAC"),
        generation,
    );
    // Vault, the database and the file system are checked at the resync
    // interval, on a spec change, and while anything is not ready; other
    // events (a Developer's status, a namespace edit) do not repeat them.
    let key = format!("Company/{name}");
    let skip = company.status.as_ref().is_some_and(|s| {
        s.observed_generation == generation
            && ["VaultReady", "DatabaseReady", "StorageReady"]
                .iter()
                .all(|t| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == *t && c.status == "True")
                })
    }) && rotation_requested(company, &status).is_none()
        && ctx.checked_recently(&key);
    let vault = if skip {
        Ok(())
    } else {
        let vault = match &ctx.vault {
            Ok(vault) => ensure_company(vault.as_ref(), &plan)
                .await
                .map_err(Error::from),
            Err(e) => Err(Error::VaultUnavailable(e.clone())),
        };
        ctx.vault_step(company, &name, "the company controller", vault)
            .await
    };
    match &vault {
        Ok(()) => set(
            &mut status.conditions,
            "VaultReady",
            Some(true),
            reasons::READY,
            "the company controller's Vault policy and role are in place",
            generation,
        ),
        Err(e) => set(
            &mut status.conditions,
            "VaultReady",
            Some(false),
            reasons::VAULT_ERROR,
            &e.to_string(),
            generation,
        ),
    }
    // The database: credentials written to Vault first, inside the backend.
    let database = if skip {
        None
    } else {
        let database = ensure_database(ctx, &build, &status).await;
        ctx.health.metrics.backend("database", database.is_ok());
        Some(database)
    };
    let previous_database = status.database.clone();
    let database_ready = match &database {
        None => true,
        Some(database) => match database {
            Ok(state) => {
                let before = status.database.as_ref().and_then(|d| d.credentials_version);
                let now = state
                    .credentials_version
                    .and_then(|v| i64::try_from(v).ok());
                let rotated_for = match (&status.database, rotation_requested(company, &status)) {
                    // Fresh credentials: an annotation present at creation asks for nothing more.
                    (None, _) => company.annotations().get(ROTATE_ANNOTATION).cloned(),
                    (Some(_), Some(wanted)) if now > before => Some(wanted.to_owned()),
                    (Some(db), _) => db.rotated_for.clone(),
                };
                status.database = Some(DatabaseStatus {
                    rotated_for,
                    identifier: Some(state.identifier.clone()),
                    endpoint: state.endpoint.clone(),
                    port: state.port,
                    name: Some(state.database_name.clone()),
                    credentials_path: Some(format!(
                        "{}/data/{}",
                        ctx.config.vault.kv_mount, state.credentials_path
                    )),
                    phase: Some(state.phase.to_string()),
                    credentials_version: state
                        .credentials_version
                        .and_then(|v| i64::try_from(v).ok()),
                });
                let available = state.phase == Phase::Available;
                let mut message = if available {
                    "the database is available".to_owned()
                } else {
                    format!("the database is {}", state.phase)
                };
                if !state.unapplied.is_empty() {
                    message = format!("{message}; not applied: {}", state.unapplied.join("; "));
                }
                set(
                    &mut status.conditions,
                    "DatabaseReady",
                    Some(available),
                    if available {
                        reasons::READY
                    } else {
                        reasons::WAITING
                    },
                    &message,
                    generation,
                );
                available
            }
            Err(e) => {
                set(
                    &mut status.conditions,
                    "DatabaseReady",
                    Some(false),
                    reasons::DATABASE_ERROR,
                    &e.to_string(),
                    generation,
                );
                false
            }
        },
    };
    let rotated = status
        .database
        .as_ref()
        .and_then(|d| d.rotated_for.as_ref())
        != previous_database
            .as_ref()
            .and_then(|d| d.rotated_for.as_ref());
    if rotated && let Some(db) = &status.database {
        let why = format!(
            "database credentials rotated to version {} as asked by annotation {ROTATE_ANNOTATION}",
            db.credentials_version.unwrap_or_default()
        );
        ctx.audit(company, &name, "CredentialsRotated", &why, true)
            .await;
    }
    if status.database != previous_database
        && let Some(db) = &status.database
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
    let previous_storage = status.storage.clone();
    let storage_retry = if skip {
        None
    } else {
        Box::pin(storage::ensure_company(ctx, company, &mut status)).await?
    };
    if status.storage != previous_storage
        && let Some(id) = status
            .storage
            .as_ref()
            .and_then(|s| s.file_system_id.as_deref())
    {
        let why = format!("FSx file system {id} recorded for the company");
        ctx.audit(company, &name, "FileSystemEnsured", &why, true)
            .await;
    }
    let pending: Vec<&str> = [
        ("Vault", vault.is_ok()),
        ("the database", database_ready),
        ("storage", storage_retry.is_none()),
    ]
    .into_iter()
    .filter_map(|(what, ok)| (!ok).then_some(what))
    .collect();
    if pending.is_empty() {
        if !skip {
            ctx.mark_checked(&key);
        }
        set(
            &mut status.conditions,
            "Ready",
            Some(true),
            reasons::READY,
            "the tenant's namespace, Vault, database and storage are in place",
            generation,
        );
    } else {
        set(
            &mut status.conditions,
            "Ready",
            Some(false),
            reasons::WAITING,
            &format!("waiting for {}", pending.join(", ")),
            generation,
        );
    }
    write_status(ctx, company, &status).await?;
    // A failed step goes up, its status written: the error policy chooses
    // the retry by its category.
    vault?;
    if let Some(Err(e)) = database {
        return Err(e);
    }
    // Unfinished work is looked at again; a converged tenant is checked
    // for drift at the resync interval.
    let retry = [
        (!database_ready).then_some(Duration::from_secs(15)),
        storage_retry,
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(retry.map_or_else(|| Action::requeue(ctx.resync()), Action::requeue))
}

/// Ensures the company database with the backend of its mode.
async fn ensure_database(
    ctx: &Context,
    build: &CompanyContext<'_>,
    status: &CompanyStatus,
) -> Result<DatabaseState, Error> {
    let databases = ctx
        .databases
        .as_ref()
        .ok_or_else(|| Error::VaultUnavailable("the database backends need Vault".to_owned()))?;
    let req = database_request(build);
    let applied = status
        .database
        .as_ref()
        .and_then(|d| d.credentials_version)
        .and_then(|v| u64::try_from(v).ok());
    // Rotation on request: a new KV version first (unless an interrupted
    // rotation already wrote one), then the backend applies it below.
    if rotation_requested(build.company, status).is_some()
        && let (Ok(vault), Some(applied)) = (&ctx.vault, applied)
    {
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

async fn cleanup(company: &Company, ctx: &Context) -> Result<Action, Error> {
    let name = company.name_any();
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
    let build = CompanyContext::new(company, &ctx.config);
    let namespace = build.names.namespace().to_owned();
    // Developers first: each carries out the storage deletion policy on
    // its own directory and removes its Vault role while the company's
    // file system and namespace still exist.
    if matches!(
        namespace_owner(ctx, &namespace, &name).await?,
        NamespaceOwner::Ours
    ) {
        let developers: Api<Developer> = Api::namespaced(ctx.client.clone(), &namespace);
        let remaining = developers.list(&ListParams::default()).await?.items;
        if !remaining.is_empty() {
            for developer in remaining
                .iter()
                .filter(|d| d.metadata.deletion_timestamp.is_none())
            {
                developers
                    .delete(&developer.name_any(), &DeleteParams::default())
                    .await?;
            }
            return Err(Error::Waiting(format!(
                "{} Developer(s) of Company {name} to be removed first",
                remaining.len()
            )));
        }
    }
    // The company's Vault policy and role go; its secrets stay (their
    // deletion follows a policy that is not wired in yet).
    let vault = ctx.vault.as_ref().map_err(|e| {
        Error::Waiting(format!(
            "Vault to remove the company's policy and role ({e})"
        ))
    })?;
    // The database per its deletion policy, before anything else goes.
    if let Some(databases) = &ctx.databases {
        let req = database_request(&build);
        let outcome = match req.mode {
            DatabaseMode::Dedicated => databases.rds.delete(&req).await?,
            DatabaseMode::Shared => databases.shared.delete(&req).await?,
        };
        if outcome == Deletion::InProgress {
            return Err(Error::CloudInProgress(format!(
                "the database of Company {name} to be deleted"
            )));
        }
        let why = format!(
            "database deletion policy {:?} carried out: {outcome:?}",
            req.deletion_policy
        );
        ctx.audit(company, &name, "DatabaseDeletionPolicyApplied", &why, true)
            .await;
    }
    if let Some(why) = storage::cleanup_company(ctx, &build).await? {
        ctx.audit(
            company,
            &name,
            "FileSystemDeletionPolicyApplied",
            &why,
            true,
        )
        .await;
    }
    delete_tenant(
        vault.as_ref(),
        &build_company(&build),
        &build.names.kv_company_root(),
        false,
    )
    .await?;
    match namespace_owner(ctx, &namespace, &name).await? {
        NamespaceOwner::Ours => {
            let api: Api<Namespace> = Api::all(ctx.client.clone());
            if api
                .get_opt(&namespace)
                .await?
                .is_some_and(|ns| ns.metadata.deletion_timestamp.is_none())
            {
                api.delete(&namespace, &DeleteParams::default()).await?;
                let why = format!("namespace {namespace} deleted with the Company");
                ctx.audit(company, &name, "NamespaceDeleted", &why, true)
                    .await;
            }
            if api.get_opt(&namespace).await?.is_some() {
                return Err(Error::Waiting(format!(
                    "namespace {namespace} to be deleted"
                )));
            }
        }
        // Never delete what is not ours.
        NamespaceOwner::Free | NamespaceOwner::Other(_) => {}
    }
    tracing::info!(company = %name, "cleaned up");
    Ok(Action::await_change())
}
