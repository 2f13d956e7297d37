//! `enclave run`: the controllers. Each reconcile is a pipeline — fetch,
//! validate, build (the pure builders), apply (server-side apply under one
//! field manager), status — and only fetch, apply and status talk to the API.
//!
//! This release reconciles a Company's in-cluster objects (namespace,
//! quota, limits, network policies, RBAC, controller ServiceAccount), its
//! Vault policy and role, its database (per mode, deleted per policy), its
//! finalizer and deletion protection; and a Developer's uid/gid, workspace
//! objects and Vault policy and role. Storage is reported as not yet
//! reconciled by the controller (its backend exists and is tested).

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

pub use apply::{FIELD_MANAGER, apply_object, apply_status};
pub use company::FINALIZER;

use crate::{
    backends::{
        aws_calls::CallLimits,
        database::{DatabaseError, RdsDatabase, SharedPostgres},
        vault::{VaultAuth, VaultClientBackend, VaultError, VaultSettings},
    },
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
    /// The database backends (they need Vault).
    pub databases: Option<Databases>,
    /// Serialises uid/gid allocation (one active operator, leader-elected).
    pub allocation: tokio::sync::Mutex<()>,
}

/// The two database backends, one per `spec.database.mode`.
pub struct Databases {
    /// Dedicated RDS instances.
    pub rds: RdsDatabase<VaultClientBackend>,
    /// Databases in the shared PostgreSQL instance.
    pub shared: SharedPostgres<VaultClientBackend>,
}

/// Builds the database backends on `vault`, with AWS as configured.
pub async fn databases(config: &OperatorConfig, vault: &Arc<VaultClientBackend>) -> Databases {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(config.aws.region.clone()));
    if !config.aws.endpoint_url.is_empty() {
        loader = loader.endpoint_url(&config.aws.endpoint_url);
    }
    let sdk = loader.load().await;
    let rds = aws_sdk_rds::config::Builder::from(&sdk).build();
    Databases {
        rds: RdsDatabase::new(&rds, Arc::clone(vault), CallLimits::default()),
        shared: SharedPostgres::new(config.database.shared.clone(), Arc::clone(vault)),
    }
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
    /// The database backend refused or failed a step.
    #[error("database: {0}")]
    Database(#[from] DatabaseError),
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
            Self::Database(_) => "database",
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
    let databases = match &vault {
        Ok(v) => Some(databases(&config, v).await),
        Err(_) => None,
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        vault,
        databases,
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
