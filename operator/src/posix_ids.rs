//! POSIX uid/gid allocation: stable per developer (recorded in its status),
//! unique within the company, from the configured range.

use std::collections::BTreeSet;

use crate::config::PosixIdRange;

/// The lowest id of `range` not in `used`; `None` when the range is full.
pub fn allocate(range: &PosixIdRange, used: &BTreeSet<i64>) -> Option<i64> {
    (range.first..=range.last).find(|id| !used.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_and_reports_full() {
        let range = PosixIdRange {
            first: 10,
            last: 12,
        };
        assert_eq!(allocate(&range, &BTreeSet::new()), Some(10));
        assert_eq!(allocate(&range, &BTreeSet::from([10, 12])), Some(11));
        assert_eq!(allocate(&range, &BTreeSet::from([10, 11, 12])), None);
    }
}
