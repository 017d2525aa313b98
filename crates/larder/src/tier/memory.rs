//! L1: the in-process tier, a moka cache bounded by bytes.
//!
//! It holds *decoded* values behind `Arc<dyn Any>`, so an L1 hit is a hash
//! lookup and a reference-count increment: no deserialisation, no copy. One
//! moka cache serves every family (so the byte budget is shared and hot
//! families win space from cold ones); family names are part of every key, and
//! a family's value type is fixed when it is opened, so the downcast on a hit
//! cannot meet a value of another type.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache as Moka;
use moka::notification::RemovalCause;

/// A decoded value of some family's type.
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// Bytes charged per entry on top of its key and value: moka's own node, the
/// `Arc`, the timer-wheel slot. An estimate; it keeps a flood of tiny entries
/// (negative ones in particular) from being free.
const ENTRY_OVERHEAD: usize = 96;

/// One L1 entry.
#[derive(Clone)]
pub(crate) struct L1Entry {
    /// The value, or `None` for a remembered "not found".
    pub value: Option<AnyValue>,
    /// How long the entry lives from insertion (`None`: until evicted).
    pub ttl: Option<Duration>,
    /// What the entry costs against the byte budget.
    pub weight: u32,
}

impl L1Entry {
    /// Builds an entry, weighing it by its key and its *encoded* size: the
    /// decoded size of an arbitrary `T` is unknowable, and the encoded size
    /// tracks it closely enough to bound memory.
    pub fn new(
        key: &str,
        value: Option<AnyValue>,
        encoded_len: usize,
        ttl: Option<Duration>,
    ) -> Self {
        let weight = (key.len() + encoded_len + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32;
        L1Entry { value, ttl, weight }
    }
}

/// Gives each entry its own TTL, reset when the entry is replaced.
struct PerEntryTtl;

impl Expiry<String, L1Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, v: &L1Entry, _: Instant) -> Option<Duration> {
        v.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &L1Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        v.ttl
    }
}

/// The L1 tier.
pub(crate) struct MemoryTier {
    cache: Moka<String, L1Entry>,
}

impl MemoryTier {
    /// An L1 holding at most `max_bytes` (by the weights above).
    pub fn new(max_bytes: u64) -> Self {
        let cache = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_, v: &L1Entry| v.weight)
            .expire_after(PerEntryTtl)
            // Runs inline on moka's housekeeping: keep it to one counter.
            .eviction_listener(|_, _, cause| {
                if cause == RemovalCause::Size {
                    metrics::counter!("larder_l1_evictions_total").increment(1);
                }
            })
            .build();
        MemoryTier { cache }
    }

    pub async fn get(&self, key: &str) -> Option<L1Entry> {
        self.cache.get(key).await
    }

    pub async fn insert(&self, key: String, entry: L1Entry) {
        self.cache.insert(key, entry).await
    }

    pub async fn invalidate(&self, key: &str) {
        self.cache.invalidate(key).await
    }

    /// Entries and bytes held, after pending housekeeping has run.
    pub async fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks().await;
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
