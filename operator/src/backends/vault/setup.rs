//! `enclave vault-setup`: what a Vault (or OpenBao) needs before Enclave
//! runs — the KV v2 and Kubernetes auth mounts, Enclave's own policy and the
//! operator's login role — in one idempotent step, run once by an
//! administrator with a token that may manage mounts, policies and roles.

use std::collections::BTreeMap;

use rustify::enums::RequestMethod;
use serde_json::{Value, json};

use super::{Change, VaultError, client::VaultClientBackend};
use crate::builders::{OWNERSHIP_MARKER, operator_policy};

/// Enclave's own policy. Deliberately not `enclave-*`: the operator may
/// write policies of that pattern (its tenants'), never its own.
pub const OPERATOR_POLICY: &str = "enclave";

/// What `enclave vault-setup` sets up.
#[derive(Clone, Debug)]
pub struct SetupRequest {
    /// KV v2 mount of every tenant secret.
    pub kv_mount: String,
    /// Kubernetes auth mount of the operator's and the tenants' roles.
    pub auth_mount: String,
    /// JWT auth mount of admin people's roles (empty: none). Its issuer
    /// and keys are the platform's to configure.
    pub person_auth_mount: String,
    /// The operator's login role.
    pub role: String,
    /// The operator's ServiceAccount and namespace.
    pub service_account: String,
    /// See [`SetupRequest::service_account`].
    pub namespace: String,
    /// TTL of the operator's tokens (it renews them at half).
    pub token_ttl_seconds: u32,
    /// The API server Vault reviews tokens with, when Vault's Kubernetes
    /// auth is to be configured here (a Vault outside the cluster).
    pub kubernetes: Option<KubernetesAuthConfig>,
}

/// `auth/<mount>/config` of a Vault that reviews tokens with an API server.
#[derive(Clone, Debug)]
pub struct KubernetesAuthConfig {
    /// The API server's URL.
    pub host: String,
    /// Its CA (PEM).
    pub ca_pem: Option<String>,
    /// A token allowed to create TokenReviews (`system:auth-delegator`);
    /// none: Vault uses its own pod's token.
    pub reviewer_jwt: Option<String>,
}

/// One step of the set-up and what it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetupStep {
    /// What the step is about, e.g. `KV v2 mount secret/`.
    pub what: String,
    /// What it did.
    pub change: Change,
}

impl VaultClientBackend {
    /// Sets Vault up for Enclave; each step writes only what differs, so a
    /// second run changes nothing. A mount of the wrong type, or a policy
    /// named `enclave` that Enclave did not write, is refused untouched.
    pub async fn setup(&self, req: &SetupRequest) -> Result<Vec<SetupStep>, VaultError> {
        let kv = self
            .ensure_mount("sys/mounts", &req.kv_mount, "kv", Some("2"))
            .await?;
        let auth = self
            .ensure_mount("sys/auth", &req.auth_mount, "kubernetes", None)
            .await?;
        // A new auth mount without configuration refuses every login: one
        // inside the cluster reviews tokens with the API server it runs in.
        let in_cluster = KubernetesAuthConfig {
            host: "https://kubernetes.default.svc".to_owned(),
            ca_pem: None,
            reviewer_jwt: None,
        };
        let kubernetes = req
            .kubernetes
            .as_ref()
            .or((auth.change == Change::Created).then_some(&in_cluster));
        let mut steps = vec![kv, auth];
        if let Some(config) = kubernetes {
            steps.push(
                self.ensure_kubernetes_config(&req.auth_mount, config)
                    .await?,
            );
        }
        steps.push(self.ensure_operator_policy(req).await?);
        steps.push(self.ensure_operator_role(req).await?);
        Ok(steps)
    }

    async fn ensure_mount(
        &self,
        table: &str,
        path: &str,
        kind: &str,
        version: Option<&str>,
    ) -> Result<SetupStep, VaultError> {
        let what = match version {
            Some(v) => format!("{kind} v{v} mount {path}/"),
            None => format!("{kind} auth mount {path}/"),
        };
        let mounts = self.read_raw(table).await?.unwrap_or_default();
        let change = match mounts.get(format!("{path}/")) {
            None => {
                let mut body = json!({ "type": kind });
                if let Some(v) = version {
                    body["options"] = json!({ "version": v });
                }
                self.write_raw(
                    "enable mount",
                    format!("{table}/{path}"),
                    RequestMethod::POST,
                    Some(body),
                )
                .await?;
                Change::Created
            }
            Some(mount) => {
                let found_kind = mount["type"].as_str().unwrap_or_default();
                let found_version = mount["options"]["version"].as_str();
                if found_kind != kind || (version.is_some() && found_version != version) {
                    return Err(VaultError::Unsafe {
                        what: "mount",
                        name: format!("{path}/"),
                        reason: format!(
                            "it exists as {found_kind} (version {}) but Enclave needs {what}: choose another mount in the operator configuration",
                            found_version.unwrap_or("1")
                        ),
                    });
                }
                Change::Unchanged
            }
        };
        Ok(SetupStep { what, change })
    }

    async fn ensure_kubernetes_config(
        &self,
        mount: &str,
        config: &KubernetesAuthConfig,
    ) -> Result<SetupStep, VaultError> {
        let path = format!("auth/{mount}/config");
        let current = self.read_raw(&path).await?;
        let same = current.as_ref().is_some_and(|c| {
            c["kubernetes_host"].as_str() == Some(config.host.as_str())
                && c["kubernetes_ca_cert"].as_str().unwrap_or_default()
                    == config.ca_pem.as_deref().unwrap_or_default()
        });
        // The reviewer token cannot be read back: it is written whenever
        // one is given, so a rotated token takes effect.
        let change = if same && config.reviewer_jwt.is_none() {
            Change::Unchanged
        } else {
            let mut body = json!({
                "kubernetes_host": config.host,
                "kubernetes_ca_cert": config.ca_pem.clone().unwrap_or_default(),
            });
            if let Some(jwt) = &config.reviewer_jwt {
                body["token_reviewer_jwt"] = json!(jwt);
            }
            self.write_raw(
                "configure Kubernetes auth",
                path,
                RequestMethod::POST,
                Some(body),
            )
            .await?;
            written(current.is_some())
        };
        Ok(SetupStep {
            what: format!(
                "Kubernetes auth configuration of {mount}/ (API server {})",
                config.host
            ),
            change,
        })
    }

    async fn ensure_operator_policy(&self, req: &SetupRequest) -> Result<SetupStep, VaultError> {
        let hcl = operator_policy(&req.kv_mount, &req.auth_mount, &req.person_auth_mount);
        let path = format!("sys/policies/acl/{OPERATOR_POLICY}");
        let change = match self.read_raw(&path).await? {
            Some(current) if current["policy"].as_str() == Some(hcl.as_str()) => Change::Unchanged,
            Some(current)
                if !current["policy"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(OWNERSHIP_MARKER) =>
            {
                return Err(VaultError::NotOwned {
                    what: "policy",
                    name: OPERATOR_POLICY.to_owned(),
                });
            }
            current => {
                self.write_raw(
                    "write policy",
                    path,
                    RequestMethod::PUT,
                    Some(json!({ "policy": hcl })),
                )
                .await?;
                written(current.is_some())
            }
        };
        Ok(SetupStep {
            what: format!("policy {OPERATOR_POLICY}"),
            change,
        })
    }

    async fn ensure_operator_role(&self, req: &SetupRequest) -> Result<SetupStep, VaultError> {
        let path = format!("auth/{}/role/{}", req.auth_mount, req.role);
        let want = BTreeMap::from([
            ("bound_service_account_names", json!([req.service_account])),
            ("bound_service_account_namespaces", json!([req.namespace])),
            ("token_policies", json!([OPERATOR_POLICY])),
            ("token_ttl", json!(req.token_ttl_seconds)),
        ]);
        let current = self.read_raw(&path).await?;
        let same = current
            .as_ref()
            .is_some_and(|c| want.iter().all(|(k, v)| same_value(&c[*k], v)));
        let change = if same {
            Change::Unchanged
        } else {
            self.write_raw(
                "write role",
                path,
                RequestMethod::POST,
                Some(serde_json::to_value(&want).unwrap_or_default()),
            )
            .await?;
            written(current.is_some())
        };
        Ok(SetupStep {
            what: format!(
                "role {} of {}/ for ServiceAccount {}/{}",
                req.role, req.auth_mount, req.namespace, req.service_account
            ),
            change,
        })
    }
}

/// What a write did: replaced what `existed`, or created it.
fn written(existed: bool) -> Change {
    if existed {
        Change::Updated
    } else {
        Change::Created
    }
}

/// Whether Vault's `found` is `want` (numbers may come back as strings).
fn same_value(found: &Value, want: &Value) -> bool {
    found == want || (want.is_number() && found.as_str() == Some(want.to_string().as_str()))
}
