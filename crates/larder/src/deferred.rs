//! The journal of invalidations that could not reach Redis (see
//! `recovery.rs` for what happens to them): keys, tags and patterns,
//! bounded, replayed by the recovery task.

use std::collections::HashSet;
use std::sync::Mutex;

/// The most keys, tags and patterns the journal lists before it gives up
/// listing and replays as "everything".
pub(crate) const MAX_DEFERRED: usize = 100_000;

#[derive(Default)]
pub(crate) struct Journal {
    pub keys: HashSet<String>,
    pub tags: HashSet<String>,
    pub patterns: HashSet<String>,
    /// More than `MAX_DEFERRED` were deferred: replay deletes everything.
    pub overflowed: bool,
}

impl Journal {
    pub fn len(&self) -> usize {
        self.keys.len() + self.tags.len() + self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && !self.overflowed
    }

    fn absorb(&mut self, other: Journal) {
        self.overflowed |= other.overflowed;
        if self.overflowed {
            self.clear_lists();
            return;
        }
        self.keys.extend(other.keys);
        self.tags.extend(other.tags);
        self.patterns.extend(other.patterns);
        self.check_size();
    }

    fn check_size(&mut self) {
        if self.len() > MAX_DEFERRED {
            self.overflowed = true;
            self.clear_lists();
        }
    }

    fn clear_lists(&mut self) {
        self.keys = HashSet::new();
        self.tags = HashSet::new();
        self.patterns = HashSet::new();
    }
}

/// The invalidations waiting for Redis.
#[derive(Default)]
pub(crate) struct Deferred {
    journal: Mutex<Journal>,
}

impl Deferred {
    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, what: &'static str, insert: impl FnOnce(&mut Journal) -> bool) {
        let mut journal = self.lock();
        if journal.overflowed {
            return;
        }
        if insert(&mut journal) {
            metrics::counter!("larder_invalidations_deferred_total", "kind" => what).increment(1);
            journal.check_size();
        }
    }

    /// Defers the deletion of `key` (a full Redis key).
    pub fn key(&self, key: &str) {
        self.add("key", |j| j.keys.insert(key.to_owned()));
    }

    /// Drops a deferred deletion of `key`: a write or an invalidation of it
    /// has since reached Redis, which superseded it (replaying it would only
    /// delete the newer value and cost a reload).
    pub fn forget_key(&self, key: &str) {
        let mut journal = self.lock();
        if !journal.keys.is_empty() {
            journal.keys.remove(key);
        }
    }

    /// Defers the bump of tag key `tag`.
    pub fn tag(&self, tag: &str) {
        self.add("tag", |j| j.tags.insert(tag.to_owned()));
    }

    /// Defers the deletion of every key matching `pattern`.
    pub fn pattern(&self, pattern: &str) {
        self.add("pattern", |j| j.patterns.insert(pattern.to_owned()));
    }

    /// How many are waiting (`usize::MAX` once it overflowed).
    pub fn len(&self) -> usize {
        let journal = self.lock();
        if journal.overflowed {
            usize::MAX
        } else {
            journal.len()
        }
    }

    pub fn take(&self) -> Journal {
        std::mem::take(&mut *self.lock())
    }

    /// Puts back what a failed replay did not finish.
    pub fn restore(&self, undone: Journal) {
        self.lock().absorb(undone);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_bounded_and_overflows_to_everything() {
        let deferred = Deferred::default();
        for i in 0..MAX_DEFERRED {
            deferred.key(&format!("k{i}"));
        }
        deferred.key("k0"); // already listed
        assert_eq!(deferred.len(), MAX_DEFERRED);
        deferred.tag("one too many");
        assert_eq!(deferred.len(), usize::MAX, "overflowed");
        let journal = deferred.take();
        assert!(journal.overflowed && journal.keys.is_empty());
        assert_eq!(deferred.len(), 0);
    }

    #[test]
    fn what_a_failed_replay_left_is_kept_with_what_came_since() {
        let deferred = Deferred::default();
        deferred.key("a");
        let mut undone = deferred.take();
        deferred.key("b");
        undone.tags.insert("t".into());
        deferred.restore(undone);
        let journal = deferred.take();
        assert_eq!(journal.keys.len(), 2);
        assert_eq!(journal.tags.len(), 1);
    }
}
