//! The Vault backend on `vaultrs`.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use rustify::{
    Endpoint,
    enums::{RequestMethod, RequestType, ResponseType},
};
use serde_json::Value;
use vaultrs::{
    api::kv2::requests::SetSecretRequestOptions,
    client::{VaultClient, VaultClientSettingsBuilder},
    error::ClientError,
};

use super::verified::{Verified, digest};
use super::{
    Change, Password, StoredCredentials, VaultBackend, VaultError, check_kv_path,
    check_person_role, check_platform_path, check_policy, check_role, generate_password,
};
use crate::builders::{JwtAuthRole, KubernetesAuthRole, OWNERSHIP_MARKER, VaultPolicy};

/// How the operator authenticates to Vault.
#[derive(Clone, Debug)]
pub enum VaultAuth {
    /// A token given directly (development).
    Token(String),
    /// A token read from a file, re-read on refresh (e.g. written by an agent).
    TokenFile(PathBuf),
    /// Kubernetes auth with the operator's own ServiceAccount token.
    Kubernetes {
        /// Auth mount, e.g. `kubernetes`.
        mount: String,
        /// The operator's role.
        role: String,
        /// Projected ServiceAccount token.
        jwt_path: PathBuf,
    },
}

/// Where Vault is and how to use it.
#[derive(Clone, Debug)]
pub struct VaultSettings {
    /// e.g. `https://vault.vault.svc:8200`.
    pub address: String,
    /// KV v2 mount of tenant secrets.
    pub kv_mount: String,
    /// Kubernetes auth mount that holds the tenants' roles.
    pub auth_mount: String,
    /// PEM CA bundle that signs Vault's certificate (system roots otherwise).
    pub ca_cert: Option<PathBuf>,
    /// How to authenticate.
    pub auth: VaultAuth,
}

/// [`VaultBackend`] on a real Vault (or OpenBao) server.
pub struct VaultClientBackend {
    settings: VaultSettings,
    client: RwLock<Arc<VaultClient>>,
    writes: AtomicU64,
    verified: Verified,
}

/// GET of any Vault path, for the fields `vaultrs`'s typed responses drop.
struct RawRead {
    path: String,
}

impl Endpoint for RawRead {
    type Response = Value;
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        RequestMethod::GET
    }
}

/// PUT or DELETE of any Vault path with a JSON body, for the modern
/// `sys/policies/acl` API (`vaultrs` speaks the legacy `sys/policy`).
struct RawWrite {
    path: String,
    method: RequestMethod,
    body: Option<Value>,
}

impl Endpoint for RawWrite {
    type Response = ();
    const REQUEST_BODY_TYPE: RequestType = RequestType::JSON;
    const RESPONSE_BODY_TYPE: ResponseType = ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> RequestMethod {
        self.method.clone()
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.body.as_ref().map(|b| b.to_string().into_bytes()))
    }
}

fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::APIError { code: 404, .. })
}

fn request(operation: &'static str, path: &str) -> impl FnOnce(ClientError) -> VaultError {
    let path = path.to_owned();
    move |source| VaultError::Request {
        operation,
        path,
        source: Box::new(source),
    }
}

/// Data Enclave writes next to a role it owns.
/// The strings of list field `key` of a Vault response, sorted.
fn sorted_strings(value: &Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = value[key]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    v.sort();
    v
}

fn ownership_record(mount: &str, role: &str) -> HashMap<&'static str, String> {
    HashMap::from([
        ("managed-by", "enclave".to_owned()),
        ("mount", mount.to_owned()),
        ("role", role.to_owned()),
    ])
}

impl VaultClientBackend {
    /// Connects and authenticates.
    pub async fn connect(settings: VaultSettings) -> Result<Self, VaultError> {
        // One crypto stack for the whole process (kube and the AWS SDK use it too).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = Self::login(&settings).await?;
        Ok(Self {
            settings,
            client: RwLock::new(Arc::new(client)),
            writes: AtomicU64::new(0),
            verified: Verified::default(),
        })
    }

    /// Trusts what it last read or wrote at a path for `every` (zero, the
    /// default: never), so that ensuring an unchanged policy, role or claim
    /// reads nothing until then. Changes made in Vault behind the
    /// operator's back are corrected within `every`, and at every start.
    #[must_use]
    pub fn trusting_for(mut self, every: std::time::Duration) -> Self {
        self.verified = Verified::new(every);
        self
    }

    fn build(settings: &VaultSettings, token: &str) -> Result<VaultClient, VaultError> {
        let mut builder = VaultClientSettingsBuilder::default();
        builder.address(&settings.address).token(token);
        if let Some(ca) = &settings.ca_cert {
            builder.ca_certs(vec![ca.display().to_string()]);
        }
        let built = builder
            .build()
            .map_err(|e| VaultError::Login(format!("invalid Vault settings: {e}")))?;
        VaultClient::new(built)
            .map_err(|e| VaultError::Login(format!("cannot create the Vault client: {e}")))
    }

    async fn login(settings: &VaultSettings) -> Result<VaultClient, VaultError> {
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| VaultError::Login(format!("cannot read {}: {e}", path.display())))
        };
        match &settings.auth {
            VaultAuth::Token(token) => Self::build(settings, token),
            VaultAuth::TokenFile(path) => Self::build(settings, &read(path)?),
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_path,
            } => {
                let anonymous = Self::build(settings, "")?;
                let jwt = read(jwt_path)?;
                let auth = vaultrs::auth::kubernetes::login(&anonymous, mount, role, &jwt).await.map_err(|e| {
                    VaultError::Login(format!(
                        "Kubernetes auth at auth/{mount} with role {role} was refused: {e}; check that the role binds the operator's ServiceAccount"
                    ))
                })?;
                Self::build(settings, &auth.client_token)
            }
        }
    }

    fn client(&self) -> Arc<VaultClient> {
        match self.client.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Renews the token (token auth) or logs in again (Kubernetes auth, or a
    /// token file an agent rewrote). Call before the token's TTL runs out.
    pub async fn refresh(&self) -> Result<(), VaultError> {
        let fresh = match &self.settings.auth {
            VaultAuth::Token(_) => {
                vaultrs::token::renew_self(&*self.client(), None)
                    .await
                    .map_err(|e| VaultError::Login(format!("token renewal failed: {e}")))?;
                return Ok(());
            }
            VaultAuth::TokenFile(_) | VaultAuth::Kubernetes { .. } => {
                Self::login(&self.settings).await?
            }
        };
        match self.client.write() {
            Ok(mut guard) => *guard = Arc::new(fresh),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(fresh),
        }
        Ok(())
    }

    /// Seconds the current token has left.
    pub async fn token_ttl(&self) -> Result<u64, VaultError> {
        let info = vaultrs::token::lookup_self(&*self.client())
            .await
            .map_err(request("look up", "auth/token/lookup-self"))?;
        Ok(info.ttl)
    }

    /// The secrets directly below `prefix` (not in its sub-folders), by
    /// name; empty if there are none. What a workspace reads at start.
    pub async fn read_secrets_below(
        &self,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, HashMap<String, String>>, VaultError> {
        self.read_secrets_below_except(prefix, &std::collections::BTreeSet::new())
            .await
    }

    /// [`Self::read_secrets_below`] without reading the names in `skip`.
    async fn read_secrets_below_except(
        &self,
        prefix: &str,
        skip: &std::collections::BTreeSet<String>,
    ) -> Result<std::collections::BTreeMap<String, HashMap<String, String>>, VaultError> {
        check_kv_path(prefix)?;
        let mount = &self.settings.kv_mount;
        let names = match vaultrs::kv2::list(&*self.client(), mount, prefix).await {
            Ok(keys) => keys,
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(request("list secrets", prefix)(e)),
        };
        let mut secrets = std::collections::BTreeMap::new();
        for name in names
            .into_iter()
            .filter(|k| !k.ends_with('/') && !skip.contains(k))
        {
            let path = format!("{prefix}/{name}");
            if let Some((data, _)) = self.read_kv(&path).await? {
                secrets.insert(name, data);
            }
        }
        Ok(secrets)
    }

    /// Mutating requests sent so far (what "zero writes at steady state" counts).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) async fn read_raw(&self, path: &str) -> Result<Option<Value>, VaultError> {
        match vaultrs::api::exec_with_result(
            &*self.client(),
            RawRead {
                path: path.to_owned(),
            },
        )
        .await
        {
            Ok(value) => Ok(Some(value)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(request("read", path)(e)),
        }
    }

    async fn read_policy(&self, name: &str) -> Result<Option<String>, VaultError> {
        let Some(value) = self.read_raw(&format!("sys/policies/acl/{name}")).await? else {
            return Ok(None);
        };
        Ok(Some(
            value["policy"].as_str().unwrap_or_default().to_owned(),
        ))
    }

    pub(super) async fn write_raw(
        &self,
        operation: &'static str,
        path: String,
        method: RequestMethod,
        body: Option<Value>,
    ) -> Result<(), VaultError> {
        self.wrote();
        vaultrs::api::exec_with_empty(
            &*self.client(),
            RawWrite {
                path: path.clone(),
                method,
                body,
            },
        )
        .await
        .map_err(request(operation, &path))
    }

    fn role_path_in(mount: &str, name: &str) -> String {
        format!("auth/{mount}/role/{name}")
    }

    /// The key under which a role's digest is remembered.
    fn role_key(company: &str, mount: &str, name: &str) -> String {
        format!("role:{company}/{mount}/{name}")
    }

    /// The role `name` in auth `mount` as Vault holds it (`None`: absent),
    /// once it is sure to be Enclave's: a role without Enclave's ownership
    /// record is refused, and the record is written ahead of a new role.
    async fn claim_role(
        &self,
        company: &str,
        mount: &str,
        name: &str,
    ) -> Result<Option<Value>, VaultError> {
        let record_path = Self::record_path(company, name);
        check_kv_path(&record_path)?;
        let current = self.read_raw(&Self::role_path_in(mount, name)).await?;
        let owned = self.read_kv(&record_path).await?.is_some();
        if current.is_some() && !owned {
            return Err(VaultError::NotOwned {
                what: "role",
                name: name.to_owned(),
            });
        }
        if !owned {
            // Write ahead: the record exists before the role it vouches for.
            self.write_kv(&record_path, &ownership_record(mount, name), 0)
                .await?;
        }
        Ok(current)
    }

    /// Deletes role `name` in auth `mount` if Enclave owns it, then its
    /// ownership record; absent is fine.
    async fn delete_owned_role(
        &self,
        company: &str,
        mount: &str,
        name: &str,
    ) -> Result<Change, VaultError> {
        let record_path = Self::record_path(company, name);
        check_kv_path(&record_path)?;
        let _forgetting = self
            .verified
            .forgetting(Self::role_key(company, mount, name));
        let path = Self::role_path_in(mount, name);
        let exists = self.read_raw(&path).await?.is_some();
        let owned = self.read_kv(&record_path).await?.is_some();
        if exists && !owned {
            return Err(VaultError::NotOwned {
                what: "role",
                name: name.to_owned(),
            });
        }
        if exists {
            self.write_raw("delete role", path, RequestMethod::DELETE, None)
                .await?;
        }
        if owned {
            // The record goes last: a crash in between leaves it, and the
            // next delete finds an absent role and removes it.
            self.delete_secrets(&record_path).await?;
        }
        Ok(if exists || owned {
            Change::Deleted
        } else {
            Change::Unchanged
        })
    }

    fn record_path(company: &str, name: &str) -> String {
        format!("companies/{company}/platform/vault-roles/{name}")
    }

    /// `(data, version)` of the latest version at `path`, if readable.
    async fn read_kv(
        &self,
        path: &str,
    ) -> Result<Option<(HashMap<String, String>, u64)>, VaultError> {
        let full = format!("{}/data/{path}", self.settings.kv_mount);
        let Some(value) = self.read_raw(&full).await? else {
            return Ok(None);
        };
        if value.get("data").is_none_or(Value::is_null) {
            return Ok(None); // latest version deleted
        }
        let data =
            serde_json::from_value(value["data"].clone()).map_err(|e| VaultError::Malformed {
                path: path.to_owned(),
                reason: format!("not a map of strings: {e}"),
            })?;
        let version = value["metadata"]["version"].as_u64().unwrap_or(0);
        Ok(Some((data, version)))
    }

    /// Writes `data` at `path` if its current version is `cas` (0: absent).
    /// `Ok(None)` when another writer got there first.
    async fn write_kv(
        &self,
        path: &str,
        data: &HashMap<&str, String>,
        cas: u64,
    ) -> Result<Option<u64>, VaultError> {
        self.wrote();
        let cas = u32::try_from(cas).unwrap_or(u32::MAX);
        match vaultrs::kv2::set_with_options(
            &*self.client(),
            &self.settings.kv_mount,
            path,
            data,
            SetSecretRequestOptions { cas },
        )
        .await
        {
            Ok(meta) => Ok(Some(meta.version)),
            Err(ClientError::APIError { code: 400, errors })
                if errors.iter().any(|e| e.contains("check-and-set")) =>
            {
                Ok(None)
            }
            Err(e) => Err(request("write secret", path)(e)),
        }
    }

    fn credentials(
        path: &str,
        data: &HashMap<String, String>,
        version: u64,
    ) -> Result<StoredCredentials, VaultError> {
        let field = |key: &str| {
            data.get(key)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| VaultError::Malformed {
                    path: path.to_owned(),
                    reason: format!("{key} is missing or empty"),
                })
        };
        Ok(StoredCredentials {
            username: field("username")?,
            password: Password::new(field("password")?),
            version,
        })
    }
}

impl VaultBackend for VaultClientBackend {
    async fn recorded_posix_ids(
        &self,
        prefix: &str,
        skip: &std::collections::BTreeSet<String>,
    ) -> Result<std::collections::BTreeMap<String, i64>, VaultError> {
        Ok(self
            .read_secrets_below_except(prefix, skip)
            .await?
            .into_iter()
            .filter_map(|(key, data)| Some((key, data.get("uid")?.parse().ok()?)))
            .collect())
    }

    async fn record_posix_id(&self, path: &str, uid: i64) -> Result<i64, VaultError> {
        let recorded = self.claim(path, &uid.to_string()).await?;
        recorded.parse().map_err(|_| VaultError::Malformed {
            path: path.to_owned(),
            reason: format!("the recorded uid {recorded:?} is not a number"),
        })
    }

    async fn claim(&self, path: &str, owner: &str) -> Result<String, VaultError> {
        check_kv_path(path)?;
        let key = format!("kv:{path}");
        if self.verified.holds(&key, digest(&owner)) {
            return Ok(owner.to_owned());
        }
        let since = Instant::now();
        // Read first: a resync of a claimed tenant writes nothing.
        if let Some(uid) = self
            .read_kv(path)
            .await?
            .and_then(|(data, _)| data.get("uid").cloned())
        {
            self.verified.record(&key, digest(&uid.as_str()), since);
            return Ok(uid);
        }
        let data = HashMap::from([("uid", owner.to_owned())]);
        if self.write_kv(path, &data, 0).await?.is_some() {
            self.verified.record(&key, digest(&owner), since);
            return Ok(owner.to_owned());
        }
        let recorded = self
            .read_kv(path)
            .await?
            .and_then(|(data, _)| data.get("uid").cloned());
        recorded.ok_or_else(|| VaultError::Conflict {
            path: path.to_owned(),
        })
    }

    async fn forget_posix_id(&self, path: &str) -> Result<(), VaultError> {
        self.delete_secrets(path).await.map(|_| ())
    }

    async fn ensure_policy(&self, policy: &VaultPolicy) -> Result<Change, VaultError> {
        check_policy(&self.settings.kv_mount, policy)?;
        let key = format!("policy:{}", policy.name);
        let wanted = digest(&policy.hcl);
        if self.verified.holds(&key, wanted) {
            return Ok(Change::Unchanged);
        }
        let since = Instant::now();
        let change = match self.read_policy(&policy.name).await? {
            Some(current) if current == policy.hcl => {
                self.verified.record(&key, wanted, since);
                return Ok(Change::Unchanged);
            }
            Some(current) if !current.starts_with(OWNERSHIP_MARKER) => {
                return Err(VaultError::NotOwned {
                    what: "policy",
                    name: policy.name.clone(),
                });
            }
            Some(_) => Change::Updated,
            None => Change::Created,
        };
        let body = serde_json::json!({ "policy": policy.hcl });
        self.write_raw(
            "write policy",
            format!("sys/policies/acl/{}", policy.name),
            RequestMethod::PUT,
            Some(body),
        )
        .await?;
        self.verified.record(&key, wanted, since);
        Ok(change)
    }

    async fn delete_policy(&self, name: &str) -> Result<Change, VaultError> {
        let _forgetting = self.verified.forgetting(format!("policy:{name}"));
        match self.read_policy(name).await? {
            None => Ok(Change::Unchanged),
            Some(current) if !current.starts_with(OWNERSHIP_MARKER) => Err(VaultError::NotOwned {
                what: "policy",
                name: name.to_owned(),
            }),
            Some(_) => {
                self.write_raw(
                    "delete policy",
                    format!("sys/policies/acl/{name}"),
                    RequestMethod::DELETE,
                    None,
                )
                .await?;
                Ok(Change::Deleted)
            }
        }
    }

    async fn ensure_role(
        &self,
        company: &str,
        role: &KubernetesAuthRole,
    ) -> Result<Change, VaultError> {
        check_role(role)?;
        let mount = &self.settings.auth_mount;
        let key = Self::role_key(company, mount, &role.name);
        let wanted = digest(&format!("{role:?}"));
        if self.verified.holds(&key, wanted) {
            return Ok(Change::Unchanged);
        }
        let since = Instant::now();
        let current = self.claim_role(company, mount, &role.name).await?;
        let matches = current.as_ref().is_some_and(|c| {
            sorted_strings(c, "bound_service_account_names") == role.bound_service_account_names
                && sorted_strings(c, "bound_service_account_namespaces")
                    == role.bound_service_account_namespaces
                && sorted_strings(c, "token_policies") == role.token_policies
                && c["audience"].as_str() == Some(role.audience.as_str())
                && c["token_ttl"].as_u64() == Some(u64::from(role.token_ttl))
                && c["token_max_ttl"].as_u64() == Some(u64::from(role.token_max_ttl))
        });
        if matches {
            self.verified.record(&key, wanted, since);
            return Ok(Change::Unchanged);
        }
        self.wrote();
        let mut request_builder =
            vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest::builder();
        request_builder
            .bound_service_account_names(role.bound_service_account_names.clone())
            .bound_service_account_namespaces(role.bound_service_account_namespaces.clone())
            .audience(role.audience.clone())
            .token_ttl(role.token_ttl.to_string())
            .token_max_ttl(role.token_max_ttl.to_string())
            .token_policies(role.token_policies.clone());
        vaultrs::auth::kubernetes::role::create(
            &*self.client(),
            mount,
            &role.name,
            Some(&mut request_builder),
        )
        .await
        .map_err(request(
            "write role",
            &Self::role_path_in(mount, &role.name),
        ))?;
        self.verified.record(&key, wanted, since);
        Ok(if current.is_some() {
            Change::Updated
        } else {
            Change::Created
        })
    }

    async fn delete_role(&self, company: &str, name: &str) -> Result<Change, VaultError> {
        self.delete_owned_role(company, &self.settings.auth_mount, name)
            .await
    }

    async fn ensure_person_role(
        &self,
        company: &str,
        mount: &str,
        role: &JwtAuthRole,
    ) -> Result<Change, VaultError> {
        check_person_role(role)?;
        let key = Self::role_key(company, mount, &role.name);
        let wanted = digest(&format!("{role:?}"));
        if self.verified.holds(&key, wanted) {
            return Ok(Change::Unchanged);
        }
        let since = Instant::now();
        let current = self.claim_role(company, mount, &role.name).await?;
        let matches = current.as_ref().is_some_and(|c| {
            c["role_type"].as_str() == Some("jwt")
                && c["user_claim"].as_str() == Some("sub")
                && c["bound_subject"].as_str() == Some(role.bound_subject.as_str())
                && sorted_strings(c, "bound_audiences") == role.bound_audiences
                && sorted_strings(c, "token_policies") == role.token_policies
                && c["token_ttl"].as_u64() == Some(u64::from(role.token_ttl))
                && c["token_max_ttl"].as_u64() == Some(u64::from(role.token_max_ttl))
        });
        if matches {
            self.verified.record(&key, wanted, since);
            return Ok(Change::Unchanged);
        }
        self.wrote();
        let mut request_builder = vaultrs::api::auth::oidc::requests::SetRoleRequest::builder();
        request_builder
            .role_type("jwt")
            .bound_subject(role.bound_subject.clone())
            .bound_audiences(role.bound_audiences.clone())
            .token_policies(role.token_policies.clone())
            .token_ttl(role.token_ttl.to_string())
            .token_max_ttl(role.token_max_ttl.to_string());
        vaultrs::auth::oidc::role::set(
            &*self.client(),
            mount,
            &role.name,
            "sub",
            Vec::new(),
            Some(&mut request_builder),
        )
        .await
        .map_err(request(
            "write role",
            &Self::role_path_in(mount, &role.name),
        ))?;
        self.verified.record(&key, wanted, since);
        Ok(if current.is_some() {
            Change::Updated
        } else {
            Change::Created
        })
    }

    async fn delete_person_role(
        &self,
        company: &str,
        mount: &str,
        name: &str,
    ) -> Result<Change, VaultError> {
        self.delete_owned_role(company, mount, name).await
    }

    async fn ensure_credentials(
        &self,
        path: &str,
        username: &str,
    ) -> Result<StoredCredentials, VaultError> {
        check_kv_path(path)?;
        if let Some((data, version)) = self.read_kv(path).await? {
            return Self::credentials(path, &data, version);
        }
        let password = generate_password().map_err(VaultError::Entropy)?;
        let data = HashMap::from([
            ("username", username.to_owned()),
            ("password", password.expose().to_owned()),
        ]);
        if let Some(version) = self.write_kv(path, &data, 0).await? {
            return Ok(StoredCredentials {
                username: username.to_owned(),
                password,
                version,
            });
        }
        // Someone wrote first (a concurrent reconcile): theirs is the credential.
        match self.read_kv(path).await? {
            Some((data, version)) => Self::credentials(path, &data, version),
            None => Err(VaultError::Malformed {
                path: path.to_owned(),
                reason: "its latest version is deleted; undelete it, or delete its metadata to start over".into(),
            }),
        }
    }

    async fn rotate_credentials(&self, path: &str) -> Result<StoredCredentials, VaultError> {
        check_kv_path(path)?;
        let Some((data, version)) = self.read_kv(path).await? else {
            return Err(VaultError::Malformed {
                path: path.to_owned(),
                reason: "there are no credentials to rotate".into(),
            });
        };
        let current = Self::credentials(path, &data, version)?;
        let password = generate_password().map_err(VaultError::Entropy)?;
        let new = HashMap::from([
            ("username", current.username.clone()),
            ("password", password.expose().to_owned()),
        ]);
        match self.write_kv(path, &new, version).await? {
            Some(version) => Ok(StoredCredentials {
                username: current.username,
                password,
                version,
            }),
            None => Err(VaultError::Conflict {
                path: path.to_owned(),
            }),
        }
    }

    async fn read_platform_secret(
        &self,
        path: &str,
    ) -> Result<HashMap<String, String>, VaultError> {
        check_platform_path(path)?;
        match self.read_kv(path).await? {
            Some((data, _)) => Ok(data),
            None => Err(VaultError::Missing {
                path: format!("{}/data/{path}", self.settings.kv_mount),
            }),
        }
    }

    async fn delete_secrets(&self, prefix: &str) -> Result<usize, VaultError> {
        check_kv_path(prefix)?;
        let _forgetting = self.verified.forgetting(format!("kv:{prefix}"));
        let mount = &self.settings.kv_mount;
        let mut deleted = 0;
        // The prefix itself may be a secret, a folder, or both.
        let mut pending = vec![prefix.to_owned()];
        while let Some(path) = pending.pop() {
            match vaultrs::kv2::list(&*self.client(), mount, &path).await {
                Ok(keys) => pending.extend(
                    keys.into_iter()
                        .map(|k| format!("{path}/{}", k.trim_end_matches('/'))),
                ),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(request("list secrets", &path)(e)),
            }
            if self
                .read_raw(&format!("{mount}/metadata/{path}"))
                .await?
                .is_some()
            {
                self.wrote();
                vaultrs::kv2::delete_metadata(&*self.client(), mount, &path)
                    .await
                    .map_err(request("delete secret", &path))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
