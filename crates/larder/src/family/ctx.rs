//! What loads and writes need, detached from the caller's borrow: the tiers,
//! the codec, entry lifetimes, reading Redis.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::answer;
use crate::Error;
use crate::cache::Shared;
use crate::codec::{self, Decoded, EncodeError, Encoded, Meta};
use crate::flight::{Lookup, Source};
use crate::policy::CompiledPolicy;
use crate::registry::FamilyCore;
use crate::tier::memory::{AnyValue, L1Entry, L1Hit, Lifetime};

/// Most keys per `MGET` in a batch read on one server; a batch of more goes
/// out as several `MGET`s in one pipeline (still one round trip), so that
/// one huge command does not hold Redis's single thread.
const MGET_CHUNK: usize = 256;

/// Shared state and family, cheap to clone into a load.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub core: Arc<FamilyCore>,
}

/// The first bytes of a value as a reader found it (empty: none): enough
/// for the lease script to tell that a fill landed since (the header and
/// `fresh_until` differ from one fill to the next).
pub(crate) type Seen = Vec<u8>;

/// How many leading bytes of a value make its [`Seen`].
const SEEN_LEN: usize = 13;

/// What Redis said about one key.
pub(crate) enum L2Answer {
    /// A usable value or negative entry, fresh or (within grace) stale.
    Hit {
        lookup: Lookup,
        /// How long L1 may keep it, fresh and then stale.
        life: Lifetime,
        load_us: u32,
        weight: usize,
        /// The first bytes of the value key as read (see [`Seen`]).
        seen: Seen,
    },
    /// Nothing usable: load, and stamp the fill with these tag versions.
    Miss { tag_versions: Vec<u64>, seen: Seen },
    /// Redis did not answer: load, and do not try to store.
    Down,
}

impl Ctx {
    pub fn policy(&self) -> &CompiledPolicy {
        &self.core.policy
    }

    pub fn name(&self) -> &str {
        self.core.name()
    }

    // --- L1 ---------------------------------------------------------------

    fn uses_l1(&self) -> bool {
        self.shared.l1.is_some() && self.core.policy.policy.l1
    }

    pub fn l1_get(&self, key: &str) -> Option<L1Hit> {
        match &self.shared.l1 {
            Some(l1) if self.core.policy.policy.l1 => l1.get(key),
            _ => None,
        }
    }

    /// Puts a value in L1, fresh for at most its own remaining TTL, the
    /// family's TTL and the cache's `l1_max_ttl`, whichever is shortest.
    pub fn l1_put(
        &self,
        key: String,
        value: Option<AnyValue>,
        weight: usize,
        life: Lifetime,
        load_us: u32,
    ) {
        if !self.uses_l1() {
            return;
        }
        let caps = [
            life.fresh,
            self.policy().ttl.duration(),
            self.shared.l1_max_ttl,
        ];
        let life = Lifetime {
            fresh: caps.into_iter().flatten().min(),
            grace: life.grace,
        };
        if life.fresh.is_some_and(|t| t.is_zero()) && life.grace.is_zero() {
            return;
        }
        if let Some(l1) = &self.shared.l1 {
            let tags = self.core.tag_keys(&key);
            // Rendered here, once per entry, so that every hit serves the
            // same bytes (and the byte budget counts them).
            let body = match (&value, self.core.renderer) {
                (Some(v), Some(render)) => render(v),
                _ => None,
            };
            let entry = L1Entry::new(&key, value, weight, life, load_us, tags, body);
            l1.insert(key, entry);
        }
    }

    /// Puts a value in L1 unless `void` says an invalidation (or a newer
    /// write) of the key came in since it was read. Checked again after the
    /// put: an invalidation landing between the check and the put voids
    /// first and drops L1 second, so whichever side of our put its drop
    /// falls on, one of the two checks sees it.
    pub fn l1_put_unless(
        &self,
        void: impl Fn() -> bool,
        key: String,
        value: Option<AnyValue>,
        weight: usize,
        life: Lifetime,
        load_us: u32,
    ) {
        if void() {
            return;
        }
        self.l1_put(key.clone(), value, weight, life, load_us);
        if void() {
            self.l1_remove(&key);
        }
    }

    pub fn l1_remove(&self, key: &str) {
        if let Some(l1) = &self.shared.l1 {
            l1.invalidate(key);
        }
    }

    pub fn answer<V: Send + Sync + 'static>(
        &self,
        lookup: Lookup,
    ) -> Result<Option<Arc<V>>, Error> {
        answer(&self.core, lookup)
    }

    // --- lifetimes --------------------------------------------------------

    /// The lifetime of a value just loaded or written with TTL `ttl`.
    pub fn lifetime_of_new(&self, ttl: Option<Duration>, negative: bool) -> Lifetime {
        Lifetime {
            fresh: ttl,
            grace: if negative {
                Duration::ZERO
            } else {
                self.policy().grace()
            },
        }
    }

    /// How long Redis keeps a value written with TTL `ttl`: through its
    /// grace window too (`None`: no expiry).
    pub fn redis_ttl(&self, ttl: Option<Duration>, negative: bool) -> Option<Duration> {
        ttl.map(|t| t + self.lifetime_of_new(ttl, negative).grace)
    }

    /// The lifetime left to a value read from Redis.
    fn lifetime_of_stored(&self, meta: &Meta, negative: bool) -> Lifetime {
        let grace = if negative {
            Duration::ZERO
        } else {
            self.policy().grace()
        };
        match meta.remaining() {
            None => Lifetime { fresh: None, grace },
            Some(left) if !left.is_zero() => Lifetime {
                fresh: Some(left),
                grace,
            },
            Some(_) => {
                // Already stale: what is left of the grace window.
                let overdue =
                    Duration::from_millis(codec::unix_ms().saturating_sub(meta.fresh_until_ms));
                Lifetime {
                    fresh: Some(Duration::ZERO),
                    grace: grace.saturating_sub(overdue),
                }
            }
        }
    }

    // --- codec ------------------------------------------------------------

    pub fn encode<V: Serialize>(
        &self,
        value: Option<&V>,
        meta: &Meta,
    ) -> Result<Encoded, EncodeError> {
        let p = &self.policy().policy;
        match value {
            Some(v) => codec::encode(v, p.codec, p.compress_above, p.max_value_size, meta),
            None => Ok(codec::encode_negative(meta)),
        }
    }

    pub fn encode_error(&self, e: EncodeError) -> Error {
        let family = self.name().to_string();
        match e {
            EncodeError::TooLarge(size) => {
                self.core.metrics.oversize();
                Error::ValueTooLarge {
                    family,
                    size,
                    max: self.core.policy.policy.max_value_size,
                }
            }
            EncodeError::Serialize(reason) => Error::Encode { family, reason },
        }
    }

    // --- reading Redis ----------------------------------------------------

    /// The keys one read needs: the value, the pending write-behind marker
    /// (write-behind families), the tag versions (tagged families). All but
    /// the tags share the value's hash tag.
    fn probe_keys(&self, key: &str, out: &mut Vec<String>) -> usize {
        let start = out.len();
        out.push(key.to_owned());
        if self.core.write_behind() {
            out.push(FamilyCore::pending_key(key));
        }
        if let Some(tags) = self.core.tag_keys(key) {
            out.extend(tags.iter().cloned());
        }
        out.len() - start
    }

    fn hit<V: Send + Sync + 'static>(&self, d: Decoded<V>, seen: Seen) -> L2Answer {
        let negative = d.value.is_none();
        let life = self.lifetime_of_stored(&d.meta, negative);
        L2Answer::Hit {
            lookup: Lookup {
                stale: life.fresh.is_some_and(|f| f.is_zero()),
                value: d.value.map(|v| Arc::new(v) as AnyValue),
                source: Source::L2,
            },
            life,
            load_us: d.meta.load_us,
            weight: d.payload_len,
            seen,
        }
    }

    /// Reads `keys` from Redis in one round trip (one per master on a
    /// cluster, in parallel) and judges each.
    pub async fn read_l2<V>(&self, keys: &[&str]) -> Vec<L2Answer>
    where
        V: DeserializeOwned + Send + Sync + 'static,
    {
        let Some(l2) = &self.shared.l2 else {
            // Without Redis, a write-behind family's pending writes are in
            // this process's queue.
            if self.core.write_behind() {
                let queue = self.shared.local_queue(self.name());
                let max = self.policy().policy.max_value_size;
                return keys
                    .iter()
                    .map(|k| {
                        match queue
                            .pending(k)
                            .and_then(|b| codec::decode::<V>(&b, max).ok())
                        {
                            Some(d) => self.hit(d, Vec::new()),
                            None => L2Answer::Miss {
                                tag_versions: Vec::new(),
                                seen: Vec::new(),
                            },
                        }
                    })
                    .collect();
            }
            return keys.iter().map(|_| L2Answer::Down).collect();
        };
        let mut probe = Vec::with_capacity(keys.len());
        let mut widths = Vec::with_capacity(keys.len());
        for key in keys {
            widths.push(self.probe_keys(key, &mut probe));
        }
        let refs: Vec<&str> = probe.iter().map(String::as_str).collect();
        // Per key: on a cluster, the keys of a master that failed are
        // unanswered while the others are read.
        let replies = l2.get_each(&refs, MGET_CHUNK).await;
        if replies.len() != probe.len() {
            self.core.metrics.redis_error();
            return keys.iter().map(|_| L2Answer::Down).collect();
        }
        if replies.iter().any(Result::is_err) {
            self.core.metrics.redis_error();
            tracing::debug!(family = %self.name(), "redis read failed for some keys; loading those from source");
        }
        let mut broken: Vec<String> = Vec::new();
        let mut answers = Vec::with_capacity(keys.len());
        let mut replies = replies.into_iter();
        for (key, width) in keys.iter().zip(widths) {
            let slot: Result<Vec<Option<Vec<u8>>>, ()> = replies.by_ref().take(width).collect();
            match slot {
                Ok(slot) => answers.push(self.judge::<V>(key, slot, &mut broken)),
                Err(()) => answers.push(L2Answer::Down),
            }
        }
        if !broken.is_empty() {
            let refs: Vec<&str> = broken.iter().map(String::as_str).collect();
            if l2.unlink(&refs).await.is_err() {
                self.core.metrics.redis_error();
            }
        }
        answers
    }

    /// Decides what one key's probe replies mean.
    fn judge<V>(
        &self,
        key: &str,
        mut slot: Vec<Option<Vec<u8>>>,
        broken: &mut Vec<String>,
    ) -> L2Answer
    where
        V: DeserializeOwned + Send + Sync + 'static,
    {
        let ntags = self.core.policy.tags.len();
        let tag_versions: Vec<u64> = slot
            .split_off(slot.len() - ntags)
            .into_iter()
            .map(|v| {
                v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        let pending = if self.core.write_behind() {
            slot.pop().flatten()
        } else {
            None
        };
        let value = slot.pop().flatten();
        let mut seen: Seen = value
            .as_deref()
            .map_or(Vec::new(), |b| b[..b.len().min(SEEN_LEN)].to_vec());
        // Anything that does not decode is deleted and reloaded, including a
        // value of another layout version: during an upgrade that changes the
        // layout, old and new processes treat each other's values as misses
        // (deploy the new version under a new namespace to avoid the churn).
        let mut decode = |bytes: Option<Vec<u8>>, at: String| -> Option<Decoded<V>> {
            match codec::decode::<V>(&bytes?, self.policy().policy.max_value_size) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.core.metrics.decode_error();
                    tracing::warn!(family = %self.name(), key = %at, error = %e, "value in redis does not decode; deleting it and reloading");
                    broken.push(at);
                    None
                }
            }
        };
        let value = match decode(value, key.to_owned()) {
            Some(d) => Some(d).filter(|d| d.meta.tags == tag_versions),
            None => {
                // Absent, or broken and deleted below.
                seen.clear();
                None
            }
        };
        let pending = if self.core.write_behind() {
            // A persisted mark (cluster) says the write is in the database.
            decode(
                pending.filter(|p| !codec::is_persisted_mark(p)),
                FamilyCore::pending_key(key),
            )
        } else {
            None
        };
        // A write not yet in the database is newer than anything loaded from
        // it; between two written values, the higher version wins.
        let chosen = match (value, pending) {
            (Some(v), Some(p)) if p.meta.version > v.meta.version => Some(p),
            (Some(v), _) => Some(v),
            (None, p) => p,
        };
        match chosen {
            // A pending write is the newest truth until the worker persists
            // it: never stale, never refreshed from the database under it.
            Some(d) if self.core.write_behind() && d.meta.version > 0 => {
                let mut hit = self.hit(d, seen);
                if let L2Answer::Hit { lookup, life, .. } = &mut hit {
                    lookup.stale = false;
                    *life =
                        self.lifetime_of_new(self.policy().ttl.duration(), lookup.value.is_none());
                }
                hit
            }
            Some(d) => self.hit(d, seen),
            None => L2Answer::Miss { tag_versions, seen },
        }
    }
}
