//! The FSx backend against moto, through the recording proxy.

use std::{fmt::Write as _, time::Duration};

use aws_sdk_fsx::{
    config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider},
    types::{CreateFileSystemOpenZfsConfiguration, FileSystemType, OpenZfsDeploymentType, Tag},
};
use enclave::{
    backends::{
        aws_calls::CallLimits,
        storage::{FileSystemBackend, FsDeletion, FsPhase, FsxFileSystems, StorageError},
    },
    builders::{CompanyContext, FileSystemRequest, Observed, file_system_request},
    config::OperatorConfig,
    crd::{Company, DeletionPolicy},
};
use serde_json::json;

use crate::{aws_proxy, support::service};

fn tag() -> String {
    crate::support::unique("f")
}

fn config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "static",
        )))
        .build()
}

struct Env {
    proxy: aws_proxy::AwsProxy,
    direct: aws_sdk_fsx::Client,
}

async fn env() -> Env {
    let moto = service(
        "ENCLAVE_TEST_AWS_ENDPOINT",
        "moto_server (the AWS API emulator)",
    );
    Env {
        proxy: aws_proxy::start(&moto).await,
        direct: aws_sdk_fsx::Client::new(&config(&moto)),
    }
}

impl Env {
    fn backend(&self) -> FsxFileSystems {
        FsxFileSystems::new(
            &config(&self.proxy.url),
            CallLimits {
                max_per_second: 50.0,
                base_backoff: Duration::from_millis(20),
                ..CallLimits::default()
            },
        )
    }

    /// File systems carrying `key=value`, straight from moto.
    async fn tagged(&self, key: &str, value: &str) -> Vec<aws_sdk_fsx::types::FileSystem> {
        let all = self.direct.describe_file_systems().send().await.unwrap();
        all.file_systems()
            .iter()
            .filter(|fs| {
                fs.tags()
                    .iter()
                    .any(|t| t.key() == Some(key) && t.value() == Some(value))
            })
            .cloned()
            .collect()
    }
}

/// Injects a failure into the next ensure.
type Inject = fn(&Env);

fn request(name: &str, storage: &serde_json::Value) -> FileSystemRequest {
    let mut company = Company::new(
        name,
        serde_json::from_value(json!({"storage": storage})).unwrap(),
    );
    company.metadata.uid = Some(format!("uid-{name}"));
    file_system_request(&CompanyContext::new(
        &company,
        &OperatorConfig::default(),
        Observed::default(),
    ))
    .unwrap()
}

fn openzfs(name: &str) -> FileSystemRequest {
    request(
        name,
        &json!({"fsx": {"type": "OpenZfs", "storageCapacityGiB": 64}}),
    )
}

#[tokio::test]
async fn a_file_system_is_created_once_with_the_company_tags() {
    let env = env().await;
    for req in [
        openzfs(&tag()),
        request(
            &tag(),
            &json!({"fsx": {"type": "Lustre", "storageCapacityGiB": 1200}}),
        ),
    ] {
        let fsx = env.backend();
        let state = fsx.ensure(&req).await.unwrap();
        assert!(state.owned && state.dns_name.is_some(), "{state:?}");
        // moto reports no lifecycle: ensure says so instead of waiting.
        assert_eq!(state.phase, FsPhase::Unknown);
        let found = env
            .tagged(
                "enclave.dev/company-uid",
                &req.tags["enclave.dev/company-uid"],
            )
            .await;
        assert_eq!(found.len(), 1);
        let tags: std::collections::BTreeMap<_, _> = found[0]
            .tags()
            .iter()
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
            .collect();
        assert_eq!(tags, req.tags);
        assert!(
            env.proxy
                .requests("DescribeFileSystems")
                .iter()
                .all(names_file_systems),
            "the lookup by tag never lists the account"
        );
        let creates = env.proxy.requests("CreateFileSystem").len();
        let again = fsx.ensure(&req).await.unwrap();
        assert_eq!(again.file_system_id, state.file_system_id);
        assert_eq!(
            env.proxy.requests("CreateFileSystem").len(),
            creates,
            "a second ensure creates nothing"
        );
    }
}

#[tokio::test]
async fn a_file_system_tagged_for_the_company_but_not_ours_is_refused_untouched() {
    let env = env().await;
    let name = tag();
    let req = openzfs(&name);
    let foreign = env
        .direct
        .create_file_system()
        .file_system_type(FileSystemType::Openzfs)
        .storage_capacity(64)
        .subnet_ids("subnet-0123456789abcdef0")
        .tags(
            Tag::builder()
                .key("enclave.dev/company")
                .value(&name)
                .build(),
        )
        .open_zfs_configuration(
            CreateFileSystemOpenZfsConfiguration::builder()
                .deployment_type(OpenZfsDeploymentType::SingleAz1)
                .throughput_capacity(64)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .file_system
        .unwrap();
    let fsx = env.backend();
    let err = fsx.ensure(&req).await.unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    let mut deleting = req.clone();
    deleting.deletion_policy = DeletionPolicy::Delete;
    assert!(matches!(
        fsx.delete(&deleting).await.unwrap_err(),
        StorageError::Conflict { .. }
    ));
    assert!(
        env.proxy.requests("CreateFileSystem").is_empty()
            && env.proxy.requests("DeleteFileSystem").is_empty()
    );
    let still = env.tagged("enclave.dev/company", &name).await;
    assert_eq!(still.len(), 1);
    assert_eq!(still[0].file_system_id(), foreign.file_system_id());
    assert_eq!(still[0].tags().len(), 1, "its tags are untouched");
}

#[tokio::test]
async fn failures_after_each_step_converge_to_exactly_one_file_system() {
    let env = env().await;
    let mut table = String::from(
        "failure injected                           | first ensure            | after a fresh ensure\n",
    );
    let cases: [(&str, Inject); 4] = [
        ("crash after CreateFileSystem", |_| {}),
        ("CreateFileSystem answer lost (500)", |env| {
            env.proxy.lose_next_answer_of("CreateFileSystem");
        }),
        ("every 2nd call throttled", |env| {
            env.proxy.throttle_every(2);
        }),
        ("none", |_| {}),
    ];
    for (i, (what, inject)) in cases.into_iter().enumerate() {
        let req = openzfs(&tag());
        inject(&env);
        let first = if i == 0 {
            env.backend().crashing_after_create().ensure(&req).await
        } else {
            env.backend().ensure(&req).await
        };
        env.proxy.throttle_every(0);
        let first = match first {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("error (transient: {})", e.is_transient()),
        };
        env.backend().ensure(&req).await.unwrap();
        let count = env
            .tagged(
                "enclave.dev/company-uid",
                &req.tags["enclave.dev/company-uid"],
            )
            .await
            .len();
        let _ = writeln!(table, "{what:<42} | {first:<23} | {count} file system(s)");
        assert_eq!(count, 1, "{what}");
    }
    println!("{table}");
}

#[tokio::test]
async fn delete_follows_the_deletion_policy() {
    let env = env().await;
    for policy in [
        DeletionPolicy::Snapshot,
        DeletionPolicy::Delete,
        DeletionPolicy::Retain,
    ] {
        let mut req = openzfs(&tag());
        req.deletion_policy = policy;
        let fsx = env.backend();
        let state = fsx.ensure(&req).await.unwrap();
        let before = env.proxy.requests("DeleteFileSystem").len();
        let outcome = fsx.delete(&req).await.unwrap();
        let deletes = env.proxy.requests("DeleteFileSystem");
        let remaining = env
            .tagged(
                "enclave.dev/company-uid",
                &req.tags["enclave.dev/company-uid"],
            )
            .await
            .len();
        println!("{policy:?}: {outcome:?}, file systems left {remaining}");
        match policy {
            DeletionPolicy::Snapshot => {
                assert_eq!(outcome, FsDeletion::Deleted { final_backup: true });
                let body: serde_json::Value = serde_json::from_str(&deletes[before].body).unwrap();
                assert_eq!(body["FileSystemId"], state.file_system_id);
                assert_eq!(
                    body["OpenZFSConfiguration"]["SkipFinalBackup"], false,
                    "{body}"
                );
                let tags = body["OpenZFSConfiguration"]["FinalBackupTags"]
                    .as_array()
                    .unwrap();
                assert!(
                    tags.iter().any(|t| t["Key"] == "enclave.dev/company-uid"),
                    "the final backup names the tenant"
                );
                assert_eq!(remaining, 0);
            }
            DeletionPolicy::Delete => {
                assert_eq!(
                    outcome,
                    FsDeletion::Deleted {
                        final_backup: false
                    }
                );
                let body: serde_json::Value = serde_json::from_str(&deletes[before].body).unwrap();
                assert_eq!(body["OpenZFSConfiguration"]["SkipFinalBackup"], true);
                assert_eq!(remaining, 0);
            }
            DeletionPolicy::Retain => {
                assert_eq!(outcome, FsDeletion::Retained);
                assert_eq!(deletes.len(), before, "Retain sends no delete");
                assert_eq!(remaining, 1);
            }
        }
    }
}

#[tokio::test]
async fn an_existing_file_system_is_used_and_never_deleted() {
    let env = env().await;
    let owner = openzfs(&tag());
    let existing = env.backend().ensure(&owner).await.unwrap();
    let mut req = request(
        &tag(),
        &json!({"fsx": {"type": "OpenZfs", "fileSystemId": existing.file_system_id}}),
    );
    let state = env.backend().ensure(&req).await.unwrap();
    assert_eq!(
        (state.file_system_id.as_str(), state.owned),
        (existing.file_system_id.as_str(), false)
    );
    req.deletion_policy = DeletionPolicy::Delete;
    assert_eq!(
        env.backend().delete(&req).await.unwrap(),
        FsDeletion::Retained
    );
    let missing = request(
        &tag(),
        &json!({"fsx": {"type": "OpenZfs", "fileSystemId": "fs-0123456789abcdef0"}}),
    );
    assert!(matches!(
        env.backend().ensure(&missing).await.unwrap_err(),
        StorageError::NotFound(_)
    ));
}

/// Whether `seen` names the file systems it describes (not a scan of the
/// account).
fn names_file_systems(seen: &aws_proxy::Seen) -> bool {
    let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap_or_default();
    body["FileSystemIds"]
        .as_array()
        .is_some_and(|ids| !ids.is_empty())
}

/// Whether `seen` is a DescribeFileSystems call for exactly `id` (a lookup
/// by id, not a scan of the account).
fn describes_only(seen: &aws_proxy::Seen, id: &str) -> bool {
    let body: serde_json::Value = serde_json::from_str(&seen.body).unwrap_or_default();
    body["FileSystemIds"] == json!([id])
}

#[tokio::test]
async fn a_recorded_file_system_is_looked_up_by_id_and_its_deletion_polled_by_id() {
    let env = env().await;
    let fsx = env.backend();
    let mut req = openzfs(&tag());
    req.deletion_policy = DeletionPolicy::Delete;
    let id = fsx.ensure(&req).await.unwrap().file_system_id;
    // What the controller passes once the status recorded the id.
    req.recorded_file_system_id = Some(id.clone());

    let from = env.proxy.seen().len();
    for _ in 0..3 {
        assert_eq!(fsx.ensure(&req).await.unwrap().file_system_id, id);
    }
    let calls = &env.proxy.seen()[from..];
    assert_eq!(calls.len(), 3, "one call per ensure: {calls:?}");
    assert!(calls.iter().all(|c| describes_only(c, &id)), "{calls:?}");

    let from = env.proxy.seen().len();
    let mut outcome = fsx.delete(&req).await.unwrap();
    for _ in 0..5 {
        if outcome != FsDeletion::InProgress {
            break;
        }
        outcome = fsx.delete(&req).await.unwrap();
    }
    assert_eq!(
        outcome,
        FsDeletion::Deleted {
            final_backup: false
        }
    );
    let calls = &env.proxy.seen()[from..];
    let scans = calls
        .iter()
        .filter(|c| c.action == "DescribeFileSystems" && !describes_only(c, &id))
        .count();
    assert_eq!(scans, 0, "no call lists the account: {calls:?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.action == "DeleteFileSystem")
            .count(),
        1
    );

    // A recorded id that no longer exists (deleted by someone) falls back
    // to the tags, and a new file system is created.
    let created = env.proxy.requests("CreateFileSystem").len();
    let again = fsx.ensure(&req).await.unwrap();
    assert_ne!(again.file_system_id, id);
    assert_eq!(env.proxy.requests("CreateFileSystem").len(), created + 1);
}
