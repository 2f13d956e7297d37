//! A Kubernetes API server emulator for Enclave's end-to-end tests.
//!
//! It speaks the real wire protocol on 127.0.0.1 so the real `kube::Client`,
//! kube-runtime watchers and the `enclave` binary talk to it as to a
//! cluster, and it enforces the rules the operator relies on (see the
//! README). It simulates no kubelet, scheduler or CNI.

pub mod builtin_schemas;
pub mod cluster;
pub mod error;
pub mod fields;
pub mod resources;
pub mod selectors;
mod server;
pub mod store;
pub mod tokens;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, task::JoinHandle};

pub use store::{Fault, Store};

/// A running emulator.
pub struct Emulator {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// A kubeconfig pointing at it.
    pub kubeconfig: PathBuf,
    /// Its state, for fault injection and counters.
    pub store: Arc<Store>,
    server: JoinHandle<()>,
}

impl Emulator {
    /// Starts on a free loopback port and writes a kubeconfig next to the
    /// system's temporary files. With `ENCLAVE_TEST_K8S_SCHEMAS` naming the
    /// official `_definitions.json`, built-in kinds are validated against it.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let mut store = Store::new().map_err(std::io::Error::other)?;
        if let Some(path) = std::env::var_os("ENCLAVE_TEST_K8S_SCHEMAS") {
            let schemas = builtin_schemas::BuiltinSchemas::load(std::path::Path::new(&path))
                .map_err(std::io::Error::other)?;
            store.set_builtin_schemas(schemas);
        }
        let store = Arc::new(store);
        let shared = Arc::clone(&store);
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| server::handle(Arc::clone(&store), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        let url = format!("http://{addr}");
        let kubeconfig = std::env::temp_dir().join(format!(
            "kube-emulator-{}-{}.yaml",
            std::process::id(),
            addr.port()
        ));
        std::fs::write(&kubeconfig, kubeconfig_yaml(&url))?;
        Ok(Self {
            url,
            kubeconfig,
            store,
            server,
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// A kubeconfig for `url` whose client presents bearer token `token`
/// (the emulator accepts any and counts requests per token).
pub fn kubeconfig_yaml_with_token(url: &str, token: &str) -> String {
    kubeconfig_yaml(url).replace("  user: {}\n", &format!("  user:\n    token: {token}\n"))
}

/// A kubeconfig for `url` (plain HTTP on loopback, no credentials).
pub fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {url}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: emulator\n    namespace: default\ncurrent-context: emulator\nusers:\n- name: emulator\n  user: {{}}\n"
    )
}
