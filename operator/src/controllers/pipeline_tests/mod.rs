//! Fast tests of the reconcile pipeline: step order, error → condition,
//! retry class and delay, metrics, pruning and deletion, on an in-memory
//! API and in-memory backends (no service, well under a second each). The
//! end-to-end tests prove the same on the real API server and services.

mod fake_api;
mod fake_backends;

use std::{sync::Arc, time::Duration};

use hyper::http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use self::{
    fake_api::FakeApi,
    fake_backends::{Behaviour, FakeDatabase, FakeFileSystems, FakeVault, Fakes},
};
use super::{
    Context, Databases, Error, RetryClass,
    audit::Audit,
    error_policy,
    http::Health,
    runner::{reconcile_company, reconcile_developer},
};
use crate::{
    config::OperatorConfig,
    crd::{Company, Developer},
};

const COMPANIES: &str = "/apis/enclave.dev/v1alpha1/companies";
const NAMESPACES: &str = "/api/v1/namespaces";
const DEVELOPERS: &str = "/apis/enclave.dev/v1alpha1/namespaces/company-acme/developers";
const SETS: &str = "/apis/apps/v1/namespaces/company-acme/statefulsets";
const JOBS: &str = "/apis/batch/v1/namespaces/enclave-system/jobs";

struct Harness {
    api: FakeApi,
    ctx: Arc<Context<Fakes>>,
    vault: Arc<FakeVault>,
}

/// A harness whose databases take `creating_calls` ensures to create (and
/// as many calls to delete).
fn harness(creating_calls: u32) -> Harness {
    harness_with(creating_calls, OperatorConfig::default())
}

fn harness_with(creating_calls: u32, config: OperatorConfig) -> Harness {
    let api = FakeApi::default();
    let client = api.client();
    let vault = Arc::new(FakeVault::default());
    let ctx = Context::<Fakes> {
        client: client.clone(),
        config,
        vault: Arc::clone(&vault),
        databases: Databases {
            rds: FakeDatabase::new(Arc::clone(&vault), creating_calls),
            shared: FakeDatabase::new(Arc::clone(&vault), creating_calls),
        },
        file_systems: FakeFileSystems::default(),
        allocation: super::Allocation::default(),
        health: Arc::new(Health::default()),
        pruned: std::sync::Mutex::default(),
        cache: Arc::default(),
        companies: kube::runtime::reflector::store().0,
        checked: std::sync::Mutex::default(),
        databases_written: std::sync::Mutex::default(),
        membership: std::sync::Arc::default(),
        audit: Audit::new(client, "pipeline-test"),
        failures: std::sync::Mutex::default(),
        warned: std::sync::Mutex::default(),
    };
    Harness {
        api,
        ctx: Arc::new(ctx),
        vault,
    }
}

fn company_json(name: &str) -> Value {
    json!({
        "apiVersion": "enclave.dev/v1alpha1",
        "kind": "Company",
        "metadata": {"name": name},
        "spec": {
            "displayName": "Acme Analytics",
            "network": {"egress": [{"cidr": "10.40.0.0/16", "ports": [443, 5439]}]},
            "database": {"mode": "Dedicated", "deletionPolicy": "Delete"},
            "storage": {"fsx": {"type": "OpenZfs"}, "deletionPolicy": "Delete"},
        }
    })
}

impl Harness {
    fn create_company(&self, name: &str) {
        self.api
            .insert(&format!("{COMPANIES}/{name}"), company_json(name));
    }

    fn company(&self, name: &str) -> Option<Arc<Company>> {
        let value = self.api.get(&format!("{COMPANIES}/{name}"))?;
        Some(Arc::new(serde_json::from_value(value).expect("a Company")))
    }

    /// One reconcile of the Company as stored now.
    async fn reconcile(&self, name: &str) -> Result<Action, Error> {
        let company = self.company(name).expect("the Company exists");
        reconcile_company(company, Arc::clone(&self.ctx)).await
    }

    /// Reconciles (as the watch and the requeues would) until a reconcile
    /// neither fails nor leaves the Company unready, at most ten times; the
    /// outcomes on the way.
    async fn converge(&self, name: &str) -> Vec<Result<Action, Error>> {
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            let outcome = self.reconcile(name).await;
            let done = outcome.is_ok() && self.ready(name);
            outcomes.push(outcome);
            if done {
                break;
            }
        }
        outcomes
    }

    fn ready(&self, name: &str) -> bool {
        self.company(name)
            .and_then(|c| c.status.clone())
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
    }

    fn condition(&self, name: &str, type_: &str) -> (String, String, String) {
        let company = self
            .api
            .get(&format!("{COMPANIES}/{name}"))
            .expect("company");
        let c = company["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or_else(|| panic!("no {type_} condition in {company}"));
        let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        (s("status"), s("reason"), s("message"))
    }

    fn writes(&self) -> Vec<(Method, String)> {
        self.api
            .requests()
            .into_iter()
            .filter(|(m, _)| *m != Method::GET)
            .collect()
    }

    fn vault_calls(&self) -> Vec<String> {
        self.vault.calls.lock().expect("calls").clone()
    }
}

fn retry_class(outcome: &Result<Action, Error>) -> Option<RetryClass> {
    outcome.as_ref().err().map(Error::retry_class)
}

#[tokio::test]
async fn the_periodic_resync_checks_external_systems_again_but_leaves_a_failing_object_alone() {
    let h = harness(0);
    h.create_company("acme");
    let outcomes = h.converge("acme").await;
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
    let company = h.company("acme").expect("the Company");
    let key = super::company::checked_key(&company);
    // A change-triggered reconcile right after the check: Vault is not
    // asked again.
    let calls = h.vault_calls().len();
    h.reconcile("acme").await.expect("a reconcile");
    assert_eq!(h.vault_calls().len(), calls, "{:?}", h.vault_calls());
    // Its slice of the periodic resync comes: everything is checked again.
    assert!(h.ctx.resync_due(company.as_ref(), &key));
    h.reconcile("acme").await.expect("a reconcile");
    assert!(h.vault_calls().len() > calls, "{:?}", h.vault_calls());
    // In a failure's backoff it is left to its retries, and what was
    // checked stays checked.
    error_policy(
        Arc::clone(&company),
        &Error::InvalidSpec("x".into()),
        Arc::clone(&h.ctx),
    );
    assert!(!h.ctx.resync_due(company.as_ref(), &key));
    assert!(h.ctx.checked_recently(&key));
}

#[tokio::test]
async fn a_new_company_converges_step_by_step_and_a_resync_writes_nothing() {
    let h = harness(0);
    h.create_company("acme");
    let outcomes = h.converge("acme").await;
    let last = outcomes.last().expect("an outcome");
    // Converged: it waits for a change or the periodic resync (no requeue
    // of its own).
    assert!(
        matches!(last, Ok(a) if *a == Action::await_change()),
        "{outcomes:?}"
    );
    // The finalizer first (nothing external before it), then everything.
    assert_eq!(outcomes.first().map(Result::is_ok), Some(true));
    let namespace = h
        .api
        .get(&format!("{NAMESPACES}/company-acme"))
        .expect("ns");
    assert_eq!(
        namespace["metadata"]["labels"]["enclave.dev/company"],
        "acme"
    );
    let uid = h.company("acme").and_then(|c| c.metadata.uid.clone());
    assert_eq!(
        namespace["metadata"]["annotations"]["enclave.dev/company-uid"].as_str(),
        uid.as_deref()
    );
    for kind in ["resourcequotas", "limitranges"] {
        assert!(
            !h.api
                .names(&format!("{NAMESPACES}/company-acme/{kind}"))
                .is_empty(),
            "{kind}"
        );
    }
    assert!(
        !h.api
            .names("/apis/networking.k8s.io/v1/namespaces/company-acme/networkpolicies")
            .is_empty()
    );
    assert_eq!(h.condition("acme", "Ready").0, "True");
    assert!(h.vault.policies.lock().expect("p").len() == 1);
    assert!(h.vault.roles.lock().expect("r").len() == 1);
    assert_eq!(
        h.ctx.databases.rds.databases.lock().expect("db").len(),
        1,
        "Dedicated mode uses the RDS backend"
    );
    assert!(
        h.ctx
            .databases
            .shared
            .databases
            .lock()
            .expect("db")
            .is_empty()
    );

    // A resync of the converged tenant: no write to the API, no Vault call.
    h.api.clear_requests();
    let vault_calls = h.vault_calls().len();
    let again = h.reconcile("acme").await;
    assert!(
        matches!(&again, Ok(a) if *a == Action::await_change()),
        "{again:?}"
    );
    assert_eq!(h.writes(), vec![], "a resync writes nothing");
    assert_eq!(h.vault_calls().len(), vault_calls, "nor calls Vault");
}

#[tokio::test]
async fn vault_down_fails_the_step_transiently_after_the_cluster_objects_and_the_status() {
    let h = harness(0);
    h.create_company("acme");
    *h.vault.behaviour.lock().expect("b") = Behaviour::Unreachable;
    let outcomes = h.converge("acme").await;
    let last = outcomes.last().expect("an outcome");
    let error = last
        .as_ref()
        .expect_err("Vault is down: the reconcile fails");
    assert_eq!(error.retry_class(), RetryClass::Transient, "{error}");
    assert_eq!(error.category(), "vault");
    // The in-cluster steps ran before it, the status says what failed.
    assert!(h.api.get(&format!("{NAMESPACES}/company-acme")).is_some());
    let (status, reason, message) = h.condition("acme", "VaultReady");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "VaultError"));
    assert!(message.contains("connection refused"), "{message}");
    assert_eq!(h.condition("acme", "Ready").0, "False");
    assert!(h.condition("acme", "Ready").2.contains("Vault"));

    // The error policy backs off exponentially, and /metrics counts it.
    let company = h.company("acme").expect("company");
    let delays: Vec<Duration> = (0..6)
        .map(|_| error_policy(Arc::clone(&company), error, Arc::clone(&h.ctx)))
        .map(|a| requeue_after(&a))
        .collect();
    assert!(delays[5] > delays[0] * 4, "{delays:?}");
    let metrics = h.ctx.health.metrics.render();
    assert!(
        metrics.contains(r#"kind="Company",category="vault",class="transient""#),
        "{metrics}"
    );
    // The first of the six identical failures is a Warning Event; the
    // same failure again only on the eighth.
    let warnings = published_warnings(&h, "VaultFailed", 1).await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let warning = &warnings[0];
    assert_eq!(warning["type"], "Warning", "{warning}");
    assert_eq!(warning["regarding"]["name"], "acme", "{warning}");
    assert_eq!(
        warning["regarding"]["resourceVersion"],
        serde_json::Value::Null
    );
    let note = warning["note"].as_str().unwrap_or_default();
    assert!(note.contains("connection refused"), "{note}");
    for _ in 0..2 {
        error_policy(Arc::clone(&company), error, Arc::clone(&h.ctx));
    }
    let warnings = published_warnings(&h, "VaultFailed", 2).await;
    assert_eq!(warnings.len(), 2, "the eighth failure: {warnings:#?}");
    // A different failure is published at once.
    let refused = Error::InvalidSpec("spec.x is refused; change it".into());
    error_policy(Arc::clone(&company), &refused, Arc::clone(&h.ctx));
    let warnings = published_warnings(&h, "InvalidSpec", 1).await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");

    // Vault back: the next reconcile converges.
    *h.vault.behaviour.lock().expect("b") = Behaviour::Works;
    let outcomes = h.converge("acme").await;
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
    assert_eq!(h.condition("acme", "Ready").0, "True");
}

/// The Events with `reason` written so far, once `expected` of them are
/// (the error policy publishes them from a task of their own) and 200 ms
/// passed without more, or after 2 s.
async fn published_warnings(h: &Harness, reason: &str, expected: usize) -> Vec<serde_json::Value> {
    let with_reason = || -> Vec<serde_json::Value> {
        h.api
            .events()
            .into_iter()
            .filter(|e| e["reason"] == reason)
            .collect()
    };
    for _ in 0..200 {
        if with_reason().len() >= expected {
            tokio::time::sleep(Duration::from_millis(200)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    with_reason()
}

fn requeue_after(action: &Action) -> Duration {
    // Action keeps its delay private; its Debug form shows the Duration's.
    let text = format!("{action:?}");
    let value = text
        .split_once("Some(")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map_or_else(|| panic!("no delay in {text}"), |(v, _)| v);
    let unit_at = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .expect("a unit");
    let (number, unit) = value.split_at(unit_at);
    let number: f64 = number.parse().expect("a number");
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "µs" => 1e-6,
        "ns" => 1e-9,
        other => panic!("unit {other}"),
    };
    Duration::from_secs_f64(number * scale)
}

#[tokio::test]
async fn a_database_conflict_needs_a_person_and_waits_the_longest() {
    let h = harness(0);
    h.create_company("acme");
    *h.ctx.databases.rds.behaviour.lock().expect("b") = Behaviour::Conflict;
    let outcomes = h.converge("acme").await;
    let last = outcomes.last().expect("an outcome");
    assert_eq!(
        retry_class(last),
        Some(RetryClass::NeedsPerson),
        "{outcomes:?}"
    );
    let (status, _, message) = h.condition("acme", "DatabaseReady");
    assert_eq!(status, "False");
    assert!(message.contains("not this Company's"), "{message}");
    // Vault is unaffected by the database's failure.
    assert_eq!(h.condition("acme", "VaultReady").0, "True");
    let company = h.company("acme").expect("company");
    let error = last.as_ref().expect_err("failed");
    let first = requeue_after(&error_policy(
        Arc::clone(&company),
        error,
        Arc::clone(&h.ctx),
    ));
    assert_eq!(first, Duration::from_mins(5), "the longest delay at once");
    let warnings = published_warnings(&h, "DatabaseFailed", 1).await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert_eq!(warnings[0]["type"], "Warning");
    let metrics = h.ctx.health.metrics.render();
    assert!(
        metrics.contains(r#"category="database",class="needs-person""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_database_call_deferred_by_the_aws_budget_comes_back_when_told_and_is_no_failure() {
    let h = harness(0);
    h.create_company("acme");
    let busy = Duration::from_millis(1500);
    *h.ctx.databases.rds.behaviour.lock().expect("b") = Behaviour::Busy(busy);
    let outcome = h.reconcile("acme").await;
    assert_eq!(
        retry_class(&outcome),
        Some(RetryClass::Deferred),
        "{outcome:?}"
    );
    let company = h.company("acme").expect("company");
    let error = outcome.as_ref().expect_err("deferred");
    for _ in 0..5 {
        let delay = requeue_after(&error_policy(
            Arc::clone(&company),
            error,
            Arc::clone(&h.ctx),
        ));
        assert_eq!(delay, busy, "when the gate said, with no backoff");
    }
    // A new Company's condition says it waits for its turn (one that was
    // there would stay as it was: the pacing is not an outcome).
    let (status, reason, message) = h.condition("acme", "DatabaseReady");
    assert_eq!((status.as_str(), reason.as_str()), ("Unknown", "Waiting"));
    assert!(message.contains("aws.maxCallsPerSecond"), "{message}");
    assert_eq!(h.condition("acme", "VaultReady").0, "True");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let warnings: Vec<_> = h
        .api
        .events()
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert_eq!(warnings, Vec::<serde_json::Value>::new());
    let metrics = h.ctx.health.metrics.render();
    assert!(
        metrics.contains(r#"kind="Company",outcome="deferred""#),
        "{metrics}"
    );
    for failure in [
        r#"category="aws-deferred""#,
        r#"system="database",outcome="error""#,
    ] {
        assert!(!metrics.contains(failure), "{failure} in {metrics}");
    }

    *h.ctx.databases.rds.behaviour.lock().expect("b") = Behaviour::Works;
    let outcomes = h.converge("acme").await;
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
    assert_eq!(h.condition("acme", "DatabaseReady").0, "True");

    // Converged, then deferred at its next check: it stays Ready, and its
    // status is not written.
    let ready = h.condition("acme", "Ready");
    assert_eq!(ready.0, "True");
    h.ctx.checked.lock().expect("checked").clear();
    *h.ctx.databases.rds.behaviour.lock().expect("b") = Behaviour::Busy(busy);
    h.api.clear_requests();
    let outcome = h.reconcile("acme").await;
    assert_eq!(
        retry_class(&outcome),
        Some(RetryClass::Deferred),
        "{outcome:?}"
    );
    assert_eq!(h.condition("acme", "Ready"), ready);
    assert_eq!(h.condition("acme", "DatabaseReady").0, "True");
    assert_eq!(h.writes(), [], "nothing written");
}

#[tokio::test]
async fn a_database_being_created_is_polled_ever_more_slowly_not_failed() {
    let h = harness(3);
    h.create_company("acme");
    let outcomes = h.converge("acme").await;
    let polls: Vec<_> = outcomes.iter().filter_map(retry_class).collect();
    assert_eq!(
        polls,
        vec![RetryClass::Polling; 3],
        "three polls while it is created: {outcomes:?}"
    );
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
    assert_eq!(h.condition("acme", "DatabaseReady").0, "True");
    let company = h.company("acme").expect("company");
    let waiting = Error::CloudInProgress("creating".into());
    let delays: Vec<Duration> = (0..8)
        .map(|_| {
            requeue_after(&error_policy(
                Arc::clone(&company),
                &waiting,
                Arc::clone(&h.ctx),
            ))
        })
        .collect();
    assert!(delays[0] <= Duration::from_secs(2), "{delays:?}");
    assert!(delays[7] >= Duration::from_secs(10), "{delays:?}");
    // Waiting is progress, not a failure: no Warning Event.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let warnings: Vec<_> = h
        .api
        .events()
        .into_iter()
        .filter(|e| e["type"] == "Warning")
        .collect();
    assert_eq!(warnings, Vec::<serde_json::Value>::new());
}

#[tokio::test]
async fn a_namespace_labelled_by_someone_else_is_a_conflict_and_stays_untouched() {
    let h = harness(0);
    h.api.insert(
        &format!("{NAMESPACES}/company-acme"),
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "company-acme", "labels": {"enclave.dev/company": "acme"}}}),
    );
    let before = h.api.get(&format!("{NAMESPACES}/company-acme"));
    h.create_company("acme");
    let outcomes = h.converge("acme").await;
    let (status, reason, message) = h.condition("acme", "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Conflict"));
    assert!(message.contains("someone else labelled it"), "{message}");
    assert_eq!(h.condition("acme", "Stalled").0, "True");
    assert_eq!(h.api.get(&format!("{NAMESPACES}/company-acme")), before);
    assert!(
        h.api
            .names(&format!("{NAMESPACES}/company-acme/resourcequotas"))
            .is_empty()
    );
    assert!(h.vault_calls().is_empty(), "nothing external: {outcomes:?}");
}

#[tokio::test]
async fn a_spec_change_prunes_only_the_companys_own_stale_children() {
    let h = harness(0);
    h.create_company("acme");
    h.converge("acme").await;
    let uid = h
        .company("acme")
        .and_then(|c| c.metadata.uid.clone())
        .expect("uid");
    let policies = "/apis/networking.k8s.io/v1/namespaces/company-acme/networkpolicies";
    let labels = json!({"app.kubernetes.io/managed-by": "enclave", "enclave.dev/company": "acme"});
    for (name, owner_uid) in [("stale", uid.as_str()), ("someone-elses", "another-uid")] {
        h.api.insert(
            &format!("{policies}/{name}"),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": "company-acme", "labels": labels,
                    "ownerReferences": [{"apiVersion": "enclave.dev/v1alpha1", "kind": "Company",
                        "name": "acme", "uid": owner_uid}]},
                "spec": {"podSelector": {}}}),
        );
    }
    // The egress rule's ports go (all ports) and the spec's generation moves.
    let mut company = h.api.get(&format!("{COMPANIES}/acme")).expect("company");
    company["spec"]["network"]["egress"][0]
        .as_object_mut()
        .expect("rule")
        .remove("ports");
    company["metadata"]["generation"] = json!(2);
    h.api.insert_raw(&format!("{COMPANIES}/acme"), company);
    let outcomes = h.converge("acme").await;
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
    let names = h.api.names(policies);
    assert!(!names.contains(&"stale".to_owned()), "{names:?}");
    assert!(names.contains(&"someone-elses".to_owned()), "{names:?}");
    let egress = names
        .iter()
        .filter_map(|n| h.api.get(&format!("{policies}/{n}")))
        .find(|p| p.to_string().contains("10.40.0.0/16"))
        .expect("the egress policy");
    assert!(
        !egress["spec"].to_string().contains("5439"),
        "the ports are gone: {egress}"
    );
}

#[tokio::test]
async fn deletion_removes_vault_the_database_and_the_namespace_then_the_finalizer() {
    let h = harness(2);
    h.create_company("acme");
    h.converge("acme").await;
    assert_eq!(h.condition("acme", "Ready").0, "True");
    h.api.mark_deleted(&format!("{COMPANIES}/acme"));
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        if h.company("acme").is_none() {
            break;
        }
        outcomes.push(h.reconcile("acme").await);
        h.api.finish_namespaces();
    }
    assert!(
        h.company("acme").is_none(),
        "finalizer removed: {outcomes:?}"
    );
    let polls = outcomes.iter().filter_map(retry_class).collect::<Vec<_>>();
    assert!(
        polls
            .iter()
            .all(|c| matches!(c, RetryClass::Polling | RetryClass::Watched)),
        "the deletion only waits: {outcomes:?}"
    );
    assert!(
        polls.contains(&RetryClass::Polling),
        "the database deletion is polled"
    );
    assert!(h.vault.policies.lock().expect("p").is_empty());
    assert!(h.vault.roles.lock().expect("r").is_empty());
    assert!(h.ctx.databases.rds.databases.lock().expect("db").is_empty());
    assert!(
        h.ctx
            .file_systems
            .file_systems
            .lock()
            .expect("fs")
            .is_empty()
    );
    let namespace = h.api.get(&format!("{NAMESPACES}/company-acme"));
    assert!(
        namespace.is_none_or(|n| n["metadata"]["deletionTimestamp"].is_string()),
        "the namespace is deleted"
    );
}

#[tokio::test]
async fn a_namespace_the_watch_saw_going_is_waited_for_without_a_read() {
    let h = harness(0);
    h.create_company("acme");
    h.converge("acme").await;
    h.api.mark_deleted(&format!("{COMPANIES}/acme"));
    let path = format!("{NAMESPACES}/company-acme");
    let reads = |h: &Harness| {
        h.api
            .requests()
            .into_iter()
            .filter(|(method, p)| *method == Method::GET && *p == path)
            .count()
    };
    let going = |h: &Harness| {
        h.api
            .get(&path)
            .is_some_and(|n| n["metadata"]["deletionTimestamp"].is_string())
    };
    let mut outcomes = Vec::new();
    while !going(&h) && outcomes.len() < 10 {
        outcomes.push(h.reconcile("acme").await);
    }
    assert!(going(&h), "the namespace is asked to go: {outcomes:?}");
    // The watch sees it, the Company's, terminating: the retries that wait
    // read nothing.
    let uid = h.company("acme").and_then(|c| c.metadata.uid.clone());
    let uid = uid.expect("a uid");
    h.ctx.cache.saw_namespace_of("company-acme", "acme", &uid);
    h.ctx.cache.saw_stopping("Namespace", "", "company-acme");
    h.api.clear_requests();
    h.vault.calls.lock().expect("calls").clear();
    for _ in 0..3 {
        let error = h.reconcile("acme").await.expect_err("waits");
        assert_eq!(error.retry_class(), RetryClass::Watched, "{error}");
        assert!(error.to_string().contains("to be deleted"), "{error}");
    }
    assert_eq!(reads(&h), 0, "its going ends the wait: nothing to read");
    assert_eq!(
        h.api.requests(),
        Vec::new(),
        "no API request while waiting (its Developers were confirmed gone before)"
    );
    // Its Vault data went once, before the namespace was asked to go: the
    // waiting passes neither read nor claim anything there again.
    assert_eq!(
        h.vault_calls(),
        Vec::<String>::new(),
        "no Vault call while waiting"
    );
    assert!(
        h.writes().is_empty(),
        "nothing written while waiting: {:?}",
        h.writes()
    );
    // Gone, as the watch then says: one read confirms it, and the
    // Company's finalizer goes.
    h.api.finish_namespaces();
    h.ctx.cache.saw_gone("Namespace", "", "company-acme");
    let outcome = h.reconcile("acme").await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(h.company("acme").is_none(), "the finalizer is removed");
    assert_eq!(reads(&h), 1, "gone is confirmed by one read");
}

/// A Developer of `acme` as the Company controller's watch sees it.
fn watched_developer(name: &str, deleting: bool) -> super::triggers::DeveloperMeta {
    kube::api::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("company-acme".into()),
        uid: Some(format!("uid-{name}")),
        deletion_timestamp: deleting.then_some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        ),
        ..kube::api::ObjectMeta::default()
    }
    .into()
}

impl Harness {
    /// Deletes the converged Company `acme` once its Developers' watch has
    /// listed `watched` (name, being deleted), and reconciles it once,
    /// with the requests counted from there.
    async fn delete_company_watching(&self, watched: &[(&str, bool)]) -> Result<Action, Error> {
        use kube::runtime::watcher::Event;
        {
            let mut membership = self.ctx.membership.lock().expect("membership");
            membership.on(Event::Init);
            for (name, deleting) in watched {
                membership.on(Event::InitApply(watched_developer(name, *deleting)));
            }
            membership.on(Event::InitDone);
        }
        self.api.mark_deleted(&format!("{COMPANIES}/acme"));
        self.api.clear_requests();
        self.reconcile("acme").await
    }
}

#[tokio::test]
async fn a_company_deletion_waits_for_its_developers_through_the_watch_and_lists_them_once() {
    let h = harness(0);
    h.converged_company(&[]).await;
    h.create_developer("alice", None);
    h.create_developer("bob", None);
    let outcome = h
        .delete_company_watching(&[("alice", false), ("bob", true)])
        .await;
    assert_eq!(
        retry_class(&outcome),
        Some(RetryClass::Watched),
        "{outcome:?}"
    );
    assert_eq!(
        (h.methods(DEVELOPERS), h.deletes(DEVELOPERS)),
        (vec![Method::DELETE], vec![format!("{DEVELOPERS}/alice")]),
        "the one not yet going is asked to go, and nothing is listed"
    );
    assert!(
        !h.vault.policies.lock().expect("p").is_empty(),
        "nothing else goes yet"
    );

    // The watch sees them gone: the API confirms it once, then the rest goes.
    h.api.clear_requests();
    {
        use kube::runtime::watcher::Event;
        let mut membership = h.ctx.membership.lock().expect("membership");
        membership.on(Event::Delete(watched_developer("alice", true)));
        membership.on(Event::Delete(watched_developer("bob", true)));
    }
    for name in ["alice", "bob"] {
        let path = format!("{DEVELOPERS}/{name}");
        if h.api.get(&path).is_some() {
            h.api.mark_deleted(&path);
        }
    }
    for _ in 0..10 {
        if h.company("acme").is_none() {
            break;
        }
        let _ = h.reconcile("acme").await;
        h.api.finish_namespaces();
    }
    assert!(h.company("acme").is_none(), "the Company is gone");
    let lists: Vec<_> = h
        .methods(DEVELOPERS)
        .into_iter()
        .filter(|method| *method == Method::GET)
        .collect();
    assert_eq!(lists.len(), 1, "one LIST to confirm: {lists:?}");
}

#[tokio::test]
async fn a_developer_the_watch_has_not_seen_yet_is_found_by_the_confirming_list() {
    let h = harness(0);
    h.converged_company(&[]).await;
    h.create_developer("carol", None);
    // Listed before carol arrived: the watch shows no one.
    let outcome = h.delete_company_watching(&[]).await;
    assert_eq!(
        retry_class(&outcome),
        Some(RetryClass::Watched),
        "{outcome:?}"
    );
    assert_eq!(
        h.deletes(""),
        [format!("{DEVELOPERS}/carol")],
        "carol is asked to go before anything else"
    );
    assert!(
        !h.vault.policies.lock().expect("p").is_empty(),
        "nothing else goes yet"
    );
}

#[tokio::test]
async fn an_api_failure_while_applying_stops_before_the_external_systems() {
    let h = harness(0);
    h.create_company("acme");
    h.api.set_fault(Some(Box::new(|method, path| {
        (*method == Method::PATCH && path.contains("/networkpolicies/")).then_some(500)
    })));
    let outcomes = h.converge("acme").await;
    let last = outcomes.last().expect("an outcome");
    let error = last.as_ref().expect_err("the apply failed");
    assert_eq!(error.category(), "kube", "{error}");
    assert_eq!(error.retry_class(), RetryClass::Transient);
    assert!(h.vault_calls().is_empty(), "Vault comes after the apply");
    assert!(h.ctx.databases.rds.databases.lock().expect("db").is_empty());
    h.api.set_fault(None);
    let outcomes = h.converge("acme").await;
    assert!(outcomes.last().is_some_and(Result::is_ok), "{outcomes:?}");
}

impl Harness {
    /// A converged Company `acme` allowing images under `allowed`, and the
    /// CRDs (a Developer's cleanup asks whether they are being deleted).
    async fn converged_company(&self, allowed: &[&str]) {
        let mut company = company_json("acme");
        if !allowed.is_empty() {
            company["spec"]["workspace"] = json!({"allowedImages": allowed});
        }
        self.api.insert(&format!("{COMPANIES}/acme"), company);
        let outcomes = self.converge("acme").await;
        assert!(self.ready("acme"), "{outcomes:?}");
        for crd in ["developers.enclave.dev", "companies.enclave.dev"] {
            self.api.insert(
                &format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"),
                json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": crd}, "spec": {}}),
            );
        }
    }

    fn create_developer(&self, name: &str, image: Option<&str>) {
        self.create_person(name, "Developer", image);
    }

    fn create_person(&self, name: &str, role: &str, image: Option<&str>) {
        let mut developer = json!({"apiVersion": "enclave.dev/v1alpha1", "kind": "Developer",
            "metadata": {"name": name, "namespace": "company-acme"},
            "spec": {"subject": format!("idp|{name}"), "role": role}});
        if let Some(image) = image {
            developer["spec"]["workspace"] = json!({"image": image});
        }
        self.api.insert(&format!("{DEVELOPERS}/{name}"), developer);
    }

    fn developer(&self, name: &str) -> Arc<Developer> {
        let value = self
            .api
            .get(&format!("{DEVELOPERS}/{name}"))
            .expect("the Developer exists");
        Arc::new(serde_json::from_value(value).expect("a Developer"))
    }

    /// Reconciles Developer `name`, being deleted, which must wait for its
    /// workspace (StatefulSet or pod) to stop: a StatefulSet's going wakes
    /// it through the watch, a pod's does not.
    async fn waits_for_its_workspace(&self, name: &str, class: RetryClass) {
        let error = reconcile_developer(self.developer(name), Arc::clone(&self.ctx))
            .await
            .expect_err("waits for its workspace to go");
        assert_eq!(error.retry_class(), class, "{error}");
        assert!(error.to_string().contains("to stop"), "{error}");
    }

    fn developer_condition(&self, name: &str, type_: &str) -> (String, String, String) {
        let d = self.developer(name);
        let c = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
            .unwrap_or_else(|| panic!("no {type_} condition on {name}"));
        (
            c.status.to_string(),
            c.reason.to_string(),
            c.message.to_string(),
        )
    }

    /// Plays the kubelet and the Job and namespace controllers: every
    /// storage Job succeeded, every workspace StatefulSet has its pod ready,
    /// terminating namespaces are gone.
    fn finish_jobs_and_pods(&self) {
        self.api.finish_namespaces();
        for job in self.api.names(JOBS) {
            let path = format!("{JOBS}/{job}");
            let mut object = self.api.get(&path).expect("job");
            object["status"] = json!({"succeeded": 1, "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"}]});
            self.api.insert_raw(&path, object);
        }
        for set in self.api.names(SETS) {
            let path = format!("{SETS}/{set}");
            let mut object = self.api.get(&path).expect("set");
            object["status"] = json!({"replicas": 1, "readyReplicas": 1});
            self.api.insert_raw(&path, object);
        }
    }

    /// Reconciles the Developer (finishing Jobs and pods in between) until
    /// it is Ready or ten reconciles went by.
    async fn converge_developer(&self, name: &str) -> Vec<Result<Action, Error>> {
        let mut outcomes = Vec::new();
        for _ in 0..10 {
            let outcome = reconcile_developer(self.developer(name), Arc::clone(&self.ctx)).await;
            let failed = outcome.is_err();
            outcomes.push(outcome);
            if !failed && self.developer_condition_is(name, "Ready", "True") {
                break;
            }
            self.finish_jobs_and_pods();
        }
        outcomes
    }

    /// A converged Company `acme` and its converged Developer `name`: the
    /// path of the Developer's workspace StatefulSet.
    async fn converged_workspace(&self, name: &str) -> String {
        self.converged_company(&[]).await;
        self.create_developer(name, None);
        let outcomes = self.converge_developer(name).await;
        assert!(
            self.developer_condition_is(name, "Ready", "True"),
            "{outcomes:?}"
        );
        format!("{SETS}/{}", self.api.names(SETS)[0])
    }

    /// The DELETE requests sent so far to paths under `prefix`.
    /// The methods of the requests sent so far to paths under `prefix`.
    fn methods(&self, prefix: &str) -> Vec<Method> {
        self.api
            .requests()
            .into_iter()
            .filter(|(_, path)| path.starts_with(prefix))
            .map(|(method, _)| method)
            .collect()
    }

    fn deletes(&self, prefix: &str) -> Vec<String> {
        self.api
            .requests()
            .into_iter()
            .filter(|(method, path)| method == Method::DELETE && path.starts_with(prefix))
            .map(|(_, path)| path)
            .collect()
    }

    fn developer_condition_is(&self, name: &str, type_: &str, value: &str) -> bool {
        self.developer(name).status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == value)
        })
    }
}

#[tokio::test]
async fn a_developer_gets_its_id_storage_workspace_and_vault_role_in_that_order() {
    let h = harness(0);
    h.converged_company(&[]).await;
    h.create_developer("bob", None);
    let outcomes = h.converge_developer("bob").await;
    assert!(
        h.developer_condition_is("bob", "Ready", "True"),
        "{outcomes:?}"
    );
    let bob = h.developer("bob");
    let status = bob.status.as_ref().expect("status");
    let uid = status.uid.expect("a uid");
    // The uid is recorded in Vault for the person before anything uses it.
    let calls = h.vault_calls();
    let recorded = calls
        .iter()
        .position(|c| c.starts_with("record_posix_id"))
        .expect("recorded");
    let role = calls
        .iter()
        .rposition(|c| c.starts_with("ensure_role"))
        .expect("a role");
    assert!(recorded < role, "{calls:?}");
    assert!(
        h.vault
            .kv
            .lock()
            .expect("kv")
            .values()
            .any(|(d, _)| d.get("uid") == Some(&uid.to_string()))
    );
    let set = h
        .api
        .get(&format!("{SETS}/{}", h.api.names(SETS)[0]))
        .expect("the workspace");
    assert_eq!(
        set["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        json!(uid),
        "{set}"
    );
    assert!(
        !h.api.names(JOBS).is_empty(),
        "the storage was prepared by a Job"
    );
}

#[tokio::test]
async fn an_image_outside_the_companys_list_is_refused_and_the_workspace_stays() {
    let h = harness(0);
    h.converged_company(&["registry.example.com/workspaces/"])
        .await;
    h.create_developer("bob", Some("registry.example.com/workspaces/dbt:1.8"));
    let outcomes = h.converge_developer("bob").await;
    assert!(
        h.developer_condition_is("bob", "Ready", "True"),
        "{outcomes:?}"
    );
    let set_path = format!("{SETS}/{}", h.api.names(SETS)[0]);
    let before = h.api.get(&set_path).expect("the workspace");

    let mut bob = h.api.get(&format!("{DEVELOPERS}/bob")).expect("bob");
    bob["spec"]["workspace"]["image"] = json!("evil.example.com/miner:latest");
    bob["metadata"]["generation"] = json!(2);
    h.api.insert_raw(&format!("{DEVELOPERS}/bob"), bob);
    let outcome = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await;
    let error = outcome.expect_err("refused");
    assert_eq!(error.retry_class(), RetryClass::NeedsPerson);
    let (status, reason, message) = h.developer_condition("bob", "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ImageNotAllowed")
    );
    assert!(
        message.contains("evil.example.com/miner:latest"),
        "{message}"
    );
    assert!(h.developer_condition_is("bob", "Stalled", "True"));
    assert_eq!(
        h.api.get(&set_path),
        Some(before),
        "the workspace is unchanged"
    );
}

#[tokio::test]
async fn a_developer_outside_any_company_namespace_says_so_and_creates_nothing() {
    let h = harness(0);
    h.converged_company(&[]).await;
    // A Company's label alone does not make a namespace the Company's.
    let mut namespace = h
        .api
        .get(&format!("{NAMESPACES}/company-acme"))
        .expect("ns");
    namespace["metadata"]["labels"]
        .as_object_mut()
        .expect("labels")
        .remove("enclave.dev/company");
    h.api
        .insert_raw(&format!("{NAMESPACES}/company-acme"), namespace);
    h.create_developer("mallory", None);
    h.vault.calls.lock().expect("calls").clear();
    let outcome = reconcile_developer(h.developer("mallory"), Arc::clone(&h.ctx)).await;
    // The finalizer first, then the refusal.
    let outcome = match outcome {
        Ok(a) if a == Action::await_change() => {
            reconcile_developer(h.developer("mallory"), Arc::clone(&h.ctx)).await
        }
        other => other,
    };
    assert!(outcome.is_ok(), "{outcome:?}");
    let (status, reason, _) = h.developer_condition("mallory", "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NoCompany"));
    assert!(h.vault_calls().is_empty(), "{:?}", h.vault_calls());
    assert!(h.api.names(SETS).is_empty());
}

#[tokio::test]
async fn an_admin_person_gets_a_jwt_role_that_goes_with_the_admin_role() {
    let mut config = OperatorConfig::default();
    config.vault.person_auth_mount = "jwt".into();
    let h = harness_with(0, config);
    h.converged_company(&[]).await;
    h.create_person("ann", "Admin", None);
    h.create_person("bo", "Developer", None);
    for name in ["ann", "bo"] {
        let outcomes = h.converge_developer(name).await;
        assert!(
            h.developer_condition_is(name, "Ready", "True"),
            "{outcomes:?}"
        );
    }
    let roles = h.vault.person_roles.lock().expect("roles").clone();
    assert_eq!(roles.len(), 1, "only the admin: {roles:?}");
    let ((mount, name), role) = roles.iter().next().expect("a role");
    assert_eq!(mount, "jwt");
    assert_eq!(role.bound_subject, "idp|ann");
    let policy = h
        .vault
        .policies
        .lock()
        .expect("p")
        .get(name)
        .cloned()
        .expect("policy");
    assert!(policy.contains("companies/acme/shared/*"), "{policy}");
    // Every workspace policy, the admin's included, reads only shared/dev.
    for (policy_name, hcl) in h.vault.policies.lock().expect("p").iter() {
        if policy_name != name
            && policy_name.contains("--")
            && !policy_name.ends_with("company-controller")
        {
            assert!(!hcl.contains("shared/*"), "{policy_name}: {hcl}");
            assert!(hcl.contains("shared/dev/*"), "{policy_name}: {hcl}");
        }
    }

    // Ann is no admin any more: her person role and policy go.
    let mut ann = h.api.get(&format!("{DEVELOPERS}/ann")).expect("ann");
    ann["spec"]["role"] = json!("Developer");
    ann["metadata"]["generation"] = json!(2);
    h.api.insert_raw(&format!("{DEVELOPERS}/ann"), ann);
    let outcomes = h.converge_developer("ann").await;
    assert!(
        h.developer_condition_is("ann", "Ready", "True"),
        "{outcomes:?}"
    );
    assert!(h.vault.person_roles.lock().expect("roles").is_empty());
    assert!(!h.vault.policies.lock().expect("p").contains_key(name));
}

#[tokio::test]
async fn a_private_vault_ca_reaches_every_init_step_through_a_config_map() {
    let mut config = OperatorConfig::default();
    config.vault.ca_file = "/etc/vault-ca/ca.crt".into();
    config.vault.ca_pem = Some("-----BEGIN CERTIFICATE-----\nprivate\n".into());
    let h = harness_with(0, config);
    let mut company = company_json("acme");
    company["spec"]["controller"] = json!({"image": "registry.example.com/acme/jobs:1"});
    h.api.insert(&format!("{COMPANIES}/acme"), company);
    let outcomes = h.converge("acme").await;
    assert!(h.ready("acme"), "{outcomes:?}");
    let ca = h
        .api
        .get(&format!(
            "{NAMESPACES}/company-acme/configmaps/enclave-vault-ca"
        ))
        .expect("the CA's ConfigMap");
    assert_eq!(
        ca["data"]["ca.crt"],
        "-----BEGIN CERTIFICATE-----\nprivate\n"
    );
    for crd in ["developers.enclave.dev", "companies.enclave.dev"] {
        h.api.insert(
            &format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"),
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                "metadata": {"name": crd}, "spec": {}}),
        );
    }
    h.create_developer("bob", None);
    let outcomes = h.converge_developer("bob").await;
    assert!(
        h.developer_condition_is("bob", "Ready", "True"),
        "{outcomes:?}"
    );
    let workspace = h
        .api
        .get(&format!("{SETS}/{}", h.api.names(SETS)[0]))
        .expect("the workspace");
    let controller = h
        .api
        .get("/apis/apps/v1/namespaces/company-acme/deployments/company-controller")
        .expect("the company controller");
    for pod in [
        &workspace["spec"]["template"]["spec"],
        &controller["spec"]["template"]["spec"],
    ] {
        let init = &pod["initContainers"][0];
        let args = init["args"].to_string();
        assert!(
            args.contains(r#""--vault-ca-file","/etc/enclave/vault-ca/ca.crt""#),
            "{args}"
        );
        assert!(
            init["volumeMounts"]
                .to_string()
                .contains("/etc/enclave/vault-ca")
        );
        assert!(
            pod["volumes"]
                .to_string()
                .contains(r#""configMap":{"defaultMode":292,"name":"enclave-vault-ca"}"#),
            "{}",
            pod["volumes"]
        );
    }
}

#[tokio::test]
async fn every_external_change_is_one_event_on_its_object() {
    let h = harness(1);
    h.converged_company(&[]).await;
    h.create_developer("bob", None);
    let outcomes = h.converge_developer("bob").await;
    assert!(
        h.developer_condition_is("bob", "Ready", "True"),
        "{outcomes:?}"
    );
    // Resyncs of the unchanged tenant: no Event.
    let before = h.api.events().len();
    h.ctx.checked.lock().expect("checked").clear();
    for _ in 0..3 {
        h.reconcile("acme").await.expect("resync");
        reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx))
            .await
            .expect("resync");
    }
    assert_eq!(
        h.api.events().len(),
        before,
        "{:#?}",
        &h.api.events()[before..]
    );
    // Deletion, every pass of it.
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    h.api.mark_deleted(&format!("{COMPANIES}/acme"));
    let mut outcomes = Vec::new();
    for _ in 0..12 {
        if h.api.get(&format!("{DEVELOPERS}/bob")).is_some() {
            outcomes.push(reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await);
        }
        if h.company("acme").is_some() {
            outcomes.push(h.reconcile("acme").await);
        }
        h.finish_jobs_and_pods();
    }
    assert!(h.company("acme").is_none(), "deleted: {outcomes:#?}");
    // The cleanup ran again after the database was gone (waiting for the
    // namespace), and did not delete (nor report) the database again.
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Err(e) if e.to_string().contains("namespace company-acme"))),
        "{outcomes:#?}"
    );
    let deletions = h.ctx.databases.rds.deletions.lock().expect("d")["acme"];
    assert_eq!(deletions, 2, "in progress, then done: {outcomes:#?}");
    // One occurrence per change: the same note twice is a change reported
    // twice (a database Creating, then Available, is two changes).
    let mut occurrences = std::collections::BTreeMap::<(String, String, String), usize>::new();
    let mut counts = std::collections::BTreeMap::<(String, String), usize>::new();
    for event in h.api.events() {
        let object = format!(
            "{}/{}",
            event["regarding"]["kind"].as_str().unwrap_or_default(),
            event["regarding"]["name"].as_str().unwrap_or_default()
        );
        let reason = event["reason"].as_str().unwrap_or_default().to_owned();
        let note = event["note"].as_str().unwrap_or_default().to_owned();
        *occurrences
            .entry((object.clone(), reason.clone(), note))
            .or_default() += 1;
        *counts.entry((object, reason)).or_default() += 1;
    }
    let repeated: Vec<_> = occurrences.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "repeated: {repeated:#?}\nall: {counts:#?}"
    );
    for (object, reason) in [
        ("Company/acme", "VaultPoliciesWritten"),
        ("Developer/bob", "VaultPoliciesWritten"),
        ("Developer/bob", "StoragePrepared"),
        ("Developer/bob", "StorageDeletionPolicyApplied"),
        ("Developer/bob", "VaultPoliciesDeleted"),
        ("Company/acme", "DatabaseDeletionPolicyApplied"),
        ("Company/acme", "FileSystemDeletionPolicyApplied"),
        ("Company/acme", "VaultPoliciesDeleted"),
        ("Company/acme", "NamespaceDeleted"),
    ] {
        assert_eq!(
            counts.get(&(object.to_owned(), reason.to_owned())),
            Some(&1),
            "{object} {reason}: {counts:#?}"
        );
    }
}

#[tokio::test]
async fn credentials_are_rotated_on_schedule_and_the_controller_restarts_onto_them() {
    let h = harness(0);
    let mut company = company_json("acme");
    company["spec"]["database"]["rotateEveryDays"] = json!(30);
    company["spec"]["controller"] = json!({"image": "registry.example.com/acme/jobs:1"});
    h.api.insert(&format!("{COMPANIES}/acme"), company);
    h.converge("acme").await;
    // One more pass: the Deployment is built from the status that records
    // the credentials.
    h.reconcile("acme").await.expect("converged");
    let deployment = "/apis/apps/v1/namespaces/company-acme/deployments/company-controller";
    let version_of = || {
        h.api.get(deployment).expect("deployment")["spec"]["template"]["metadata"]["annotations"]
            ["enclave.dev/credentials-version"]
            .clone()
    };
    assert_eq!(version_of(), json!("1"));
    let status = h
        .company("acme")
        .and_then(|c| c.status.clone())
        .expect("status");
    let rotated_at = status
        .database
        .and_then(|d| d.rotated_at)
        .expect("rotated_at");
    // Not due yet: a resync rotates nothing.
    h.ctx.checked.lock().expect("checked").clear();
    h.reconcile("acme").await.expect("resync");
    assert!(
        !h.vault_calls()
            .iter()
            .any(|c| c.starts_with("rotate_credentials"))
    );

    // Thirty-one days later (as far as the status says).
    let mut stored = h.api.get(&format!("{COMPANIES}/acme")).expect("company");
    let earlier = rotated_at.0 - k8s_openapi::jiff::SignedDuration::from_hours(24 * 31);
    stored["status"]["database"]["rotatedAt"] = json!(earlier.to_string());
    h.api.insert_raw(&format!("{COMPANIES}/acme"), stored);
    h.ctx.checked.lock().expect("checked").clear();
    h.reconcile("acme").await.expect("rotated");
    assert_eq!(
        h.vault_calls()
            .iter()
            .filter(|c| c.starts_with("rotate_credentials"))
            .count(),
        1
    );
    let db = h
        .company("acme")
        .and_then(|c| c.status.clone())
        .and_then(|s| s.database)
        .expect("database status");
    assert_eq!(db.credentials_version, Some(2));
    assert!(db.rotated_at.expect("rotated_at").0 > earlier);
    h.reconcile("acme").await.expect("the controller follows");
    assert_eq!(
        version_of(),
        json!("2"),
        "the controller restarts onto them"
    );
    assert!(
        h.api
            .events()
            .iter()
            .any(|e| e["reason"] == "CredentialsRotated"
                && e["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("on schedule"))),
        "{:#?}",
        h.api.events()
    );
}

#[tokio::test]
async fn a_uid_is_allocated_reading_only_the_records_of_people_gone() {
    let h = harness(0);
    h.converged_company(&[]).await;
    let reads = || {
        h.vault_calls()
            .into_iter()
            .filter(|c| c.starts_with("read posix id"))
            .collect::<Vec<_>>()
    };
    for name in ["bob", "carol"] {
        h.create_developer(name, None);
        h.converge_developer(name).await;
        assert!(h.developer_condition_is(name, "Ready", "True"));
    }
    // Carol's allocation did not read Bob's record: his status names it.
    assert!(reads().is_empty(), "{:?}", reads());
    let uid = |name: &str| {
        h.developer(name)
            .status
            .as_ref()
            .and_then(|s| s.uid)
            .expect("uid")
    };
    // A person gone, whose data (owned by their uid) a policy kept: their
    // record is read, and nobody else gets their uid.
    let next = uid("carol") + 1;
    h.vault.kv.lock().expect("kv").insert(
        "companies/acme/platform/posix-ids/zed-0123456789".into(),
        (
            std::collections::HashMap::from([("uid".into(), next.to_string())]),
            1,
        ),
    );
    h.create_developer("dave", None);
    h.converge_developer("dave").await;
    assert_eq!(reads(), ["read posix id zed-0123456789"]);
    let dave = uid("dave");
    assert!(
        ![uid("bob"), uid("carol"), next].contains(&dave),
        "dave got {dave}"
    );
}

#[tokio::test]
async fn a_status_uid_that_disagrees_with_its_record_keeps_both_uids_from_others() {
    let h = harness(0);
    h.converged_company(&[]).await;
    let reads = || {
        h.vault_calls()
            .into_iter()
            .filter(|c| c.starts_with("read posix id"))
            .collect::<Vec<_>>()
    };
    let uid = |name: &str| {
        h.developer(name)
            .status
            .as_ref()
            .and_then(|s| s.uid)
            .expect("uid")
    };
    h.create_developer("bob", None);
    h.converge_developer("bob").await;
    let recorded = uid("bob");
    // Bob's status edited (or restored from an old copy): it no longer
    // names the uid his record holds, which his data may be owned by.
    let path = format!("{DEVELOPERS}/bob");
    let mut bob = h.api.get(&path).expect("bob");
    bob["status"]["uid"] = json!(recorded + 1);
    bob["status"]["gid"] = json!(recorded + 1);
    h.api.insert_raw(&path, bob);
    h.create_developer("carol", None);
    h.converge_developer("carol").await;
    let read = reads();
    assert!(
        read.len() == 1 && read[0].starts_with("read posix id bob-"),
        "{read:?}"
    );
    let carol = uid("carol");
    assert!(
        ![recorded, recorded + 1].contains(&carol),
        "carol got {carol}, bob's record holds {recorded}"
    );
}

#[tokio::test]
async fn a_developer_deleted_before_its_status_named_its_vault_role_leaves_no_role() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let h = harness(0);
    h.converged_company(&[]).await;
    h.create_developer("bob", None);
    // Its uid is written, then every later status write fails: the pass
    // writes the Vault role and policy, but its status never names them.
    let writes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&writes);
    h.api
        .set_fault(Some(Box::new(move |method: &Method, path: &str| {
            (*method == Method::PATCH
                && path.ends_with("/developers/bob/status")
                && counted.fetch_add(1, Ordering::SeqCst) >= 1)
                .then_some(500)
        })));
    let roles = || {
        h.vault
            .roles
            .lock()
            .expect("roles")
            .keys()
            .filter(|r| r.contains("bob"))
            .count()
    };
    for _ in 0..6 {
        let _ = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await;
        if roles() > 0 {
            break;
        }
        h.finish_jobs_and_pods();
    }
    assert_eq!(roles(), 1, "{:?}", h.vault_calls());
    let status = h
        .developer("bob")
        .status
        .clone()
        .expect("its uid was written");
    assert!(
        status.uid.is_some() && status.vault_role.is_none(),
        "{status:?}"
    );
    h.api.set_fault(None);
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    for _ in 0..6 {
        if reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx))
            .await
            .is_ok()
        {
            break;
        }
        h.finish_jobs_and_pods();
    }
    assert_eq!(roles(), 0, "{:?}", h.vault_calls());
    assert!(
        h.vault
            .policies
            .lock()
            .expect("policies")
            .keys()
            .all(|p| !p.contains("bob")),
        "{:?}",
        h.vault_calls()
    );
}

#[tokio::test]
async fn a_workspace_deletion_begun_without_its_pods_is_asked_for_again() {
    let h = harness(0);
    let set_path = h.converged_workspace("bob").await;
    // Someone deleted the StatefulSet orphaning its pod: the pod would
    // outlive it unless the foreground deletion is asked for.
    let mut set = h.api.get(&set_path).expect("workspace");
    set["metadata"]["finalizers"] = json!(["orphan"]);
    set["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:00Z");
    h.api.insert_raw(&set_path, set);
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    h.api.clear_requests();
    let outcome = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await;
    assert!(outcome.expect_err("waits").to_string().contains("to stop"));
    let deletes = h.deletes(&set_path);
    assert_eq!(deletes.len(), 1, "{deletes:?}");
}

#[tokio::test]
async fn a_workspace_created_by_the_step_is_not_read_back() {
    let h = harness(0);
    h.converged_company(&[]).await;
    // The StatefulSet watch has listed and never saw bob's workspace.
    h.ctx.cache.saw_listed("StatefulSet");
    h.create_developer("bob", None);
    h.api.clear_requests();
    // Passes until its storage is ready and the step creates it.
    for _ in 0..6 {
        // A pass may end waiting (for its storage): what it sent counts.
        let _ = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await;
        if !h.methods(SETS).is_empty() {
            break;
        }
        h.finish_jobs_and_pods();
    }
    assert_eq!(
        h.methods(SETS),
        vec![Method::PATCH],
        "created, not read back: none of its pods can be ready yet"
    );
}

#[tokio::test]
async fn a_workspace_the_watch_saw_stopping_is_waited_for_without_a_read() {
    let h = harness(0);
    h.converged_workspace("bob").await;
    let set_name = h.api.names(SETS)[0].clone();
    h.ctx
        .cache
        .saw_stopping("StatefulSet", "company-acme", &set_name);
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    h.api.clear_requests();
    h.waits_for_its_workspace("bob", RetryClass::Watched).await;
    assert_eq!(
        h.methods(SETS),
        Vec::<Method>::new(),
        "its going wakes the Developer: nothing to read"
    );
}

#[tokio::test]
async fn a_failed_watch_ends_the_trust_in_a_stopping_workspace_and_a_read_renews_it() {
    let h = harness(0);
    let set_path = h.converged_workspace("bob").await;
    let set_name = h.api.names(SETS)[0].clone();
    // Its foreground deletion under way, as the API holds it.
    let mut set = h.api.get(&set_path).expect("workspace");
    set["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    set["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:01Z");
    h.api.insert_raw(&set_path, set);
    h.ctx
        .cache
        .saw_stopping("StatefulSet", "company-acme", &set_name);
    // The watch then failed: it may have missed the workspace's going.
    h.ctx.cache.watch_failed("StatefulSet");
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    // Marks count in whole seconds: a read in the failure's second is
    // not trusted to be after it.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    h.api.clear_requests();
    for (pass, reads) in [("first", vec![Method::GET]), ("second", vec![])] {
        h.waits_for_its_workspace("bob", RetryClass::Watched).await;
        assert_eq!(
            h.methods(SETS),
            reads,
            "{pass} pass: read once the watch failed, then trusted again"
        );
        h.api.clear_requests();
    }
}

#[tokio::test]
async fn a_workspace_pod_that_outlives_its_statefulset_holds_the_cleanup() {
    let h = harness(0);
    let set_path = h.converged_workspace("bob").await;
    let set_name = h.api.names(SETS)[0].clone();
    let pod_path = format!("{NAMESPACES}/company-acme/pods/{set_name}-0");
    let pod = |owners: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("{set_name}-0"), "namespace": "company-acme",
                "ownerReferences": owners}})
    };
    // Deleted in the background (`kubectl delete sts`): the StatefulSet is
    // gone at once, its pod not yet collected.
    h.api.mark_deleted(&set_path);
    h.api.insert(
        &pod_path,
        pod(
            json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": set_name,
            "uid": "gone", "controller": true}]),
        ),
    );
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    h.api.clear_requests();
    // Waits for the garbage collector (no watch of pods wakes it).
    h.waits_for_its_workspace("bob", RetryClass::Waiting).await;
    // Orphaned (`--cascade=orphan`): nothing will delete it; a person must.
    h.api.insert(&pod_path, pod(json!([])));
    let error = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx))
        .await
        .expect_err("held");
    assert!(
        matches!(error.step(), Error::WorkspaceOrphaned { .. }),
        "{error}"
    );
    let (status, reason, message) = h.developer_condition("bob", "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WorkspaceOrphaned")
    );
    assert!(
        message.contains(&format!("kubectl delete pod -n company-acme {set_name}-0")),
        "{message}"
    );
    // Nothing went while the pod runs: no token, directory or role of the
    // person's was removed, and the operator deleted no pod (it holds no
    // such right).
    assert!(h.deletes("/").is_empty(), "{:?}", h.deletes("/"));
    assert_eq!(h.vault.roles.lock().expect("roles").len(), 2);
    // The person deleted it: the cleanup goes on to the end.
    h.api.mark_deleted(&pod_path);
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        if h.api.get(&format!("{DEVELOPERS}/bob")).is_none() {
            break;
        }
        outcomes.push(reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await);
        h.finish_jobs_and_pods();
    }
    assert!(
        h.api.get(&format!("{DEVELOPERS}/bob")).is_none(),
        "{outcomes:#?}"
    );
    assert_eq!(h.vault.roles.lock().expect("roles").len(), 1);
}

#[tokio::test]
async fn a_cleanup_that_may_not_read_pods_waits_unless_the_namespace_is_going() {
    let h = harness(0);
    let set_path = h.converged_workspace("bob").await;
    h.api.mark_deleted(&set_path);
    // The operator's RoleBinding in the namespace is gone: pods are not
    // its to read.
    h.api.set_fault(Some(Box::new(|method, path| {
        (method == Method::GET && path.contains("/pods/")).then_some(403)
    })));
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    h.api.clear_requests();
    let error = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx))
        .await
        .expect_err("cannot see the pod");
    assert_eq!(error.retry_class(), RetryClass::Waiting, "{error}");
    assert!(
        error
            .to_string()
            .contains("RoleBinding enclave-operator-workspace-access is missing"),
        "{error}"
    );
    assert!(h.deletes("/").is_empty(), "{:?}", h.deletes("/"));
    assert_eq!(h.vault.roles.lock().expect("roles").len(), 2);
    // `kubectl delete namespace`: its controller removed the binding and
    // removes every pod in it; the cleanup goes on without the pod.
    let ns_path = format!("{NAMESPACES}/company-acme");
    let mut namespace = h.api.get(&ns_path).expect("namespace");
    namespace["metadata"]["deletionTimestamp"] = json!("2026-12-04T00:00:00Z");
    h.api.insert_raw(&ns_path, namespace.clone());
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        if h.api.get(&format!("{DEVELOPERS}/bob")).is_none() {
            break;
        }
        outcomes.push(reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await);
        h.finish_jobs_and_pods();
        // The namespace stays while the Developer in it holds a finalizer.
        h.api.insert_raw(&ns_path, namespace.clone());
    }
    assert!(
        h.api.get(&format!("{DEVELOPERS}/bob")).is_none(),
        "{outcomes:#?}"
    );
    assert_eq!(h.vault.roles.lock().expect("roles").len(), 1);
}

#[tokio::test]
async fn a_deleted_developer_stops_its_workspace_before_anything_else_goes() {
    let h = harness(0);
    let set_path = h.converged_workspace("bob").await;
    // The StatefulSet's pod takes its time to stop (foreground deletion).
    let mut set = h.api.get(&set_path).expect("workspace");
    set["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    h.api.insert_raw(&set_path, set);
    let jobs_before = h.api.names(JOBS).len();
    h.api.mark_deleted(&format!("{DEVELOPERS}/bob"));
    let outcome = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await;
    let error = outcome.expect_err("waits for the pod");
    assert!(error.to_string().contains("to stop"), "{error}");
    assert_eq!(error.retry_class(), RetryClass::Watched, "{error}");
    assert!(
        h.api.get(&set_path).expect("terminating")["metadata"]["deletionTimestamp"].is_string()
    );
    // Waiting for it writes nothing: the deletion was asked for once.
    h.api.clear_requests();
    let again = reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await;
    assert!(
        again
            .expect_err("still waits")
            .to_string()
            .contains("to stop")
    );
    let deletes = h.deletes("/");
    assert!(deletes.is_empty(), "{deletes:?}");
    assert_eq!(
        h.api.names(JOBS).len(),
        jobs_before,
        "no storage cleanup yet"
    );
    assert!(
        h.vault.roles.lock().expect("roles").len() == 2,
        "the Vault role is still there while the pod runs"
    );
    // The pod stopped: the StatefulSet goes, then the ServiceAccount (its
    // tokens with it), the directory per policy, the Vault role.
    let mut set = h.api.get(&set_path).expect("workspace");
    set["metadata"]["finalizers"] = json!([]);
    h.api.insert_raw(&set_path, set);
    h.api.finish_namespaces();
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        if h.api.get(&format!("{DEVELOPERS}/bob")).is_none() {
            break;
        }
        outcomes.push(reconcile_developer(h.developer("bob"), Arc::clone(&h.ctx)).await);
        h.finish_jobs_and_pods();
    }
    assert!(
        h.api.get(&format!("{DEVELOPERS}/bob")).is_none(),
        "{outcomes:#?}"
    );
    assert!(h.api.get(&set_path).is_none());
    assert!(
        h.api
            .names(&format!("{NAMESPACES}/company-acme/serviceaccounts"))
            .iter()
            .all(|n| !n.contains("bob"))
    );
    assert_eq!(
        h.vault.roles.lock().expect("roles").len(),
        1,
        "only the company's"
    );
}

#[tokio::test]
async fn a_new_company_of_a_retained_name_does_not_inherit_its_secrets_unless_it_adopts_them() {
    let h = harness(0);
    h.create_company("acme");
    h.converge("acme").await;
    assert!(h.ready("acme"));
    let old_uid = h
        .company("acme")
        .and_then(|c| c.metadata.uid.clone())
        .expect("uid");
    // Deleted with the default secrets policy, Retain: its secrets stay.
    h.vault.kv.lock().expect("kv").insert(
        "companies/acme/shared/prod/env".into(),
        (
            std::collections::HashMap::from([("K".into(), "v".into())]),
            1,
        ),
    );
    h.api.mark_deleted(&format!("{COMPANIES}/acme"));
    for _ in 0..10 {
        if h.company("acme").is_none() {
            break;
        }
        let _ = h.reconcile("acme").await;
        h.api.finish_namespaces();
    }
    assert!(h.company("acme").is_none(), "deleted");
    assert!(h.vault.policies.lock().expect("p").is_empty());

    // Someone creates a Company of the same name (whose policy would delete
    // secrets): it gets no Vault access.
    let mut company = company_json("acme");
    company["spec"]["secrets"] = json!({"deletionPolicy": "Delete"});
    h.api.insert(&format!("{COMPANIES}/acme"), company);
    let outcomes = h.converge("acme").await;
    let error = outcomes
        .last()
        .and_then(|o| o.as_ref().err())
        .expect("refused");
    assert_eq!(error.retry_class(), RetryClass::NeedsPerson, "{error}");
    let (status, _, message) = h.condition("acme", "VaultReady");
    assert_eq!(status, "False");
    assert!(
        message.contains(&format!("enclave.dev/adopt-uid={old_uid}")),
        "{message}"
    );
    assert!(
        h.vault.policies.lock().expect("p").is_empty(),
        "no policy that could read them"
    );

    // Deleted in turn, it leaves the earlier tenant's secrets alone.
    h.api.mark_deleted(&format!("{COMPANIES}/acme"));
    for _ in 0..10 {
        if h.company("acme").is_none() {
            break;
        }
        let _ = h.reconcile("acme").await;
        h.api.finish_namespaces();
    }
    assert!(h.company("acme").is_none(), "deleted");
    assert!(
        h.vault
            .kv
            .lock()
            .expect("kv")
            .contains_key("companies/acme/shared/prod/env"),
        "retained"
    );

    // A Company that takes them over explicitly gets them.
    let mut company = company_json("acme");
    company["metadata"]["annotations"] = json!({"enclave.dev/adopt-uid": old_uid});
    h.api.insert(&format!("{COMPANIES}/acme"), company);
    let outcomes = h.converge("acme").await;
    assert!(h.ready("acme"), "{outcomes:?}");
}
