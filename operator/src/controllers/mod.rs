//! `enclave run`: the controllers. Each reconcile is a pipeline — fetch,
//! validate, build (the pure builders), apply (server-side apply under one
//! field manager), status — and only fetch, apply and status talk to the API.
//!
//! This release reconciles a Company's in-cluster objects (namespace,
//! quota, limits, network policies, RBAC, controller ServiceAccount) and its
//! Vault policy and role, its finalizer and deletion protection; and a
//! Developer's uid/gid, workspace objects and Vault policy and role.
//! Database and storage are reported as not yet reconciled by the
//! controller (their backends exist and are tested; wiring them in is next).

mod apply;
mod company;
mod conditions;
mod developer;

pub use developer::FINALIZER as DEVELOPER_FINALIZER;

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    runtime::{Controller, controller::Action, reflector::ObjectRef, watcher},
};
use thiserror::Error;

pub use apply::{FIELD_MANAGER, apply_object};
pub use company::FINALIZER;

use crate::{
    backends::vault::{VaultAuth, VaultClientBackend, VaultError, VaultSettings},
    config::OperatorConfig,
    crd::{Company, Developer},
    names::LABEL_COMPANY,
};

/// What a reconcile needs.
pub struct Context {
    /// The API.
    pub client: Client,
    /// Operator configuration.
    pub config: OperatorConfig,
    /// Vault, or why it could not be reached at start.
    pub vault: Result<Arc<VaultClientBackend>, String>,
    /// Serialises uid/gid allocation (one active operator, leader-elected).
    pub allocation: tokio::sync::Mutex<()>,
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
    /// Deletion waits for something (the namespace to go).
    #[error("waiting: {0}")]
    Waiting(String),
    /// Vault refused or failed a step.
    #[error("Vault: {0}")]
    Vault(#[from] VaultError),
    /// Deletion is held by `spec.deletionProtection`.
    #[error(
        "deletion of Company {0} is held by spec.deletionProtection; set it to false to delete"
    )]
    DeletionProtected(String),
}

impl Error {
    /// Short label for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Finalizer(_) => "finalizer",
            Self::Waiting(_) => "waiting",
            Self::Vault(_) => "vault",
            Self::DeletionProtected(_) => "deletion-protected",
        }
    }
}

#[allow(clippy::needless_pass_by_value)] // the signature kube-runtime's Controller::run asks for
fn error_policy<K: ResourceExt>(object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %object.name_any(), category = error.category(), %error, "reconcile failed");
    match error {
        Error::Waiting(_) => Action::requeue(Duration::from_secs(1)),
        Error::DeletionProtected(_) => Action::requeue(Duration::from_mins(1)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Connects to Vault as configured: a token file, `VAULT_TOKEN`, or
/// Kubernetes auth with the operator's own ServiceAccount token.
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
    VaultClientBackend::connect(settings)
        .await
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

/// Runs the controllers until the process is told to stop.
pub async fn run(client: Client, config: OperatorConfig) {
    let vault = connect_vault(&config).await;
    if let Err(e) = &vault {
        tracing::error!(error = %e, "Vault is unavailable; tenants report VaultReady=False until the operator restarts with it reachable");
    }
    let companies: Api<Company> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let developers: Api<Developer> = Api::all(client.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        vault,
        allocation: tokio::sync::Mutex::new(()),
    });
    let company_controller = Controller::new(companies, watcher::Config::default())
        // Namespaces carry no owner reference (deleting a Company must never
        // cascade into a tenant's data), so they are mapped by label.
        .watches(
            namespaces,
            watcher::Config::default().labels("app.kubernetes.io/managed-by=enclave"),
            |ns| {
                ns.labels()
                    .get(LABEL_COMPANY)
                    .map(|company| ObjectRef::<Company>::new(company))
            },
        )
        .shutdown_on_signal()
        .run(company::reconcile, error_policy, Arc::clone(&ctx))
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "company reconcile error");
            }
        });
    let developer_controller = Controller::new(developers, watcher::Config::default())
        .owns(
            Api::<k8s_openapi::api::apps::v1::StatefulSet>::all(client),
            watcher::Config::default(),
        )
        .shutdown_on_signal()
        .run(developer::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "developer reconcile error");
            }
        });
    futures::future::join(company_controller, developer_controller).await;
}
