//! What this process last read or wrote at a Vault path, trusted for a
//! while: a resync of unchanged tenants then costs no Vault reads. Drift
//! made behind the operator's back is corrected once the entry expires (and
//! at every start, the memory being the process's own); what the operator
//! changes or deletes itself updates the entry at once.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Digests of what Vault holds, by key (`policy:…`, `role:…`, `kv:…`).
///
/// Keys are kept as their 64-bit hashes: at 10,000 Developers (three keys
/// each) the paths themselves, in a sorted map, cost about 450 bytes a
/// Developer; a hash and a mark cost about 40. Two keys whose hashes
/// collide (about one chance in 10^10 at that size) would also need equal
/// digests to be confused.
#[derive(Debug, Default)]
pub(super) struct Verified {
    /// How long an entry is trusted; zero trusts nothing (every ensure reads).
    every: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What was seen at each key (by its hash).
    seen: HashMap<u64, Mark>,
    /// Keys forgotten with everything below them (by hash), and when: an
    /// entry below one, recorded before, is not trusted. Kept for one
    /// interval, after which every entry it could hide has expired.
    forgotten: HashMap<u64, Instant>,
    /// When expired entries and markers were last dropped.
    swept: Option<Instant>,
}

/// Forgets its key once more when dropped (see [`Verified::forgetting`]).
#[must_use = "the key is forgotten again when this is dropped: hold it across the deletion"]
pub(super) struct Forgetting<'a> {
    verified: &'a Verified,
    key: String,
}

impl Drop for Forgetting<'_> {
    fn drop(&mut self) {
        self.verified.forget_below(&self.key);
    }
}

/// A digest and when Vault was seen holding it.
#[derive(Clone, Copy, Debug)]
struct Mark {
    digest: u64,
    at: Instant,
}

/// A digest of `value` (stable within the process, which is all it needs).
pub(super) fn digest(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// `key` and each of its ancestors (`a/b/c`: `a`, `a/b`, `a/b/c`).
fn key_and_ancestors(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/')
        .map(|(at, _)| &key[..at])
        .chain(std::iter::once(key))
}

impl Verified {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            inner: Mutex::default(),
        }
    }

    /// Whether Vault was seen holding `digest` at `key` within the interval.
    pub(super) fn holds(&self, key: &str, digest: u64) -> bool {
        if self.every.is_zero() {
            return false;
        }
        self.inner.lock().is_ok_and(|inner| {
            inner.seen.get(&self::digest(&key)).is_some_and(|mark| {
                mark.digest == digest
                    && mark.at.elapsed() < self.every
                    && !key_and_ancestors(key).any(|k| {
                        inner
                            .forgotten
                            .get(&self::digest(&k))
                            .is_some_and(|at| *at >= mark.at)
                    })
            })
        })
    }

    /// Vault held `digest` at `key` when asked by a request sent at `since`
    /// (taken before the read or write, not after its answer: a deletion
    /// that overlapped the request leaves a later marker, and the entry is
    /// not trusted).
    pub(super) fn record(&self, key: &str, digest: u64, since: Instant) {
        if self.every.is_zero() {
            return;
        }
        if let Ok(mut inner) = self.inner.lock() {
            inner
                .seen
                .insert(self::digest(&key), Mark { digest, at: since });
            self.sweep(&mut inner, Instant::now());
        }
    }

    /// Forgets `key` and every key below it (`key/…`): a deletion's
    /// entries are not trusted again, and their memory goes with the next
    /// sweep.
    fn forget_below(&self, key: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            let now = Instant::now();
            inner.seen.remove(&digest(&key));
            inner.forgotten.insert(digest(&key), now);
            self.sweep(&mut inner, now);
        }
    }

    /// Forgets `key` and everything below it now and again when the guard
    /// is dropped: held across a deletion, it also distrusts what a read
    /// sent while the deletion ran saw, whichever way the deletion ends.
    pub(super) fn forgetting(&self, key: String) -> Forgetting<'_> {
        self.forget_below(&key);
        Forgetting {
            verified: self,
            key,
        }
    }

    /// Drops what has expired, once per interval: a long-running operator
    /// whose tenants come and go keeps only what it can still trust.
    fn sweep(&self, inner: &mut Inner, now: Instant) {
        if inner
            .swept
            .is_some_and(|at| now.duration_since(at) < self.every)
        {
            return;
        }
        let every = self.every;
        inner
            .seen
            .retain(|_, mark| now.duration_since(mark.at) < every);
        inner
            .forgotten
            .retain(|_, at| now.duration_since(*at) < every);
        inner.swept = Some(now);
    }

    /// Entries and markers held (a gauge of its memory).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.inner
            .lock()
            .map_or(0, |inner| inner.seen.len() + inner.forgotten.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_recorded_until_it_expires_or_is_forgotten() {
        let verified = Verified::new(Duration::from_mins(1));
        verified.record("policy:a", digest(&"hcl"), Instant::now());
        verified.record("kv:companies/x/owner", digest(&"uid"), Instant::now());
        verified.record("kv:companies/xy", digest(&"uid"), Instant::now());
        verified.record("kv:companies/x-y", digest(&"uid"), Instant::now());
        verified.record("kv:companies/x0", digest(&"uid"), Instant::now());
        verified.record("kv:companies/x/a/b", digest(&"uid"), Instant::now());
        assert!(verified.holds("policy:a", digest(&"hcl")));
        assert!(!verified.holds("policy:a", digest(&"other hcl")));
        assert!(!verified.holds("policy:b", digest(&"hcl")));
        verified.forget_below("kv:companies/x");
        assert!(!verified.holds("kv:companies/x/owner", digest(&"uid")));
        assert!(!verified.holds("kv:companies/x/a/b", digest(&"uid")));
        for sibling in ["kv:companies/xy", "kv:companies/x-y", "kv:companies/x0"] {
            assert!(
                verified.holds(sibling, digest(&"uid")),
                "{sibling}: a sibling with the same prefix stays"
            );
        }
        // Written again after the deletion: trusted again.
        verified.record("kv:companies/x/owner", digest(&"uid 2"), Instant::now());
        assert!(verified.holds("kv:companies/x/owner", digest(&"uid 2")));
        assert!(!verified.holds("kv:companies/x/a/b", digest(&"uid")));
        // A key is forgotten with itself, not only below.
        verified.forget_below("policy:a");
        assert!(!verified.holds("policy:a", digest(&"hcl")));

        let expired = Verified::new(Duration::from_millis(1));
        expired.record("policy:a", digest(&"hcl"), Instant::now());
        std::thread::sleep(Duration::from_millis(5));
        assert!(!expired.holds("policy:a", digest(&"hcl")));
    }

    #[test]
    fn what_has_expired_is_dropped_and_a_deletion_frees_its_entries() {
        let every = Duration::from_millis(50);
        let verified = Verified::new(every);
        for developer in 0..100 {
            verified.record(
                &format!("kv:companies/x/{developer}"),
                digest(&"uid"),
                Instant::now(),
            );
        }
        verified.forget_below("kv:companies/x");
        assert_eq!(
            verified.len(),
            101,
            "dropped at the next sweep, not at once"
        );
        std::thread::sleep(every * 2);
        verified.record("policy:a", digest(&"hcl"), Instant::now());
        assert_eq!(verified.len(), 1, "only the fresh entry is left");
        assert!(verified.holds("policy:a", digest(&"hcl")));
    }

    #[test]
    fn what_a_request_overlapping_a_deletion_saw_is_not_trusted() {
        let verified = Verified::new(Duration::from_mins(1));
        // Sent before the deletion started, answered after it ended.
        let before = Instant::now();
        drop(verified.forgetting("kv:companies/x".to_owned()));
        verified.record("kv:companies/x/owner", digest(&"uid"), before);
        assert!(!verified.holds("kv:companies/x/owner", digest(&"uid")));
        // Sent while the deletion ran (it may have seen the old secret).
        let deleting = verified.forgetting("kv:companies/x".to_owned());
        let during = Instant::now();
        verified.record("kv:companies/x/owner", digest(&"uid"), during);
        drop(deleting);
        assert!(!verified.holds("kv:companies/x/owner", digest(&"uid")));
        // Sent after it ended: trusted (a moment later: an equal instant
        // is not trusted).
        std::thread::sleep(Duration::from_millis(2));
        verified.record("kv:companies/x/owner", digest(&"uid"), Instant::now());
        assert!(verified.holds("kv:companies/x/owner", digest(&"uid")));
    }

    #[test]
    fn an_interval_of_zero_trusts_nothing() {
        let verified = Verified::new(Duration::ZERO);
        verified.record("policy:a", digest(&"hcl"), Instant::now());
        assert!(!verified.holds("policy:a", digest(&"hcl")));
        assert_eq!(verified.len(), 0);
    }
}
