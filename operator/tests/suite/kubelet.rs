//! A stand-in for what the emulator does not have — the kubelet and the Job
//! and StatefulSet controllers — so controller tests see Jobs finish and
//! workspaces become ready. It runs each storage-prep Job's real command
//! (`enclave storage-prep` with the Job's own arguments) on a local
//! directory that plays the file system the Job's claim names, and reports
//! the outcome in the Job's status as the Job controller would.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::{apps::v1::StatefulSet, batch::v1::Job};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

/// Runs until dropped.
pub struct Kubelet {
    task: tokio::task::JoinHandle<()>,
    /// Where the file systems live: one directory per root claim.
    pub file_systems: PathBuf,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    /// The local directory standing for the file system root that the
    /// claim `claim` (operator namespace) mounts.
    pub fn root_of(&self, claim: &str) -> PathBuf {
        self.file_systems.join(claim)
    }
}

/// Starts the stand-in on `client`, running Jobs of `operator_namespace`.
pub fn start(client: Client, operator_namespace: &str) -> Kubelet {
    let file_systems = std::env::temp_dir().join(crate::support::unique("enclave-fs-"));
    std::fs::create_dir_all(&file_systems).unwrap();
    // Let the developers' uids traverse down to their own directories.
    set_mode(&file_systems, 0o755);
    let task = tokio::spawn(run(
        client,
        operator_namespace.to_owned(),
        file_systems.clone(),
    ));
    Kubelet { task, file_systems }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn run(client: Client, namespace: String, file_systems: PathBuf) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let sets: Api<StatefulSet> = Api::all(client.clone());
    let mut done = BTreeSet::new();
    loop {
        if let Ok(list) = jobs.list(&ListParams::default()).await {
            for job in list.items {
                let key = (job.name_any(), job.uid().unwrap_or_default());
                if job
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some()
                    || done.contains(&key)
                {
                    continue;
                }
                let (ok, output) = execute(&job, &file_systems);
                let status = if ok {
                    json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "reason": "Completed", "message": output}]})
                } else {
                    json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": output}]})
                };
                let patch = json!({"apiVersion": "batch/v1", "kind": "Job", "status": status});
                if jobs
                    .patch_status(
                        &key.0,
                        &PatchParams::apply("kubelet-stand-in").force(),
                        &Patch::Apply(&patch),
                    )
                    .await
                    .is_ok()
                {
                    done.insert(key);
                }
            }
        }
        if let Ok(list) = sets.list(&ListParams::default()).await {
            for set in list.items {
                let want = set.spec.replicas.unwrap_or(1);
                let have = set.status.as_ref().and_then(|s| s.ready_replicas);
                if have == Some(want) {
                    continue;
                }
                let patch = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "status": {"replicas": want, "readyReplicas": want, "availableReplicas": want}});
                let api: Api<StatefulSet> =
                    Api::namespaced(client.clone(), &set.namespace().unwrap_or_default());
                let _ = api
                    .patch_status(
                        &set.name_any(),
                        &PatchParams::apply("kubelet-stand-in").force(),
                        &Patch::Apply(&patch),
                    )
                    .await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the Job's container command with its `fsx-root` volume mapped to
/// the claim's local directory.
fn execute(job: &Job, file_systems: &Path) -> (bool, String) {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let claim = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find_map(|v| v.persistent_volume_claim.as_ref())
        .unwrap()
        .claim_name
        .clone();
    let root = file_systems.join(&claim);
    std::fs::create_dir_all(&root).unwrap();
    set_mode(&root, 0o755);
    let container = &pod.containers[0];
    let mount = &container.volume_mounts.as_ref().unwrap()[0].mount_path;
    let args: Vec<String> = container
        .args
        .as_ref()
        .unwrap()
        .iter()
        .map(|a| {
            if a == mount {
                root.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let output = crate::support::enclave().args(&args).output().unwrap();
    let text = String::from_utf8_lossy(if output.status.success() {
        &output.stdout
    } else {
        &output.stderr
    })
    .trim()
    .to_owned();
    (output.status.success(), text)
}
