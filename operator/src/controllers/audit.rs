//! The audit trail: every change the operator makes outside the object
//! itself is one JSON log line (target `enclave::audit`: what, which
//! tenant, why, outcome) and a Kubernetes Event on the object it serves.
//! An unchanged tenant produces neither.

use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// Writes audit lines and Events.
pub struct Audit {
    recorder: Recorder,
}

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
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "enclave".into(),
                    instance: Some(identity.to_owned()),
                },
            ),
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
        let event = Event {
            type_: if change.ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: change.action.to_owned(),
            note: Some(change.why.chars().take(1024).collect()),
            // The recorder folds Events of one object, reason and action
            // into a series that keeps the first note: a second, different
            // change (the database Creating, then Available) would read as
            // a repeat of the first. The note's hash keeps them apart; a
            // true repeat still joins its series.
            action: format!(
                "{}-{}",
                change.action,
                crate::names::short_hash(&[change.why])
            ),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::debug!(error = %e, "could not publish an Event (the audit line above stands)");
        }
    }
}
