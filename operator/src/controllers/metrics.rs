//! Prometheus metrics of `enclave run`, served on `/metrics`.

use std::time::Duration;

use crate::backends::aws_calls::CallStats;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: &'static str,
    category: &'static str,
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    system: &'static str,
    outcome: &'static str,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<OutcomeLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    backend_calls: Family<BackendLabels, Counter>,
    aws_requests: Family<ServiceLabels, Counter>,
    aws_retries: Family<ServiceLabels, Counter>,
    aws_deferred: Family<ServiceLabels, Counter>,
    vault_writes: Counter,
    leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("enclave");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by kind and outcome (success, error, deferred: an AWS call waited for its turn)",
            reconciles.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "reconcile_failures",
            "Failed reconciles by kind, error category (the failing system) and class (how it is retried)",
            failures.clone(),
        );
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile, by kind",
            durations.clone(),
        );
        let backend_calls = Family::<BackendLabels, Counter>::default();
        registry.register(
            "backend_calls",
            "Reconcile steps on an outside system (kubernetes, vault, database, fsx), by outcome",
            backend_calls.clone(),
        );
        let aws_requests = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "aws_requests",
            "AWS API requests sent (retries included), by service",
            aws_requests.clone(),
        );
        let aws_retries = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "aws_retries",
            "AWS API requests answered with throttling or a server error and retried, by service",
            aws_retries.clone(),
        );
        let aws_deferred = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "aws_deferred",
            "AWS API calls not sent because the call budget was in use (the reconcile was requeued), by service",
            aws_deferred.clone(),
        );
        let vault_writes = Counter::default();
        registry.register(
            "vault_writes",
            "Mutating requests sent to Vault",
            vault_writes.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            failures,
            durations,
            backend_calls,
            aws_requests,
            aws_retries,
            aws_deferred,
            vault_writes,
            leader,
        }
    }
}

impl Metrics {
    /// Records one finished reconcile of `kind`.
    pub fn reconciled(&self, kind: &'static str, took: Duration, error: Option<&super::Error>) {
        // A step deferred by the AWS call budget is pacing, not a failure.
        let deferred = error.is_some_and(|e| e.retry_class() == super::RetryClass::Deferred);
        let outcome = match error {
            None => "success",
            Some(_) if deferred => "deferred",
            Some(_) => "error",
        };
        self.reconciles
            .get_or_create(&OutcomeLabels { kind, outcome })
            .inc();
        if let Some(error) = error.filter(|_| !deferred) {
            let labels = FailureLabels {
                kind,
                category: error.category(),
                class: error.retry_class().label(),
            };
            self.failures.get_or_create(&labels).inc();
        }
        self.durations
            .get_or_create(&KindLabels { kind })
            .observe(took.as_secs_f64());
    }

    /// Records one step on `system` (`kubernetes`, `vault`, `database`, `fsx`).
    pub fn backend(&self, system: &'static str, ok: bool) {
        let outcome = if ok { "success" } else { "error" };
        self.backend_calls
            .get_or_create(&BackendLabels { system, outcome })
            .inc();
    }

    /// Adds what an AWS service's gate counted since the last sample.
    pub fn aws(&self, service: &'static str, calls: &CallStats) {
        let labels = ServiceLabels { service };
        self.aws_requests
            .get_or_create(&labels)
            .inc_by(calls.attempts);
        self.aws_retries
            .get_or_create(&labels)
            .inc_by(calls.retried);
        self.aws_deferred
            .get_or_create(&labels)
            .inc_by(calls.deferred);
    }

    /// Adds Vault writes counted since the last sample.
    pub fn vault_writes(&self, writes: u64) {
        self.vault_writes.inc_by(writes);
    }

    /// Sets whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
