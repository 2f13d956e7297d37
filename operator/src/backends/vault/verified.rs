//! What this process last read or wrote at a Vault path, trusted for a
//! while: a resync of unchanged tenants then costs no Vault reads. Drift
//! made behind the operator's back is corrected once the entry expires (and
//! at every start, the memory being the process's own); what the operator
//! changes or deletes itself updates the entry at once.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Digests of what Vault holds, by key (`policy:…`, `role:…`, `kv:…`).
#[derive(Debug, Default)]
pub(super) struct Verified {
    /// How long an entry is trusted; zero trusts nothing (every ensure reads).
    every: Duration,
    seen: Mutex<BTreeMap<String, (u64, Instant)>>,
}

/// A digest of `value` (stable within the process, which is all it needs).
pub(super) fn digest(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Verified {
    pub(super) fn new(every: Duration) -> Self {
        Self {
            every,
            seen: Mutex::default(),
        }
    }

    /// Whether Vault was seen holding `digest` at `key` within the interval.
    pub(super) fn holds(&self, key: &str, digest: u64) -> bool {
        if self.every.is_zero() {
            return false;
        }
        self.seen.lock().is_ok_and(|seen| {
            seen.get(key)
                .is_some_and(|(d, at)| *d == digest && at.elapsed() < self.every)
        })
    }

    /// Vault holds `digest` at `key` now (just read or written).
    pub(super) fn record(&self, key: String, digest: u64) {
        if self.every.is_zero() {
            return;
        }
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key, (digest, Instant::now()));
        }
    }

    /// Forgets `key` and every key below it (`key/…`). Those are exactly
    /// the keys in `key/` .. `key0` (`0` follows `/`): one sorted range, so
    /// a deletion does not scan every tenant's entries.
    pub(super) fn forget_below(&self, key: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(key);
            let (below, after) = (format!("{key}/"), format!("{key}0"));
            seen.extract_if(below..after, |_, _| true).for_each(drop);
        }
    }

    /// Entries held (a gauge of its memory).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_what_was_recorded_until_it_expires_or_is_forgotten() {
        let verified = Verified::new(Duration::from_mins(1));
        verified.record("policy:a".into(), digest(&"hcl"));
        verified.record("kv:companies/x/owner".into(), digest(&"uid"));
        verified.record("kv:companies/xy".into(), digest(&"uid"));
        verified.record("kv:companies/x-y".into(), digest(&"uid"));
        verified.record("kv:companies/x0".into(), digest(&"uid"));
        verified.record("kv:companies/x/a/b".into(), digest(&"uid"));
        assert!(verified.holds("policy:a", digest(&"hcl")));
        assert!(!verified.holds("policy:a", digest(&"other hcl")));
        assert!(!verified.holds("policy:b", digest(&"hcl")));
        verified.forget_below("kv:companies/x");
        assert!(!verified.holds("kv:companies/x/owner", digest(&"uid")));
        assert!(!verified.holds("kv:companies/x/a/b", digest(&"uid")));
        for sibling in ["kv:companies/xy", "kv:companies/x-y", "kv:companies/x0"] {
            assert!(
                verified.holds(sibling, digest(&"uid")),
                "{sibling}: a sibling with the same prefix stays (sorted before and after `x/`)"
            );
        }
        assert_eq!(verified.len(), 4);

        let expired = Verified::new(Duration::from_millis(1));
        expired.record("policy:a".into(), digest(&"hcl"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!expired.holds("policy:a", digest(&"hcl")));
    }

    #[test]
    fn an_interval_of_zero_trusts_nothing() {
        let verified = Verified::new(Duration::ZERO);
        verified.record("policy:a".into(), digest(&"hcl"));
        assert!(!verified.holds("policy:a", digest(&"hcl")));
        assert_eq!(verified.len(), 0);
    }
}
