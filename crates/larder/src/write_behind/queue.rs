//! Where write-behind writes wait: a Redis Stream with a consumer group when
//! Redis is configured, an in-process queue otherwise.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::Value;
use tokio::sync::Notify;

use crate::Error;
use crate::scripts;
use crate::tier::redis::batch::{BatchCmd, pipeline_of, routing_key, slot_of};
use crate::tier::redis::{Batch, Dialer, OwnConn};

/// One queued write, as read back by a worker.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The queue's id for it.
    pub id: EntryId,
    /// The full cache key.
    pub key: String,
    /// The key parts, MessagePack.
    pub parts: Vec<u8>,
    /// The value, in the cache's layout.
    pub value: Vec<u8>,
    /// Its version (the order writes were enqueued in).
    pub version: u64,
    /// Put back from the dead letters by an operator: once persisted, the
    /// key's cached copies go (they may predate it).
    pub replayed: bool,
}

/// A queue entry id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum EntryId {
    Stream(String),
    Local(u64),
}

/// The version of a write whose stream entry id is `ms-seq`: `ms << 20 |
/// seq`, as the enqueue script computes it.
pub(crate) fn version_of(id: &str) -> u64 {
    let Some((ms, seq)) = id.split_once('-') else {
        return 0;
    };
    let (ms, seq) = (
        ms.parse::<u64>().unwrap_or(0),
        seq.parse::<u64>().unwrap_or(0),
    );
    (ms << 20) | seq.min((1 << 20) - 1)
}

/// How long a persisted mark (see [`scripts::CLEAR_PENDING`]) outlives the
/// write it stands for: far longer than a write's `XADD` and its stage can
/// be apart (the writer's operation timeout), and the marks are 9 bytes.
const PERSISTED_MARK_TTL: Duration = Duration::from_secs(300);

/// The stream, its dead letters and consumer group of one family.
#[derive(Debug, Clone)]
pub(crate) struct StreamNames {
    pub stream: String,
    pub dead: String,
    pub group: String,
    /// On a cluster, where a write's `XADD` and its stage are two steps.
    pub cluster: bool,
}

impl StreamNames {
    /// On a cluster the stream and its dead letters share a hash tag, so
    /// that moving an entry to the dead letters is one pipeline on one node.
    pub fn new(namespace: &str, family: &str, cluster: bool) -> StreamNames {
        let (stream, dead) = if cluster {
            (
                format!("{namespace}:{{wb:{family}}}"),
                format!("{namespace}:{{wb:{family}}}:dead"),
            )
        } else {
            (
                format!("{namespace}:wb:{family}"),
                format!("{namespace}:wb:{family}:dead"),
            )
        };
        StreamNames {
            stream,
            dead,
            group: "larder".into(),
            cluster,
        }
    }
}

/// A worker's side of the Redis queue, on a connection of its own (its
/// blocking reads must not hold up the cache's shared connection).
pub(crate) struct RedisQueue {
    pub names: StreamNames,
    pub consumer: String,
    pub dialer: Dialer,
    pub conn: Option<OwnConn>,
    pub op_timeout: Duration,
}

fn redis_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Redis {
        op,
        reason: e.to_string(),
    }
}

impl RedisQueue {
    async fn conn(&mut self) -> Result<OwnConn, Error> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let c = self
            .dialer
            .connect(self.op_timeout * 10)
            .await
            .map_err(|e| redis_err("CONNECT", e))?;
        // Named, as the bus listener's is, so that an operator's `CLIENT
        // LIST` says whose it is. A name is a courtesy: an ACL that
        // forbids it costs nothing.
        let mut named = c.clone();
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("SETNAME")
            .arg(format!("larder-write-behind:{}", self.consumer));
        let _ = tokio::time::timeout(
            self.op_timeout,
            named.query_at::<()>(&cmd, &self.names.stream),
        )
        .await;
        self.conn = Some(c.clone());
        Ok(c)
    }

    /// Runs a command; drops the connection on failure so the next call
    /// makes a new one.
    async fn run<T: redis::FromRedisValue>(
        &mut self,
        op: &'static str,
        cmd: &redis::Cmd,
        extra: Duration,
    ) -> Result<T, Error> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(self.op_timeout + extra, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_unrecoverable_error() || e.is_io_error() {
                    self.conn = None;
                }
                Err(redis_err(op, e))
            }
            Err(e) => {
                self.conn = None;
                Err(redis_err(op, e))
            }
        }
    }

    /// Runs a batch on the worker's connection: one pipeline, or on a
    /// cluster one per slot, in parallel.
    async fn run_pipe(&mut self, op: &'static str, batch: &Batch) -> Result<(), Error> {
        let conn = self.conn().await?;
        let pipes: Vec<redis::Pipeline> = match &conn {
            OwnConn::Single(_) => vec![batch.to_pipeline()],
            OwnConn::Cluster(_) => {
                let mut by_slot: Vec<(u16, Vec<&BatchCmd>)> = Vec::new();
                for c in &batch.cmds {
                    let slot = routing_key(&c.cmd).map_or(0, |k| slot_of(&k));
                    match by_slot.iter_mut().find(|(s, _)| *s == slot) {
                        Some((_, cmds)) => cmds.push(c),
                        None => by_slot.push((slot, vec![c])),
                    }
                }
                by_slot
                    .into_iter()
                    .map(|(_, cmds)| pipeline_of(cmds.into_iter(), false))
                    .collect()
            }
        };
        let result = tokio::time::timeout(self.op_timeout, async {
            let runs = pipes.iter().map(|pipe| {
                let mut conn = conn.clone();
                async move {
                    match pipe.query_async::<()>(&mut conn).await {
                        Err(e)
                            if e.kind()
                                == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                        {
                            for s in scripts::all() {
                                s.load_async(&mut conn).await?;
                            }
                            pipe.query_async::<()>(&mut conn).await
                        }
                        other => other,
                    }
                }
            });
            futures_util::future::join_all(runs)
                .await
                .into_iter()
                .collect::<redis::RedisResult<Vec<()>>>()
                .map(|_| ())
        })
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if e.is_unrecoverable_error() || e.is_io_error() {
                    self.conn = None;
                }
                Err(redis_err(op, e))
            }
            Err(e) => {
                self.conn = None;
                Err(redis_err(op, e))
            }
        }
    }

    /// Creates the consumer group (from the start of the stream, so that
    /// writes enqueued before any worker ran are not skipped).
    pub async fn ensure_group(&mut self) -> Result<(), Error> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.names.stream)
            .arg(&self.names.group)
            .arg("0")
            .arg("MKSTREAM");
        match self.run::<()>("XGROUP CREATE", &cmd, Duration::ZERO).await {
            Ok(()) => Ok(()),
            Err(Error::Redis { reason, .. }) if reason.contains("BUSYGROUP") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// New entries, waiting up to `block` for some.
    pub async fn read_new(&mut self, count: usize, block: Duration) -> Result<Vec<Entry>, Error> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.names.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        // `BLOCK 0` would wait forever: without a wait, do not block at all.
        if block >= Duration::from_millis(1) {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.names.stream).arg(">");
        let reply: Value = self.run("XREADGROUP", &cmd, block).await?;
        Ok(parse_entries(first_stream(reply)))
    }

    /// Takes over `ids` (this worker's own, due for a retry): counts one
    /// more delivery for each.
    pub async fn claim(&mut self, ids: &[String]) -> Result<Vec<Entry>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.names.stream)
            .arg(&self.names.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(ids);
        let reply: Value = self.run("XCLAIM", &cmd, Duration::ZERO).await?;
        Ok(parse_entries(reply))
    }

    /// Takes over entries another consumer has held for longer than
    /// `min_idle`: a worker that died mid-batch.
    pub async fn claim_abandoned(
        &mut self,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Entry>, Error> {
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(&self.names.stream)
            .arg(&self.names.group)
            .arg(&self.consumer)
            .arg(min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(count);
        let reply: Value = self.run("XAUTOCLAIM", &cmd, Duration::ZERO).await?;
        match reply {
            Value::Array(mut parts) if parts.len() >= 2 => Ok(parse_entries(parts.swap_remove(1))),
            _ => Ok(Vec::new()),
        }
    }

    /// How many times each entry was delivered (durable across workers).
    pub async fn deliveries(&mut self, ids: &[String]) -> Result<HashMap<String, u64>, Error> {
        let mut out = HashMap::new();
        for id in ids {
            let mut cmd = redis::cmd("XPENDING");
            cmd.arg(&self.names.stream)
                .arg(&self.names.group)
                .arg(id)
                .arg(id)
                .arg(1);
            let reply: Value = self.run("XPENDING", &cmd, Duration::ZERO).await?;
            if let Value::Array(rows) = reply
                && let Some(Value::Array(row)) = rows.into_iter().next()
                && let Some(Value::Int(n)) = row.get(3)
            {
                out.insert(id.clone(), *n as u64);
            }
        }
        Ok(out)
    }

    /// Acknowledges and deletes entries, and clears the pending markers of
    /// the writes now in the database (unless a newer write is pending).
    pub async fn done(
        &mut self,
        ids: &[String],
        persisted: &[(String, Vec<u8>)],
    ) -> Result<(), Error> {
        if ids.is_empty() && persisted.is_empty() {
            return Ok(());
        }
        let mark_ttl_ms = if self.names.cluster {
            PERSISTED_MARK_TTL.as_millis() as u64
        } else {
            0
        };
        let mut pipe = Batch::new();
        for (pending_key, value) in persisted {
            pipe.cmd("EVALSHA")
                .arg(scripts::CLEAR_PENDING.get_hash())
                .arg(1)
                .arg(pending_key)
                .arg(value)
                .arg(mark_ttl_ms)
                .ignore();
        }
        if !ids.is_empty() {
            pipe.cmd("XACK")
                .arg(&self.names.stream)
                .arg(&self.names.group)
                .arg(ids)
                .ignore();
            pipe.cmd("XDEL").arg(&self.names.stream).arg(ids).ignore();
        }
        self.run_pipe("XACK", &pipe).await
    }

    /// Moves an entry to the dead-letter stream.
    pub async fn dead_letter(
        &mut self,
        entry: &Entry,
        error: &str,
        deliveries: u64,
    ) -> Result<(), Error> {
        let EntryId::Stream(id) = &entry.id else {
            return Ok(());
        };
        let mut pipe = Batch::new();
        pipe.cmd("XADD")
            .arg(&self.names.dead)
            .arg("*")
            .arg("id")
            .arg(id)
            .arg("key")
            .arg(&entry.key)
            .arg("k")
            .arg(&entry.parts)
            .arg("v")
            .arg(&entry.value)
            .arg("error")
            .arg(error)
            .arg("deliveries")
            .arg(deliveries)
            .ignore();
        pipe.cmd("XACK")
            .arg(&self.names.stream)
            .arg(&self.names.group)
            .arg(id)
            .ignore();
        pipe.cmd("XDEL").arg(&self.names.stream).arg(id).ignore();
        self.run_pipe("XADD (dead letter)", &pipe).await
    }

    /// Entries waiting or in progress, and the age of the oldest.
    pub async fn backlog(&mut self) -> Result<(u64, Duration), Error> {
        let len: u64 = self
            .run(
                "XLEN",
                redis::cmd("XLEN").arg(&self.names.stream),
                Duration::ZERO,
            )
            .await?;
        let first: Value = self
            .run(
                "XRANGE",
                redis::cmd("XRANGE")
                    .arg(&self.names.stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1),
                Duration::ZERO,
            )
            .await?;
        let oldest = parse_entries(first).into_iter().next().map(|e| match e.id {
            EntryId::Stream(id) => {
                let ms = id
                    .split('-')
                    .next()
                    .and_then(|m| m.parse::<u64>().ok())
                    .unwrap_or(0);
                Duration::from_millis(crate::codec::unix_ms().saturating_sub(ms))
            }
            EntryId::Local(_) => Duration::ZERO,
        });
        Ok((len, oldest.unwrap_or_default()))
    }
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// The entries of the first (only) stream of an `XREAD(GROUP)` reply.
fn first_stream(reply: Value) -> Value {
    let streams = match reply {
        Value::Array(s) => s,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Value::Nil,
    };
    for s in streams {
        if let Value::Array(mut pair) = s
            && pair.len() == 2
        {
            return pair.swap_remove(1);
        }
    }
    Value::Nil
}

/// `[[id, [field, value, ...]], ...]` → each entry's fields (and `_id`).
/// Entries deleted while pending come back with nil fields and are skipped.
pub(crate) fn parse_fields(v: Value) -> Vec<HashMap<String, Vec<u8>>> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Array(mut pair) = item else {
            continue;
        };
        if pair.len() != 2 {
            continue;
        }
        let fields = pair.pop();
        let Some(id) = pair.pop().and_then(bytes_of) else {
            continue;
        };
        let Some(Value::Array(fields)) = fields else {
            continue;
        };
        let mut map: HashMap<String, Vec<u8>> = HashMap::new();
        map.insert("_id".into(), id);
        let mut it = fields.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Some(k), Some(v)) = (
                bytes_of(k).and_then(|b| String::from_utf8(b).ok()),
                bytes_of(v),
            ) {
                map.insert(k, v);
            }
        }
        out.push(map);
    }
    out
}

/// Stream entries → queued writes.
fn parse_entries(v: Value) -> Vec<Entry> {
    parse_fields(v)
        .into_iter()
        .filter_map(|mut map| {
            let id = String::from_utf8(map.remove("_id")?).ok()?;
            // A replayed dead letter keeps its original version (`ver`).
            let version = map
                .remove("ver")
                .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
                .unwrap_or_else(|| version_of(&id));
            Some(Entry {
                version,
                replayed: map.contains_key("replay"),
                key: String::from_utf8(map.remove("key")?).ok()?,
                parts: map.remove("k")?,
                value: map.remove("v")?,
                id: EntryId::Stream(id),
            })
        })
        .collect()
}

/// The queue without Redis: in this process's memory. Writes that have not
/// reached the database when the process dies are lost, which is why larder
/// recommends Redis for write-behind; this keeps the embedded mode working.
#[derive(Default)]
pub(crate) struct MemoryQueue {
    state: Mutex<MemState>,
    arrived: Notify,
}

#[derive(Default)]
struct MemState {
    next_id: u64,
    last_version: u64,
    waiting: VecDeque<(Entry, Instant)>,
    /// Entries handed to a worker: the entry, when it was queued, how many
    /// times it was delivered, when it was last delivered.
    taken: HashMap<u64, (Entry, Instant, u64, Instant)>,
    /// Writes not yet in the database, by key: the read path serves them.
    pending: HashMap<String, (u64, Vec<u8>)>,
    dead: Vec<(Entry, String)>,
}

impl MemoryQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Enqueues a write; returns its version. `value` is patched with it.
    pub fn push(&self, key: String, parts: Vec<u8>, mut value: Vec<u8>) -> u64 {
        let mut s = self.lock();
        // Increasing even if the clock steps back.
        let version = (crate::codec::unix_ms() << 20).max(s.last_version + 1);
        s.last_version = version;
        if value.len() >= crate::codec::HEADER_LEN {
            let at = crate::codec::VERSION_OFFSET;
            value[at..at + 8].copy_from_slice(&version.to_be_bytes());
        }
        s.next_id += 1;
        let id = s.next_id;
        s.pending.insert(key.clone(), (version, value.clone()));
        s.waiting.push_back((
            Entry {
                id: EntryId::Local(id),
                key,
                parts,
                value,
                version,
                replayed: false,
            },
            Instant::now(),
        ));
        drop(s);
        self.arrived.notify_one();
        version
    }

    /// The pending write of `key`, if any.
    pub fn pending(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().pending.get(key).map(|(_, v)| v.clone())
    }

    pub async fn read_new(&self, count: usize, block: Duration) -> Vec<Entry> {
        let deadline = tokio::time::Instant::now() + block;
        loop {
            let arrived = self.arrived.notified();
            {
                let mut s = self.lock();
                if !s.waiting.is_empty() {
                    let n = count.min(s.waiting.len());
                    let mut out = Vec::with_capacity(n);
                    for (e, at) in s.waiting.drain(..n).collect::<Vec<_>>() {
                        if let EntryId::Local(id) = e.id {
                            s.taken.insert(id, (e.clone(), at, 1, Instant::now()));
                        }
                        out.push(e);
                    }
                    return out;
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Vec::new();
            }
        }
    }

    pub fn claim(&self, ids: &[u64]) -> Vec<Entry> {
        let mut s = self.lock();
        ids.iter()
            .filter_map(|id| {
                let (e, _, n, at) = s.taken.get_mut(id)?;
                *n += 1;
                *at = Instant::now();
                Some(e.clone())
            })
            .collect()
    }

    /// Entries delivered more than `min_idle` ago and never acknowledged:
    /// their worker was stopped (aborted) before finishing them.
    pub fn claim_abandoned(&self, min_idle: Duration, count: usize) -> Vec<Entry> {
        let ids: Vec<u64> = self
            .lock()
            .taken
            .iter()
            .filter(|(_, (_, _, _, at))| at.elapsed() >= min_idle)
            .map(|(id, _)| *id)
            .take(count)
            .collect();
        self.claim(&ids)
    }

    pub fn deliveries(&self, id: u64) -> u64 {
        self.lock().taken.get(&id).map_or(0, |(_, _, n, _)| *n)
    }

    pub fn done(&self, ids: &[u64], persisted: &[(String, u64)]) {
        let mut s = self.lock();
        for id in ids {
            s.taken.remove(id);
        }
        for (key, version) in persisted {
            if s.pending.get(key).is_some_and(|(v, _)| v <= version) {
                s.pending.remove(key);
            }
        }
    }

    pub fn dead_letter(&self, id: u64, error: &str) {
        let mut s = self.lock();
        if let Some((e, _, _, _)) = s.taken.remove(&id) {
            s.dead.push((e, error.to_string()));
        }
    }

    /// Dead-lettered writes (in-process queue only keeps them in memory).
    pub fn dead(&self) -> Vec<(String, String)> {
        self.lock()
            .dead
            .iter()
            .map(|(e, err)| (e.key.clone(), err.clone()))
            .collect()
    }

    pub fn backlog(&self) -> (u64, Duration) {
        let s = self.lock();
        let len = (s.waiting.len() + s.taken.len()) as u64;
        let oldest = s
            .waiting
            .iter()
            .map(|(_, at)| *at)
            .chain(s.taken.values().map(|(_, at, _, _)| *at))
            .min()
            .map(|at| at.elapsed())
            .unwrap_or_default();
        (len, oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_stream_order() {
        assert!(version_of("1700000000000-5") < version_of("1700000000000-6"));
        assert!(version_of("1700000000000-999999") < version_of("1700000000001-0"));
        assert_eq!(version_of("3-7"), (3 << 20) | 7);
        assert_eq!(version_of("garbage"), 0);
    }
}
