//! Which watch events wake which reconcile: only the ones that can change
//! its outcome, so that a busy tenant does not make its Company reconcile
//! once per Developer status patch.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use futures::{Stream, StreamExt, TryStreamExt, stream};
use kube::{ResourceExt, api::ObjectMeta, runtime::watcher};

use crate::{
    crd::{Company, Developer},
    names::{LABEL_COMPANY, LABEL_DEVELOPER},
};

/// A Developer as its Company sees it: metadata only.
pub type DeveloperMeta = super::lean::Lean<Developer>;

/// Tracks Developers by namespace and name, and passes on only the events
/// that change a Company's view of them: one appearing (or re-created under
/// the same name), starting to be deleted, or gone. Spec and status patches
/// of a Developer that stays are dropped. It also answers how many
/// Developers a namespace holds, so a Company's count needs no LIST.
#[derive(Debug, Default)]
pub struct Membership {
    /// uid and whether it is being deleted, by name, by namespace.
    members: HashMap<String, HashMap<String, (String, bool)>>,
    /// Keys seen since a relist began (`None`: not relisting).
    relisted: Option<HashSet<(String, String)>>,
    /// Whether a first list completed (before it, counts are unknown).
    listed: bool,
}

impl Membership {
    /// The Developers whose change `event` is (none for a mere patch). A
    /// relist ends with those that vanished while the watch was down, as
    /// metadata holding only their namespace and name.
    pub fn on(&mut self, event: watcher::Event<DeveloperMeta>) -> Vec<DeveloperMeta> {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(developer) | watcher::Event::Apply(developer) => {
                let (namespace, name) = (
                    developer.namespace().unwrap_or_default(),
                    developer.name_any(),
                );
                if let Some(seen) = &mut self.relisted {
                    seen.insert((namespace.clone(), name.clone()));
                }
                let now = (
                    developer.uid().unwrap_or_default(),
                    developer.metadata.deletion_timestamp.is_some(),
                );
                let before = self
                    .members
                    .entry(namespace)
                    .or_default()
                    .insert(name, now.clone());
                if before == Some(now) {
                    Vec::new()
                } else {
                    vec![developer]
                }
            }
            watcher::Event::Delete(developer) => {
                self.remove(
                    &developer.namespace().unwrap_or_default(),
                    &developer.name_any(),
                );
                vec![developer]
            }
            watcher::Event::InitDone => {
                self.listed = true;
                let seen = self.relisted.take().unwrap_or_default();
                let gone: Vec<(String, String)> = self
                    .members
                    .iter()
                    .flat_map(|(namespace, names)| {
                        names.keys().map(|name| (namespace.clone(), name.clone()))
                    })
                    .filter(|k| !seen.contains(k))
                    .collect();
                gone.into_iter()
                    .map(|(namespace, name)| {
                        self.remove(&namespace, &name);
                        ObjectMeta {
                            name: Some(name),
                            namespace: Some(namespace),
                            ..ObjectMeta::default()
                        }
                        .into()
                    })
                    .collect()
            }
        }
    }

    /// How many Developers `namespace` holds (those being deleted
    /// included), once the watch has listed them.
    pub fn count(&self, namespace: &str) -> Option<usize> {
        self.listed
            .then(|| self.members.get(namespace).map_or(0, HashMap::len))
    }

    /// The Developers of `namespace` by name, each with whether it is being
    /// deleted, once the watch has listed them.
    pub fn members(&self, namespace: &str) -> Option<Vec<(String, bool)>> {
        self.listed.then(|| {
            self.members
                .get(namespace)
                .into_iter()
                .flatten()
                .map(|(name, (_, deleting))| (name.clone(), *deleting))
                .collect()
        })
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        if let Some(names) = self.members.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                self.members.remove(namespace);
            }
        }
    }
}

/// A hash of what a Company's Developers build on: its spec, whether it is
/// going, the conditions they wait for and the storage they mount. Its
/// other status changes (its database, a count) do not wake them.
pub fn company_view(company: &Company) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    company.uid().hash(&mut hasher);
    company.metadata.generation.hash(&mut hasher);
    company
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    // What its Developers wait for: the namespace and Vault together (not
    // each as it turns ready), and the company's storage.
    super::developer::company_base_ready(company).hash(&mut hasher);
    if let Some(status) = &company.status {
        for c in &status.conditions {
            if c.type_ == "StorageReady" {
                // The text, not its (interned) address: this hash outlives
                // the object.
                (*c.status).hash(&mut hasher);
            }
        }
        // Only the company's own objects use its database facts.
        serde_json::to_string(&status.storage)
            .unwrap_or_default()
            .hash(&mut hasher);
    }
    hasher.finish()
}

/// The Developer a storage Job (in the operator's namespace) works for,
/// found through its labels and its Company's namespace.
pub fn developer_of_job(
    labels: &std::collections::BTreeMap<String, String>,
    companies: &kube::runtime::reflector::Store<Company>,
) -> Option<kube::runtime::reflector::ObjectRef<Developer>> {
    let company = companies.get(&kube::runtime::reflector::ObjectRef::new(
        labels.get(LABEL_COMPANY)?,
    ))?;
    let namespace =
        crate::names::CompanyNames::new(&company.name_any(), company.spec.namespace.as_deref())
            .namespace()
            .to_owned();
    Some(kube::runtime::reflector::ObjectRef::new(labels.get(LABEL_DEVELOPER)?).within(&namespace))
}

/// The Developers of `events` whose change matters to their Company;
/// `membership` is kept current before each is passed on.
pub fn membership_changes(
    events: impl Stream<Item = Result<watcher::Event<DeveloperMeta>, watcher::Error>> + Send + 'static,
    membership: Arc<Mutex<Membership>>,
) -> impl Stream<Item = Result<DeveloperMeta, watcher::Error>> + Send + 'static {
    events
        .map_ok(move |event| {
            let changed = membership
                .lock()
                .map(|mut m| m.on(event))
                .unwrap_or_default();
            stream::iter(changed.into_iter().map(Ok))
        })
        .try_flatten()
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, uid: &str, deleting: bool, version: &str) -> DeveloperMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("company-a".into()),
            uid: Some(uid.into()),
            resource_version: Some(version.into()),
            deletion_timestamp: deleting.then_some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            ),
            ..ObjectMeta::default()
        }
        .into()
    }

    fn names(found: &[DeveloperMeta]) -> Vec<String> {
        found.iter().map(ResourceExt::name_any).collect()
    }

    #[test]
    fn only_arrival_deletion_and_departure_reach_the_company() {
        let mut m = Membership::default();
        assert_eq!(m.count("company-a"), None, "not listed yet");
        assert_eq!(m.members("company-a"), None);
        m.on(watcher::Event::Init);
        m.on(watcher::Event::InitDone);
        assert_eq!(m.count("company-a"), Some(0));
        assert_eq!(
            names(&m.on(watcher::Event::Apply(meta("alice", "u1", false, "1")))),
            ["alice"]
        );
        assert_eq!(m.count("company-a"), Some(1));
        assert_eq!(m.count("company-b"), Some(0));
        // Status and spec patches: a new resourceVersion, nothing else.
        for version in ["2", "3", "4"] {
            assert!(
                m.on(watcher::Event::Apply(meta("alice", "u1", false, version)))
                    .is_empty()
            );
        }
        assert_eq!(
            names(&m.on(watcher::Event::Apply(meta("alice", "u1", true, "5")))),
            ["alice"]
        );
        assert!(
            m.on(watcher::Event::Apply(meta("alice", "u1", true, "6")))
                .is_empty()
        );
        assert_eq!(m.count("company-a"), Some(1), "going, not gone");
        assert_eq!(m.members("company-a"), Some(vec![("alice".into(), true)]));
        assert_eq!(m.members("company-b"), Some(vec![]));
        assert_eq!(
            names(&m.on(watcher::Event::Delete(meta("alice", "u1", true, "7")))),
            ["alice"]
        );
        assert_eq!(m.count("company-a"), Some(0));
        // Re-created under the same name: a new uid.
        assert_eq!(
            names(&m.on(watcher::Event::Apply(meta("alice", "u2", false, "8")))),
            ["alice"]
        );
    }

    #[test]
    fn a_relist_reports_who_vanished_while_the_watch_was_down() {
        let mut m = Membership::default();
        for (name, uid) in [("alice", "u1"), ("bob", "u2")] {
            m.on(watcher::Event::Apply(meta(name, uid, false, "1")));
        }
        assert!(m.on(watcher::Event::Init).is_empty());
        assert!(
            m.on(watcher::Event::InitApply(meta("alice", "u1", false, "9")))
                .is_empty()
        );
        assert_eq!(
            names(&m.on(watcher::Event::InitApply(meta("carol", "u3", false, "9")))),
            ["carol"]
        );
        let gone = m.on(watcher::Event::InitDone);
        assert_eq!(names(&gone), ["bob"]);
        assert_eq!(m.count("company-a"), Some(2), "alice and carol");
        assert_eq!(gone[0].namespace().as_deref(), Some("company-a"));
        // Gone for good: a later relist does not report bob again.
        m.on(watcher::Event::Init);
        assert!(
            m.on(watcher::Event::InitDone).len() == 2,
            "alice and carol were not relisted"
        );
    }
}
