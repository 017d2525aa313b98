//! Write-behind (the article's "Write-Behind (Write-Back)"), without its data
//! loss and stale reads.
//!
//! [`Family::write_behind`] stores the value in the cache *and* appends the
//! write to a durable queue, atomically (one Lua script), and returns once
//! both are done. With Redis the queue is a Redis Stream per family with a
//! consumer group (`<ns>:wb:<family>`); without Redis it is in this process's
//! memory, and writes not yet persisted are lost if the process dies.
//!
//! A [`WriteBehindWorker`] (any number of them, in any process) reads the
//! queue in batches, keeps only the newest write per key, and hands the batch
//! to your persister (one multi-row upsert, ideally). On success the entries
//! are acknowledged and deleted. On failure the batch is split in halves until
//! the failing writes are isolated; those are retried with exponential
//! backoff and, after `max_attempts` deliveries, moved to a dead-letter stream
//! (`<ns>:wb:<family>:dead`), while the others proceed. Entries left in
//! progress by a worker that died are claimed by another after `claim_idle`.
//! Delivery is at least once: persist with an upsert that keeps the higher
//! [`Write::version`].
//!
//! Read-your-writes: until a write is in the database, a *pending* marker
//! beside the value (`<key>:wb`) holds it, and the read path prefers it to an
//! older value or to the loader, so an expired or evicted cache entry never
//! brings back the row from before the write.
//!
//! Requirements: Redis must not evict keys without a TTL (the queue): use a
//! `volatile-*` or `noeviction` `maxmemory-policy`.
//!
//! On a Redis Cluster the family's stream and its dead letters share one hash
//! tag (`<ns>:{wb:<family>}`), so they live on one master; the value and its
//! marker live in the value's slot. The enqueue is then two steps (the entry,
//! then the value and marker): see `enqueue_on_cluster`. A failover can lose
//! what the old master had not replicated; with
//! [`CacheBuilder::write_behind_replicas`](crate::CacheBuilder::write_behind_replicas)
//! a write is acknowledged only once replicas hold its entry (`WAIT`).

pub(crate) mod queue;

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub(crate) use queue::MemoryQueue;
use queue::{Entry, EntryId, RedisQueue, StreamNames};

use crate::codec::{self, Meta};
use crate::error::BoxError;
use crate::family::Family;
use crate::key::KeyParts;
use crate::registry::FamilyCore;
use crate::tier::redis::Batch;
use crate::{Cache, Error, SourceError, scripts};

/// How long a pending-write marker lives: the longest a write can wait for
/// the database and still be read back. Refreshed by every write of the key.
pub const PENDING_TTL: Duration = Duration::from_secs(24 * 3600);

/// One write handed to the persister.
#[derive(Debug, Clone, PartialEq)]
pub struct Write<K, V> {
    /// The key, as passed to `write_behind`.
    pub key: K,
    /// The value written last for that key.
    pub value: V,
    /// Increases with every write of the queue: persist with an upsert that
    /// keeps the row with the higher version (at-least-once delivery may
    /// hand the same write over twice, or after a newer one).
    pub version: u64,
}

impl<K, V> Family<K, V>
where
    K: KeyParts + Serialize + 'static,
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Write-behind: stores `value` in the cache and queues it for the
    /// database, atomically, and returns once both are done. A worker
    /// ([`Cache::write_behind_worker`]) persists it later, in a batch.
    ///
    /// Until then, reads of `key` return `value` (or a newer write), even if
    /// its cache entry expires or is evicted. With Redis down the write is
    /// refused ([`Error::Redis`]): there is no durable place to put it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), larder::Error> {
    /// # use larder::{Cache, Policy, Strategy};
    /// # use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .family(Policy::new("watchlist", "watchlist:{user_id}").ttl(Duration::from_secs(300)).strategy(Strategy::WriteBehind))
    ///     .build()
    ///     .await?;
    /// let watchlists = cache.family::<u64, Vec<String>>("watchlist")?;
    /// watchlists.write_behind(&42, vec!["TCS".into(), "INFY".into()]).await?;
    /// // Read back at once, before any worker persisted it.
    /// let now = watchlists.get_or_load(&42, || async { Ok::<_, std::io::Error>(None) }).await?;
    /// assert_eq!(now.map(|w| w.len()), Some(2));
    /// # Ok(()) }
    /// ```
    pub async fn write_behind(&self, key: &K, value: V) -> Result<(), Error> {
        let full = self.key(key)?;
        let ctx = self.ctx();
        if ctx.core.policy.policy.strategy != crate::Strategy::WriteBehind {
            return Err(Error::config(
                self.name(),
                "write_behind needs the family's strategy to be write-behind (reads then look for pending writes)",
            ));
        }
        let parts = rmp_serde::to_vec(key).map_err(|e| Error::Encode {
            family: self.name().to_string(),
            reason: e.to_string(),
        })?;
        let guard = ctx.shared.flights.begin_write(&full);
        let ttl = ctx.policy().draw_ttl();
        let meta = Meta::new(ttl, Duration::ZERO);
        let encoded = ctx
            .encode(Some(&value), &meta)
            .map_err(|e| ctx.encode_error(e))?;
        match &ctx.shared.l2 {
            Some(l2) => {
                let names = StreamNames::new(&ctx.shared.namespace, self.name(), l2.is_cluster());
                // Through the grace window, as a fill's.
                let ttl_ms = ctx
                    .redis_ttl(ttl, false)
                    .map_or(0, |t| (t.as_millis() as u64).max(1));
                let queued = if l2.is_cluster() {
                    enqueue_on_cluster(l2, &names, &full, &encoded.bytes, ttl_ms, &parts).await
                } else {
                    let mut invocation = scripts::ENQUEUE_WRITE.prepare_invoke();
                    invocation
                        .key(&full)
                        .key(FamilyCore::pending_key(&full))
                        .key(&names.stream)
                        .arg(&encoded.bytes)
                        .arg(ttl_ms)
                        .arg(&parts)
                        .arg(PENDING_TTL.as_millis() as u64)
                        .arg(&full);
                    l2.run_script::<String>("write-behind enqueue", &full, &invocation)
                        .await
                };
                let id = match queued {
                    Ok(id) => id,
                    Err(e) => {
                        ctx.core.metrics.redis_error();
                        ctx.l1_remove(&full);
                        return Err(e);
                    }
                };
                if let Some((replicas, timeout)) = ctx.shared.write_behind_replicas {
                    // The entry is durable in the primary's memory; wait until
                    // replicas have it too, so that a failover keeps it.
                    if let Err(e) = l2.wait_replicas(&names.stream, replicas, timeout).await {
                        ctx.core.metrics.redis_error();
                        return Err(e);
                    }
                }
                if let Some(bus) = &ctx.shared.bus {
                    let mut pipe = Batch::new();
                    bus.add(&mut pipe, &crate::bus::Event::Key(full.clone()));
                    // The write is queued: a lost bus message only delays
                    // other processes' L1 until their TTL cap.
                    if l2.run_batch::<()>("XADD", &pipe).await.is_err() {
                        ctx.core.metrics.redis_error();
                    }
                }
                tracing::trace!(family = %self.name(), id, "write queued");
            }
            None => {
                ctx.shared.local_queue(self.name()).push(
                    full.clone(),
                    parts,
                    encoded.bytes.clone(),
                );
            }
        }
        // Loads that started while the write was on its way may have read
        // the value it replaces from Redis: they must not put it in L1 after
        // this one (see `Ctx::write`).
        ctx.shared.flights.void_loads(&full);
        if guard.is_void() {
            ctx.l1_remove(&full);
        } else {
            let life = ctx.lifetime_of_new(ttl, false);
            ctx.l1_put(full, Some(Arc::new(value)), encoded.payload_len, life, 0);
        }
        ctx.core.metrics.write_behind_enqueued();
        Ok(())
    }
}

/// Enqueues a write on a cluster, where the family's stream lives in another
/// slot than the value: the entry first (then the write is durable in the
/// queue and will reach the database), then the value and its pending marker
/// in the value's slot. If the second step fails, the write is still queued:
/// the caller gets the error (the write may land), and the key's
/// invalidation is deferred until Redis answers, so that no reader keeps an
/// older cached value past that.
async fn enqueue_on_cluster(
    l2: &crate::tier::redis::RedisTier,
    names: &StreamNames,
    full: &str,
    encoded: &[u8],
    ttl_ms: u64,
    parts: &[u8],
) -> Result<String, Error> {
    let id: String = l2
        .run(
            "write-behind enqueue (XADD)",
            redis::cmd("XADD")
                .arg(&names.stream)
                .arg("*")
                .arg("key")
                .arg(full)
                .arg("k")
                .arg(parts)
                .arg("v")
                .arg(encoded),
        )
        .await?;
    let mut invocation = scripts::STAGE_WRITE.prepare_invoke();
    invocation
        .key(full)
        .key(FamilyCore::pending_key(full))
        .arg(encoded)
        .arg(ttl_ms)
        .arg(PENDING_TTL.as_millis() as u64)
        .arg(&id);
    l2.run_script::<i64>("write-behind enqueue (stage)", full, &invocation)
        .await
        .map(|_| id)
        .map_err(|e| Error::Redis {
            op: "write-behind enqueue (stage)",
            reason: format!("{e}; the write is queued and will reach the database, but may not be read back until it does"),
        })
}

/// Settings of a write-behind worker, read like configuration; start it with
/// [`start`](Self::start).
#[must_use = "call .start() to run the worker"]
pub struct WriteBehindWorker<K, V, P> {
    cache: Cache,
    core: Arc<FamilyCore>,
    persister: P,
    batch_size: usize,
    max_attempts: u64,
    backoff: (Duration, Duration),
    claim_idle: Duration,
    consumer: String,
    _types: PhantomData<fn() -> (K, V)>,
}

impl Cache {
    /// A worker that persists `family`'s write-behind queue with `persister`.
    ///
    /// `persister` receives a batch (the newest write per key) and writes it
    /// to the database, ideally in one statement; it returns `Ok(())` only if
    /// the whole batch is durable.
    ///
    /// ```no_run
    /// # async fn demo(cache: larder::Cache, pool: ()) -> Result<(), larder::Error> {
    /// use larder::write_behind::Write;
    /// let watchlists = cache.family::<u64, Vec<String>>("watchlist")?;
    /// let worker = cache
    ///     .write_behind_worker(&watchlists, move |batch: Vec<Write<u64, Vec<String>>>| async move {
    ///         // INSERT ... SELECT * FROM UNNEST(...) ON CONFLICT (user_id)
    ///         //   DO UPDATE SET ... WHERE watchlists.version < EXCLUDED.version
    ///         Ok::<_, std::io::Error>(())
    ///     })
    ///     .batch_size(500)
    ///     .start();
    /// // ... on shutdown:
    /// let report = worker.shutdown(std::time::Duration::from_secs(10)).await;
    /// # Ok(()) }
    /// ```
    pub fn write_behind_worker<K, V, P, Fut, E>(
        &self,
        family: &Family<K, V>,
        persister: P,
    ) -> WriteBehindWorker<K, V, P>
    where
        K: KeyParts + Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        P: Fn(Vec<Write<K, V>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        WriteBehindWorker {
            cache: self.clone(),
            core: Arc::clone(&family.core),
            persister,
            batch_size: 500,
            max_attempts: 5,
            backoff: (Duration::from_millis(200), Duration::from_secs(30)),
            claim_idle: Duration::from_secs(30),
            consumer: format!(
                "{}-{}-{:08x}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into()),
                std::process::id(),
                rand::random::<u32>()
            ),
            _types: PhantomData,
        }
    }
}

impl<K, V, P, Fut, E> WriteBehindWorker<K, V, P>
where
    K: KeyParts + Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    P: Fn(Vec<Write<K, V>>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    /// Most entries read per batch (default 500).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Deliveries of one write before it goes to the dead-letter stream
    /// (default 5).
    pub fn max_attempts(mut self, n: u64) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Delay before the first retry, doubling up to `max` (default 200 ms
    /// to 30 s).
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = (first, max.max(first));
        self
    }

    /// How long an entry must sit unacknowledged with another worker before
    /// this one takes it over (default 30 s: longer than a batch takes).
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// This worker's name in the consumer group (default host-pid-random).
    /// A restarted worker with the same name resumes its own unfinished
    /// entries at once, without waiting for `claim_idle`.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.consumer = name.into();
        self
    }

    /// Starts the worker task. Dropping the handle stops it abruptly (its
    /// unfinished entries stay queued); [`WorkerHandle::shutdown`] drains.
    pub fn start(self) -> WorkerHandle {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stats = Arc::new(Counters::default());
        let counters = Arc::clone(&stats);
        let task = tokio::spawn(async move { self.run(stop_rx, counters).await });
        WorkerHandle {
            stop: stop_tx,
            task: Some(task),
            stats,
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>, counters: Arc<Counters>) -> DrainReport {
        let shared = Arc::clone(&self.cache.shared);
        let name = self.core.name().to_string();
        let mut queue = match &shared.l2 {
            Some(l2) => Queue::Redis(Box::new(RedisQueue {
                names: StreamNames::new(&shared.namespace, &name, l2.is_cluster()),
                consumer: self.consumer.clone(),
                dialer: l2.dialer(),
                conn: None,
                op_timeout: l2.op_timeout().max(Duration::from_millis(500)),
            })),
            None => Queue::Memory(shared.local_queue(&name)),
        };
        let mut retry_at: HashMap<EntryId, Instant> = HashMap::new();
        let mut last_claim = Instant::now();
        let mut last_gauge = Instant::now() - Duration::from_secs(10);
        let mut group_ready = false;
        loop {
            let draining = *stop.borrow();
            if !group_ready {
                match queue.ensure_group().await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::warn!(family = %name, error = %e, "write-behind: cannot reach the queue; retrying");
                        if wait_or_stop(&mut stop, Duration::from_secs(1)).await && draining {
                            return self.report(&mut queue, &counters, false).await;
                        }
                        continue;
                    }
                }
            }
            if last_gauge.elapsed() >= Duration::from_secs(1) {
                last_gauge = Instant::now();
                if let Ok((len, lag)) = queue.backlog().await {
                    self.core.metrics.write_behind_backlog(len, lag);
                }
            }
            let cycle = async {
                let mut batch = Vec::new();
                // Retries that are due (this worker's own entries).
                let now = Instant::now();
                let due: Vec<EntryId> = retry_at
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(id, _)| id.clone())
                    .take(self.batch_size)
                    .collect();
                batch.extend(queue.claim(&due).await?);
                // Only now that they are in hand: a failed claim retries them.
                for id in &due {
                    retry_at.remove(id);
                }
                // Entries abandoned by a worker that died.
                if last_claim.elapsed() >= self.claim_idle.min(Duration::from_secs(5)) {
                    last_claim = Instant::now();
                    let room = self.batch_size.saturating_sub(batch.len()).max(1);
                    batch.extend(queue.claim_abandoned(self.claim_idle, room).await?);
                }
                let room = self.batch_size.saturating_sub(batch.len());
                if room > 0 {
                    let next_retry = retry_at
                        .values()
                        .min()
                        .map(|at| at.saturating_duration_since(Instant::now()));
                    let block = if !batch.is_empty() {
                        Duration::ZERO
                    } else {
                        next_retry
                            .unwrap_or(Duration::from_secs(1))
                            .min(Duration::from_secs(1))
                    };
                    let block = if draining {
                        block.min(Duration::from_millis(100))
                    } else {
                        block
                    };
                    batch.extend(queue.read_new(room, block).await?);
                }
                Ok::<_, Error>(batch)
            };
            let batch = match cycle.await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(family = %name, error = %e, "write-behind: queue error; retrying");
                    group_ready = false;
                    let _ = wait_or_stop(&mut stop, Duration::from_millis(500)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                // Nothing new, nothing of ours to retry: what is left (if
                // anything) is held by other workers.
                if draining && retry_at.is_empty() {
                    return self.report(&mut queue, &counters, true).await;
                }
                continue;
            }
            if let Err(e) = self
                .process(batch, &mut queue, &mut retry_at, &counters)
                .await
            {
                tracing::warn!(family = %name, error = %e, "write-behind: could not acknowledge a batch; it will be delivered again");
                group_ready = false;
            }
        }
    }

    async fn report(&self, queue: &mut Queue, counters: &Counters, drained: bool) -> DrainReport {
        let left = queue.backlog().await.map(|(n, _)| n).unwrap_or(u64::MAX);
        DrainReport {
            persisted: counters.persisted.load(Relaxed),
            dead_lettered: counters.dead.load(Relaxed),
            left,
            drained: drained && left == 0,
        }
    }

    /// Decodes, coalesces, persists (splitting failures), acknowledges.
    async fn process(
        &self,
        batch: Vec<Entry>,
        queue: &mut Queue,
        retry_at: &mut HashMap<EntryId, Instant>,
        counters: &Counters,
    ) -> Result<(), Error> {
        let max = self.core.policy.policy.max_value_size;
        // Newest write per key; the others are superseded.
        let mut newest: HashMap<String, (Entry, Write<K, V>)> = HashMap::new();
        let mut superseded: Vec<EntryId> = Vec::new();
        for entry in batch {
            let decoded = rmp_serde::from_slice::<K>(&entry.parts)
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    Ok((
                        k,
                        codec::decode::<V>(&entry.value, max).map_err(|e| e.to_string())?,
                    ))
                });
            let (key, value) = match decoded {
                Ok((k, d)) => match d.value {
                    Some(v) => (k, v),
                    None => {
                        superseded.push(entry.id.clone());
                        continue;
                    }
                },
                Err(reason) => {
                    // A write this version cannot read will never persist.
                    let n = queue.deliveries(&entry).await?;
                    queue
                        .dead_letter(&entry, &format!("undecodable: {reason}"), n)
                        .await?;
                    counters.dead.fetch_add(1, Relaxed);
                    self.core.metrics.write_behind_dead_letter();
                    continue;
                }
            };
            let write = Write {
                key,
                value,
                version: entry.version,
            };
            match newest.get(&entry.key) {
                Some((kept, _)) if kept.version >= entry.version => {
                    superseded.push(entry.id.clone())
                }
                Some(_) | None => {
                    if let Some((old, _)) = newest.insert(entry.key.clone(), (entry, write)) {
                        superseded.push(old.id);
                    }
                }
            }
        }
        queue.done(&superseded, &[]).await?;
        let items: Vec<(Entry, Write<K, V>)> = newest.into_values().collect();
        if items.is_empty() {
            return Ok(());
        }
        self.core.metrics.write_behind_batch(items.len());
        // Persist, halving a failing batch until the failures are isolated.
        let mut stack = vec![items];
        while let Some(chunk) = stack.pop() {
            let writes: Vec<Write<K, V>> = chunk.iter().map(|(_, w)| w.clone()).collect();
            // The persister's error is converted at once: it need not be Send.
            let result = (self.persister)(writes).await.map_err(SourceError::new);
            match result {
                Ok(()) => {
                    let ids: Vec<EntryId> = chunk.iter().map(|(e, _)| e.id.clone()).collect();
                    queue
                        .done(&ids, &chunk.iter().map(|(e, _)| e).collect::<Vec<_>>())
                        .await?;
                    // A replayed dead letter is older than what readers may
                    // have cached since it failed: they load it afresh.
                    for (e, _) in chunk.iter().filter(|(e, _)| e.replayed) {
                        let ctx = crate::family::Ctx {
                            shared: Arc::clone(&self.cache.shared),
                            core: Arc::clone(&self.core),
                        };
                        ctx.invalidate_key(&e.key).await?;
                    }
                    counters.persisted.fetch_add(chunk.len() as u64, Relaxed);
                    self.core.metrics.write_behind_persisted(chunk.len());
                }
                Err(e) if chunk.len() > 1 => {
                    tracing::debug!(family = %self.core.name(), error = %e, size = chunk.len(), "write-behind: batch failed; splitting it");
                    let mut chunk = chunk;
                    let half = chunk.split_off(chunk.len() / 2);
                    stack.push(half);
                    stack.push(chunk);
                }
                Err(err) => {
                    let Some((entry, _)) = chunk.into_iter().next() else {
                        continue;
                    };
                    let delivered = queue.deliveries(&entry).await?;
                    if delivered >= self.max_attempts {
                        tracing::error!(family = %self.core.name(), key = %entry.key, error = %err, delivered, "write-behind: giving up on a write; moved to the dead-letter stream");
                        queue
                            .dead_letter(&entry, &err.to_string(), delivered)
                            .await?;
                        counters.dead.fetch_add(1, Relaxed);
                        self.core.metrics.write_behind_dead_letter();
                    } else {
                        let (first, max) = self.backoff;
                        let delay = first
                            .saturating_mul(1 << delivered.saturating_sub(1).min(16))
                            .min(max);
                        let jitter = delay.mul_f64(rand::random::<f64>() * 0.2);
                        tracing::warn!(family = %self.core.name(), key = %entry.key, error = %err, delivered, retry_in = ?delay, "write-behind: write failed; will retry");
                        retry_at.insert(entry.id.clone(), Instant::now() + delay + jitter);
                        counters.retries.fetch_add(1, Relaxed);
                        self.core.metrics.write_behind_retry();
                    }
                }
            }
        }
        Ok(())
    }
}

/// Sleeps `d` unless a stop is requested first; returns whether it was.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        r = stop.wait_for(|s| *s) => r.is_ok(),
    }
}

/// Either kind of queue, as the worker sees it.
enum Queue {
    Redis(Box<RedisQueue>),
    Memory(Arc<MemoryQueue>),
}

fn stream_ids(ids: &[EntryId]) -> Vec<String> {
    ids.iter()
        .filter_map(|i| match i {
            EntryId::Stream(s) => Some(s.clone()),
            EntryId::Local(_) => None,
        })
        .collect()
}

fn local_ids(ids: &[EntryId]) -> Vec<u64> {
    ids.iter()
        .filter_map(|i| match i {
            EntryId::Local(n) => Some(*n),
            EntryId::Stream(_) => None,
        })
        .collect()
}

impl Queue {
    async fn ensure_group(&mut self) -> Result<(), Error> {
        match self {
            Queue::Redis(q) => q.ensure_group().await,
            Queue::Memory(_) => Ok(()),
        }
    }

    async fn read_new(&mut self, count: usize, block: Duration) -> Result<Vec<Entry>, Error> {
        match self {
            Queue::Redis(q) => q.read_new(count, block).await,
            Queue::Memory(q) => Ok(q.read_new(count, block).await),
        }
    }

    async fn claim(&mut self, ids: &[EntryId]) -> Result<Vec<Entry>, Error> {
        match self {
            Queue::Redis(q) => q.claim(&stream_ids(ids)).await,
            Queue::Memory(q) => Ok(q.claim(&local_ids(ids))),
        }
    }

    async fn claim_abandoned(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, Error> {
        match self {
            Queue::Redis(q) => q.claim_abandoned(min_idle, count).await,
            Queue::Memory(q) => Ok(q.claim_abandoned(min_idle, count)),
        }
    }

    async fn deliveries(&mut self, entry: &Entry) -> Result<u64, Error> {
        match (self, &entry.id) {
            (Queue::Redis(q), EntryId::Stream(id)) => Ok(q
                .deliveries(std::slice::from_ref(id))
                .await?
                .get(id)
                .copied()
                .unwrap_or(1)),
            (Queue::Memory(q), EntryId::Local(id)) => Ok(q.deliveries(*id)),
            _ => Ok(1),
        }
    }

    /// Acknowledges `ids`; clears the pending markers of `persisted`.
    async fn done(&mut self, ids: &[EntryId], persisted: &[&Entry]) -> Result<(), Error> {
        match self {
            Queue::Redis(q) => {
                let markers: Vec<(String, Vec<u8>)> = persisted
                    .iter()
                    .map(|e| {
                        // The marker compares versions: give it this write's.
                        let mut v = e.value.clone();
                        if v.len() >= codec::HEADER_LEN {
                            v[codec::VERSION_OFFSET..codec::VERSION_OFFSET + 8]
                                .copy_from_slice(&e.version.to_be_bytes());
                        }
                        (FamilyCore::pending_key(&e.key), v)
                    })
                    .collect();
                q.done(&stream_ids(ids), &markers).await
            }
            Queue::Memory(q) => {
                let markers: Vec<(String, u64)> = persisted
                    .iter()
                    .map(|e| (e.key.clone(), e.version))
                    .collect();
                q.done(&local_ids(ids), &markers);
                Ok(())
            }
        }
    }

    async fn dead_letter(
        &mut self,
        entry: &Entry,
        error: &str,
        deliveries: u64,
    ) -> Result<(), Error> {
        match (self, &entry.id) {
            (Queue::Redis(q), _) => q.dead_letter(entry, error, deliveries).await,
            (Queue::Memory(q), EntryId::Local(id)) => {
                q.dead_letter(*id, error);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn backlog(&mut self) -> Result<(u64, Duration), Error> {
        match self {
            Queue::Redis(q) => q.backlog().await,
            Queue::Memory(q) => Ok(q.backlog()),
        }
    }
}

#[derive(Default)]
struct Counters {
    persisted: AtomicU64,
    retries: AtomicU64,
    dead: AtomicU64,
}

/// A write that was given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The cache key of the write.
    pub key: String,
    /// The persister's last error.
    pub error: String,
}

impl Cache {
    /// The writes of `family` that were given up on (newest last, at most
    /// 1,000): what an operator replays or discards.
    pub async fn dead_letters(&self, family: &str) -> Result<Vec<DeadLetter>, Error> {
        let shared = &self.shared;
        let Some(l2) = &shared.l2 else {
            return Ok(shared
                .local_queue(family)
                .dead()
                .into_iter()
                .map(|(key, error)| DeadLetter { key, error })
                .collect());
        };
        let names = StreamNames::new(&shared.namespace, family, l2.is_cluster());
        let reply: redis::Value = l2
            .run(
                "XRANGE",
                redis::cmd("XRANGE")
                    .arg(&names.dead)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1000),
            )
            .await?;
        Ok(queue::parse_fields(reply)
            .into_iter()
            .map(|mut f| DeadLetter {
                key: String::from_utf8_lossy(&f.remove("key").unwrap_or_default()).into_owned(),
                error: String::from_utf8_lossy(&f.remove("error").unwrap_or_default()).into_owned(),
            })
            .collect())
    }
}

/// What a worker did, so far or by the time it stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Writes persisted.
    pub persisted: u64,
    /// Writes moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries still in the queue when it stopped (other workers' included).
    pub left: u64,
    /// Whether the queue was empty when it stopped.
    pub drained: bool,
}

/// A running worker. Dropping it stops the worker at once.
pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<DrainReport>>,
    stats: Arc<Counters>,
}

impl WorkerHandle {
    /// Persists what is queued (new writes included) until the queue is
    /// empty or `timeout` passes, then stops; reports what is left.
    pub async fn shutdown(mut self, timeout: Duration) -> DrainReport {
        self.stop.send_replace(true);
        let Some(mut task) = self.task.take() else {
            return DrainReport::default();
        };
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(report)) => report,
            _ => {
                task.abort();
                DrainReport {
                    persisted: self.stats.persisted.load(Relaxed),
                    dead_lettered: self.stats.dead.load(Relaxed),
                    left: u64::MAX,
                    drained: false,
                }
            }
        }
    }

    /// Stops the worker at once, as a crash would: entries it had read but
    /// not acknowledged stay queued for another worker.
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Writes persisted, retried and dead-lettered so far.
    pub fn stats(&self) -> DrainReport {
        DrainReport {
            persisted: self.stats.persisted.load(Relaxed),
            dead_lettered: self.stats.dead.load(Relaxed),
            left: 0,
            drained: false,
        }
    }

    /// Retries scheduled so far.
    pub fn retries(&self) -> u64 {
        self.stats.retries.load(Relaxed)
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
