//! The Developer controller (in-cluster part): the company is the
//! namespace; uid/gid are allocated once and recorded before anything uses
//! them; the workspace objects are applied with owner references, so they
//! go with the Developer.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{
    Resource as _,
    api::{
        apps::v1::StatefulSet,
        core::v1::{Namespace, Pod, ServiceAccount},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, CustomResourceExt, ResourceExt,
    api::{DeleteParams, ListParams},
    runtime::{
        controller::Action,
        finalizer::{Event, finalizer},
    },
};

use super::{
    Backends, Context, Error, WATCHED_FALLBACK, apply_status,
    conditions::{reasons, set, set_outcome, set_ready},
    lean::Lean,
    prune::{Owner, prune},
    storage,
    unmanaged::Unmanaged,
};
use crate::{
    backends::vault::{Change, VaultBackend, ensure_developer},
    builders::{DeveloperContext, DeveloperPlan, KubeObject, build_developer},
    crd::{Company, Condition, DeletionPolicy, Developer, DeveloperStatus},
    names::{CompanyNames, DeveloperNames},
    posix_ids,
};

/// The company named by `namespace`'s label (set only by the operator, and
/// kept while the Company is being deleted).
async fn company_label<B: Backends>(
    ctx: &Context<B>,
    namespace: &str,
) -> Result<Option<String>, Error> {
    if let Some((Some(label), _)) = ctx.cache.namespace_owner(namespace) {
        return Ok(Some(label));
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    Ok(namespaces
        .get_opt(namespace)
        .await?
        .and_then(|ns| ns.labels().get(crate::names::LABEL_COMPANY).cloned()))
}

/// Company `label`, if it exists and its namespace is `namespace` (a label
/// alone, which someone else could set, is not enough).
async fn company_named<B: Backends>(
    ctx: &Context<B>,
    label: &str,
    namespace: &str,
) -> Result<Option<Company>, Error> {
    let owns = |c: &Company| {
        CompanyNames::new(&c.name_any(), c.spec.namespace.as_deref()).namespace() == namespace
    };
    if let Some(company) = ctx
        .companies
        .get(&kube::runtime::reflector::ObjectRef::new(label))
        .filter(|c| owns(c))
    {
        return Ok(Some(Company::clone(&company)));
    }
    let companies: Api<Company> = Api::all(ctx.client.clone());
    Ok(companies.get_opt(label).await?.filter(owns))
}

/// The Company whose namespace is `namespace`, if any: two reads, whatever
/// the number of Companies.
async fn company_of<B: Backends>(
    ctx: &Context<B>,
    namespace: &str,
) -> Result<Option<Company>, Error> {
    match company_label(ctx, namespace).await? {
        Some(label) => company_named(ctx, &label, namespace).await,
        None => Ok(None),
    }
}

async fn write_status<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    status: &DeveloperStatus,
) -> Result<(), Error> {
    let mut status = status.clone();
    super::conditions::set_stalled(&mut status.conditions, status.observed_generation);
    if developer.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Lean<Developer>> = Api::namespaced(
        ctx.client.clone(),
        &developer.namespace().unwrap_or_default(),
    );
    Ok(apply_status(&api, &developer.name_any(), &status).await?)
}

/// Whether the Company's namespace and Vault are in place, which every
/// Developer step builds on.
pub(super) fn company_base_ready(company: &Company) -> bool {
    company.status.as_ref().is_some_and(|s| {
        ["NamespaceReady", "VaultReady"].iter().all(|t| {
            s.conditions
                .iter()
                .any(|c| c.type_ == *t && c.status == "True")
        })
    })
}

fn storage_ready(conditions: &[Condition]) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == "StorageReady" && c.status == "True")
}

/// The uid/gid of the person `names` stands for: the one recorded in
/// Vault for them (their data may still exist, owned by it), or a new one
/// that no live Developer holds (by status or by record) and no record of
/// a person gone holds, recorded before it is used. One allocation at a
/// time per company, so two new Developers never get one id.
async fn allocate_id<B: Backends>(
    ctx: &Context<B>,
    namespace: &str,
    company: &CompanyNames,
    names: &crate::names::DeveloperNames,
) -> Result<Option<i64>, Error> {
    let _guard = ctx.allocation_lock(namespace).lock().await;
    let vault = &ctx.vault;
    // Read from the API server, not a cache: the uid the previous
    // allocation recorded in a status must be seen here.
    let peers: Api<Unmanaged<Developer>> = Api::namespaced(ctx.client.clone(), namespace);
    let live: BTreeMap<String, i64> = peers
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|d| &d.0)
        .filter_map(|d| {
            let key = company
                .developer(&d.name_any(), &d.spec.subject)
                .key()
                .to_owned();
            Some((key, d.status.as_ref()?.uid?))
        })
        .collect();
    let path = names.kv_posix_id();
    let prefix = path.rsplit_once('/').map_or("", |(p, _)| p);
    // A live person's record is read once, to see that it holds the uid
    // their status names (a status edited or restored may not): not again
    // for each new colleague. The records of people gone are always read.
    let seen: BTreeSet<String> = live
        .iter()
        .filter(|(key, uid)| ctx.allocation.matches(key, **uid))
        .map(|(key, _)| key.clone())
        .collect();
    let recorded = vault.recorded_posix_ids(prefix, &seen).await?;
    for (key, uid) in &live {
        if recorded.get(key) == Some(uid) {
            ctx.allocation.matched(key, *uid);
        }
    }
    let mut used: BTreeSet<i64> = live.into_values().collect();
    if let Some(id) = recorded.get(names.key()).filter(|id| !used.contains(id)) {
        ctx.allocation.matched(names.key(), *id);
        return Ok(Some(*id));
    }
    used.extend(recorded.values());
    let Some(id) = posix_ids::allocate(&ctx.config.workspace.posix_ids, &used) else {
        return Ok(None);
    };
    let id = vault.record_posix_id(&path, id).await?;
    ctx.allocation.matched(names.key(), id);
    Ok(Some(id))
}

/// Guards the Developer's Vault policy and role.
pub const FINALIZER: &str = "enclave.dev/cleanup";

/// Reconciles one Developer.
pub async fn reconcile<B: Backends>(
    developer: Arc<Developer>,
    ctx: Arc<Context<B>>,
) -> Result<Action, Error> {
    let namespace = developer.namespace().unwrap_or_default();
    let api: Api<Developer> = Api::namespaced(ctx.client.clone(), &namespace);
    let developer = super::with_finalizer(
        &Api::<Unmanaged<Developer>>::namespaced(ctx.client.clone(), &namespace),
        FINALIZER,
        developer,
    )
    .await?;
    let result = Box::pin(finalizer(&api, FINALIZER, developer, |event| async {
        match event {
            Event::Apply(developer) => Box::pin(apply(developer, &ctx)).await,
            Event::Cleanup(developer) => Box::pin(cleanup(&developer, &ctx)).await,
        }
    }))
    .await;
    super::finalized(result)
}

/// Whether Enclave's CRDs are being deleted (an uninstall, not a person
/// removing one Developer).
async fn uninstalling<B: Backends>(ctx: &Context<B>) -> Result<bool, Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    for name in [Developer::crd_name(), Company::crd_name()] {
        if crds
            .get_opt(name)
            .await?
            .is_none_or(|crd| crd.metadata.deletion_timestamp.is_some())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn cleanup<B: Backends>(developer: &Developer, ctx: &Context<B>) -> Result<Action, Error> {
    let Some(status) = &developer.status else {
        return Ok(Action::await_change());
    };
    let namespace = developer.namespace().unwrap_or_default();
    let label = company_label(ctx, &namespace).await?;
    let company = match &label {
        Some(label) => company_named(ctx, label, &namespace).await?,
        None => None,
    };
    hold_if_protected(ctx, developer, status, company.as_ref()).await?;
    // The pod goes first: nothing may still run as this person (a Developer
    // re-created under the same name must never meet it).
    if let Err(e) = stop_workspace(
        ctx,
        developer,
        label.as_deref().unwrap_or_default(),
        &namespace,
        company.is_some(),
    )
    .await
    {
        if let Error::WorkspaceOrphaned { .. } = &e {
            let mut status = status.clone();
            set(
                &mut status.conditions,
                "Ready",
                Some(false),
                reasons::WORKSPACE_ORPHANED,
                &e.to_string(),
                developer.metadata.generation,
            );
            write_status(ctx, developer, &status).await?;
        }
        return Err(e);
    }
    // Storage, then the Vault roles, then the personal secrets (once no
    // token can write them any more), per the company's deletion policies
    // (the Company still exists: its own deletion waits for its Developers).
    if let Some(id) = status.uid {
        storage_cleanup(ctx, developer, status, company.clone(), id).await?;
    }
    let action = vault_cleanup(ctx, developer, status, label, &namespace).await?;
    secrets_cleanup(ctx, developer, company.as_ref()).await?;
    Ok(action)
}

/// The workspace pod, if it is still there. The operator reads pods only
/// through its binding in the company namespace: when that namespace is
/// being deleted directly the binding may go first, and the namespace's
/// own deletion removes every pod in it.
async fn workspace_pod<B: Backends>(
    ctx: &Context<B>,
    company: &str,
    namespace: &str,
    names: &DeveloperNames,
) -> Result<Option<Lean<Pod>>, Error> {
    let pods: Api<Lean<Pod>> = Api::namespaced(ctx.client.clone(), namespace);
    match pods.get_opt(&names.workspace_pod()).await {
        Ok(pod) => Ok(pod),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            let namespaces: Api<Lean<Namespace>> = Api::all(ctx.client.clone());
            match namespaces.get_opt(namespace).await? {
                Some(ns) if ns.metadata.deletion_timestamp.is_none() => {
                    Err(Error::Waiting(format!(
                        "read access to pods in namespace {namespace}: RoleBinding {} is missing; \
                         Company {company}'s next reconcile restores it",
                        CompanyNames::new(company, None).operator_access_binding()
                    )))
                }
                _ => Ok(None),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// Holds the Developer while its Company is protected and being deleted
/// (the Company deleted, or the CRDs: the API server then deletes
/// Developers and Companies in no set order).
async fn hold_if_protected<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    status: &DeveloperStatus,
    company: Option<&Company>,
) -> Result<(), Error> {
    let Some(company) = company.filter(|c| c.spec.deletion_protection) else {
        return Ok(());
    };
    if company.metadata.deletion_timestamp.is_none() && !uninstalling(ctx).await? {
        return Ok(());
    }
    let mut status = status.clone();
    set(
        &mut status.conditions,
        "Ready",
        Some(false),
        reasons::DELETION_PROTECTED,
        "deletion is held: Company deletion protection covers its Developers while the Company is being deleted",
        developer.metadata.generation,
    );
    write_status(ctx, developer, &status).await?;
    Err(Error::DeletionProtected(company.name_any()))
}

/// Deletes the workspace StatefulSet (its pod first: foreground) and the
/// workspace ServiceAccount (so tokens issued to it stop working), and
/// waits until the StatefulSet and its pod are gone. `managed`: a Company
/// owns the namespace (only there may the operator read pods).
async fn stop_workspace<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    company: &str,
    namespace: &str,
    managed: bool,
) -> Result<(), Error> {
    let names =
        CompanyNames::new(company, None).developer(&developer.name_any(), &developer.spec.subject);
    let waiting = || {
        Error::WaitingWatched(format!(
            "workspace {} of Developer {} to stop",
            names.workspace(),
            developer.name_any()
        ))
    };
    // Seen stopping (its pods deleted before it): its going wakes this
    // Developer, nothing to read meanwhile.
    if ctx
        .cache
        .stopping(StatefulSet::KIND, namespace, &names.workspace())
    {
        return Err(waiting());
    }
    // Metadata is all it reads: whether the workspace is still there, and
    // whether its pods are already being deleted before it. Read, not
    // cached: a watch that has not yet seen it created must not let its
    // pod outlive the person.
    let sets: Api<Lean<StatefulSet>> = Api::namespaced(ctx.client.clone(), namespace);
    if let Some(set) = sets.get_opt(&names.workspace()).await? {
        // Asked once: the retries that wait for it to go write nothing (a
        // deletion someone else began without the foreground finalizer is
        // asked again, so that no pod outlives it).
        let stopping = set.metadata.deletion_timestamp.is_some()
            && set.finalizers().iter().any(|f| f == "foregroundDeletion");
        if stopping {
            // Read now: the watch's mark is good for another while.
            ctx.cache
                .still_stopping(StatefulSet::KIND, namespace, &names.workspace());
        } else {
            match sets
                .delete(&names.workspace(), &DeleteParams::foreground())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        return Err(waiting());
    }
    // The StatefulSet gone, its pod may not be: deleted in the background
    // (`kubectl delete sts`, the default) the pod is left to the garbage
    // collector; with `--cascade=orphan` nothing deletes it. The operator
    // reads pods only in company namespaces (its workspace-access binding).
    if managed && let Some(pod) = workspace_pod(ctx, company, namespace, &names).await? {
        let collected = pod.metadata.deletion_timestamp.is_some()
            || pod
                .owner_references()
                .iter()
                .any(|o| o.kind == "StatefulSet" && o.name == names.workspace());
        if !collected {
            return Err(Error::WorkspaceOrphaned {
                namespace: namespace.to_owned(),
                pod: names.workspace_pod(),
            });
        }
        return Err(Error::Waiting(format!(
            "pod {} of Developer {} to stop",
            names.workspace_pod(),
            developer.name_any()
        )));
    }
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    match accounts
        .delete(&names.service_account(), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Carries out the company's storage deletion policy on the Developer's
/// directory, unless the company's deletion protection holds it.
async fn storage_cleanup<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    status: &DeveloperStatus,
    company: Option<Company>,
    id: i64,
) -> Result<(), Error> {
    let Some(company) = company else {
        tracing::warn!(
            developer = %developer.name_any(),
            namespace = %developer.namespace().unwrap_or_default(),
            "no Company owns the namespace any more; the developer's directory and volume are kept"
        );
        return Ok(());
    };
    let company_ctx = ctx.company(&company);
    let dev_ctx = DeveloperContext::new(&company_ctx, developer, id);
    if let Err(e) = Box::pin(storage::cleanup_developer(ctx, &dev_ctx)).await {
        if let Error::StorageCleanup(message) = &e {
            let mut status = status.clone();
            set(
                &mut status.conditions,
                "Ready",
                Some(false),
                reasons::STORAGE_CLEANUP_FAILED,
                message,
                developer.metadata.generation,
            );
            write_status(ctx, developer, &status).await?;
        }
        return Err(e);
    }
    // Its data gone (policy Delete), the person's uid may be reused;
    // otherwise it stays recorded for them.
    let policy = company_ctx.settings.storage_deletion_policy;
    if policy == DeletionPolicy::Delete {
        ctx.vault
            .forget_posix_id(&dev_ctx.names.kv_posix_id())
            .await?;
    }
    let why = format!(
        "storage deletion policy {policy:?} carried out on {}",
        dev_ctx.names.storage_path()
    );
    ctx.audit(
        developer,
        company_ctx.names.company(),
        "StorageDeletionPolicyApplied",
        &why,
        true,
    )
    .await;
    Ok(())
}

/// Carries out the company's secrets deletion policy on the person's own
/// secrets; without a Company to say so, they are kept.
async fn secrets_cleanup<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    company: Option<&Company>,
) -> Result<(), Error> {
    let Some(company) = company else {
        return Ok(());
    };
    let company_ctx = ctx.company(company);
    if company_ctx.settings.secrets_deletion_policy != DeletionPolicy::Delete
        || !super::company::owns_vault_data(ctx, &company_ctx).await?
    {
        return Ok(());
    }
    let names = company_ctx
        .names
        .developer(&developer.name_any(), &developer.spec.subject);
    let removed = ctx.vault.delete_secrets(&names.kv_developer()).await?;
    if removed > 0 {
        let why = format!(
            "secrets deletion policy Delete: {removed} personal secret(s) at {} removed with every version",
            names.kv_developer()
        );
        ctx.audit(
            developer,
            company_ctx.names.company(),
            "SecretsDeleted",
            &why,
            true,
        )
        .await;
    }
    Ok(())
}

/// The Developer's key in [`Context::checked`].
pub(super) fn checked_key(developer: &Developer) -> String {
    format!(
        "Developer/{}/{}",
        developer.namespace().unwrap_or_default(),
        developer.name_any()
    )
}

/// The person's JWT-auth role as the status records it: (mount, role).
fn recorded_person_role(status: &DeveloperStatus) -> Option<(&str, &str)> {
    Some((
        status.person_vault_mount.as_deref()?,
        status.person_vault_role.as_deref()?,
    ))
}

/// Removes the Developer's Vault role and policy: those its status
/// records, or, when a reconcile wrote them to Vault and stopped before its
/// status write, those its names give. The company comes from the
/// namespace's label, which outlives the Company during its deletion.
async fn vault_cleanup<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    status: &DeveloperStatus,
    label: Option<String>,
    namespace: &str,
) -> Result<Action, Error> {
    let named = label.as_deref().map(|company| {
        CompanyNames::new(company, Some(namespace))
            .developer(&developer.name_any(), &developer.spec.subject)
            .vault_role()
    });
    let Some(role) = status.vault_role.as_ref().or(named.as_ref()) else {
        return Ok(Action::await_change());
    };
    let Some(company) = label else {
        return Err(Error::Waiting(format!(
            "the company of namespace {namespace} to remove role {role}"
        )));
    };
    let vault = &ctx.vault;
    let mut removed = vec![vault.delete_role(&company, role).await?];
    // The workspace's policy is named as its role.
    let policy = status.vault_policy.as_ref().unwrap_or(role);
    removed.push(vault.delete_policy(policy).await?);
    // The person's own role (an Admin's), where it was written.
    if let Some((mount, person)) = recorded_person_role(status) {
        removed.push(vault.delete_person_role(&company, mount, person).await?);
        removed.push(vault.delete_policy(person).await?);
    }
    if removed.contains(&Change::Deleted) {
        let why =
            format!("the workspace's Vault role and policy {role} removed with the Developer");
        ctx.audit(developer, &company, "VaultPoliciesDeleted", &why, true)
            .await;
    }
    Ok(Action::await_change())
}

async fn apply<B: Backends>(developer: Arc<Developer>, ctx: &Context<B>) -> Result<Action, Error> {
    let generation = developer.metadata.generation;
    let mut status = developer.status.clone().unwrap_or_default();
    status.observed_generation = generation;

    // Dereference and validate: its Company, with namespace and Vault ready.
    let company = match ready_company(ctx, &developer, &mut status).await? {
        Ok(company) => company,
        Err(later) => return Ok(later),
    };
    let Some(id) = posix_id(ctx, &developer, &company, &mut status).await? else {
        return Ok(Action::requeue(Duration::from_mins(1)));
    };

    // Validate what only the Company can allow; refused, nothing changes.
    let company_ctx = ctx.company(&company);
    let dev_ctx = DeveloperContext::new(&company_ctx, &developer, id);
    validate(ctx, &developer, &dev_ctx, &mut status).await?;

    // Build (pure), apply identity and network, prune.
    let plan = build_developer(&dev_ctx);
    apply_objects(ctx, &developer, &dev_ctx, &plan).await?;
    status.pod_name = Some(dev_ctx.names.workspace_pod());
    status.storage_path = Some(dev_ctx.names.storage_path());
    status.vault_role = Some(dev_ctx.names.vault_role());
    status.vault_policy = Some(dev_ctx.names.vault_role());

    // Storage, then the workspace once its directory is ready.
    let storage_retry = storage_step(ctx, &developer, &dev_ctx, &mut status).await?;
    workspace_step(ctx, &dev_ctx, &plan, storage_retry.is_some(), &mut status).await?;
    let vault = vault_step(ctx, &developer, &company, &plan, &mut status).await;

    // Status, then a failed step goes up.
    let pending: Vec<&str> = ["StorageReady", "VaultReady", "WorkspaceReady"]
        .into_iter()
        .filter(|t| !super::conditions::is_true(&status.conditions, t))
        .collect();
    set_ready(
        &mut status.conditions,
        &pending,
        "the workspace, its storage and its Vault access are in place",
        generation,
    );
    write_status(ctx, &developer, &status).await?;
    vault?;
    // Unfinished work is woken by its watches (the StatefulSet, the Job,
    // the Company); the requeue only guards against a missed event. A
    // converged Developer waits for a change, or for the periodic resync.
    let workspace_ready = super::conditions::is_true(&status.conditions, "WorkspaceReady");
    let retry = [
        storage_retry,
        (!workspace_ready).then_some(WATCHED_FALLBACK),
    ]
    .into_iter()
    .flatten()
    .min();
    Ok(retry.map_or_else(Action::await_change, Action::requeue))
}

/// Refuses what only the Company can allow (an image outside its
/// allow-list): the conditions say why, the status is written, nothing
/// else changes.
async fn validate<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    dev_ctx: &DeveloperContext<'_>,
    status: &mut DeveloperStatus,
) -> Result<(), Error> {
    let Some(problem) = dev_ctx.settings.image_problem(&dev_ctx.company.settings) else {
        return Ok(());
    };
    for type_ in ["WorkspaceReady", "Ready"] {
        set(
            &mut status.conditions,
            type_,
            Some(false),
            reasons::IMAGE_NOT_ALLOWED,
            &problem,
            developer.metadata.generation,
        );
    }
    write_status(ctx, developer, status).await?;
    Err(Error::InvalidSpec(problem))
}

/// The Developer's Company once it has its namespace and Vault ready, or
/// (status written) when to look again.
async fn ready_company<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    status: &mut DeveloperStatus,
) -> Result<Result<Company, Action>, Error> {
    let namespace = developer.namespace().unwrap_or_default();
    let (reason, message, retry) = match company_of(ctx, &namespace).await? {
        Some(company) if company_base_ready(&company) => return Ok(Ok(company)),
        None => (
            reasons::NO_COMPANY,
            format!(
                "no Company owns namespace {namespace}: a Developer must live in its company's namespace; nothing was created"
            ),
            Duration::from_secs(30),
        ),
        Some(company) => (
            reasons::WAITING,
            format!(
                "waiting for Company {} to have its namespace and Vault ready",
                company.name_any()
            ),
            // Its Company's readiness wakes it through the watch.
            WATCHED_FALLBACK,
        ),
    };
    let generation = developer.metadata.generation;
    set(
        &mut status.conditions,
        "Ready",
        Some(false),
        reason,
        &message,
        generation,
    );
    write_status(ctx, developer, status).await?;
    Ok(Err(Action::requeue(retry)))
}

/// The Developer's uid/gid: allocated once and recorded in its status
/// before anything uses it; `None` (status written) when the range is full.
async fn posix_id<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    company: &Company,
    status: &mut DeveloperStatus,
) -> Result<Option<i64>, Error> {
    if let Some(id) = status.uid {
        return Ok(Some(id));
    }
    let namespace = developer.namespace().unwrap_or_default();
    let company_names = CompanyNames::new(&company.name_any(), company.spec.namespace.as_deref());
    let names = company_names.developer(&developer.name_any(), &developer.spec.subject);
    let Some(id) = allocate_id(ctx, &namespace, &company_names, &names).await? else {
        let message = "no free uid/gid left in the operator's workspace.posixIds range; widen it";
        let generation = developer.metadata.generation;
        set(
            &mut status.conditions,
            "Ready",
            Some(false),
            reasons::WAITING,
            message,
            generation,
        );
        write_status(ctx, developer, status).await?;
        return Ok(None);
    };
    status.uid = Some(id);
    status.gid = Some(id);
    write_status(ctx, developer, status).await?;
    Ok(Some(id))
}

/// Applies the Developer's identity and network objects (volumes and the
/// preparation Job are the storage step's, the workspace waits for its
/// directory) and prunes those it no longer implies.
async fn apply_objects<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    dev_ctx: &DeveloperContext<'_>,
    plan: &DeveloperPlan,
) -> Result<(), Error> {
    let identity_and_network = plan
        .objects
        .iter()
        .filter(|object| {
            !matches!(
                object,
                KubeObject::PersistentVolume(_)
                    | KubeObject::PersistentVolumeClaim(_)
                    | KubeObject::Job(_)
                    | KubeObject::StatefulSet(_)
            )
        })
        .collect();
    ctx.apply_all(identity_and_network).await?;
    let namespace = developer.namespace().unwrap_or_default();
    let key = format!("Developer/{namespace}/{}", developer.name_any());
    if developer
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        != developer.metadata.generation
        || !ctx.pruned_since_start(&key)
    {
        let company = dev_ctx.company.names.company();
        let owner = Owner::Developer {
            company,
            name: dev_ctx.names.name(),
            uid: developer.metadata.uid.as_deref().unwrap_or_default(),
        };
        let pruned = prune(ctx, &namespace, &owner, &plan.objects).await?;
        if !pruned.is_empty() {
            let why = format!("no longer implied by the spec: {}", pruned.join(", "));
            ctx.audit(developer, company, "ObjectsPruned", &why, true)
                .await;
        }
    }
    Ok(())
}

/// The Developer's private directory (see `storage`): `Some(delay)` while
/// it is not ready.
async fn storage_step<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    dev_ctx: &DeveloperContext<'_>,
    status: &mut DeveloperStatus,
) -> Result<Option<Duration>, Error> {
    let was_prepared = storage_ready(&status.conditions);
    let retry = Box::pin(storage::ensure_developer(ctx, dev_ctx, status)).await?;
    if !was_prepared && storage_ready(&status.conditions) {
        let why = format!(
            "private storage {} ready for uid {}",
            dev_ctx.names.storage_path(),
            status.uid.unwrap_or_default()
        );
        let company = dev_ctx.company.names.company();
        ctx.audit(developer, company, "StoragePrepared", &why, true)
            .await;
    }
    Ok(retry)
}

/// The workspace StatefulSet (once storage is ready) and its condition.
async fn workspace_step<B: Backends>(
    ctx: &Context<B>,
    dev_ctx: &DeveloperContext<'_>,
    plan: &DeveloperPlan,
    storage_pending: bool,
    status: &mut DeveloperStatus,
) -> Result<(), Error> {
    let namespace = dev_ctx.company.names.namespace();
    // Not there before this step (created now, or not at all): no pod is
    // ready, whether or not the watch has seen the creation yet.
    let absent = ctx
        .cache
        .absent(StatefulSet::KIND, namespace, &dev_ctx.names.workspace());
    if !storage_pending {
        for object in &plan.objects {
            if matches!(object, KubeObject::StatefulSet(_)) {
                ctx.apply(object).await?;
            }
        }
    }
    let ready_pods = match ctx
        .cache
        .ready_replicas(namespace, &dev_ctx.names.workspace())
    {
        Some(ready) => ready,
        None if absent => 0,
        None => Api::<StatefulSet>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&dev_ctx.names.workspace())
            .await?
            .and_then(|s| s.status)
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
    };
    let (ok, reason, message) = match (dev_ctx.settings.suspended, ready_pods) {
        _ if storage_pending => (
            false,
            reasons::WAITING,
            "the workspace starts once its storage is ready".to_owned(),
        ),
        (true, _) => (
            true,
            reasons::READY,
            "suspended: no pod, data kept".to_owned(),
        ),
        (false, 0) => (
            false,
            reasons::WAITING,
            format!(
                "the workspace pod {} is not ready yet",
                dev_ctx.names.workspace_pod()
            ),
        ),
        (false, _) => (
            true,
            reasons::READY,
            "the workspace pod is ready".to_owned(),
        ),
    };
    let generation = status.observed_generation;
    set(
        &mut status.conditions,
        "WorkspaceReady",
        Some(ok),
        reason,
        &message,
        generation,
    );
    Ok(())
}

/// The workspace's Vault policy and role, with their condition: at the
/// resync interval, on a spec change and while not ready, not on every
/// event (its Company's status, its pod's).
async fn vault_step<B: Backends>(
    ctx: &Context<B>,
    developer: &Developer,
    company: &Company,
    plan: &DeveloperPlan,
    status: &mut DeveloperStatus,
) -> Result<(), Error> {
    let checked_key = checked_key(developer);
    let generation = developer.metadata.generation;
    let converged = developer.status.as_ref().is_some_and(|s| {
        s.observed_generation == generation
            && super::conditions::is_true(&s.conditions, "VaultReady")
    }) && ctx.checked_recently(&checked_key);
    if converged {
        return Ok(());
    }
    let tenant = company.name_any();
    let recorded = recorded_person_role(status);
    let result = ensure_developer(ctx.vault.as_ref(), &tenant, plan, recorded)
        .await
        .map_err(Error::from);
    let result = ctx
        .vault_step(developer, &tenant, "the workspace", result)
        .await;
    if result.is_ok() {
        ctx.mark_checked(&checked_key);
        // What is in Vault now: the person's role where it was written.
        status.person_vault_mount = plan.person.as_ref().map(|p| p.mount.clone());
        status.person_vault_role = plan.person.as_ref().map(|p| p.role.name.clone());
    }
    set_outcome(
        &mut status.conditions,
        "VaultReady",
        &result,
        "the workspace's Vault policy and role are in place",
        reasons::VAULT_ERROR,
        generation,
    );
    result
}
