//! End-to-end test support: the same scenarios run on the emulator (the
//! default) or on a real cluster (`ENCLAVE_E2E_CLUSTER=1`, the cluster
//! `KUBECONFIG` names, e.g. kind).

use std::{path::Path, time::Duration};

use kube::{
    Api, Client, Config, Resource,
    api::{DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::{self, Scope},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Emulator;

/// Why a test-support step failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster could not be reached or set up.
    #[error("cluster: {0}")]
    Setup(String),
    /// A Kubernetes request failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The YAML could not be read.
    #[error("YAML: {0}")]
    Yaml(String),
    /// A wait ran out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

/// A cluster for a test: the emulator, or the real one.
pub struct TestCluster {
    /// Client for it.
    pub client: Client,
    /// The emulator, when the test runs on it.
    pub emulator: Option<Emulator>,
}

impl TestCluster {
    /// Starts the emulator, or connects to `KUBECONFIG`'s cluster when
    /// `ENCLAVE_E2E_CLUSTER=1`.
    pub async fn start() -> Result<Self, ClusterError> {
        if std::env::var("ENCLAVE_E2E_CLUSTER").as_deref() == Ok("1") {
            let client = Client::try_default()
                .await
                .map_err(|e| ClusterError::Setup(format!("KUBECONFIG: {e}")))?;
            return Ok(Self {
                client,
                emulator: None,
            });
        }
        let emulator = Emulator::start()
            .await
            .map_err(|e| ClusterError::Setup(e.to_string()))?;
        let url = emulator
            .url
            .parse()
            .map_err(|e| ClusterError::Setup(format!("{e}")))?;
        let client = Client::try_from(Config::new(url))?;
        Ok(Self {
            client,
            emulator: Some(emulator),
        })
    }

    /// Server-side applies every document of `yaml` (as `manager`); returns them as applied.
    pub async fn apply_yaml(
        &self,
        yaml: &str,
        manager: &str,
    ) -> Result<Vec<DynamicObject>, ClusterError> {
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(yaml).map_err(|e| ClusterError::Yaml(e.to_string()))?;
        let mut out = Vec::new();
        for doc in docs {
            let object: DynamicObject = serde_json::from_value(doc.clone())
                .map_err(|e| ClusterError::Yaml(e.to_string()))?;
            let types = object
                .types
                .clone()
                .ok_or_else(|| ClusterError::Yaml("a document without apiVersion/kind".into()))?;
            let gvk = GroupVersionKind::try_from(&types)
                .map_err(|e| ClusterError::Yaml(e.to_string()))?;
            let (resource, caps) = discovery::pinned_kind(&self.client, &gvk).await?;
            let name = object
                .metadata
                .name
                .clone()
                .ok_or_else(|| ClusterError::Yaml("a document without metadata.name".into()))?;
            let api: Api<DynamicObject> = match caps.scope {
                Scope::Namespaced => {
                    let ns = object
                        .metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into());
                    Api::namespaced_with(self.client.clone(), &ns, &resource)
                }
                Scope::Cluster => Api::all_with(self.client.clone(), &resource),
            };
            out.push(
                api.patch(
                    &name,
                    &PatchParams::apply(manager).force(),
                    &Patch::Apply(&doc),
                )
                .await?,
            );
        }
        Ok(out)
    }

    /// Applies every `.yaml` file of `dir` (e.g. `crds/`).
    pub async fn apply_dir(&self, dir: &Path, manager: &str) -> Result<usize, ClusterError> {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| ClusterError::Setup(format!("{}: {e}", dir.display())))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        let mut count = 0;
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| ClusterError::Setup(format!("{}: {e}", file.display())))?;
            count += self.apply_yaml(&text, manager).await?.len();
        }
        Ok(count)
    }

    /// Waits until `name` exists and `ready` holds for it.
    pub async fn wait_for<K>(
        &self,
        api: &Api<K>,
        name: &str,
        timeout: Duration,
        ready: impl Fn(&K) -> bool,
    ) -> Result<K, ClusterError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(object) = api.get_opt(name).await?
                && ready(&object)
            {
                return Ok(object);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout(timeout, name.to_owned()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `name` no longer exists.
    pub async fn wait_gone<K>(
        &self,
        api: &Api<K>,
        name: &str,
        timeout: Duration,
    ) -> Result<(), ClusterError>
    where
        K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        while api.get_opt(name).await?.is_some() {
            if tokio::time::Instant::now() >= deadline {
                return Err(ClusterError::Timeout(timeout, format!("{name} to be gone")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
