//! The operator's view of a cache: entries decoded as a person reads them,
//! invalidations by family and text parts, bounded samples of a family, the
//! write-behind queue and its dead letters, the invalidation bus.
//!
//! Everything here works on families by name and keys as text, as typed on
//! a command line (the `larder` binary is built on it), and goes through the
//! same machinery as the service's own calls: an invalidation here voids
//! loads in progress, deletes leases, and reaches every process's L1 over
//! the bus. Nothing here is unbounded on a production Redis: keys are
//! found with `SCAN` (never `KEYS`), samples stop at a given number of keys,
//! streams are read in pages.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::Error;
use crate::bus::Event;
use crate::cache::Cache;
use crate::codec;
use crate::family::Ctx;
use crate::key::{KeyLayout, KeyTemplate, matches_pattern};
use crate::registry::{FamilyCore, void_tagged};
use crate::tier::redis::{Batch, RedisTier};
use crate::write_behind::queue::{StreamNames, parse_fields, version_of};

/// Keys per `SCAN` page of a sample.
const SAMPLE_SCAN_COUNT: usize = 500;

/// Operator commands on a [`Cache`]; get one with [`Cache::admin`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), larder::Error> {
/// # use larder::{Cache, Policy};
/// # use std::time::Duration;
/// let cache = Cache::builder()
///     .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
///     .build()
///     .await?;
/// let admin = cache.admin();
/// assert_eq!(admin.key("portfolio", &["42"])?, format!("{}:{{portfolio:42}}", cache.namespace()));
/// admin.invalidate_key("portfolio", &["42"]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Admin {
    cache: Cache,
}

impl Cache {
    /// Operator commands on this cache (inspect, invalidate, sample, queue
    /// status): see [`Admin`].
    pub fn admin(&self) -> Admin {
        Admin {
            cache: self.clone(),
        }
    }
}

/// An entry as stored in Redis, decoded.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Inspection {
    /// The Redis key.
    pub key: String,
    /// The stored value, if there is one.
    pub entry: Option<StoredEntry>,
    /// A write-behind write not yet in the database (read before `entry`).
    pub pending: Option<StoredEntry>,
    /// Whether a persisted mark stands in the pending slot (on a cluster, a
    /// write persisted before it was staged: nothing is pending).
    pub persisted_mark: bool,
    /// The load lease of a fill in progress: its remaining TTL in ms.
    pub lease_ttl_ms: Option<u64>,
    /// The family's tags for this key, with their current versions.
    pub tags: Vec<TagState>,
}

/// One stored value: header and payload.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StoredEntry {
    /// The value as JSON (`null` for a negative entry).
    pub value: serde_json::Value,
    /// A negative entry: the loader found nothing.
    pub negative: bool,
    /// Why the payload did not decode to JSON, if it did not.
    pub decode_error: Option<String>,
    /// Unix ms until which the entry is fresh (`None`: never goes stale).
    pub fresh_until_ms: Option<u64>,
    /// Unix ms until which it may still be served stale (fresh + grace).
    pub grace_until_ms: Option<u64>,
    /// Whether it is fresh now.
    pub fresh: bool,
    /// How long the load that produced it took, in µs.
    pub load_us: u32,
    /// The writer's version (0: none).
    pub version: u64,
    /// Bytes in Redis (header included, compressed if it is).
    pub bytes: usize,
    /// Whether the payload is lz4-compressed.
    pub compressed: bool,
    /// Remaining TTL of the Redis key in ms (`None`: no TTL).
    pub ttl_ms: Option<u64>,
    /// The tag versions the entry was stamped with, in the family's order.
    pub tag_versions: Vec<u64>,
}

/// A tag of an entry: the version the entry was stamped with, the current.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct TagState {
    /// The tag's Redis key.
    pub key: String,
    /// The version stamped in the entry (if there is one).
    pub stamped: Option<u64>,
    /// The tag's version now.
    pub current: u64,
    /// Whether the entry is current for this tag.
    pub is_current: bool,
}

/// A bounded sample of a family's keys in Redis.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct FamilySample {
    /// The family.
    pub family: String,
    /// Values seen (leases, pending markers and tags not counted).
    pub keys: u64,
    /// Whether the scan covered every key (else it stopped at the bound and
    /// `keys` is a lower bound).
    pub complete: bool,
    /// Bytes of the sampled values (`MEMORY USAGE`).
    pub bytes: u64,
    /// Sampled keys without a TTL.
    pub without_ttl: u64,
    /// Smallest, median and largest remaining TTL of the sample, in ms.
    pub ttl_ms_min: Option<u64>,
    /// Median remaining TTL, in ms.
    pub ttl_ms_p50: Option<u64>,
    /// Largest remaining TTL, in ms.
    pub ttl_ms_max: Option<u64>,
}

/// The state of one family's write-behind queue in Redis.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct QueueStatus {
    /// The family.
    pub family: String,
    /// Entries in the stream: not yet persisted (delivered or not).
    pub length: u64,
    /// Entries delivered to a worker and not yet acknowledged.
    pub in_progress: u64,
    /// Age of the oldest entry, in ms (0 when empty): how far the database
    /// is behind the cache.
    pub lag_ms: u64,
    /// Unacknowledged entries per consumer (worker).
    pub consumers: Vec<(String, u64)>,
    /// Dead letters waiting for an operator.
    pub dead_letters: u64,
}

/// A dead letter, decoded.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct DeadLetterEntry {
    /// Its id in the dead-letter stream (what `replay` takes).
    pub id: String,
    /// The cache key of the write.
    pub key: String,
    /// The written value as JSON (or `null` if it does not decode).
    pub value: serde_json::Value,
    /// The write's version (its original queue position).
    pub version: u64,
    /// The persister's last error.
    pub error: String,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// One invalidation seen on the bus.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct BusEvent {
    /// The bus stream entry id (`ms-seq`).
    pub id: String,
    /// The publishing process.
    pub publisher: String,
    /// `key`, `tag`, `pattern` or `flush`.
    pub kind: &'static str,
    /// The key, tag key or pattern (empty for a flush).
    pub target: String,
}

impl Admin {
    fn core(&self, family: &str) -> Result<Arc<FamilyCore>, Error> {
        let shared = &self.cache.shared;
        if let Some((_, core)) = shared
            .families
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(family)
        {
            return Ok(Arc::clone(core));
        }
        let policy = shared
            .policies
            .get(family)
            .ok_or_else(|| Error::UnknownFamily(family.to_string()))?;
        Ok(Arc::new(FamilyCore::new(&shared.namespace, policy.clone())))
    }

    fn ctx(&self, family: &str) -> Result<Ctx, Error> {
        Ok(Ctx {
            shared: Arc::clone(&self.cache.shared),
            core: self.core(family)?,
        })
    }

    fn l2(&self) -> Result<&RedisTier, Error> {
        self.cache
            .shared
            .l2
            .as_ref()
            .ok_or_else(|| Error::config("admin", "this needs Redis (no Redis is configured)"))
    }

    /// The Redis key of `family`'s entry for `parts` (as text, in template
    /// order; escaped as the typed API escapes them, so `"42"` is the key
    /// of the integer 42 too).
    pub fn key<S: AsRef<str>>(&self, family: &str, parts: &[S]) -> Result<String, Error> {
        let core = self.core(family)?;
        check_arity(family, core.policy.template.arity(), parts.len())?;
        Ok(core.layout.fill_texts(parts))
    }

    /// The Redis key of tag `template` filled with `parts`.
    pub fn tag<S: AsRef<str>>(&self, template: &str, parts: &[S]) -> Result<String, Error> {
        let parsed = KeyTemplate::parse(template)
            .map_err(|reason| Error::config(format!("tag `{template}`"), reason))?;
        check_arity(&format!("tag `{template}`"), parsed.arity(), parts.len())?;
        Ok(KeyLayout::tag(&self.cache.shared.namespace, &parsed).fill_texts(parts))
    }

    /// `family`'s entry for `parts` as stored in Redis: value, header,
    /// pending write, lease, tag versions.
    pub async fn inspect<S: AsRef<str>>(
        &self,
        family: &str,
        parts: &[S],
    ) -> Result<Inspection, Error> {
        let core = self.core(family)?;
        let key = self.key(family, parts)?;
        let l2 = self.l2()?;
        let pending_key = FamilyCore::pending_key(&key);
        let lease_key = format!("{key}:lease");
        let mut pipe = Batch::new();
        pipe.cmd("GET").arg(&key);
        pipe.cmd("PTTL").arg(&key);
        pipe.cmd("GET").arg(&pending_key);
        pipe.cmd("PTTL").arg(&pending_key);
        pipe.cmd("PTTL").arg(&lease_key);
        let (value, ttl, pending, pending_ttl, lease_ttl): (
            Option<Vec<u8>>,
            i64,
            Option<Vec<u8>>,
            i64,
            i64,
        ) = l2.run_batch("inspect", &pipe).await?;
        let tag_keys: Vec<String> = core
            .tag_keys(&key)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let refs: Vec<&str> = tag_keys.iter().map(String::as_str).collect();
        let current: Vec<u64> = if refs.is_empty() {
            Vec::new()
        } else {
            l2.mget(&refs)
                .await?
                .into_iter()
                .map(|v| {
                    v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
                        .unwrap_or(0)
                })
                .collect()
        };
        let grace = core.policy.grace();
        let max = core.policy.policy.max_value_size;
        let entry = value.map(|b| stored(&b, ttl, grace, max));
        let persisted_mark = pending.as_deref().is_some_and(codec::is_persisted_mark);
        let pending = pending
            .filter(|p| !codec::is_persisted_mark(p))
            .map(|b| stored(&b, pending_ttl, Duration::ZERO, max));
        let tags = tag_keys
            .into_iter()
            .zip(current)
            .enumerate()
            .map(|(i, (key, current))| {
                let stamped = entry.as_ref().and_then(|e| e.tag_versions.get(i).copied());
                TagState {
                    key,
                    stamped,
                    current,
                    is_current: stamped == Some(current),
                }
            })
            .collect();
        Ok(Inspection {
            key,
            entry,
            pending,
            persisted_mark,
            lease_ttl_ms: u64::try_from(lease_ttl).ok(),
            tags,
        })
    }

    /// Deletes `family`'s entry for `parts` everywhere (Redis, the lease of
    /// a load in progress, every process's L1), as `Family::invalidate` does.
    pub async fn invalidate_key<S: AsRef<str>>(
        &self,
        family: &str,
        parts: &[S],
    ) -> Result<(), Error> {
        let key = self.key(family, parts)?;
        self.ctx(family)?.invalidate_key(&key).await
    }

    /// Makes every entry tagged `template` filled with `parts` stale, in
    /// every family and process, as `Cache::invalidate_tag` does.
    pub async fn invalidate_tag<S: AsRef<str>>(
        &self,
        template: &str,
        parts: &[S],
    ) -> Result<(), Error> {
        let tag = self.tag(template, parts)?;
        self.cache.invalidate_tag_key(&tag).await
    }

    /// Deletes every entry of `family` whose parts match `parts`, where a
    /// part `*` matches any value (so an id that is literally `*` cannot be
    /// named here; use [`invalidate_key`](Self::invalidate_key)). Returns
    /// how many values it deleted from Redis.
    pub async fn invalidate_pattern<S: AsRef<str>>(
        &self,
        family: &str,
        parts: &[S],
    ) -> Result<u64, Error> {
        let core = self.core(family)?;
        let expected = core.policy.template.arity();
        if expected != parts.len() {
            return Err(Error::Pattern {
                family: family.to_string(),
                reason: format!(
                    "the key template has {expected} part(s), the pattern {}",
                    parts.len()
                ),
            });
        }
        let pattern = core.layout.fill_texts_pattern(parts);
        self.cache.invalidate_pattern_key(&pattern, &core).await
    }

    /// A sample of `family`'s keys in Redis: at most `max_keys` values
    /// (`SCAN` pages, never `KEYS`), their bytes and TTLs. `on_page` is told
    /// how many values were seen so far, for a progress bar.
    pub async fn sample(
        &self,
        family: &str,
        max_keys: u64,
        mut on_page: impl FnMut(u64),
    ) -> Result<FamilySample, Error> {
        let core = self.core(family)?;
        let l2 = self.l2()?;
        let glob = core.layout.match_all();
        let mut keys: Vec<String> = Vec::new();
        let mut complete = true;
        'targets: for target in l2.scan_targets() {
            let mut cursor = 0u64;
            loop {
                let (next, page) = l2
                    .scan_page(target.as_deref(), cursor, &glob, SAMPLE_SCAN_COUNT)
                    .await?;
                keys.extend(
                    page.into_iter()
                        .filter(|k| !k.ends_with(":lease") && !k.ends_with(":wb"))
                        .filter(|k| matches_pattern(&glob, k)),
                );
                on_page(keys.len() as u64);
                cursor = next;
                if keys.len() as u64 >= max_keys {
                    // Stopped at the bound: there may be more.
                    keys.truncate(max_keys as usize);
                    complete = false;
                    break 'targets;
                }
                if cursor == 0 {
                    break;
                }
            }
        }
        let mut out = FamilySample {
            family: family.to_string(),
            keys: keys.len() as u64,
            complete,
            ..FamilySample::default()
        };
        let mut ttls = Vec::new();
        for chunk in keys.chunks(100) {
            let mut pipe = Batch::new();
            for k in chunk {
                pipe.cmd("PTTL").arg(k);
                pipe.cmd("MEMORY").arg("USAGE").arg(k);
            }
            let replies: Vec<redis::Value> = l2.run_batch("sample", &pipe).await?;
            for pair in replies.chunks(2) {
                if let [redis::Value::Int(ttl), usage] = pair {
                    match u64::try_from(*ttl) {
                        Ok(t) => ttls.push(t),
                        Err(_) if *ttl == -1 => out.without_ttl += 1,
                        Err(_) => {}
                    }
                    if let redis::Value::Int(b) = usage {
                        out.bytes += (*b).max(0) as u64;
                    }
                }
            }
        }
        ttls.sort_unstable();
        out.ttl_ms_min = ttls.first().copied();
        out.ttl_ms_p50 = ttls.get(ttls.len() / 2).copied();
        out.ttl_ms_max = ttls.last().copied();
        Ok(out)
    }

    /// The write-behind queue of `family`: length, in progress per worker,
    /// lag, dead letters.
    pub async fn write_behind_status(&self, family: &str) -> Result<QueueStatus, Error> {
        self.core(family)?;
        let l2 = self.l2()?;
        let names = StreamNames::new(&self.cache.shared.namespace, family, l2.is_cluster());
        let mut pipe = Batch::new();
        pipe.cmd("XLEN").arg(&names.stream);
        pipe.cmd("XRANGE")
            .arg(&names.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1);
        pipe.cmd("XLEN").arg(&names.dead);
        let (length, first, dead): (u64, redis::Value, u64) =
            l2.run_batch("write-behind status", &pipe).await?;
        let oldest = parse_fields(first)
            .into_iter()
            .next()
            .and_then(|mut f| String::from_utf8(f.remove("_id")?).ok());
        let lag_ms = oldest.map_or(0, |id| {
            let ms = version_of(&id) >> 20;
            codec::unix_ms().saturating_sub(ms)
        });
        let mut out = QueueStatus {
            family: family.to_string(),
            length,
            lag_ms,
            dead_letters: dead,
            ..QueueStatus::default()
        };
        // The group exists once a worker ran; before, nothing is in progress.
        let summary: Result<redis::Value, Error> = l2
            .run(
                "XPENDING",
                redis::cmd("XPENDING").arg(&names.stream).arg(&names.group),
            )
            .await;
        if let Ok(redis::Value::Array(parts)) = summary {
            if let Some(redis::Value::Int(n)) = parts.first() {
                out.in_progress = (*n).max(0) as u64;
            }
            if let Some(redis::Value::Array(consumers)) = parts.get(3) {
                for c in consumers {
                    if let redis::Value::Array(pair) = c
                        && let [name, count] = pair.as_slice()
                    {
                        let name: String = redis::from_redis_value_ref(name).unwrap_or_default();
                        let count: String = redis::from_redis_value_ref(count).unwrap_or_default();
                        out.consumers.push((name, count.parse().unwrap_or(0)));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `family`'s dead letters, oldest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        family: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetterEntry>, Error> {
        let core = self.core(family)?;
        let l2 = self.l2()?;
        let names = StreamNames::new(&self.cache.shared.namespace, family, l2.is_cluster());
        let reply: redis::Value = l2
            .run(
                "XRANGE",
                redis::cmd("XRANGE")
                    .arg(&names.dead)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        let max = core.policy.policy.max_value_size;
        Ok(parse_fields(reply)
            .into_iter()
            .map(|mut f| {
                let text = |f: &mut HashMap<String, Vec<u8>>, k: &str| {
                    String::from_utf8_lossy(&f.remove(k).unwrap_or_default()).into_owned()
                };
                let value = f
                    .get("v")
                    .and_then(|v| codec::decode::<serde_json::Value>(v, max).ok())
                    .and_then(|d| d.value)
                    .unwrap_or(serde_json::Value::Null);
                let original = text(&mut f, "id");
                DeadLetterEntry {
                    id: text(&mut f, "_id"),
                    key: text(&mut f, "key"),
                    value,
                    version: version_of(&original),
                    error: text(&mut f, "error"),
                    deliveries: text(&mut f, "deliveries").parse().unwrap_or(0),
                }
            })
            .collect())
    }

    /// Puts dead letter `id` of `family` back on the queue, with its original
    /// version (so a version-checked persister does not let it overwrite a
    /// newer row), for the family's workers to persist; they drop the key's
    /// cached copies once it is in the database. Returns whether the dead
    /// letter was there.
    pub async fn replay_dead_letter(&self, family: &str, id: &str) -> Result<bool, Error> {
        self.core(family)?;
        let l2 = self.l2()?;
        let names = StreamNames::new(&self.cache.shared.namespace, family, l2.is_cluster());
        let reply: redis::Value = l2
            .run(
                "XRANGE",
                redis::cmd("XRANGE").arg(&names.dead).arg(id).arg(id),
            )
            .await?;
        let Some(mut f) = parse_fields(reply).into_iter().next() else {
            return Ok(false);
        };
        let (Some(key), Some(parts), Some(value)) = (f.remove("key"), f.remove("k"), f.remove("v"))
        else {
            return Err(Error::Redis {
                op: "replay",
                reason: format!("dead letter {id} lacks its key or value"),
            });
        };
        let original = String::from_utf8_lossy(&f.remove("id").unwrap_or_default()).into_owned();
        // Stream and dead letters share a hash tag on a cluster: one node.
        let mut pipe = Batch::new();
        pipe.cmd("XADD")
            .arg(&names.stream)
            .arg("*")
            .arg("key")
            .arg(key)
            .arg("k")
            .arg(parts)
            .arg("v")
            .arg(value)
            .arg("ver")
            .arg(version_of(&original))
            .arg("replay")
            .arg(1)
            .ignore();
        pipe.cmd("XDEL").arg(&names.dead).arg(id).ignore();
        l2.run_batch::<()>("replay", &pipe).await?;
        Ok(true)
    }

    /// Invalidations on the bus after `after` (a stream id; `"$"` for only
    /// new ones), waiting up to `block` for one; returns them and the id to
    /// pass next time.
    pub async fn bus_read(
        &self,
        after: &str,
        block: Duration,
    ) -> Result<(Vec<BusEvent>, String), Error> {
        let l2 = self.l2()?;
        let stream = format!("{}:bus", self.cache.shared.namespace);
        // Under the operation timeout, so that a blocked read is not taken
        // for a dead server.
        let block_ms = block.min(l2.op_timeout() / 2).as_millis().max(1) as u64;
        let mut after = after.to_string();
        if after == "$" {
            let last: redis::Value = l2
                .run(
                    "XREVRANGE",
                    redis::cmd("XREVRANGE")
                        .arg(&stream)
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                )
                .await?;
            after = parse_fields(last)
                .into_iter()
                .next()
                .and_then(|mut f| String::from_utf8(f.remove("_id")?).ok())
                .unwrap_or_else(|| "0-0".into());
        }
        let reply: redis::Value = l2
            .run(
                "XREAD",
                redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(block_ms)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&after),
            )
            .await?;
        let entries = match reply {
            redis::Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    redis::Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .next(),
            redis::Value::Map(streams) => streams.into_iter().next().map(|(_, v)| v),
            _ => None,
        };
        let mut events = Vec::new();
        for mut f in entries.map(parse_fields).unwrap_or_default() {
            let id = String::from_utf8_lossy(&f.remove("_id").unwrap_or_default()).into_owned();
            let publisher =
                String::from_utf8_lossy(&f.remove("p").unwrap_or_default()).into_owned();
            let (kind, target) = if let Some(k) = f.remove("k") {
                ("key", k)
            } else if let Some(t) = f.remove("t") {
                ("tag", t)
            } else if let Some(x) = f.remove("x") {
                ("pattern", x)
            } else {
                ("flush", Vec::new())
            };
            after.clone_from(&id);
            events.push(BusEvent {
                id,
                publisher,
                kind,
                target: String::from_utf8_lossy(&target).into_owned(),
            });
        }
        Ok((events, after))
    }
}

impl Cache {
    /// Invalidates tag key `tag` (namespace and hash tag included): the one
    /// body of `invalidate_tag` and the operator's.
    pub(crate) async fn invalidate_tag_key(&self, tag: &str) -> Result<(), Error> {
        let shared = &self.shared;
        if !shared.enabled {
            return Ok(());
        }
        // Loads and writes running now may hold the old rows.
        void_tagged(&shared.flights, &shared.families, tag);
        let result = match &shared.l2 {
            Some(l2) => {
                let mut pipe = Batch::new();
                shared.add_tag_bump(&mut pipe, tag);
                l2.run_batch::<()>("INCR (tag)", &pipe).await
            }
            None => Ok(()),
        };
        // Again, for the loads that started during the round trip: they may
        // have read the old versions (see `invalidate_key`).
        void_tagged(&shared.flights, &shared.families, tag);
        if let Some(l1) = &shared.l1 {
            l1.invalidate_tag(tag);
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "tag invalidation deferred until redis answers");
            shared.deferred.tag(tag);
        }
        Ok(())
    }

    /// Deletes every key matching `pattern` (filled, namespace included)
    /// everywhere: the one body of `invalidate_pattern` and the operator's.
    pub(crate) async fn invalidate_pattern_key(
        &self,
        pattern: &str,
        core: &FamilyCore,
    ) -> Result<u64, Error> {
        let shared = &self.shared;
        if !shared.enabled {
            return Ok(0);
        }
        shared
            .flights
            .void_matching(|k| matches_pattern(pattern, k));
        let mut deleted = 0u64;
        if let Some(l2) = &shared.l2 {
            let delivered = async {
                deleted = crate::family::unlink_matching(l2, pattern).await?;
                if let Some(bus) = &shared.bus {
                    let mut pipe = Batch::new();
                    bus.add(&mut pipe, &Event::Pattern(pattern.to_owned()));
                    l2.run_batch::<()>("XADD", &pipe).await?;
                }
                Ok::<(), Error>(())
            };
            if let Err(e) = delivered.await {
                core.metrics.redis_error();
                tracing::debug!(family = %core.name(), error = %e, "pattern invalidation deferred until redis answers");
                shared.deferred.pattern(pattern);
            }
        }
        // Again, for the loads that started while the keys were being
        // deleted (see `invalidate_key`).
        shared
            .flights
            .void_matching(|k| matches_pattern(pattern, k));
        if let Some(l1) = &shared.l1 {
            l1.invalidate_pattern(pattern);
        }
        Ok(deleted)
    }
}

fn check_arity(what: &str, expected: usize, given: usize) -> Result<(), Error> {
    if expected == given {
        Ok(())
    } else {
        Err(Error::config(
            what,
            format!("the key template has {expected} part(s), {given} given"),
        ))
    }
}

/// Decodes a stored value for a person: JSON where the payload allows.
fn stored(bytes: &[u8], pttl: i64, grace: Duration, max: usize) -> StoredEntry {
    let ttl_ms = u64::try_from(pttl).ok();
    let (negative, compressed) = codec::header_flags(bytes);
    let header = codec::decode_header(bytes);
    let (value, decode_error) = match codec::decode::<serde_json::Value>(bytes, max) {
        Ok(d) => (d.value.unwrap_or(serde_json::Value::Null), None),
        Err(e) => (serde_json::Value::Null, Some(e.to_string())),
    };
    let meta = header.unwrap_or(codec::Meta {
        fresh_until_ms: 0,
        load_us: 0,
        version: 0,
        tags: Vec::new(),
    });
    let fresh_until_ms = (meta.fresh_until_ms != u64::MAX).then_some(meta.fresh_until_ms);
    let grace = if negative { Duration::ZERO } else { grace };
    StoredEntry {
        value,
        negative,
        decode_error,
        fresh_until_ms,
        grace_until_ms: fresh_until_ms.map(|f| f.saturating_add(grace.as_millis() as u64)),
        fresh: fresh_until_ms.is_none_or(|f| f > codec::unix_ms()),
        load_us: meta.load_us,
        version: meta.version,
        bytes: bytes.len(),
        compressed,
        ttl_ms,
        tag_versions: meta.tags,
    }
}
