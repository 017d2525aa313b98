//! L1: the in-process tier, a moka cache bounded by bytes.
//!
//! moka's `sync` flavour, not its `future` one: an L1 hit is then a plain
//! function call that can be answered before the caller's future is even
//! polled (about 80 ns cheaper per hit here), and nothing in it ever waits
//! on I/O. Its housekeeping runs inline, in small bounded batches.
//!
//! It holds *decoded* values behind `Arc<dyn Any>`, so an L1 hit is a hash
//! lookup and a reference-count increment: no deserialisation, no copy. One
//! moka cache serves every family (so the byte budget is shared and hot
//! families win space from cold ones); family names are part of every key, and
//! a family's value type is fixed when it is opened, so the downcast on a hit
//! cannot meet a value of another type.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use super::clock;

use moka::notification::RemovalCause;
use moka::sync::Cache as Moka;

/// A decoded value of some family's type.
pub(crate) type AnyValue = Arc<dyn Any + Send + Sync>;

/// Bytes charged per entry on top of its key and value: moka's own node, the
/// `Arc`, the timer-wheel slot. An estimate; it keeps a flood of tiny entries
/// (negative ones in particular) from being free.
const ENTRY_OVERHEAD: usize = 96;

/// The tag keys an entry carries (shared by the entry's copies).
pub(crate) type Tags = Arc<[String]>;

/// One L1 entry: a shared handle, so that moka's clone on every hit is one
/// reference count, whatever the entry holds.
#[derive(Clone)]
pub(crate) struct L1Entry(Arc<EntryData>);

impl std::ops::Deref for L1Entry {
    type Target = EntryData;
    fn deref(&self) -> &EntryData {
        &self.0
    }
}

/// What an L1 entry holds.
pub(crate) struct EntryData {
    /// The value, or `None` for a remembered "not found".
    pub value: Option<AnyValue>,
    /// When the entry stops being fresh (`None`: never). Between this and
    /// `expires_at` it is stale: served within the family's grace window.
    /// (Nanoseconds on [`clock`]'s timeline.)
    pub fresh_until: Option<u64>,
    /// When the entry stops being served at all (`None`: only when evicted).
    pub expires_at: Option<u64>,
    /// How long its load took, in µs (for early refresh).
    pub load_us: u32,
    /// What the entry costs against the byte budget.
    pub weight: u32,
    /// The entry's tag keys, so that a tag invalidation can find it.
    pub tags: Option<Tags>,
    /// The value rendered for HTTP (families that render), made when the
    /// entry was and weighed with it.
    pub body: Option<crate::render::Body>,
}

/// How long an entry stays fresh, then stale, from now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Lifetime {
    /// Fresh for this long (`None`: forever).
    pub fresh: Option<Duration>,
    /// Then stale, but servable, for this long.
    pub grace: Duration,
}

/// An L1 hit, as the read path sees it.
pub(crate) struct L1Hit {
    pub entry: L1Entry,
    /// Time left until it is stale (`None`: never); zero if it already is.
    pub fresh_for: Option<Duration>,
}

impl L1Hit {
    pub fn is_fresh(&self) -> bool {
        self.fresh_for.is_none_or(|d| !d.is_zero())
    }
}

impl L1Entry {
    /// Builds an entry, weighing it by its key and its *encoded* size: the
    /// decoded size of an arbitrary `T` is unknowable, and the encoded size
    /// tracks it closely enough to bound memory.
    pub fn new(
        key: &str,
        value: Option<AnyValue>,
        encoded_len: usize,
        life: Lifetime,
        load_us: u32,
        tags: Option<Tags>,
        body: Option<crate::render::Body>,
    ) -> Self {
        let rendered = body.as_ref().map_or(0, |b| b.weight());
        let weight =
            (key.len() + encoded_len + rendered + ENTRY_OVERHEAD).min(u32::MAX as usize) as u32;
        let fresh_until = life.fresh.and_then(clock::deadline);
        L1Entry(Arc::new(EntryData {
            value,
            fresh_until,
            expires_at: fresh_until
                .and_then(|f| f.checked_add(u64::try_from(life.grace.as_nanos()).ok()?)),
            load_us,
            weight,
            tags,
            body,
        }))
    }
}

/// The L1 tier.
///
/// Expiry is checked here, on read, against the deadline each entry carries,
/// rather than by moka's per-entry expiry: that costs one clock read on a hit
/// instead of moka's timer-wheel bookkeeping on every read and write, and an
/// entry past its TTL stays available to the read path (for a stale-while-
/// revalidate grace window) until it is replaced or evicted. Memory stays
/// bounded by the byte budget either way.
pub(crate) struct MemoryTier {
    cache: Moka<String, L1Entry, foldhash::fast::RandomState>,
}

impl MemoryTier {
    /// An L1 holding at most `max_bytes` (by the weights above).
    pub fn new(max_bytes: u64) -> Self {
        let cache = Moka::builder()
            .max_capacity(max_bytes)
            .weigher(|_, v: &L1Entry| v.weight)
            // Tag and pattern invalidations from the bus drop entries by
            // predicate: lazily, but never returned once registered.
            .support_invalidation_closures()
            // Runs inline on moka's housekeeping: keep it to one counter.
            .eviction_listener(|_, _, cause| {
                if cause == RemovalCause::Size {
                    metrics::counter!("larder_l1_evictions_total").increment(1);
                }
            })
            // foldhash: several times cheaper than SipHash on short keys, and
            // randomly seeded per process, so ids chosen by a client cannot be
            // aimed at one bucket.
            .build_with_hasher(foldhash::fast::RandomState::default());
        MemoryTier { cache }
    }

    /// The entry for `key`, fresh or stale, unless it is past its grace.
    #[inline]
    pub fn get(&self, key: &str) -> Option<L1Hit> {
        let entry = self.cache.get(key)?;
        let Some(fresh_until) = entry.fresh_until else {
            return Some(L1Hit {
                entry,
                fresh_for: None,
            });
        };
        let now = clock::coarse_ns();
        if entry.expires_at.is_some_and(|deadline| now >= deadline) {
            return None;
        }
        Some(L1Hit {
            fresh_for: Some(Duration::from_nanos(fresh_until.saturating_sub(now))),
            entry,
        })
    }

    pub fn insert(&self, key: String, entry: L1Entry) {
        self.cache.insert(key, entry)
    }

    pub fn invalidate(&self, key: &str) {
        self.cache.invalidate(key)
    }

    /// Drops every entry carrying tag key `tag`.
    pub fn invalidate_tag(&self, tag: &str) {
        let tag = tag.to_owned();
        self.invalidate_if(move |_, e| e.tags.as_ref().is_some_and(|t| t.contains(&tag)));
    }

    /// Drops every entry whose key matches `pattern` (see
    /// [`crate::key::matches_pattern`]).
    pub fn invalidate_pattern(&self, pattern: &str) {
        let pattern = pattern.to_owned();
        self.invalidate_if(move |k, _| crate::key::matches_pattern(&pattern, k));
    }

    /// Drops everything.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all()
    }

    fn invalidate_if(&self, predicate: impl Fn(&String, &L1Entry) -> bool + Send + Sync + 'static) {
        // Only fails if closures were not enabled at build time, which they
        // are; fall back to dropping everything rather than serving stale.
        if self.cache.invalidate_entries_if(predicate).is_err() {
            self.cache.invalidate_all();
        }
    }

    /// Entries and bytes held, after pending housekeeping has run.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size())
    }
}
