//! Storage steps of the controllers: the company's file system (FSx) and
//! the root volume its storage-prep Jobs mount; a developer's private
//! directory (prepared by a Job) and the volume that exposes only it; and
//! the deletion policy on both. Data is never removed by a cascade: only
//! the steps here, following `spec.storage.deletionPolicy`, touch it.

use std::time::Duration;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{PersistentVolume, PersistentVolumeClaim},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PropagationPolicy},
};

use super::{
    Backends, Context, Error, FIELD_MANAGER,
    conditions::{reasons, set},
};
use crate::{
    backends::storage::{FileSystemBackend, FileSystemState, FsDeletion, FsPhase},
    builders::{
        CompanyContext, DeveloperContext, KubeObject, Observed, StorageKind, cleanup_job,
        file_system_request,
    },
    crd::{Company, CompanyStatus, DeletionPolicy, DeveloperStatus, StorageStatus},
    storage_prep::Action as PrepAction,
};

/// How long an FSx file system may report no lifecycle before
/// `StorageReady` turns from Unknown to False.
const LIFECYCLE_GRACE: Duration = Duration::from_mins(30);

/// Ensures the company's storage and records it in `status`; `None` when
/// it is ready, else when to look again (an FSx file system being created
/// is polled through [`Error::CloudInProgress`]). Sets `StorageReady`.
pub async fn ensure_company<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
    status: &mut CompanyStatus,
) -> Result<Option<Duration>, Error> {
    let generation = build.company.metadata.generation;
    let kind = build.settings.storage.kind_name().to_owned();
    check_settings(build, status)?;
    let (StorageKind::Fsx { .. }, Some(req)) =
        (&build.settings.storage, file_system_request(build))
    else {
        status.storage = Some(StorageStatus {
            kind: Some(kind),
            ..StorageStatus::default()
        });
        set(
            &mut status.conditions,
            "StorageReady",
            Some(true),
            reasons::READY,
            "each developer gets a volume from the company's StorageClass",
            generation,
        );
        return Ok(None);
    };
    let state = ensure_file_system(ctx, &req, status, generation).await?;
    status.storage = Some(StorageStatus {
        kind: Some(kind),
        file_system_id: Some(state.file_system_id.clone()),
        root_path: Some(build.names.storage_root()),
        dns_name: state.dns_name.clone(),
        mount_name: state.mount_name.clone(),
    });
    let (ok, reason, message, retry) = match not_available(ctx, status, &state) {
        Some(wait) => (wait.ok, wait.reason, wait.message, Some(wait.retry)),
        // The volumes that mount the file system were built from what the
        // status recorded when this reconcile began: once they match what
        // FSx reports, the storage is ready; else the status write starts
        // a reconcile that builds them from the new facts.
        None if build.observed != Observed::recorded(Some(status)) => (
            Some(false),
            reasons::WAITING,
            format!(
                "FSx file system {} recorded; its volumes follow",
                state.file_system_id
            ),
            Some(Duration::from_secs(2)),
        ),
        None => (
            Some(true),
            reasons::READY,
            format!(
                "FSx file system {} is available; the company's directories live below {}",
                state.file_system_id,
                build.names.storage_root()
            ),
            None,
        ),
    };
    set(
        &mut status.conditions,
        "StorageReady",
        ok,
        reason,
        &message,
        generation,
    );
    if state.phase == FsPhase::Creating {
        return Err(Error::CloudInProgress(message));
    }
    Ok(retry)
}

/// Refuses storage settings that cannot be carried out (they depend on the
/// operator's configuration, so the CRD cannot check them).
fn check_settings(build: &CompanyContext<'_>, status: &mut CompanyStatus) -> Result<(), Error> {
    let Some(problem) = build.settings.problem() else {
        return Ok(());
    };
    set(
        &mut status.conditions,
        "StorageReady",
        Some(false),
        reasons::INVALID_SPEC,
        &problem,
        build.company.metadata.generation,
    );
    Err(Error::InvalidSpec(problem))
}

/// The file system as FSx reports it (created first if needed); a failure
/// sets `StorageReady` to what to do and goes up for its retry.
async fn ensure_file_system<B: Backends>(
    ctx: &Context<B>,
    req: &crate::builders::FileSystemRequest,
    status: &mut CompanyStatus,
    generation: Option<i64>,
) -> Result<FileSystemState, Error> {
    let ensured = ctx.file_systems.ensure(req).await;
    // A call deferred by the budget is not an outcome: the condition stays.
    if let Err(e @ crate::backends::storage::StorageError::Busy(_)) = ensured {
        super::conditions::deferred(&mut status.conditions, "StorageReady", generation);
        return Err(e.into());
    }
    ctx.health.metrics.backend("fsx", ensured.is_ok());
    ensured.map_err(|e| {
        let reason = if e.is_transient() {
            reasons::STORAGE_ERROR
        } else {
            reasons::CONFLICT
        };
        set(
            &mut status.conditions,
            "StorageReady",
            Some(false),
            reason,
            &e.to_string(),
            generation,
        );
        e.into()
    })
}

/// A file system that is not (yet) available: its condition and when to
/// look again.
struct NotAvailable {
    ok: Option<bool>,
    reason: &'static str,
    message: String,
    retry: Duration,
}

/// Why the file system `state` cannot be used yet, if it cannot.
fn not_available<B: Backends>(
    ctx: &Context<B>,
    status: &CompanyStatus,
    state: &FileSystemState,
) -> Option<NotAvailable> {
    let id = &state.file_system_id;
    let wait = |ok, reason, message: String, retry| {
        Some(NotAvailable {
            ok,
            reason,
            message,
            retry,
        })
    };
    match &state.phase {
        FsPhase::Available => None,
        FsPhase::Unknown if ctx.config.storage.fsx_missing_lifecycle_is_available => None,
        FsPhase::Unknown => {
            let previous = status
                .conditions
                .iter()
                .find(|c| c.type_ == "StorageReady" && c.status == "Unknown");
            let overdue = previous.is_some_and(|c| {
                let since =
                    k8s_openapi::jiff::Timestamp::now().duration_since(c.last_transition_time.0);
                since.as_secs() > LIFECYCLE_GRACE.as_secs().cast_signed()
            });
            let message = format!(
                "FSx reports no lifecycle for file system {id}; Enclave checks again every minute"
            );
            if overdue {
                let message = format!(
                    "{message}; it has not reported one for over 30 minutes: check the file system in the FSx console"
                );
                wait(
                    Some(false),
                    reasons::FSX_LIFECYCLE_MISSING,
                    message,
                    Duration::from_mins(1),
                )
            } else {
                wait(
                    None,
                    reasons::FSX_LIFECYCLE_MISSING,
                    message,
                    Duration::from_mins(1),
                )
            }
        }
        FsPhase::Creating => wait(
            Some(false),
            reasons::WAITING,
            format!("FSx file system {id} is being created"),
            // Unused: creation is polled with a growing interval.
            Duration::from_secs(30),
        ),
        FsPhase::Deleting => wait(
            Some(false),
            reasons::STORAGE_ERROR,
            format!(
                "FSx file system {id} is being deleted by someone else; Enclave waits for it to go and then creates a new one"
            ),
            Duration::from_mins(1),
        ),
        FsPhase::Failed(why) => wait(
            Some(false),
            reasons::STORAGE_ERROR,
            format!(
                "FSx file system {id} failed: {why}; delete it in FSx (its data per your backups) and Enclave creates a new one"
            ),
            Duration::from_mins(10),
        ),
    }
}

fn company_storage_ready(company: &Company) -> bool {
    company.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "StorageReady" && c.status == "True")
    })
}

/// What a Job's status says.
enum JobOutcome {
    Running,
    Succeeded,
    Failed(String),
}

fn job_outcome(job: &Job) -> JobOutcome {
    let Some(status) = &job.status else {
        return JobOutcome::Running;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    let is = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if let Some(failed) = is("Failed") {
        return JobOutcome::Failed(
            failed
                .message
                .clone()
                .or_else(|| failed.reason.clone())
                .unwrap_or_else(|| "the Job failed".into()),
        );
    }
    if is("Complete").is_some() || status.succeeded.unwrap_or(0) > 0 {
        return JobOutcome::Succeeded;
    }
    JobOutcome::Running
}

/// The outcome of `job`, creating it first if it does not exist (a Job's
/// spec cannot change, so an existing one is only read).
async fn run_job<B: Backends>(ctx: &Context<B>, job: &Job) -> Result<JobOutcome, Error> {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.config.operator_namespace);
    if let Some(existing) = jobs.get_opt(&job.name_any()).await? {
        return Ok(job_outcome(&existing));
    }
    ctx.apply(&KubeObject::Job(job.clone())).await?;
    Ok(JobOutcome::Running)
}

/// Ensures the developer's private directory and volume; `None` when
/// ready, else when to look again. Sets `StorageReady`.
pub async fn ensure_developer<B: Backends>(
    ctx: &Context<B>,
    dev: &DeveloperContext<'_>,
    status: &mut DeveloperStatus,
) -> Result<Option<Duration>, Error> {
    let generation = dev.developer.metadata.generation;
    let (volume, claim) = crate::builders::home_volume(dev);
    if let StorageKind::Volume { storage_class } = &dev.company.settings.storage {
        ctx.apply(&KubeObject::PersistentVolumeClaim(claim)).await?;
        set(
            &mut status.conditions,
            "StorageReady",
            Some(true),
            reasons::READY,
            &format!(
                "volume claim {} from StorageClass {storage_class}",
                dev.names.home_claim()
            ),
            generation,
        );
        return Ok(None);
    }
    if !company_storage_ready(dev.company.company) {
        set(
            &mut status.conditions,
            "StorageReady",
            Some(false),
            reasons::WAITING,
            "waiting for the company's file system",
            generation,
        );
        return Ok(Some(super::WATCHED_FALLBACK));
    }
    let volume_name = volume.as_ref().map(kube::ResourceExt::name_any);
    if let Some(volume) = volume {
        ctx.apply(&KubeObject::PersistentVolume(volume)).await?;
    }
    ctx.apply(&KubeObject::PersistentVolumeClaim(claim)).await?;
    if let Some(volume_name) = volume_name {
        release_stale_binding(ctx, &volume_name, dev).await?;
    }
    let prepared = status
        .conditions
        .iter()
        .any(|c| c.type_ == "StorageReady" && c.status == "True");
    if prepared {
        // The directory's owner and path never change (uid and subject are
        // fixed), so a finished preparation is not repeated.
        return Ok(None);
    }
    prepare_directory(ctx, dev, status).await
}

/// Runs the Job that creates the developer's directory and sets
/// `StorageReady` by its outcome; `Some(delay)` while it is not done.
async fn prepare_directory<B: Backends>(
    ctx: &Context<B>,
    dev: &DeveloperContext<'_>,
    status: &mut DeveloperStatus,
) -> Result<Option<Duration>, Error> {
    let generation = dev.developer.metadata.generation;
    let Some(job) = crate::builders::prep_job(dev) else {
        return Ok(None);
    };
    let path = dev.names.storage_path();
    let (ok, reason, message, again) = match run_job(ctx, &job).await? {
        JobOutcome::Succeeded => (
            Some(true),
            reasons::READY,
            format!(
                "directory {path} is owned by uid {} with mode 0700",
                dev.settings.posix_id
            ),
            None,
        ),
        JobOutcome::Running => (
            Some(false),
            reasons::WAITING,
            format!(
                "Job {}/{} prepares directory {path}",
                ctx.config.operator_namespace,
                job.name_any()
            ),
            Some(super::WATCHED_FALLBACK),
        ),
        JobOutcome::Failed(why) => (
            Some(false),
            reasons::STORAGE_PREP_FAILED,
            format!(
                "Job {ns}/{name} could not prepare directory {path}: {why}; read its pod's log, fix the cause, then delete the Job to retry",
                ns = ctx.config.operator_namespace,
                name = job.name_any()
            ),
            Some(Duration::from_mins(5)),
        ),
    };
    set(
        &mut status.conditions,
        "StorageReady",
        ok,
        reason,
        &message,
        generation,
    );
    Ok(again)
}

/// A retained volume still bound to a claim that is gone (its Developer
/// was deleted without cleanup, say) would never bind to the new claim:
/// its claim reference's uid is cleared, as an administrator would.
async fn release_stale_binding<B: Backends>(
    ctx: &Context<B>,
    volume_name: &str,
    dev: &DeveloperContext<'_>,
) -> Result<(), Error> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let Some(bound_to) = volumes
        .get_opt(volume_name)
        .await?
        .and_then(|pv| pv.spec?.claim_ref?.uid)
    else {
        return Ok(());
    };
    let claims: Api<PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), dev.company.names.namespace());
    let claim_uid = claims
        .get_opt(&dev.names.home_claim())
        .await?
        .and_then(|c| c.metadata.uid);
    if claim_uid.as_deref() != Some(bound_to.as_str()) {
        let patch =
            serde_json::json!({"spec": {"claimRef": {"uid": null, "resourceVersion": null}}});
        volumes
            .patch(volume_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        tracing::warn!(volume = volume_name, stale = %bound_to, "released a retained volume from a claim that is gone");
    }
    Ok(())
}

/// Carries out the deletion policy on a deleted Developer's storage; an
/// `Err(Waiting)` until its cleanup Job finished.
pub async fn cleanup_developer<B: Backends>(
    ctx: &Context<B>,
    dev: &DeveloperContext<'_>,
) -> Result<(), Error> {
    let policy = dev.company.settings.storage_deletion_policy;
    let developer = dev.developer.name_any();
    match &dev.company.settings.storage {
        StorageKind::Volume { .. } => {
            let claims: Api<PersistentVolumeClaim> =
                Api::namespaced(ctx.client.clone(), dev.company.names.namespace());
            let claim = dev.names.home_claim();
            if policy == DeletionPolicy::Delete {
                delete_if_present(&claims, &claim).await?;
            } else if let Some(bound) = claims
                .get_opt(&claim)
                .await?
                .and_then(|c| c.spec?.volume_name)
            {
                // The claim stays; should it go with the namespace later,
                // the volume under it must not be reclaimed with it.
                retain_volume(ctx, &bound).await?;
            }
        }
        StorageKind::Fsx { .. } => {
            let action = match policy {
                DeletionPolicy::Retain => None,
                DeletionPolicy::Snapshot => Some(PrepAction::Archive),
                DeletionPolicy::Delete => Some(PrepAction::Delete),
            };
            if let Some(job) = action.and_then(|a| cleanup_job(dev, a)) {
                match run_job(ctx, &job).await? {
                    JobOutcome::Succeeded => {}
                    JobOutcome::Running => {
                        return Err(Error::WaitingWatched(format!(
                            "Job {} to {} the directory of Developer {developer}",
                            job.name_any(),
                            action.map_or("", PrepAction::as_arg)
                        )));
                    }
                    JobOutcome::Failed(why) => {
                        return Err(Error::StorageCleanup(format!(
                            "Job {ns}/{name} could not {what} the directory {path} of Developer {developer}: {why}; read its pod's log and delete the Job to retry",
                            ns = ctx.config.operator_namespace,
                            name = job.name_any(),
                            what = action.map_or("", PrepAction::as_arg),
                            path = dev.names.storage_path(),
                        )));
                    }
                }
            }
            // Finished Jobs go, so a Developer re-created under the same
            // name runs its own, not an old result.
            let jobs: Api<Job> =
                Api::namespaced(ctx.client.clone(), &ctx.config.operator_namespace);
            for name in [
                dev.names.storage_prep_job(),
                dev.names.storage_cleanup_job(),
            ] {
                delete_job(&jobs, &name).await?;
            }
            // The volume object only: its reclaim policy is Retain, so the
            // directory stays unless the step above removed it.
            let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
            delete_if_present(&volumes, &dev.names.home_volume()).await?;
        }
    }
    Ok(())
}

/// Carries out the deletion policy on the company's file system, then
/// removes its root volume objects; `Err(Waiting)` while FSx deletes.
/// Returns what was done, for the audit trail.
pub async fn cleanup_company<B: Backends>(
    ctx: &Context<B>,
    build: &CompanyContext<'_>,
) -> Result<Option<String>, Error> {
    let Some(req) = file_system_request(build) else {
        return Ok(None);
    };
    let file_systems = &ctx.file_systems;
    let outcome = file_systems.delete(&req).await?;
    if outcome == FsDeletion::InProgress {
        return Err(Error::CloudInProgress(format!(
            "the file system of Company {} to be deleted",
            build.names.company()
        )));
    }
    let done = format!(
        "file system deletion policy {:?} carried out: {outcome:?}",
        req.deletion_policy
    );
    let operator_ns = &ctx.config.operator_namespace;
    let root = build.names.storage_root_volume();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), operator_ns);
    delete_if_present(&claims, &root).await?;
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    delete_if_present(&volumes, &root).await?;
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), operator_ns);
    delete_if_present(&policies, &build.names.storage_prep_policy()).await?;
    Ok(Some(done))
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_job(jobs: &Api<Job>, name: &str) -> Result<(), Error> {
    match jobs
        .delete(
            name,
            &DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            },
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn retain_volume<B: Backends>(ctx: &Context<B>, name: &str) -> Result<(), Error> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let patch = serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "spec": {"persistentVolumeReclaimPolicy": "Retain"},
    });
    volumes
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}
