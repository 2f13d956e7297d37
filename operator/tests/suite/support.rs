//! Shared helpers: paths, the examples' plan, and service addresses.

use std::path::PathBuf;

use enclave::{
    config::OperatorConfig,
    plan::{Plan, plan_paths},
};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Plans of every tenant set the tests render: `examples/` and one company
/// per storage mode (`operator/tests/fixtures/storage/`).
pub fn all_plans() -> Vec<(&'static str, Plan)> {
    vec![
        ("examples", examples_plan()),
        ("storage fixtures", storage_plan()),
    ]
}

/// The plan of the storage fixtures (Lustre, OpenZFS, volume).
pub fn storage_plan() -> Plan {
    plan_paths(
        &[root().join("operator/tests/fixtures/storage")],
        &OperatorConfig::default(),
    )
    .expect("storage fixtures are valid")
}

/// The plan of `examples/` with the default configuration.
pub fn examples_plan() -> Plan {
    plan_paths(&[root().join("examples")], &OperatorConfig::default()).expect("examples are valid")
}

/// The value of a variable the harness exports. Without it the test fails,
/// naming what is missing: a test that cannot run never passes. The tests
/// that need no service run alone with `cargo nextest run --profile
/// offline`, which reports the others as skipped.
pub fn service(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: this test needs {what}. Run the suite with e2e/run-tests.sh, which installs and starts it, \
             or run `cargo nextest run --profile offline`, which skips the tests that need a service"
        )
    })
}

/// The `enclave` binary under test.
pub fn enclave() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_enclave"))
}

/// A name no other test (or run against the same services) uses:
/// `prefix` plus hex from the clock and the process id.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}{:x}",
        (nanos ^ u128::from(std::process::id()) << 20) & 0xff_ffff_ffff
    )
}

/// A Vault client for `addr` with `token` (the crypto provider installed).
pub fn vault_client(addr: &str, token: &str) -> vaultrs::client::VaultClient {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    vaultrs::client::VaultClient::new(
        vaultrs::client::VaultClientSettingsBuilder::default()
            .address(addr)
            .token(token)
            .build()
            .unwrap(),
    )
    .unwrap()
}

/// Clients of moto's RDS and FSx APIs, as the tests look at them.
pub fn aws_clients() -> (aws_sdk_rds::Client, aws_sdk_fsx::Client) {
    let endpoint = crate::support::service("ENCLAVE_TEST_AWS_ENDPOINT", "moto");
    let creds = aws_sdk_rds::config::Credentials::new("test", "test", None, None, "static");
    let rds = aws_sdk_rds::Client::from_conf(
        aws_sdk_rds::Config::builder()
            .behavior_version(aws_sdk_rds::config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_sdk_rds::config::Region::new("us-east-1"))
            .credentials_provider(creds.clone())
            .build(),
    );
    let fsx = aws_sdk_fsx::Client::from_conf(
        aws_sdk_fsx::Config::builder()
            .behavior_version(aws_sdk_fsx::config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_sdk_fsx::config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .build(),
    );
    (rds, fsx)
}

/// A watch-fed local copy of objects (a reflector), kept until dropped: the
/// tests' stand-ins and the benchmark read it instead of listing the API
/// server in a loop, which at scale would load the server they measure.
pub struct Mirror<K: kube::Resource + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    /// The objects, as the last watch event left them.
    pub store: kube::runtime::reflector::Store<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: kube::Resource + 'static> Drop for Mirror<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Mirrors what `api` lists with `config`, once the first list is in.
pub async fn mirror<K>(api: kube::Api<K>, config: kube::runtime::watcher::Config) -> Mirror<K>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let task = tokio::spawn(
        watcher(api, config)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    store
        .wait_until_ready()
        .await
        .expect("the watch's first list");
    Mirror { store, task }
}
