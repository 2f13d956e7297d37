//! The harness of the controller tests: the real `enclave run` binary under
//! its own least-privilege ServiceAccount against a real Kubernetes control
//! plane (through a fault-injecting proxy), real OpenBao (its Kubernetes
//! auth reviewing tokens with that API server), moto and PostgreSQL, and a
//! kubelet stand-in that runs the pods the scheduler binds.

use std::{process::Child, time::Duration};

use enclave::crd::Company;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::support::enclave;
use enclave::names::CompanyNames;

/// The operator process; killed when dropped.
pub struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Vault for the operator under test: a Kubernetes auth mount of its own
/// on the harness's OpenBao, and a root client to look at what it wrote.
pub struct Vault {
    /// The operator's Kubernetes auth mount (unique per test).
    pub mount: String,
    /// A root client.
    pub root: vaultrs::client::VaultClient,
    /// The operator's configuration file.
    pub config: std::path::PathBuf,
    /// The shared PostgreSQL admin's credentials, written to Vault by setup.
    pub admin: std::collections::BTreeMap<&'static str, String>,
    /// The JWT auth mount of people (admins), trusting [`Vault::people`].
    pub person_mount: String,
    /// The test identity provider people log in with.
    pub people: IdentityProvider,
}

/// A test identity provider: an Ed25519 key OpenBao's JWT auth trusts, and
/// the tokens it issues (as an OIDC provider would, for the Vault audience).
pub struct IdentityProvider {
    key: aws_lc_rs::signature::Ed25519KeyPair,
}

/// Issuer of the test identity provider's tokens.
pub const ISSUER: &str = "https://idp.enclave-tests.example";
/// Audience of the people's tokens for Vault (`vault.personAudience`).
pub const PERSON_AUDIENCE: &str = "enclave-people";

impl IdentityProvider {
    fn new() -> Self {
        Self {
            key: aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap(),
        }
    }

    /// The public key, as OpenBao's `jwt_validation_pubkeys` takes it.
    pub fn public_pem(&self) -> String {
        use aws_lc_rs::signature::KeyPair;
        use base64::Engine;
        // SubjectPublicKeyInfo of an Ed25519 key: a fixed prefix, the key.
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(self.key.public_key().as_ref());
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }

    /// A token for `subject` with `audience`, valid for ten minutes.
    pub fn token(&self, subject: &str, audience: &str) -> String {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = b64(&json!({"alg": "EdDSA", "typ": "JWT"}));
        let claims = b64(&json!({"iss": ISSUER, "sub": subject, "aud": audience,
            "iat": now, "nbf": now, "exp": now + 600}));
        let signing_input = format!("{header}.{claims}");
        let signature = self.key.sign(signing_input.as_bytes());
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.as_ref());
        format!("{signing_input}.{signature}")
    }
}

fn vault(moto: &str) -> Vault {
    let addr = crate::support::service("ENCLAVE_TEST_VAULT_ADDR", "an OpenBao server");
    let token = crate::support::service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token");
    let root = crate::support::vault_client(&addr, &token);
    let mount = crate::support::unique("op");
    let conninfo = crate::support::service("ENCLAVE_TEST_POSTGRES", "a PostgreSQL server");
    let pg = |key: &str| {
        conninfo
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .unwrap()
            .to_owned()
    };
    let config = std::env::temp_dir().join(format!("enclave-config-{mount}.yaml"));
    let person_mount = format!("{mount}-people");
    // The operator's configuration is what the chart renders from these
    // values (its schema checks them, it adds the namespace and image).
    let values = json!({
        "clusterId": mount,
        "vault": {"address": addr, "authMount": mount,
            "personAuthMount": person_mount, "personAudience": PERSON_AUDIENCE},
        "aws": {"endpointUrl": moto},
        "storage": {"fsxMissingLifecycleIsAvailable": true},
        "controller": {"resyncSeconds": 5},
        "database": {"subnetGroup": "", "shared": {
            "host": pg("host"), "port": pg("port").parse::<u16>().unwrap(),
            "adminCredentialsPath": format!("enclave/pg-admin-{mount}"), "tls": false}},
    });
    std::fs::write(&config, crate::chart::rendered_config(&values)).unwrap();
    let admin =
        std::collections::BTreeMap::from([("username", pg("user")), ("password", pg("password"))]);
    Vault {
        mount,
        root,
        config,
        person_mount,
        people: IdentityProvider::new(),
        admin,
    }
}

/// One operator under test with everything it talks to.
pub struct Harness {
    /// The API client (as a user).
    pub client: Client,
    /// Vault as root, and the operator's mount.
    pub vault: Vault,
    /// Runs Jobs and readies workspaces.
    pub kubelet: crate::kubelet::Kubelet,
    operator: Option<Operator>,
    /// The recording proxy in front of moto that the operator uses.
    pub aws: crate::aws_proxy::AwsProxy,
    /// Port of the operator's /metrics, /healthz and /readyz.
    pub http_port: u16,
    /// The Vault token operators start with (default: root).
    pub vault_token: Option<String>,
    /// The proxy between the first operator replica and the API server.
    pub kube_proxy: crate::kube_proxy::KubeProxy,
    /// Whether "replica-a" talks to the API server directly instead of
    /// through [`Harness::kube_proxy`] (the benchmark: its requests are
    /// counted from the audit log, and neither the proxy's CPU nor the
    /// TLS it would do for the operator skews the measurement).
    pub operator_direct: bool,
    /// Proxies of further replicas, by identity.
    pub replica_proxies: std::sync::Mutex<Vec<(String, crate::kube_proxy::KubeProxy)>>,
    /// The operator ServiceAccount's token.
    pub operator_token: String,
    /// The control plane (stopped last).
    pub control_plane: crate::control_plane::ControlPlane,
}

impl Harness {
    /// Names a private CA for Vault in the operator's configuration (the
    /// control plane's: a real certificate; OpenBao speaks plain HTTP on
    /// loopback, so it is loaded and never used to verify), so that every
    /// init step gets it through the namespace's ConfigMap as in a cluster
    /// whose Vault has a private CA.
    fn give_vault_a_private_ca(&self) {
        let ca = self.control_plane.dir.join("vault-ca.pem");
        std::fs::write(&ca, &self.control_plane.ca_pem).unwrap();
        let text = std::fs::read_to_string(&self.vault.config).unwrap();
        let mut config: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        config["vault"]["caFile"] = json!(ca.display().to_string());
        // YAML, as the chart renders it (tests edit it as text).
        std::fs::write(
            &self.vault.config,
            serde_saphyr::to_string(&config).unwrap(),
        )
        .unwrap();
    }

    /// The file replica `identity` logs to (stdout; warnings and the audit
    /// trail, or what `ENCLAVE_TEST_OPERATOR_LOG` adds).
    pub fn operator_log(&self, identity: &str) -> std::path::PathBuf {
        self.control_plane
            .dir
            .join(format!("operator-{identity}.log"))
    }

    /// Starts (or restarts) the operator process.
    pub fn start_operator(&mut self) {
        self.operator = None;
        self.operator = Some(self.spawn_operator("replica-a", self.http_port));
    }

    /// The running operator's process id.
    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.as_ref().map(|o| o.0.id())
    }

    /// Kills the operator process (SIGKILL: no cleanup of any kind).
    pub fn kill_operator(&mut self) {
        self.operator = None;
    }

    /// Starts one more operator process (a replica) that identifies itself
    /// to the API with bearer token `identity` and serves HTTP on `port`.
    pub fn spawn_operator(&self, identity: &str, port: u16) -> Operator {
        self.spawn_operator_with(identity, port, &self.vault.config)
    }

    /// [`Harness::spawn_operator`] with another configuration file. The
    /// first replica ("replica-a") talks through [`Harness::kube_proxy`]
    /// (or, with [`Harness::operator_direct`], to the API server itself),
    /// any other through a proxy of its own (to count its requests).
    pub fn spawn_operator_with(
        &self,
        identity: &str,
        port: u16,
        config: &std::path::Path,
    ) -> Operator {
        let url = if identity == "replica-a" && self.operator_direct {
            self.control_plane.api.clone()
        } else if identity == "replica-a" {
            self.kube_proxy.url.clone()
        } else {
            let proxy =
                crate::kube_proxy::start(&self.control_plane.api, &self.control_plane.ca_pem);
            let url = proxy.url.clone();
            self.replica_proxies
                .lock()
                .unwrap()
                .push((identity.to_owned(), proxy));
            url
        };
        let kubeconfig = self
            .control_plane
            .dir
            .join(format!("operator-{identity}.kubeconfig"));
        self.control_plane
            .write_kubeconfig(&kubeconfig, &url, &self.operator_token);
        // The benchmark runs a release build (`e2e/bench.sh`).
        let mut command = match std::env::var_os("ENCLAVE_TEST_OPERATOR_BIN") {
            Some(bin) => std::process::Command::new(bin),
            None => enclave(),
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--http-address")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--log-format=text")
            .arg("--identity")
            .arg(identity)
            .arg("--lease-seconds")
            .arg("4")
            .env("KUBECONFIG", &kubeconfig)
            .env(
                "VAULT_TOKEN",
                self.vault_token.clone().unwrap_or_else(|| {
                    crate::support::service("ENCLAVE_TEST_VAULT_TOKEN", "the OpenBao root token")
                }),
            )
            // ENCLAVE_TEST_OPERATOR_LOG, e.g. `enclave::controllers::apply=debug`,
            // adds to what the operators under test log.
            .env(
                "RUST_LOG",
                format!(
                    "warn,rustify=off,vaultrs=off,enclave::audit=info,{}",
                    std::env::var("ENCLAVE_TEST_OPERATOR_LOG").unwrap_or_default()
                ),
            )
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            // What it logs (the audit trail included) goes to a file a
            // test can read: `Harness::operator_log`.
            .stdout(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.operator_log(identity))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Operator(child)
    }
}

impl Drop for Harness {
    /// A failed test shows what its operators logged (the last lines).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.control_plane.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log")
                && path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("operator-"))
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("--- {} (tail)\n{}", path.display(), tail.join("\n"));
            }
        }
    }
}

/// A free loopback port, from `e2e/free-port` (below the kernel's
/// ephemeral range: a port 0 bind picks is free only until some outgoing
/// connection takes it as its source port).
pub fn free_port() -> u16 {
    let out = std::process::Command::new(crate::support::root().join("e2e/free-port"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2e/free-port failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl Harness {
    /// GET `path` from the operator's HTTP endpoint: status code and body.
    pub fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.http_port, path)
    }
}

/// GET `path` from loopback `port`: status code and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

/// Starts everything for one test.
pub async fn setup() -> Harness {
    // The operator reaches moto through a proxy that records every call.
    let moto = crate::support::service("ENCLAVE_TEST_AWS_ENDPOINT", "moto_server");
    let aws = crate::aws_proxy::start(&moto).await;
    let vault = vault(&aws.url);
    vaultrs::sys::auth::enable(&vault.root, &vault.mount, "kubernetes", None)
        .await
        .unwrap();
    // People log in with the identity provider's tokens (JWT auth).
    vaultrs::sys::auth::enable(&vault.root, &vault.person_mount, "jwt", None)
        .await
        .unwrap();
    let mut idp = vaultrs::api::auth::oidc::requests::SetConfigurationRequest::builder();
    idp.jwt_validation_pubkeys(vec![vault.people.public_pem()])
        .bound_issuer(ISSUER);
    vaultrs::auth::oidc::config::set(&vault.root, &vault.person_mount, Some(&mut idp))
        .await
        .unwrap();
    vaultrs::kv2::set(
        &vault.root,
        "secret",
        &format!("enclave/pg-admin-{}", vault.mount),
        &vault.admin,
    )
    .await
    .unwrap();
    let control_plane = crate::control_plane::ControlPlane::start().await;
    control_plane.install_crds().await;
    control_plane.install_operator_identity().await;
    let client = control_plane.admin.clone();
    // The StorageClass of volume-mode companies; the kubelet stand-in
    // provisions its claims.
    let class: k8s_openapi::api::storage::v1::StorageClass = serde_json::from_value(json!({
        "metadata": {"name": "gp3"},
        "provisioner": crate::kubelet::PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }))
    .unwrap();
    Api::<k8s_openapi::api::storage::v1::StorageClass>::all(client.clone())
        .patch(
            "gp3",
            &PatchParams::apply("enclave-tests"),
            &Patch::Apply(&class),
        )
        .await
        .unwrap();
    // OpenBao checks workspace tokens with the API server's TokenReview.
    control_plane.configure_vault_auth(&vault.mount).await;
    let operator_token = control_plane
        .token(
            crate::control_plane::OPERATOR_NAMESPACE,
            crate::control_plane::OPERATOR_ACCOUNT,
            &[],
        )
        .await;
    let kube_proxy = crate::kube_proxy::start(&control_plane.api, &control_plane.ca_pem);
    let kubelet = crate::kubelet::start(client.clone(), "enclave-node");
    let mut harness = Harness {
        client,
        vault,
        kubelet,
        operator: None,
        aws,
        http_port: free_port(),
        vault_token: None,
        kube_proxy,
        operator_direct: false,
        replica_proxies: std::sync::Mutex::default(),
        operator_token,
        control_plane,
    };
    harness.give_vault_a_private_ca();
    harness.start_operator();
    harness
}

/// Polls `check` until it gives a value (60 s at most).
pub async fn wait<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    wait_or(what, check, async || String::new()).await
}

/// [`wait`], adding what `describe` says to the failure.
pub async fn wait_or<T>(
    what: &str,
    mut check: impl AsyncFnMut() -> Option<T>,
    mut describe: impl AsyncFnMut() -> String,
) -> T {
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    while std::time::Instant::now() < deadline {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}. {}", describe().await);
}

/// Waits until `name` is gone from `api`.
pub async fn wait_gone<K>(what: &str, api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait(what, async || {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// Status and reason of condition `type_` of `company`.
pub fn condition(company: &Company, type_: &str) -> Option<(String, String)> {
    company
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.to_string(), c.reason.to_string()))
}

/// Waits until condition `type_` of the Developer `name` is True.
pub async fn developer_condition(
    devs: &Api<enclave::crd::Developer>,
    name: &str,
    type_: &str,
) -> enclave::crd::Developer {
    wait(&format!("{type_} of {name}"), async || {
        let d = devs.get(name).await.unwrap();
        d.status
            .as_ref()?
            .conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == "True")
            .then_some(d.clone())
    })
    .await
}

/// Fails the test unless this process runs as root, saying why and how to
/// skip it instead.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().as_raw() == 0,
        "this test needs root: storage-prep chowns and workspace init steps run as the developers' uids. \
         Run it as root (CI does), or run `cargo nextest run --profile offline`, which skips it"
    );
}

fn ready(conditions: Option<&Vec<enclave::crd::Condition>>) -> bool {
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until Company `name` and its `developers` are Ready, saying where
/// each stands if they do not get there.
pub async fn wait_ready(client: &Client, name: &str, developers: &[&str]) {
    use enclave::crd::Developer;
    let companies: Api<Company> = Api::all(client.clone());
    wait_or(
        &format!("Company {name} Ready"),
        async || {
            let c = companies.get_opt(name).await.ok()??;
            ready(c.status.as_ref().map(|s| &s.conditions)).then_some(())
        },
        async || {
            format!(
                "{:#?}",
                companies
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|c| c.status)
            )
        },
    )
    .await;
    let namespace = CompanyNames::new(name, None).namespace().to_owned();
    let devs: Api<Developer> = Api::namespaced(client.clone(), &namespace);
    for dev in developers {
        wait_or(
            &format!("Developer {dev} of {name} Ready"),
            async || {
                let d = devs.get_opt(dev).await.ok()??;
                ready(d.status.as_ref().map(|s| &s.conditions)).then_some(())
            },
            async || {
                format!(
                    "{:#?}",
                    devs.get_opt(dev)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|d| d.status)
                )
            },
        )
        .await;
    }
}
