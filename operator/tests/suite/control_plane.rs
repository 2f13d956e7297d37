//! The real Kubernetes control plane of the controller tests: etcd,
//! kube-apiserver (RBAC, admission, ServiceAccount tokens), the controller
//! manager and the scheduler, started per test by
//! `e2e/control-plane/start.sh` from the binaries `e2e/control-plane/build.sh`
//! built (`ENCLAVE_TEST_K8S_BIN`), and the operator's identity on it: a
//! ServiceAccount bound to the rules the chart ships (`manifests/enclave.yaml`,
//! rendered from `charts/enclave/`), never `system:masters`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        authentication::v1::TokenRequest,
        core::v1::{Namespace, ServiceAccount},
        rbac::v1::{ClusterRoleBinding, PolicyRule},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};

/// The operator's ServiceAccount and namespace in every test cluster.
pub const OPERATOR_NAMESPACE: &str = "enclave-system";
/// See [`OPERATOR_NAMESPACE`].
pub const OPERATOR_ACCOUNT: &str = "enclave";

/// A running control plane; stopped when dropped.
pub struct ControlPlane {
    /// Its directory (certificates, logs, audit log, kubeconfig).
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub api: String,
    /// The CA that signs the API server's certificate (PEM).
    pub ca_pem: String,
    /// Where the binaries are (kubectl, helm).
    pub bin: PathBuf,
    /// A client with the admin's certificate.
    pub admin: Client,
    /// Whether this handle started it (and so stops it).
    owned: bool,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let _ = Command::new(crate::support::root().join("e2e/control-plane/stop.sh"))
            .arg(&self.dir)
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(self.dir.join("etcd"));
        }
    }
}

/// The binaries' directory.
pub fn binaries() -> PathBuf {
    PathBuf::from(crate::support::service(
        "ENCLAVE_TEST_K8S_BIN",
        "the Kubernetes control plane binaries (e2e/control-plane/build.sh)",
    ))
}

impl ControlPlane {
    /// Starts a fresh control plane (a few seconds) in a new directory below
    /// the harness's state directory (kept for the logs when a test fails).
    pub async fn start() -> Self {
        let bin = binaries();
        let base =
            std::env::var_os("ENCLAVE_TEST_STATE").map_or_else(std::env::temp_dir, PathBuf::from);
        let dir = base.join(crate::support::unique("k8s-"));
        let script = crate::support::root().join("e2e/control-plane/start.sh");
        let started = std::time::Instant::now();
        let (dir_arg, bin_arg) = (dir.clone(), bin.clone());
        let output = tokio::task::spawn_blocking(move || {
            Command::new(script)
                .arg(&dir_arg)
                .arg(&bin_arg)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "the control plane did not start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "control plane up in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Self::at(dir, bin, true).await
    }

    /// The control plane the harness started for the whole run (tests that
    /// only read, dry-run or use names of their own share it).
    pub async fn shared() -> Self {
        let bin = binaries();
        let kubeconfig = crate::support::service(
            "ENCLAVE_TEST_KUBECONFIG",
            "the control plane e2e/run-tests.sh starts",
        );
        let dir = Path::new(&kubeconfig).parent().unwrap().to_path_buf();
        Self::at(dir, bin, false).await
    }

    async fn at(dir: PathBuf, bin: PathBuf, owned: bool) -> Self {
        let admin = client_from(&dir.join("kubeconfig")).await;
        let env = std::fs::read_to_string(dir.join("env")).unwrap();
        let api = env
            .lines()
            .find_map(|l| l.strip_prefix("ENCLAVE_TEST_K8S_API="))
            .unwrap()
            .to_owned();
        let ca_pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        Self {
            dir,
            api,
            ca_pem,
            bin,
            admin,
            owned,
        }
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(self.bin.join("kubectl"));
        cmd.arg("--kubeconfig").arg(self.dir.join("kubeconfig"));
        cmd
    }

    /// A token of ServiceAccount `namespace/name` from the TokenRequest API.
    pub async fn token(&self, namespace: &str, name: &str, audiences: &[&str]) -> String {
        let request: TokenRequest = serde_json::from_value(
            json!({"spec": {"audiences": audiences, "expirationSeconds": 86_400}}),
        )
        .unwrap();
        Api::<ServiceAccount>::namespaced(self.admin.clone(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .unwrap()
            .token
            .unwrap()
    }

    /// A token for ServiceAccount `namespace/name` with audience
    /// `audience`, creating the namespace and the account if needed.
    pub async fn service_account_token(
        &self,
        namespace: &str,
        name: &str,
        audience: &str,
    ) -> String {
        // A field manager of its own: the operator's namespace is applied
        // with labels by `install_operator_identity`, which must stay.
        let ssa = PatchParams::apply("enclave-tests-tokens");
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": namespace}})).unwrap();
        Api::<Namespace>::all(self.admin.clone())
            .patch(namespace, &ssa, &Patch::Apply(&ns))
            .await
            .unwrap();
        let account: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace}}))
                .unwrap();
        Api::<ServiceAccount>::namespaced(self.admin.clone(), namespace)
            .patch(name, &ssa, &Patch::Apply(&account))
            .await
            .unwrap();
        self.token(namespace, name, &[audience]).await
    }

    /// Points Vault auth mount `mount` at this API server, reviewing tokens
    /// with a reviewer account of its own (as in a cluster). vaultrs has no
    /// `token_reviewer_jwt`, so this writes the configuration over HTTP.
    pub async fn configure_vault_auth(&self, mount: &str) {
        let reviewer = self.token_reviewer().await;
        let addr = crate::support::service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
        let token = crate::support::service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
        let body = json!({
            "kubernetes_host": self.api,
            "kubernetes_ca_cert": self.ca_pem,
            "token_reviewer_jwt": reviewer,
            "disable_local_ca_jwt": true,
        });
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let request = hyper::Request::post(format!("{addr}/v1/auth/{mount}/config"))
            .header("X-Vault-Token", token)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert!(
            response.status().is_success(),
            "configuring {mount}: {}",
            response.status()
        );
    }

    /// A kubeconfig at `path` for `server` (this API server, or a proxy in
    /// front of it) presenting bearer `token`.
    pub fn write_kubeconfig(&self, path: &Path, server: &str, token: &str) {
        let ca = if server.starts_with("https://") {
            format!(
                "    certificate-authority: {}\n",
                self.dir.join("ca.crt").display()
            )
        } else {
            String::new()
        };
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n{ca}users:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n"
            ),
        )
        .unwrap();
    }

    /// The audit log's events (one JSON object each).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Requests the operator's ServiceAccount sent, by `"<verb> <resource>"`
    /// (`resource/subresource` for a subresource), from the audit log.
    pub fn operator_requests(&self) -> std::collections::BTreeMap<String, u64> {
        let mut out = std::collections::BTreeMap::new();
        for event in self.audit_events() {
            if let Some(key) = operator_request(&event) {
                *out.entry(key).or_default() += 1;
            }
        }
        out
    }

    /// Installs the CRDs and waits until they are served.
    pub async fn install_crds(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.admin.clone());
        for crd in enclave::cli::crds() {
            crds.patch(
                crd.metadata.name.as_deref().unwrap(),
                &PatchParams::apply("enclave-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap();
        }
        for crd in enclave::cli::crds() {
            let name = crd.metadata.name.clone().unwrap();
            crate::harness::wait(&format!("CRD {name} established"), async || {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            })
            .await;
        }
    }

    /// The operator's namespace (Pod Security `baseline`: storage-prep Jobs
    /// run as root with CHOWN/FOWNER/DAC_OVERRIDE, which `restricted`
    /// refuses), its ServiceAccounts and RBAC, exactly as a user installs
    /// them: the objects of `manifests/enclave.yaml`, the chart rendered
    /// with its default values (a test keeps the two in step).
    pub async fn install_operator_identity(&self) {
        let text =
            std::fs::read_to_string(crate::support::root().join("manifests/enclave.yaml")).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        let ssa = PatchParams::apply("enclave-tests").force();
        let identity = [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ];
        for kind in identity {
            for doc in docs.iter().filter(|d| d["kind"] == kind) {
                let gvk = kube::api::GroupVersionKind::try_from(&kube::api::TypeMeta {
                    api_version: doc["apiVersion"].as_str().unwrap().to_owned(),
                    kind: kind.to_owned(),
                })
                .unwrap();
                let resource = kube::api::ApiResource::from_gvk(&gvk);
                let api: Api<kube::api::DynamicObject> = match doc["metadata"]["namespace"].as_str()
                {
                    Some(ns) => Api::namespaced_with(self.admin.clone(), ns, &resource),
                    None => Api::all_with(self.admin.clone(), &resource),
                };
                let name = doc["metadata"]["name"].as_str().unwrap();
                api.patch(name, &ssa, &Patch::Apply(doc)).await.unwrap();
            }
        }
        assert!(
            docs.iter().any(|d| d["kind"] == "Namespace"
                && d["metadata"]["name"] == OPERATOR_NAMESPACE
                && d["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"),
            "manifests/enclave.yaml creates the operator's namespace, Pod Security baseline"
        );
    }

    /// A ServiceAccount that may review tokens (`system:auth-delegator`),
    /// and its token: what Vault's Kubernetes auth is configured with.
    pub async fn token_reviewer(&self) -> String {
        let ssa = PatchParams::apply("enclave-tests").force();
        let account: ServiceAccount = serde_json::from_value(
            json!({"metadata": {"name": "vault-auth", "namespace": "kube-system"}}),
        )
        .unwrap();
        Api::<ServiceAccount>::namespaced(self.admin.clone(), "kube-system")
            .patch("vault-auth", &ssa, &Patch::Apply(&account))
            .await
            .unwrap();
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "vault-auth-delegator"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
            "subjects": [{"kind": "ServiceAccount", "name": "vault-auth", "namespace": "kube-system"}],
        }))
        .unwrap();
        Api::<ClusterRoleBinding>::all(self.admin.clone())
            .patch("vault-auth-delegator", &ssa, &Patch::Apply(&binding))
            .await
            .unwrap();
        self.token("kube-system", "vault-auth", &[]).await
    }
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// The rules of `charts/enclave/files/rbac.yaml`.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChartRules {
    /// The operator's ClusterRole.
    pub operator: Vec<PolicyRule>,
    /// The operator's Role in its own namespace.
    pub operator_namespace: Vec<PolicyRule>,
    /// The company-admin ClusterRole.
    pub company_admin: Vec<PolicyRule>,
    /// The workspace-access ClusterRole (bound by the operator to itself in
    /// company namespaces).
    pub workspace_access: Vec<PolicyRule>,
}

/// Reads `charts/enclave/files/rbac.yaml`.
pub fn chart_rules() -> ChartRules {
    let text =
        std::fs::read_to_string(crate::support::root().join("charts/enclave/files/rbac.yaml"))
            .unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// The API server's name for the operator's ServiceAccount.
pub fn operator_user() -> String {
    format!("system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_ACCOUNT}")
}

/// `"<verb> <resource>"` of an audit event of a request the operator's
/// ServiceAccount sent (once, when its response completed).
pub fn operator_request(event: &Value) -> Option<String> {
    if event["stage"] != "ResponseComplete" || event["user"]["username"] != operator_user().as_str()
    {
        return None;
    }
    let object = &event["objectRef"];
    let mut resource = object["resource"].as_str().unwrap_or_default().to_owned();
    if let Some(sub) = object["subresource"].as_str() {
        resource = format!("{resource}/{sub}");
    }
    let verb = event["verb"].as_str().unwrap_or_default();
    Some(format!("{verb} {resource}"))
}
