//! Leases this process could not settle.

use std::collections::HashMap;

/// Leases this process took and could not fill or give back (Redis failed
/// mid-way), by key: the next load of the key here takes them over (see
/// the lease script) instead of waiting out their expiry. Bounded: past
/// `MAX_ORPHANS` the rest simply expire.
#[derive(Default)]
pub(crate) struct OrphanedLeases {
    tokens: std::sync::Mutex<HashMap<String, Vec<String>>>,
}

/// Keys with orphaned leases remembered, and tokens per key.
const MAX_ORPHANS: usize = 10_000;
const MAX_TOKENS_PER_KEY: usize = 4;

impl OrphanedLeases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<String>>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn keep(&self, key: &str, token: &str) {
        self.keep_all(key, vec![token.to_owned()]);
    }

    pub fn keep_all(&self, key: &str, tokens: Vec<String>) {
        if tokens.is_empty() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= MAX_ORPHANS && !map.contains_key(key) {
            return;
        }
        let kept = map.entry(key.to_owned()).or_default();
        for token in tokens {
            if kept.len() < MAX_TOKENS_PER_KEY && !kept.contains(&token) {
                kept.push(token);
            }
        }
    }

    /// The orphaned tokens of `key`, forgotten here: the caller passes them
    /// to the lease script, and keeps them again if that fails.
    pub fn take(&self, key: &str) -> Vec<String> {
        let mut map = self.lock();
        if map.is_empty() {
            return Vec::new();
        }
        map.remove(key).unwrap_or_default()
    }
}
