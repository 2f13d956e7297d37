//! The kubelet stand-in of the real control plane: the API server, the Job
//! and StatefulSet controllers and the scheduler are real, but no kubelet
//! runs containers. This stand-in takes the pods the scheduler bound to the
//! test Node and runs their real commands as local processes — each
//! storage-prep pod's `enclave storage-prep` on a local directory that plays
//! the file system its claim names, each workspace pod's (and company
//! controller pod's) init step `enclave workspace-init` as the pod's uid
//! with a token from the
//! TokenRequest API bound to the pod — and reports the outcome in the pod's
//! status, from which the real controllers derive Job and StatefulSet
//! status. It finishes pods' deletion (as a kubelet does once containers
//! stop) and provisions volumes for claims of its StorageClasses (as a CSI
//! provisioner would); the real volume controller binds them.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::reflector::Store,
};
use serde_json::json;

/// The provisioner name of the StorageClasses the stand-in provisions for.
pub const PROVISIONER: &str = "ebs.csi.aws.com";

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
    /// When set, workspace pods are reported running without their init
    /// step (the benchmark measures the control plane, not the pods).
    pub skip_init: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
pub type Workspaces = std::sync::Arc<std::sync::Mutex<BTreeMap<String, PodRun>>>;

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The local directory that plays the volume bound to `claim`, or why the
/// pod cannot mount it.
async fn home_volume(
    client: &Client,
    namespace: &str,
    claim: &str,
    uid: u32,
    file_systems: &Path,
) -> Result<PathBuf, String> {
    let bound = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get(claim)
        .await
        .unwrap()
        .spec
        .unwrap()
        .volume_name;
    let claim_uid = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace)
        .get(claim)
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
        return Err(format!(
            "volume is bound to claim uid {bound_uid}, not to {claim:?}"
        ));
    }
    let nfs = spec.and_then(|s| s.nfs);
    Ok(if let Some(nfs) = nfs {
        let relative = nfs.path.trim_start_matches("/fsx/").to_owned();
        std::fs::read_dir(file_systems)
            .unwrap()
            .map(|e| e.unwrap().path().join(&relative))
            .find(|p| p.is_dir())
            .unwrap_or_else(|| panic!("no prepared directory for {}", nfs.path))
    } else {
        let dir = file_systems.join("volumes").join(namespace).join(claim);
        if !dir.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
            set_mode(&dir, 0o700);
            set_mode(&file_systems.join("volumes"), 0o755);
            set_mode(&file_systems.join("volumes").join(namespace), 0o755);
        }
        dir
    })
}

impl Kubelet {
    /// The local directory standing for the file system root that the
    /// claim `claim` (operator namespace) mounts.
    pub fn root_of(&self, claim: &str) -> PathBuf {
        self.file_systems.join(claim)
    }
}

/// Starts the stand-in for Node `node` on `client` (an admin: a kubelet
/// writes pod status and volumes).
pub fn start(client: Client, node: &str) -> Kubelet {
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
    let skip_init = std::sync::Arc::<std::sync::atomic::AtomicBool>::default();
    let task = tokio::spawn(run(
        client,
        node.to_owned(),
        file_systems.clone(),
        workspaces.clone(),
        skip_init.clone(),
    ));
    Kubelet {
        task,
        file_systems,
        workspaces,
        git_host,
        skip_init,
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn owner_kind(pod: &Pod) -> Option<String> {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.clone())
}

fn owner_name(pod: &Pod) -> String {
    pod.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.name.clone())
        .unwrap_or_default()
}

async fn run(
    client: Client,
    node: String,
    file_systems: PathBuf,
    workspaces: Workspaces,
    skip_init: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use kube::runtime::watcher;
    // Watched, not listed in a loop: at the benchmark's size a list of
    // every pod each 100 ms would load the API server being measured.
    let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let pods = crate::support::mirror(Api::<Pod>::all(client.clone()), on_node).await;
    let claims = crate::support::mirror(
        Api::<PersistentVolumeClaim>::all(client.clone()),
        watcher::Config::default(),
    )
    .await;
    let volumes = crate::support::mirror(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .await;
    // Pods already started (by uid), when a failed init step may retry,
    // and when a pod's deletion was last finished.
    let mut started = BTreeSet::new();
    let mut retry_at: BTreeMap<String, Instant> = BTreeMap::new();
    let mut deleted_at: BTreeMap<String, Instant> = BTreeMap::new();
    loop {
        for pod in pods.store.state() {
            let uid = pod.uid().unwrap_or_default();
            let namespace = pod.namespace().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            if pod.metadata.deletion_timestamp.is_some() {
                if deleted_at
                    .get(&uid)
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
                {
                    continue;
                }
                deleted_at.insert(uid.clone(), Instant::now());
                // Its containers stopped at once: the kubelet's last word.
                let _ = api
                    .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
                if matches!(
                    owner_kind(&pod).as_deref(),
                    Some("StatefulSet" | "ReplicaSet")
                ) {
                    workspaces
                        .lock()
                        .unwrap()
                        .remove(&format!("{namespace}/{}", owner_name(&pod)));
                }
                continue;
            }
            if started.contains(&uid) || retry_at.get(&uid).is_some_and(|at| Instant::now() < *at) {
                continue;
            }
            let status = match owner_kind(&pod).as_deref() {
                Some("Job") => {
                    let (ok, output) = execute(&pod, &file_systems);
                    terminated(ok, &output)
                }
                Some("StatefulSet" | "ReplicaSet")
                    if skip_init.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    running()
                }
                // Workspaces, and company controllers (a Deployment's).
                Some("StatefulSet" | "ReplicaSet") => {
                    let run = start_workspace(&client, &pod, &file_systems).await;
                    let ok = run.ok;
                    workspaces
                        .lock()
                        .unwrap()
                        .insert(format!("{namespace}/{}", owner_name(&pod)), run);
                    if !ok {
                        // The kubelet restarts a failed init container
                        // after a back-off; the pod stays not ready.
                        retry_at.insert(uid, Instant::now() + Duration::from_secs(1));
                        continue;
                    }
                    running()
                }
                _ => continue,
            };
            let patch = json!({"status": status});
            if api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .is_ok()
            {
                started.insert(uid);
            }
        }
        Box::pin(provision(&client, &claims.store, &volumes.store)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The status of a pod whose containers are up and ready.
fn running() -> serde_json::Value {
    let at = now();
    let condition =
        |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": at});
    json!({
        "phase": "Running",
        "startTime": at,
        "conditions": [condition("PodScheduled"), condition("Initialized"), condition("ContainersReady"), condition("Ready")],
        "containerStatuses": [{"name": "workspace", "ready": true, "started": true, "restartCount": 0,
            "image": "", "imageID": "", "state": {"running": {"startedAt": at}}}],
    })
}

/// The status of a pod whose one container exited.
pub fn terminated(ok: bool, output: &str) -> serde_json::Value {
    let at = now();
    let code = i32::from(!ok);
    json!({
        "phase": if ok { "Succeeded" } else { "Failed" },
        "startTime": at,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": at}],
        "containerStatuses": [{"name": "storage-prep", "ready": false, "restartCount": 0, "image": "", "imageID": "",
            "state": {"terminated": {"exitCode": code, "reason": if ok { "Completed" } else { "Error" },
                "message": output, "startedAt": at, "finishedAt": at}}}],
    })
}

/// Runs the pod's container command with its `fsx-root` volume mapped to
/// the claim's local directory.
fn execute(pod: &Pod, file_systems: &Path) -> (bool, String) {
    let spec = pod.spec.as_ref().unwrap();
    let claim = spec
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
    let container = &spec.containers[0];
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
/// uid, with a token the TokenRequest API issued for the pod's
/// ServiceAccount, bound to the pod, with the projected volume's audience,
/// the secrets volume a fresh private directory, and the home volume the
/// developer's directory.
async fn start_workspace(client: &Client, running: &Pod, file_systems: &Path) -> PodRun {
    use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
    use std::os::unix::process::CommandExt;
    let namespace = running.namespace().unwrap_or_default();
    let pod = running.spec.clone().unwrap();
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
        json!({"spec": {"audiences": [audience], "expirationSeconds": 600,
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": running.name_any(), "uid": running.uid()}}}),
    )
    .unwrap();
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let pod_dir = file_systems
        .join("pods")
        .join(&namespace)
        .join(owner_name(running));
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
    // directory on the company file system) or a fresh volume of its own;
    // a pod without one (the company controller) gets an empty directory.
    let claim = volumes
        .iter()
        .find(|v| v.name == "home")
        .and_then(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.clone());
    let home = if let Some(claim) = claim {
        match home_volume(client, &namespace, &claim, uid, file_systems).await {
            Ok(home) => home,
            Err(output) => {
                return PodRun {
                    ok: false,
                    output,
                    secrets,
                    home: PathBuf::new(),
                    uid,
                };
            }
        }
    } else {
        let dir = pod_dir.join("home");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
        dir
    };
    let tmp = pod_dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    std::os::unix::fs::chown(&tmp, Some(uid), Some(uid)).unwrap();
    // ConfigMap volumes (Vault's CA): their keys as files.
    let config_maps = pod_dir.join("config-maps");
    for volume in &volumes {
        let Some(source) = &volume.config_map else {
            continue;
        };
        let dir = config_maps.join(&volume.name);
        std::fs::create_dir_all(&dir).unwrap();
        let map =
            Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &namespace)
                .get(&source.name)
                .await;
        let Ok(map) = map else {
            return PodRun {
                ok: false,
                output: format!("configmap {:?} not found", source.name),
                secrets,
                home,
                uid,
            };
        };
        for (key, value) in map.data.unwrap_or_default() {
            std::fs::write(dir.join(key), value).unwrap();
        }
        set_mode(&config_maps, 0o755);
        set_mode(&dir, 0o755);
    }
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let mounts: std::collections::BTreeMap<String, PathBuf> = [
        ("vault-token".to_owned(), pod_dir.clone()),
        ("secrets".to_owned(), secrets.clone()),
        ("home".to_owned(), home.clone()),
        ("tmp".to_owned(), tmp),
    ]
    .into_iter()
    .chain(
        volumes
            .iter()
            .filter(|v| v.config_map.is_some())
            .map(|v| (v.name.clone(), config_maps.join(&v.name))),
    )
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

/// The external provisioner's half of dynamic provisioning (the real volume
/// controller does the binding): a claim the controller handed to
/// [`PROVISIONER`] gets a volume pre-bound to it, with the StorageClass's
/// reclaim policy; a released volume it provisioned goes under `Delete`.
async fn provision(
    client: &Client,
    claims: &Store<PersistentVolumeClaim>,
    existing: &Store<PersistentVolume>,
) {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let existing = existing.state();
    for pv in &existing {
        let ours = pv
            .annotations()
            .get("pv.kubernetes.io/provisioned-by")
            .is_some_and(|p| p == PROVISIONER);
        let spec = pv.spec.clone().unwrap_or_default();
        let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
        if ours
            && released
            && spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete")
            && pv.metadata.deletion_timestamp.is_none()
        {
            let _ = volumes
                .delete(&pv.name_any(), &DeleteParams::default())
                .await;
        }
    }
    let names: BTreeSet<String> = existing.iter().map(|pv| pv.name_any()).collect();
    for claim in claims.state() {
        let spec = claim.spec.clone().unwrap_or_default();
        let handed_to_us = claim
            .annotations()
            .get("volume.kubernetes.io/storage-provisioner")
            .is_some_and(|p| p == PROVISIONER);
        let name = format!("pvc-{}", claim.uid().unwrap_or_default());
        if !handed_to_us
            || spec.volume_name.is_some()
            || claim.metadata.deletion_timestamp.is_some()
            || names.contains(&name)
        {
            continue;
        }
        let size = spec
            .resources
            .and_then(|r| r.requests)
            .and_then(|r| r.get("storage").cloned())
            .unwrap();
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": spec.access_modes,
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.storage_class_name,
                "csi": {"driver": PROVISIONER, "volumeHandle": format!("vol-{}", &name[4..12])},
                "claimRef": {"namespace": claim.namespace(), "name": claim.name_any(), "uid": claim.uid()},
            }
        }))
        .unwrap();
        let _ = volumes.create(&PostParams::default(), &pv).await;
    }
}
