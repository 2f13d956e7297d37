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
    /// What each workspace's init step did, by `namespace/statefulset`.
    pub workspaces: Workspaces,
    /// The pods' git host: `https://git.example.com/<path>` resolves to
    /// the bare repository `<git_host>/<path>`.
    pub git_host: PathBuf,
}

/// The outcome of one workspace pod's init step.
#[derive(Clone, Debug)]
pub struct PodRun {
    /// Whether `enclave workspace-init` succeeded.
    pub ok: bool,
    /// What it printed (stdout, or stderr on failure).
    pub output: String,
    /// The pod's secrets volume.
    pub secrets: PathBuf,
    /// The developer's directory as the pod saw it.
    pub home: PathBuf,
    /// The uid it ran as.
    pub uid: u32,
}

/// Shared view of the workspace runs.
pub type Workspaces = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, PodRun>>>;

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
    let workspaces = Workspaces::default();
    let git_host = file_systems.join("git.example.com");
    std::fs::create_dir_all(&git_host).unwrap();
    std::fs::write(
        git_host.with_extension("gitconfig"),
        format!(
            "[url \"file://{}/\"]\n\tinsteadOf = https://git.example.com/\n[safe]\n\tdirectory = *\n",
            git_host.display()
        ),
    )
    .unwrap();
    let task = tokio::spawn(run(
        client,
        operator_namespace.to_owned(),
        file_systems.clone(),
        workspaces.clone(),
    ));
    Kubelet {
        task,
        file_systems,
        workspaces,
        git_host,
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn run(client: Client, namespace: String, file_systems: PathBuf, workspaces: Workspaces) {
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
        Box::pin(provision(&client)).await;
        if let Ok(list) = sets.list(&ListParams::default()).await {
            for set in list.items {
                let key = format!("{}/{}", set.namespace().unwrap_or_default(), set.name_any());
                let want = set.spec.replicas.unwrap_or(1);
                let have = set.status.as_ref().and_then(|s| s.ready_replicas);
                let started = workspaces.lock().unwrap().get(&key).is_some_and(|r| r.ok);
                if want == 0 {
                    workspaces.lock().unwrap().remove(&key);
                } else if !started {
                    // The pod's init step, for real; a failure is a pod that
                    // does not become ready (and is retried, as by the kubelet).
                    let run = start_workspace(&client, &set, &file_systems).await;
                    let ok = run.ok;
                    workspaces.lock().unwrap().insert(key, run);
                    if !ok {
                        continue;
                    }
                }
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

/// Runs the workspace pod's init container as the pod would: as the pod's
/// uid, with a token the API issued for the pod's ServiceAccount and the
/// projected volume's audience, the secrets volume a fresh private
/// directory, and the home volume the developer's directory.
async fn start_workspace(client: &Client, set: &StatefulSet, file_systems: &Path) -> PodRun {
    use k8s_openapi::api::{
        authentication::v1::TokenRequest,
        core::v1::{PersistentVolume, PersistentVolumeClaim, ServiceAccount},
    };
    use std::os::unix::process::CommandExt;
    let namespace = set.namespace().unwrap_or_default();
    let pod = set.spec.template.spec.clone().unwrap();
    let uid = u32::try_from(pod.security_context.as_ref().unwrap().run_as_user.unwrap()).unwrap();
    let volumes = pod.volumes.clone().unwrap_or_default();
    let audience = volumes
        .iter()
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.clone().unwrap_or_default())
        .find_map(|s| s.service_account_token.and_then(|t| t.audience))
        .unwrap();
    let sa = pod.service_account_name.clone().unwrap();
    let request: TokenRequest = serde_json::from_value(
        json!({"spec": {"audiences": [audience], "expirationSeconds": 600}}),
    )
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(&sa, &kube::api::PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let pod_dir = file_systems
        .join("pods")
        .join(&namespace)
        .join(set.name_any());
    let _ = std::fs::remove_dir_all(&pod_dir);
    let secrets = pod_dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::os::unix::fs::chown(&secrets, Some(uid), Some(uid)).unwrap();
    set_mode(&pod_dir, 0o755);
    set_mode(&secrets, 0o700);
    let token_file = pod_dir.join("token");
    std::fs::write(&token_file, token.unwrap()).unwrap();
    std::os::unix::fs::chown(&token_file, Some(uid), Some(uid)).unwrap();
    // The home volume: the claim's static volume (FSx: the developer's
    // directory on the company file system) or a fresh volume of its own.
    let claim = volumes
        .iter()
        .find(|v| v.name == "home")
        .and_then(|v| v.persistent_volume_claim.as_ref())
        .unwrap()
        .claim_name
        .clone();
    let bound = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
        .get(&claim)
        .await
        .unwrap()
        .spec
        .unwrap()
        .volume_name;
    let claim_uid = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace)
        .get(&claim)
        .await
        .unwrap()
        .uid();
    let spec = match bound {
        Some(volume) => {
            Api::<PersistentVolume>::all(client.clone())
                .get(&volume)
                .await
                .unwrap()
                .spec
        }
        None => None,
    };
    // A volume bound to another claim (uid) cannot be mounted: the pod waits.
    if let Some(bound_uid) = spec
        .as_ref()
        .and_then(|s| s.claim_ref.as_ref()?.uid.clone())
        && Some(&bound_uid) != claim_uid.as_ref()
    {
        return PodRun {
            ok: false,
            output: format!("volume is bound to claim uid {bound_uid}, not to {claim:?}"),
            secrets,
            home: PathBuf::new(),
            uid,
        };
    }
    let nfs = spec.and_then(|s| s.nfs);
    let home = if let Some(nfs) = nfs {
        let relative = nfs.path.trim_start_matches("/fsx/").to_owned();
        std::fs::read_dir(file_systems)
            .unwrap()
            .map(|e| e.unwrap().path().join(&relative))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("no prepared directory for {}", nfs.path))
    } else {
        let dir = file_systems.join("volumes").join(&namespace).join(&claim);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
            set_mode(&dir, 0o700);
            set_mode(&file_systems.join("volumes"), 0o755);
            set_mode(&file_systems.join("volumes").join(&namespace), 0o755);
        }
        dir
    };
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let mounts: std::collections::BTreeMap<String, PathBuf> = [
        ("vault-token", pod_dir.clone()),
        ("secrets", secrets.clone()),
        ("home", home.clone()),
    ]
    .into_iter()
    .filter_map(|(volume, local)| {
        let mount = init
            .volume_mounts
            .as_ref()?
            .iter()
            .find(|m| m.name == volume)?;
        Some((mount.mount_path.clone(), local))
    })
    .collect();
    let args: Vec<String> = init
        .args
        .clone()
        .unwrap()
        .into_iter()
        .map(|a| {
            mounts
                .iter()
                .find_map(|(mount, local)| {
                    a.strip_prefix(mount.as_str())
                        .map(|rest| format!("{}{rest}", local.display()))
                })
                .unwrap_or(a)
        })
        .collect();
    let git_host = file_systems.join("git.example.com");
    let output = tokio::task::spawn_blocking(move || {
        crate::support::enclave()
            .args(&args)
            .uid(uid)
            .gid(uid)
            .env("HOME", "/nonexistent")
            // The pod's network: git.example.com is the local git host
            // (global configuration, which git keeps for the local
            // transport's upload-pack, unlike command-line settings).
            .env("GIT_CONFIG_GLOBAL", git_host.with_extension("gitconfig"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let ok = output.status.success();
    let text = String::from_utf8_lossy(if ok { &output.stdout } else { &output.stderr })
        .trim()
        .to_owned();
    PodRun {
        ok,
        output: text,
        secrets,
        home,
        uid,
    }
}

impl Kubelet {
    /// Creates the bare repository `path` (e.g. `acme/analytics.git`) on
    /// the pods' git host, with one commit holding `README.md` on `main`
    /// and on each of `branches`.
    pub fn git_repository(&self, path: &str, branches: &[&str]) {
        let bare = self.git_host.join(path);
        let work = self.git_host.join(format!("{path}.work"));
        let git = |dir: &Path, args: &[&str]| {
            let out = std::process::Command::new("git")
                .current_dir(dir)
                .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("README.md"), format!("{path}\n")).unwrap();
        git(&work, &["add", "README.md"]);
        git(&work, &["commit", "-q", "-m", "first"]);
        for branch in branches {
            git(&work, &["branch", branch]);
        }
        git(
            &self.git_host,
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().unwrap(),
                bare.to_str().unwrap(),
            ],
        );
        // Readable by the developers' uids.
        std::process::Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&self.git_host)
            .status()
            .unwrap();
    }
}

/// The volume provisioner and binder: a claim with a StorageClass gets a
/// new volume whose reclaim policy is `Delete`, as a default StorageClass
/// gives, and is bound to it.
async fn provision(client: &Client) {
    use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let Ok(list) = claims.list(&ListParams::default()).await else {
        return;
    };
    // The volume controller's half: a provisioned volume whose claim is
    // gone goes with it under reclaim policy Delete, and stays under Retain;
    // a pre-bound volume binds to its claim (its uid recorded) and stays
    // bound to that uid even after the claim is gone.
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    if let Ok(existing) = volumes.list(&ListParams::default()).await {
        for pv in existing.items {
            let spec = pv.spec.clone().unwrap_or_default();
            let Some(claim) = spec.claim_ref else {
                continue;
            };
            if claim.uid.is_none()
                && let Some(target) = list
                    .items
                    .iter()
                    .find(|c| c.namespace() == claim.namespace && Some(c.name_any()) == claim.name)
            {
                let bind = json!({"spec": {"claimRef": {"uid": target.uid()}}});
                let _ = volumes
                    .patch(
                        &pv.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&bind),
                    )
                    .await;
                continue;
            }
            let provisioned = pv.name_any().starts_with("pvc-");
            let claimed = list
                .items
                .iter()
                .any(|c| c.namespace() == claim.namespace && Some(c.name_any()) == claim.name);
            if provisioned
                && !claimed
                && spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete")
            {
                let _ = volumes
                    .delete(&pv.name_any(), &kube::api::DeleteParams::default())
                    .await;
            }
        }
    }
    for claim in list.items {
        let spec = claim.spec.clone().unwrap_or_default();
        let class = spec.storage_class_name.clone().unwrap_or_default();
        if class.is_empty()
            || spec.volume_name.is_some()
            || claim.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let namespace = claim.namespace().unwrap_or_default();
        let name = format!("pvc-{}", claim.uid().unwrap_or_default());
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .unwrap();
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": class,
                "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": format!("vol-{}", &name[4..12])},
                "claimRef": {"namespace": namespace, "name": claim.name_any(), "uid": claim.uid()},
            }
        }))
        .unwrap();
        let volumes: Api<PersistentVolume> = Api::all(client.clone());
        if volumes
            .create(&kube::api::PostParams::default(), &pv)
            .await
            .is_err()
        {
            continue;
        }
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
        let bind = json!({"spec": {"volumeName": name}});
        let _ = api
            .patch(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&bind),
            )
            .await;
    }
}
