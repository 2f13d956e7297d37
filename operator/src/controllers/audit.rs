//! The audit trail: every change the operator makes outside the object
//! itself is one JSON log line (target `enclave::audit`: what, which
//! tenant, why, outcome) and a Kubernetes Event on the object it serves.
//! An unchanged tenant produces neither. A failed reconcile is a Warning
//! Event on the object it failed for (and a log line), not an audit line:
//! it changed nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// Writes audit lines and Events.
pub struct Audit {
    client: Client,
    reporter: Reporter,
    /// Publishes failures: it remembers each Event it published for six
    /// minutes, so that a repeat joins its series.
    recorder: Recorder,
    /// Failure Events in flight: an outage that fails every tenant at
    /// once queues its Events here, not on the API server.
    failing: tokio::sync::Semaphore,
}

/// The `action` of a failure's Warning Event (before the note's hash): what
/// tells it from an audit line's Event.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// One change.
pub struct Change<'a> {
    /// The tenant (company name).
    pub tenant: &'a str,
    /// PascalCase, e.g. `VaultPolicyWritten`; the Event's reason.
    pub action: &'static str,
    /// Why, in words a person can act on.
    pub why: &'a str,
    /// Whether it worked.
    pub ok: bool,
}

impl Audit {
    /// Events are reported as controller `enclave`, instance `identity`.
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter = Reporter {
            controller: "enclave".into(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
            failing: tokio::sync::Semaphore::new(4),
        }
    }

    /// Records `change` made for `object`.
    pub async fn record<K>(&self, object: &K, change: &Change<'_>)
    where
        K: Resource<DynamicType = ()>,
    {
        let reference = object.object_ref(&());
        let name = reference.name.clone().unwrap_or_default();
        let kind = reference.kind.clone().unwrap_or_default();
        tracing::info!(
            target: "enclave::audit",
            audit = true,
            tenant = change.tenant,
            object = %format!("{kind}/{name}"),
            action = change.action,
            why = change.why,
            outcome = if change.ok { "success" } else { "failure" },
            "{}", change.action
        );
        // Each change is its own Event, never a repeat in a series: a
        // recorder of its own forgets it at once. The shared one would keep
        // every audit Event for six minutes (at 10,000 Developers onboarding,
        // thousands of whole Events held for nothing).
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        publish(
            &recorder,
            &reference,
            if change.ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            change.action,
            change.action,
            change.why,
        )
        .await;
    }

    /// Publishes a Warning Event on `reference`: a reconcile failed with
    /// `reason` (e.g. `VaultFailed`) and `message` (what to do).
    pub async fn failure(&self, reference: &ObjectReference, reason: &str, message: &str) {
        // Never closed: the semaphore lives as long as `self`.
        let Ok(_permit) = self.failing.acquire().await else {
            return;
        };
        publish(
            &self.recorder,
            reference,
            EventType::Warning,
            reason,
            RECONCILE_FAILED,
            message,
        )
        .await;
    }
}

/// Publishes one Event through `recorder`; a failure to publish is only
/// logged (the log line stands).
async fn publish(
    recorder: &Recorder,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1024).collect()),
        // The recorder folds Events of one object, reason and action
        // into a series that keeps the first note: a second, different
        // change (the database Creating, then Available) would read as
        // a repeat of the first. The note's hash keeps them apart; a
        // failure's true repeat still joins its series.
        action: format!("{action}-{}", crate::names::short_hash(&[note])),
        secondary: None,
    };
    // The recorder keys a series by the whole reference: without its
    // version, a repeat after a status write still joins the series.
    let reference = ObjectReference {
        resource_version: None,
        ..reference.clone()
    };
    if let Err(e) = recorder.publish(&event, &reference).await {
        tracing::debug!(error = %e, "could not publish an Event (the log line above stands)");
    }
}
