//! The scale benchmark. `e2e/bench.sh COMPANIES DEVELOPERS` runs this test
//! with a release operator at that size; the suite runs it at 2 × 3 as a
//! smoke check. On the real control plane with OpenBao and PostgreSQL it
//! measures a baseline (a bare client server-side-applying exactly the
//! objects `enclave plan` says the tenants imply), then the operator
//! converging the same tenants from nothing, one resync of the unchanged
//! tenants, and the deletion of all of them, and prints one table.
//!
//! It asserts behaviour (everything converges, a resync writes nothing,
//! deletion leaves nothing behind), never a time: the numbers are printed.
//! Workspace pods are reported running without their init step in both
//! runs (the kubelet stand-in's `skip_init`): the benchmark measures the
//! control plane and the operator, not the pods.
// Counts become ratios in a printed report.
#![allow(clippy::cast_precision_loss)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use enclave::{
    config::OperatorConfig,
    crd::{Company, Developer},
};
use futures::{StreamExt, stream};
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Namespace};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::watcher,
};
use serde_json::Value;

use crate::{
    harness::{self, Harness},
    support::{Mirror, mirror},
};

/// Companies × Developers when `ENCLAVE_BENCH_SIZE` (`CxD`) is not set.
const SMOKE_SIZE: (usize, usize) = (2, 3);
/// Concurrent tenants the baseline client applies (the operator's
/// default `maxConcurrentReconciles`).
const BASELINE_CONCURRENCY: usize = 8;

fn size() -> (usize, usize) {
    std::env::var("ENCLAVE_BENCH_SIZE")
        .ok()
        .and_then(|s| {
            let (c, d) = s.split_once('x')?;
            Some((c.parse().ok()?, d.parse().ok()?))
        })
        .unwrap_or(SMOKE_SIZE)
}

/// How long any phase may take before the benchmark gives up.
fn patience(objects: usize) -> Duration {
    Duration::from_secs(120 + objects as u64)
}

/// The benchmark's tenants, written by `e2e/bench/tenants.py` (one file
/// per company), all named `<prefix>NNNNN`.
fn write_tenants(dir: &Path, prefix: &str, (companies, developers): (usize, usize)) {
    let status = std::process::Command::new("python3")
        .arg(crate::support::root().join("e2e/bench/tenants.py"))
        .args([companies.to_string(), developers.to_string()])
        .arg(dir)
        .args(["--prefix", prefix])
        .status()
        .unwrap();
    assert!(status.success(), "tenants.py failed");
}

fn documents(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            serde_saphyr::from_multiple::<Value>(&std::fs::read_to_string(f).unwrap()).unwrap()
        })
        .collect()
}

/// What the operator process uses, read from `/proc`.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat(5), 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Everything counted at one moment.
#[derive(Clone, Debug, Default)]
struct Counters {
    /// The operator's API requests by `"<verb> <resource>"` (the API
    /// server's audit log).
    api: BTreeMap<String, u64>,
    /// OpenBao requests naming one of the benchmark's tenants.
    vault: u64,
    /// AWS calls (its proxy).
    aws: usize,
    /// Finished reconciles by kind (`/metrics`).
    reconciles: BTreeMap<String, f64>,
    /// Operator CPU seconds.
    cpu: f64,
}

impl Counters {
    fn reconciles_total(&self) -> f64 {
        self.reconciles.values().sum()
    }
}

fn counters(h: &Harness, views: &Views) -> Counters {
    let vault = views.vault_requests();
    let mut reconciles = BTreeMap::new();
    if let Some((_, metrics)) = h.http_get("/metrics") {
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("enclave_reconciles_total{") else {
                continue;
            };
            let kind = if rest.contains("kind=\"Company\"") {
                "Company"
            } else {
                "Developer"
            };
            let n: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *reconciles.entry(kind.to_owned()).or_default() += n;
        }
    }
    Counters {
        api: views.api_requests(h),
        vault,
        aws: h.aws.seen().len(),
        reconciles,
        cpu: h.operator_pid().map_or(0.0, cpu_seconds),
    }
}

/// What happened between two [`Counters`].
#[derive(Debug, Default)]
struct Delta {
    reads: u64,
    gets: u64,
    writes: u64,
    vault: u64,
    aws: usize,
    company_reconciles: f64,
    developer_reconciles: f64,
    cpu: f64,
}

fn delta(before: &Counters, after: &Counters) -> Delta {
    let mut d = Delta::default();
    for (key, n) in &after.api {
        let n = n - before.api.get(key).copied().unwrap_or(0);
        let (verb, resource) = key.split_once(' ').unwrap_or_default();
        // Leader election renews its Lease whatever the tenants do.
        if resource == "leases" {
            continue;
        }
        match verb {
            "get" => {
                d.gets += n;
                d.reads += n;
            }
            "list" => d.reads += n,
            "create" | "update" | "patch" | "delete" | "deletecollection" => d.writes += n,
            _ => {}
        }
    }
    let kind = |c: &Counters, k: &str| c.reconciles.get(k).copied().unwrap_or(0.0);
    d.vault = after.vault - before.vault;
    d.aws = after.aws - before.aws;
    d.company_reconciles = kind(after, "Company") - kind(before, "Company");
    d.developer_reconciles = kind(after, "Developer") - kind(before, "Developer");
    d.cpu = after.cpu - before.cpu;
    d
}

/// The operator's API requests between two [`Counters`] by verb and
/// resource (watches and its leader Lease left out).
fn requests<'a>(before: &Counters, after: &'a Counters) -> BTreeMap<&'a String, u64> {
    after
        .api
        .iter()
        .map(|(k, n)| (k, n - before.api.get(k).copied().unwrap_or(0)))
        .filter(|(k, n)| *n > 0 && !k.starts_with("watch ") && !k.ends_with(" leases"))
        .collect()
}

/// Polls until `done` (every 250 ms), up to `limit`.
async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done().await {
        assert!(
            start.elapsed() < limit,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    start.elapsed()
}

/// Watch-fed views of what the benchmark counts: polling lists of every
/// StatefulSet, Company and Developer would load the server it measures.
struct Views {
    prefix: String,
    namespaces: Mirror<Namespace>,
    workspaces: Mirror<StatefulSet>,
    companies: Mirror<Company>,
    developers: Mirror<Developer>,
    /// How far OpenBao's audit log has been read, and the tenants'
    /// requests counted in it so far.
    audit: std::sync::Mutex<(u64, u64)>,
    /// How far the API server's audit log has been read, and the
    /// operator's requests counted in it so far, by `"<verb> <resource>"`.
    api_audit: std::sync::Mutex<(u64, BTreeMap<String, u64>)>,
}

/// The whole lines appended to the file at `path` since `offset`, which
/// moves past them (a log grows to hundreds of MiB: it is read on, not
/// again; the last line may still be being written).
fn read_on(path: &std::path::Path, offset: &mut u64) -> String {
    use std::io::{Read, Seek};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().unwrap().len();
    assert!(
        length >= *offset,
        "{} shrank from {offset} to {length} bytes: it was rotated, and the requests counted from it would be short",
        path.display()
    );
    let mut text = Vec::new();
    file.seek(std::io::SeekFrom::Start(*offset)).unwrap();
    file.read_to_end(&mut text).unwrap();
    let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    *offset += complete as u64;
    String::from_utf8_lossy(&text[..complete]).into_owned()
}

impl Views {
    async fn start(client: &Client, prefix: &str) -> Self {
        let all = watcher::Config::default;
        Self {
            prefix: prefix.to_owned(),
            namespaces: mirror(Api::all(client.clone()), all()).await,
            workspaces: mirror(
                Api::all(client.clone()),
                all().labels("app.kubernetes.io/managed-by=enclave"),
            )
            .await,
            companies: mirror(Api::all(client.clone()), all()).await,
            developers: mirror(Api::all(client.clone()), all()).await,
            audit: std::sync::Mutex::default(),
            api_audit: std::sync::Mutex::default(),
        }
    }

    fn ours(&self, namespace: Option<String>) -> bool {
        namespace.is_some_and(|n| n.starts_with(&format!("company-{}", self.prefix)))
    }

    fn namespaces(&self) -> usize {
        self.namespaces
            .store
            .state()
            .iter()
            .filter(|n| self.ours(Some(n.name_any())))
            .count()
    }

    /// StatefulSets of the tenants: (existing, ready).
    fn workspaces(&self) -> (usize, usize) {
        let sets = self.workspaces.store.state();
        let ours: Vec<_> = sets.iter().filter(|s| self.ours(s.namespace())).collect();
        let ready = ours
            .iter()
            .filter(|s| s.status.as_ref().and_then(|st| st.ready_replicas) == Some(1))
            .count();
        (ours.len(), ready)
    }

    /// Companies and Developers of the tenants that say Ready.
    fn ready_resources(&self) -> usize {
        let companies = self.companies.store.state();
        let developers = self.developers.store.state();
        companies
            .iter()
            .filter(|c| c.name_any().starts_with(&self.prefix))
            .filter(|c| is_ready(c.status.as_ref().map(|s| &s.conditions)))
            .count()
            + developers
                .iter()
                .filter(|d| self.ours(d.namespace()))
                .filter(|d| is_ready(d.status.as_ref().map(|s| &s.conditions)))
                .count()
    }

    /// OpenBao requests naming one of the tenants so far, read on from
    /// where the last call stopped (the log grows to hundreds of MiB).
    fn vault_requests(&self) -> u64 {
        let path = crate::support::service("ENCLAVE_TEST_VAULT_AUDIT_LOG", "OpenBao's audit log");
        let mut audit = self.audit.lock().unwrap();
        let (offset, count) = &mut *audit;
        *count += read_on(std::path::Path::new(&path), offset)
            .lines()
            .filter(|l| l.contains("\"type\":\"request\"") && l.contains(&self.prefix))
            .count() as u64;
        *count
    }

    /// The operator's API requests so far, by `"<verb> <resource>"`, from
    /// the API server's audit log (read on from where the last call
    /// stopped; only the operator's lines are parsed).
    fn api_requests(&self, h: &Harness) -> BTreeMap<String, u64> {
        let user = crate::control_plane::operator_user();
        let mut audit = self.api_audit.lock().unwrap();
        let (offset, counts) = &mut *audit;
        let log = h.control_plane.dir.join("audit.log");
        for line in read_on(&log, offset).lines().filter(|l| l.contains(&user)) {
            let Ok(event) = serde_json::from_str(line) else {
                continue;
            };
            if let Some(key) = crate::control_plane::operator_request(&event) {
                *counts.entry(key).or_default() += 1;
            }
        }
        counts.clone()
    }
}

/// Times of one convergence, from its start.
#[derive(Debug, Default)]
struct Convergence {
    namespaces: Duration,
    workspaces: Duration,
    ready: Duration,
}

/// Waits until the tenants' namespaces, StatefulSets and ready workspaces
/// are all there (and, when `resources` is set, every Company and Developer
/// says Ready).
async fn converge(
    views: &Views,
    (companies, developers): (usize, usize),
    started: Instant,
    resources: bool,
) -> Convergence {
    let limit = patience(companies * (developers + 1));
    let mut times = Convergence::default();
    until("all namespaces", limit, async || {
        views.namespaces() == companies
    })
    .await;
    times.namespaces = started.elapsed();
    until("all StatefulSets", limit, async || {
        views.workspaces().0 == companies * developers
    })
    .await;
    times.workspaces = started.elapsed();
    until("all workspaces ready", limit, async || {
        views.workspaces().1 == companies * developers
    })
    .await;
    if resources {
        until("every Company and Developer Ready", limit, async || {
            views.ready_resources() == companies * (developers + 1)
        })
        .await;
    }
    times.ready = started.elapsed();
    times
}

fn is_ready(conditions: Option<&Vec<enclave::crd::Condition>>) -> bool {
    conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Gives the test Node room for every workspace pod: its default capacity
/// (1,000 pods, 64 CPUs) holds the suite, not the benchmark's size.
async fn make_room(client: &Client, objects: usize) {
    let room = serde_json::json!({"pods": (objects + 1000).to_string(), "cpu": "100000",
        "memory": "100Ti", "ephemeral-storage": "100Ti"});
    let patch = serde_json::json!({"status": {"capacity": room, "allocatable": room}});
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .patch_status(
            "enclave-node",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
}

/// Server-side-applies `value` as `manager`.
async fn apply(client: &Client, value: &Value, manager: &str) -> Result<(), kube::Error> {
    let mut object: DynamicObject = serde_json::from_value(value.clone()).unwrap();
    // The baseline has no owners: the plan's placeholder uids would make
    // the garbage collector delete what it applies.
    object.metadata.owner_references = None;
    let types = object.types.clone().unwrap();
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", types.api_version.as_str()));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &types.kind));
    let api: Api<DynamicObject> = match object.namespace() {
        Some(ns) => Api::namespaced_with(client.clone(), &ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &object.name_any(),
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&object),
    )
    .await
    .map(|_| ())
}

/// The baseline: the admin client applies every planned object, tenants
/// in parallel, each tenant's objects in plan order.
async fn baseline(
    h: &Harness,
    views: &Views,
    dir: &Path,
    prefix: &str,
    size: (usize, usize),
) -> (Convergence, Duration) {
    let config = OperatorConfig::load(&h.vault.config).unwrap();
    let plan = enclave::plan::plan_paths(&[dir.to_path_buf()], &config).unwrap();
    let started = Instant::now();
    let client = h.client.clone();
    let applying = tokio::spawn(async move {
        stream::iter(plan.tenants)
            .for_each_concurrent(BASELINE_CONCURRENCY, |tenant| {
                let client = client.clone();
                async move {
                    for object in tenant.objects() {
                        apply(&client, &object.to_json(), "enclave-bench-baseline")
                            .await
                            .unwrap();
                    }
                }
            })
            .await;
    });
    let times = converge(views, size, started, false).await;
    applying.await.unwrap();
    // Gone again before the operator starts: the namespace controller
    // removes what is in them.
    let namespaces: Api<Namespace> = Api::all(h.client.clone());
    for c in 0..size.0 {
        let _ = namespaces
            .delete(&format!("company-{prefix}{c:05}"), &DeleteParams::default())
            .await;
    }
    let gone = until(
        "baseline namespaces gone",
        patience(size.0 * (size.1 + 1)),
        async || views.namespaces() == 0,
    )
    .await;
    (times, gone)
}

/// Applies the Companies, then each Developer once its namespace exists
/// (as a GitOps tool retries), tenants in parallel.
async fn apply_tenants(client: Client, documents: Vec<Value>) {
    let mut by_company: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for doc in documents {
        let namespace = doc["metadata"]["namespace"].as_str().map_or_else(
            || format!("company-{}", doc["metadata"]["name"].as_str().unwrap()),
            str::to_owned,
        );
        by_company.entry(namespace).or_default().push(doc);
    }
    stream::iter(by_company.into_values())
        .for_each_concurrent(BASELINE_CONCURRENCY, |docs| {
            let client = client.clone();
            async move {
                for doc in docs {
                    while let Err(e) = apply(&client, &doc, "enclave-bench-tenants").await {
                        assert!(
                            matches!(&e, kube::Error::Api(s) if s.code == 404),
                            "applying {}: {e}",
                            doc["metadata"]["name"]
                        );
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
        .await;
}

/// What the tenants left behind: namespaces, Vault policies and roles,
/// databases and roles in PostgreSQL.
async fn leftovers(h: &Harness, views: &Views, prefix: &str) -> BTreeMap<&'static str, usize> {
    let policies = vaultrs::sys::policy::list(&h.vault.root)
        .await
        .map(|l| l.policies)
        .unwrap_or_default();
    let roles = vaultrs::auth::kubernetes::role::list(&h.vault.root, &h.vault.mount)
        .await
        .map(|l| l.keys)
        .unwrap_or_default();
    let secrets = vaultrs::kv2::list(&h.vault.root, "secret", "companies")
        .await
        .unwrap_or_default();
    let pg = crate::support::service("ENCLAVE_TEST_POSTGRES", "a PostgreSQL server");
    let (db, connection) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let like = format!("%{}%", prefix.replace('-', "_"));
    let databases: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .get(0);
    let pg_roles: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
            &[&like],
        )
        .await
        .unwrap()
        .get(0);
    let ours = |names: &[String]| names.iter().filter(|n| n.contains(prefix)).count();
    BTreeMap::from([
        ("namespaces", views.namespaces()),
        ("Vault policies", ours(&policies)),
        ("Vault roles", ours(&roles)),
        ("Vault secret paths", ours(&secrets)),
        ("databases", usize::try_from(databases).unwrap()),
        ("database roles", usize::try_from(pg_roles).unwrap()),
    ])
}

/// Samples the operator's RSS every 200 ms; the peak since the last reset.
struct RssSampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&peak);
        let task = tokio::spawn(async move {
            loop {
                seen.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Self { peak, task }
    }

    fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until no reconcile finished for 3 s.
async fn quiet(h: &Harness, views: &Views, limit: Duration) -> Counters {
    let mut last = counters(h, views);
    let mut since = Instant::now();
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counters(h, views);
        if (now.reconciles_total() - last.reconciles_total()).abs() > f64::EPSILON {
            since = Instant::now();
            last = now;
        } else if since.elapsed() >= Duration::from_secs(3) {
            return now;
        }
        assert!(start.elapsed() < limit, "reconciles never settled");
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The baseline's all-Ready time from an earlier run at the same size
/// (`ENCLAVE_BENCH_BASELINE`, seconds): the baseline and the deletion of
/// its namespaces take the better part of an hour at 1,000 x 10.
fn recorded_baseline() -> Option<Duration> {
    let seconds = std::env::var("ENCLAVE_BENCH_BASELINE").ok()?;
    Some(Duration::from_secs_f64(seconds.parse().unwrap_or_else(
        |_| panic!("ENCLAVE_BENCH_BASELINE={seconds}: expected seconds, such as 1400.0"),
    )))
}

/// One line of the report: a label, then right-aligned cells.
fn row(label: &str, cells: &[String]) {
    print!("{label:<44}");
    for cell in cells {
        print!(" {cell:>14}");
    }
    println!();
}

/// The rows that compare phases, one cell per phase.
fn phase_rows(phases: &[(&Delta, Duration)], (companies, developers): (usize, usize)) {
    let tenants = companies * (developers + 1);
    let per = |n: f64, of: usize| format!("{:.2}", n / of.max(1) as f64);
    let cells = |cell: &dyn Fn(&Delta, Duration) -> String| -> Vec<String> {
        phases.iter().map(|(d, took)| cell(d, *took)).collect()
    };
    row(
        "  wall time (s)",
        &cells(&|_, took| format!("{:.1}", took.as_secs_f64())),
    );
    row(
        "  operator CPU (s)",
        &cells(&|d, _| format!("{:.1}", d.cpu)),
    );
    row(
        "  API writes / GETs / reads (all)",
        &cells(&|d, _| format!("{}/{}/{}", d.writes, d.gets, d.reads)),
    );
    row(
        "  API reads per tenant",
        &cells(&|d, _| per(d.reads as f64, tenants)),
    );
    row(
        "  Vault requests per tenant",
        &cells(&|d, _| per(d.vault as f64, tenants)),
    );
    row(
        "  Company reconciles per Company",
        &cells(&|d, _| per(d.company_reconciles, companies)),
    );
    row(
        "  Developer reconciles per Developer",
        &cells(&|d, _| per(d.developer_reconciles, companies * developers)),
    );
    row(
        "  API writes per tenant",
        &cells(&|d, _| per(d.writes as f64, tenants)),
    );
    row("  AWS calls", &cells(&|d, _| d.aws.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_converge_resync_and_go_at_scale() {
    let size @ (companies, developers) = size();
    let objects = companies * (developers + 1);
    let mut h = harness::setup().await;
    // No proxy between the operator and the API server: its requests are
    // counted from the audit log, and it does its own TLS.
    h.operator_direct = true;
    h.kill_operator();
    h.kubelet.skip_init.store(true, Ordering::Relaxed);
    // No timed resync while the tenants converge (at 1,000 x 10 the first
    // ones would resync while the last still converge, blurring both
    // figures): the one resync measured is asked for with SIGHUP.
    let resync: u64 = 86_400;
    let text = std::fs::read_to_string(&h.vault.config).unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    config["controller"]["resyncSeconds"] = resync.into();
    // The operator's reconciles in flight per kind (default 8, as the
    // baseline's applies): `ENCLAVE_BENCH_RECONCILES` to measure another.
    if let Ok(n) = std::env::var("ENCLAVE_BENCH_RECONCILES") {
        let n: u16 = n.parse().unwrap_or_else(|_| {
            panic!("ENCLAVE_BENCH_RECONCILES={n}: expected a number, such as 16")
        });
        config["controller"]["maxConcurrentReconciles"] = n.into();
    }
    std::fs::write(&h.vault.config, serde_saphyr::to_string(&config).unwrap()).unwrap();
    let in_flight = config["controller"]
        .get("maxConcurrentReconciles")
        .map_or_else(|| "the default".to_owned(), ToString::to_string);

    let prefix = crate::support::unique("b");
    let dir = std::env::temp_dir().join(format!("enclave-bench-{prefix}"));
    std::fs::create_dir_all(&dir).unwrap();
    write_tenants(&dir, &prefix, size);

    // 1. The baseline (or its time from an earlier run).
    let views = Views::start(&h.client, &prefix).await;
    make_room(&h.client, objects).await;
    let (base, base_gone) = if let Some(ready) = recorded_baseline() {
        eprintln!(
            "bench: baseline skipped, all Ready in {} given",
            secs(ready)
        );
        let given = Convergence {
            ready,
            ..Convergence::default()
        };
        (given, None)
    } else {
        let (base, gone) = baseline(&h, &views, &dir, &prefix, size).await;
        // Progress as it goes: at 1,000 x 10 a run takes hours.
        eprintln!("bench: baseline all Ready in {}", secs(base.ready));
        (base, Some(gone))
    };
    let measured = |d: Duration| {
        if base_gone.is_some() {
            secs(d)
        } else {
            "-".to_owned()
        }
    };

    // 2. The operator converges the same tenants from nothing.
    h.start_operator();
    let pid = h.operator_pid().unwrap();
    until("the operator ready", Duration::from_mins(1), async || {
        h.http_get("/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
    let rss = RssSampler::start(pid);
    let before = counters(&h, &views);
    let started = Instant::now();
    let applying = tokio::spawn(apply_tenants(h.client.clone(), documents(&dir)));
    let run = converge(&views, size, started, true).await;
    applying.await.unwrap();
    let converged = quiet(&h, &views, patience(objects)).await;
    eprintln!("bench: operator all Ready in {}", secs(run.ready));
    let convergence = delta(&before, &converged);
    let peak_converging = rss.take_peak();
    let steady = rss_kib(pid);

    // 3. One resync of the unchanged tenants: every object reconciled once
    // more, external systems checked again, nothing written. SIGHUP asks
    // the operator for it now instead of at the interval.
    let resync_started = Instant::now();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success(), "kill -HUP {pid}");
    until(
        "one resync of every object",
        patience(objects),
        async || {
            counters(&h, &views).reconciles_total() >= converged.reconciles_total() + objects as f64
        },
    )
    .await;
    let resynced = quiet(&h, &views, patience(objects)).await;
    let resync_took = resync_started.elapsed();
    let resync_delta = delta(&converged, &resynced);
    let peak_resync = rss.take_peak();

    // What is known so far, printed before the deletion starts: at
    // 1,000 x 10 the deletion takes an hour or more.
    println!(
        "\nEnclave scale benchmark: {companies} companies x {developers} developers \
         ({objects} tenants), one resync (SIGHUP); operator release build: {}; \
         reconciles in flight per kind: {in_flight}",
        std::env::var("ENCLAVE_TEST_OPERATOR_BIN").is_ok(),
    );
    row("", &["baseline".into(), "operator".into()]);
    row(
        "time to all namespaces",
        &[measured(base.namespaces), secs(run.namespaces)],
    );
    row(
        "time to all StatefulSets",
        &[measured(base.workspaces), secs(run.workspaces)],
    );
    row("time to all Ready", &[secs(base.ready), secs(run.ready)]);
    row(
        "baseline / operator time (all Ready)",
        &[format!(
            "{:.2}",
            base.ready.as_secs_f64() / run.ready.as_secs_f64()
        )],
    );
    row(
        "baseline namespaces deleted in",
        &[base_gone.map_or_else(|| "-".to_owned(), secs)],
    );
    row(
        "operator peak RSS (converging / resync)",
        &[format!(
            "{} / {} MiB",
            peak_converging / 1024,
            peak_resync / 1024
        )],
    );
    row(
        "operator RSS steady (after convergence)",
        &[format!("{} MiB", steady / 1024)],
    );
    row(
        "operator CPU per Developer (converging)",
        &[format!(
            "{:.2} ms",
            convergence.cpu * 1000.0 / (companies * developers).max(1) as f64
        )],
    );
    row("", &["converging".into(), "resync".into()]);
    phase_rows(
        &[(&convergence, run.ready), (&resync_delta, resync_took)],
        size,
    );
    println!(
        "converging API requests by verb and resource: {:?}",
        requests(&before, &converged)
    );
    println!(
        "resync API requests by verb and resource: {:?}",
        requests(&converged, &resynced)
    );
    assert_eq!(
        resync_delta.writes, 0,
        "a resync of unchanged tenants writes nothing"
    );

    // 4. Deletion of every Company (each deletes its Developers first).
    let deleting = Instant::now();
    let all: Api<Company> = Api::all(h.client.clone());
    for c in 0..companies {
        all.delete(&format!("{prefix}{c:05}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    until("every Company gone", patience(objects) * 2, async || {
        !views
            .companies
            .store
            .state()
            .iter()
            .any(|c| c.name_any().starts_with(&prefix))
    })
    .await;
    until("every namespace gone", patience(objects), async || {
        views.namespaces() == 0
    })
    .await;
    let deletion_took = deleting.elapsed();
    let deleted = counters(&h, &views);
    let deletion = delta(&resynced, &deleted);
    let left = leftovers(&h, &views, &prefix).await;
    row("", &["deletion".into()]);
    phase_rows(&[(&deletion, deletion_took)], size);
    println!(
        "deletion API requests by verb and resource: {:?}",
        requests(&resynced, &deleted)
    );
    println!("left behind: {left:?}");

    assert!(
        left.values().all(|n| *n == 0),
        "deletion left {left:?} behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
