//! What loads and writes need, detached from the caller's borrow: the tiers,
//! the codec, reading Redis, filling both tiers.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FamilyCore, answer};
use crate::Error;
use crate::cache::Shared;
use crate::codec::{self, Decoded, EncodeError, Encoded, Meta};
use crate::error::{BoxError, SourceError};
use crate::flight::{BatchOutcome, FlightGuard, Lookup, Outcome, Source};
use crate::metrics::Outcome as Counted;
use crate::policy::CompiledPolicy;
use crate::tier::memory::{AnyValue, L1Entry};

/// Most keys per `MGET` in a batch read; a batch of more goes out as several
/// `MGET`s in one pipeline (still one round trip), so that one huge command
/// does not hold Redis's single thread.
const MGET_CHUNK: usize = 256;

/// Shared state and family, cheap to clone into a load.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub shared: Arc<Shared>,
    pub core: Arc<FamilyCore>,
}

/// What Redis said about one key.
pub(crate) enum L2Answer {
    /// A usable value or negative entry.
    Hit {
        lookup: Lookup,
        /// How long L1 may keep it.
        ttl: Option<Duration>,
        weight: usize,
    },
    /// Nothing usable: load, and stamp the fill with these tag versions.
    Miss { tag_versions: Vec<u64> },
    /// Redis did not answer: load, and do not try to store.
    Down,
}

/// A loaded entry on its way to both tiers.
struct Fill {
    key: String,
    encoded: Option<Encoded>,
    ttl: Option<Duration>,
    value: Option<AnyValue>,
    store_l2: bool,
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

    pub fn l1_get(&self, key: &str) -> Option<L1Entry> {
        match &self.shared.l1 {
            Some(l1) if self.core.policy.policy.l1 => l1.get(key),
            _ => None,
        }
    }

    /// Puts a value in L1 for at most `ttl`, the family's TTL and the
    /// cache's `l1_max_ttl`, whichever is shortest.
    pub fn l1_put(
        &self,
        key: String,
        value: Option<AnyValue>,
        weight: usize,
        ttl: Option<Duration>,
    ) {
        if !self.uses_l1() {
            return;
        }
        let caps = [ttl, self.policy().ttl.duration(), self.shared.l1_max_ttl];
        let ttl = caps.into_iter().flatten().min();
        if ttl.is_some_and(|t| t.is_zero()) {
            return;
        }
        if let Some(l1) = &self.shared.l1 {
            let tags = self.core.tag_keys(&key);
            let entry = L1Entry::new(&key, value, weight, ttl, tags);
            l1.insert(key, entry);
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

    /// Reads `keys` from Redis in one round trip and judges each.
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
                            Some(d) => L2Answer::Hit {
                                ttl: d.meta.remaining(),
                                weight: d.payload_len,
                                lookup: Lookup {
                                    value: d.value.map(|v| Arc::new(v) as AnyValue),
                                    source: Source::L2,
                                },
                            },
                            None => L2Answer::Miss {
                                tag_versions: Vec::new(),
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
        let replies = if refs.len() <= MGET_CHUNK {
            l2.mget(&refs).await
        } else {
            let mut pipe = redis::pipe();
            for chunk in refs.chunks(MGET_CHUNK) {
                pipe.cmd("MGET").arg(chunk);
            }
            l2.run_pipe::<Vec<Vec<Option<Vec<u8>>>>>("MGET (pipeline)", &pipe)
                .await
                .map(|chunks| chunks.into_iter().flatten().collect())
        };
        let replies = match replies {
            Ok(r) if r.len() == probe.len() => r,
            Ok(_) => {
                self.core.metrics.redis_error();
                return keys.iter().map(|_| L2Answer::Down).collect();
            }
            Err(e) => {
                self.core.metrics.redis_error();
                tracing::debug!(family = %self.name(), error = %e, "redis read failed; loading from source");
                return keys.iter().map(|_| L2Answer::Down).collect();
            }
        };
        let mut broken: Vec<String> = Vec::new();
        let mut answers = Vec::with_capacity(keys.len());
        let mut replies = replies.into_iter();
        for (key, width) in keys.iter().zip(widths) {
            let slot: Vec<Option<Vec<u8>>> = replies.by_ref().take(width).collect();
            answers.push(self.judge::<V>(key, slot, &mut broken));
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
        let value = decode(value, key.to_owned()).filter(|d| d.meta.tags == tag_versions);
        let pending = if self.core.write_behind() {
            decode(pending, FamilyCore::pending_key(key))
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
            Some(d) => L2Answer::Hit {
                ttl: d.meta.remaining(),
                weight: d.payload_len,
                lookup: Lookup {
                    value: d.value.map(|v| Arc::new(v) as AnyValue),
                    source: Source::L2,
                },
            },
            None => L2Answer::Miss { tag_versions },
        }
    }

    // --- loading ----------------------------------------------------------

    /// Runs the loader, timing and counting it.
    pub async fn call<T, Fut, E>(&self, fut: Fut) -> Result<(T, Duration), Error>
    where
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let start = Instant::now();
        let result = fut.await;
        let took = start.elapsed();
        self.core.metrics.loader_call(took, result.is_ok());
        match result {
            Ok(v) => Ok((v, took)),
            Err(e) => Err(Error::Loader(SourceError::new(e))),
        }
    }

    /// Prepares a freshly loaded value (or "not found") for both tiers.
    fn prepare<V: Serialize + Send + Sync + 'static>(
        &self,
        key: String,
        value: Option<V>,
        took: Duration,
        tag_versions: Vec<u64>,
        store_l2: bool,
    ) -> Fill {
        let ttl = match value {
            Some(_) => self.policy().draw_ttl(),
            None => Some(self.policy().negative_ttl),
        };
        let meta = Meta::new(ttl, took).with_tags(tag_versions);
        let encoded = match self.encode(value.as_ref(), &meta) {
            Ok(e) => Some(e),
            Err(e) => {
                let e = self.encode_error(e);
                tracing::warn!(family = %self.name(), error = %e, "loaded value not cached");
                None
            }
        };
        Fill {
            key,
            encoded,
            ttl,
            value: value.map(|v| Arc::new(v) as AnyValue),
            store_l2,
        }
    }

    /// Stores fills in Redis (one round trip, set-if-newer) and then in L1,
    /// skipping any whose key was invalidated while it loaded, and keeping
    /// out of L1 any that Redis refused (it holds a newer version).
    async fn fill(&self, fills: &[Fill], guard: &FlightGuard) {
        let live: Vec<&Fill> = fills
            .iter()
            .filter(|f| f.encoded.is_some() && !guard.is_void(&f.key))
            .collect();
        let mut refused: Vec<&str> = Vec::new();
        if let Some(l2) = &self.shared.l2 {
            let batch: Vec<(&str, &[u8], Option<Duration>)> = live
                .iter()
                .filter(|f| f.store_l2)
                .filter_map(|f| Some((f.key.as_str(), f.encoded.as_ref()?.bytes.as_slice(), f.ttl)))
                .collect();
            let stored = match batch.len() {
                0 => Ok(Vec::new()),
                1 => l2
                    .store(batch[0].0, batch[0].1, batch[0].2)
                    .await
                    .map(|s| vec![s]),
                _ => l2.store_many(&batch).await,
            };
            match stored {
                Ok(stored) => refused.extend(
                    batch
                        .iter()
                        .zip(stored)
                        .filter(|(_, s)| !s)
                        .map(|((k, _, _), _)| *k),
                ),
                Err(_) => self.core.metrics.redis_error(),
            }
        }
        for f in live {
            // Checked again: an invalidation may have landed during the store.
            if guard.is_void(&f.key) || refused.contains(&f.key.as_str()) {
                continue;
            }
            let weight = f.encoded.as_ref().map_or(0, |e| e.payload_len);
            self.l1_put(f.key.clone(), f.value.clone(), weight, f.ttl);
        }
    }

    /// The body of a single-key load.
    pub async fn load_one<V, F, Fut, E>(
        self,
        key: String,
        loader: F,
        guard: &FlightGuard,
    ) -> Outcome
    where
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        // A flight that finished just before this one started has filled L1.
        if let Some(entry) = self.l1_get(&key) {
            return Ok(Lookup {
                value: entry.value,
                source: Source::L1,
            });
        }
        let (tag_versions, store_l2) = match self.read_l2::<V>(&[&key]).await.pop() {
            Some(L2Answer::Hit {
                lookup,
                ttl,
                weight,
            }) => {
                if !guard.is_void(&key) {
                    self.l1_put(key, lookup.value.clone(), weight, ttl);
                }
                return Ok(lookup);
            }
            Some(L2Answer::Miss { tag_versions }) => (tag_versions, true),
            // A Redis that just failed the read is not asked to store the
            // fill: while it is down, that would double each miss's wait.
            Some(L2Answer::Down) | None => (Vec::new(), false),
        };
        let (value, took) = self.call(loader()).await?;
        let fill = self.prepare(key, value, took, tag_versions, store_l2);
        self.fill(std::slice::from_ref(&fill), guard).await;
        Ok(Lookup {
            value: fill.value,
            source: Source::Loader,
        })
    }

    /// The body of a `get_many` load: L1 re-check, one Redis read, one
    /// loader call, one pipelined store.
    pub async fn load_batch<K, V, F, Fut, E>(
        self,
        items: Vec<(String, K)>,
        loader: F,
        guard: &FlightGuard,
    ) -> BatchOutcome
    where
        K: Eq + Hash + Clone,
        V: Serialize + DeserializeOwned + Send + Sync + 'static,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: Into<BoxError>,
    {
        let mut found = HashMap::with_capacity(items.len());
        let mut pending = Vec::with_capacity(items.len());
        for (key, parts) in items {
            match self.l1_get(&key) {
                Some(entry) => {
                    let lookup = Lookup {
                        value: entry.value,
                        source: Source::L1,
                    };
                    found.insert(key, lookup);
                }
                None => pending.push((key, parts)),
            }
        }
        let mut to_load = Vec::with_capacity(pending.len());
        if !pending.is_empty() {
            let keys: Vec<&str> = pending.iter().map(|(k, _)| k.as_str()).collect();
            let answers = self.read_l2::<V>(&keys).await;
            for ((key, parts), answer) in pending.into_iter().zip(answers) {
                match answer {
                    L2Answer::Hit {
                        lookup,
                        ttl,
                        weight,
                    } => {
                        if !guard.is_void(&key) {
                            self.l1_put(key.clone(), lookup.value.clone(), weight, ttl);
                        }
                        found.insert(key, lookup);
                    }
                    L2Answer::Miss { tag_versions } => {
                        to_load.push((key, parts, tag_versions, true))
                    }
                    L2Answer::Down => to_load.push((key, parts, Vec::new(), false)),
                }
            }
        }
        if to_load.is_empty() {
            return Ok(found);
        }
        let wanted: Vec<K> = to_load.iter().map(|(_, k, _, _)| k.clone()).collect();
        let (mut loaded, took) = self.call(loader(wanted)).await?;
        let fills: Vec<Fill> = to_load
            .into_iter()
            .map(|(key, parts, tags, store)| {
                let value = loaded.remove(&parts);
                self.prepare(key, value, took, tags, store)
            })
            .collect();
        self.fill(&fills, guard).await;
        for f in fills {
            let lookup = Lookup {
                value: f.value,
                source: Source::Loader,
            };
            found.insert(f.key, lookup);
        }
        Ok(found)
    }

    /// The cache is off: straight to the loader.
    pub async fn bypass_one<V, F, Fut, E>(&self, loader: F) -> Result<Option<Arc<V>>, Error>
    where
        V: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let (value, _) = self.call(loader()).await?;
        self.core.metrics.request(Counted::Miss);
        Ok(value.map(Arc::new))
    }

    pub async fn bypass_many<K, V, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Option<Arc<V>>>, Error>
    where
        K: Eq + Hash + Clone,
        V: Send + Sync + 'static,
        F: FnOnce(Vec<K>) -> Fut,
        Fut: Future<Output = Result<HashMap<K, V>, E>>,
        E: Into<BoxError>,
    {
        let (loaded, _) = self.call(loader(keys.to_vec())).await?;
        let loaded: HashMap<K, Arc<V>> =
            loaded.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
        Ok(keys
            .iter()
            .map(|k| {
                self.core.metrics.request(Counted::Miss);
                loaded.get(k).cloned()
            })
            .collect())
    }
}
