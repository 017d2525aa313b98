//! The families opened in a cache: the state each one shares between its
//! handles ([`FamilyCore`]) and the map of them.
//!
//! A module of its own so that the parts that need to find the families (the
//! bus applying a tag, the recovery replaying one, the operator's commands)
//! depend on it, not on the cache or the family handles, which depend on it
//! in turn: every import between them points one way.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::flight::Flights;
use crate::key::KeyLayout;
use crate::metrics::FamilyMetrics;
use crate::policy::{CompiledPolicy, Strategy};
use crate::tier::memory::Tags;

/// The state of one family shared by all its handles.
pub(crate) struct FamilyCore {
    pub policy: CompiledPolicy,
    pub namespace: String,
    /// The family's keys, namespace and hash tag included.
    pub layout: KeyLayout,
    pub metrics: FamilyMetrics,
    /// Keys whose last refresh failed, and until when not to retry.
    refresh_backoff: Mutex<HashMap<String, Instant>>,
    /// Renders values for HTTP as they enter L1 (families with
    /// `render_json`; set by `Cache::family`, which knows `V`).
    pub renderer: Option<crate::render::Renderer>,
    /// Nanoseconds of freshness left, per µs of load time, beyond which
    /// early refresh cannot fire ([`early_refresh_due`](Self::early_refresh_due)):
    /// `30 * beta` in those units, worked out once.
    early_refresh_far: u64,
}

impl FamilyCore {
    pub fn new(namespace: &str, policy: CompiledPolicy) -> Self {
        let metrics = FamilyMetrics::new(&policy.policy.name);
        let layout = KeyLayout::full(namespace, &policy.template);
        let early_refresh_far = (policy.policy.early_refresh.max(0.0) * 30_000.0).ceil() as u64;
        FamilyCore {
            policy,
            namespace: namespace.to_string(),
            layout,
            metrics,
            refresh_backoff: Mutex::new(HashMap::new()),
            renderer: None,
            early_refresh_far,
        }
    }

    pub fn name(&self) -> &str {
        &self.policy.policy.name
    }

    /// Whether writes go through the write-behind queue, so that reads must
    /// look for a pending write before loading.
    pub fn write_behind(&self) -> bool {
        self.policy.policy.strategy == Strategy::WriteBehind
    }

    /// The tag keys of the entry at `key`, if the family has tags.
    pub fn tag_keys(&self, key: &str) -> Option<Tags> {
        if self.policy.tags.is_empty() {
            return None;
        }
        let keys: Vec<String> = self
            .policy
            .tags
            .iter()
            .filter_map(|t| t.key_for(&self.namespace, key))
            .collect();
        Some(keys.into())
    }

    /// The key of the pending-write marker beside the value at `key`.
    pub fn pending_key(key: &str) -> String {
        format!("{key}:wb")
    }

    /// Whether a hit whose entry is fresh for `fresh_for` more and whose
    /// load took `load_us` should refresh it now: XFetch (Vattani,
    /// Chierichetti, Lowenstein, VLDB 2015), refresh when
    /// `now - delta * beta * ln(rand) >= expiry`. The probability rises as
    /// expiry nears, faster for entries that are slow to load.
    #[inline]
    pub fn early_refresh_due(&self, left: Duration, load_us: u32) -> bool {
        let beta = self.policy.policy.early_refresh;
        if beta <= 0.0 || load_us == 0 {
            return false;
        }
        // Far from expiry the probability is below e^-30: skip the draw.
        // In integers, the way nearly every hit ends: no float on the hit
        // path.
        let far_ns = u64::from(load_us).saturating_mul(self.early_refresh_far);
        let left_ns = left
            .as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(left.subsec_nanos()));
        if left_ns > far_ns {
            return false;
        }
        let delta = f64::from(load_us) / 1e6 * beta;
        let u = 1.0 - rand::random::<f64>(); // (0, 1]
        left.as_secs_f64() <= -delta * u.ln()
    }

    /// Whether a refresh of `key` failed a moment ago (it is not retried
    /// on every request while the database is down).
    pub fn refresh_backed_off(&self, key: &str) -> bool {
        let map = self
            .refresh_backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.get(key).is_some_and(|until| Instant::now() < *until)
    }

    /// Records a failed refresh of `key`: the next waits a second (or a
    /// tenth of the TTL, if shorter).
    pub fn back_off_refresh(&self, key: &str) {
        let pause = self
            .policy
            .ttl
            .duration()
            .map_or(Duration::from_secs(1), |t| {
                (t / 10).min(Duration::from_secs(1))
            });
        let mut map = self
            .refresh_backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            let now = Instant::now();
            map.retain(|_, until| *until > now);
        }
        map.insert(key.to_owned(), Instant::now() + pause);
    }
}

/// The opened families, by name, with the `TypeId` of their `(K, V)`.
pub(crate) type Families = Mutex<HashMap<String, (TypeId, Arc<FamilyCore>)>>;

/// The cores of the opened families that carry tags.
pub(crate) fn tagged_cores(families: &Families) -> Vec<Arc<FamilyCore>> {
    families
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .values()
        .map(|(_, core)| Arc::clone(core))
        .filter(|core| !core.policy.tags.is_empty())
        .collect()
}

/// Voids the loads and writes in progress whose key carries tag key `tag`:
/// they may have read rows from before the tag's invalidation.
pub(crate) fn void_tagged(flights: &Flights, families: &Families, tag: &str) {
    for core in tagged_cores(families) {
        flights.void_matching(|key| {
            key.starts_with(core.layout.prefix())
                && core
                    .tag_keys(key)
                    .is_some_and(|tags| tags.iter().any(|t| t == tag))
        });
    }
}
