//! The invalidation bus: how every process learns of every invalidation, and
//! notices when it may have missed one.
//!
//! Plain Redis pub/sub delivers at most once: a message published while a
//! subscriber reconnects is gone, and that subscriber's L1 keeps serving the
//! old value with nobody knowing. So invalidations go through a capped Redis
//! Stream (`<ns>:bus`) instead. Each process reads it from the last entry it
//! applied, so after a dropped connection it *replays* what it missed rather
//! than flushing its L1, and it flushes only when it cannot replay:
//!
//! - the stream was trimmed past its position (`max-deleted-entry-id` in
//!   `XINFO STREAM` is beyond it: more than `bus_max_len` invalidations went by
//!   while it was away), or, while connected, the stream's count of entries
//!   ever added (`entries-added`) is ahead of the entries it has read once it
//!   has read up to the newest (checked on every read, in the same round
//!   trip);
//! - the stream is gone (Redis restarted empty, or the key was evicted);
//! - Redis is a different server (`run_id` changed: a restart or a failover).
//!
//! Entries carry the publisher's id so that a process skips its own (it has
//! already applied them locally). Anything the checks above cannot see is
//! bounded by `l1_max_ttl`.
//!
//! RESP3 client tracking was considered as the transport: it does not survive
//! a reconnect in redis-rs 1.8 (tracking must be re-enabled by hand and
//! whatever was invalidated meanwhile is lost), and it reports raw keys, not
//! tags or patterns. See docs/DESIGN-NOTES.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::flight::Flights;
use crate::registry::Families;
use crate::tier::memory::MemoryTier;
use crate::tier::redis::{Batch, Dialer, OwnConn};

/// One invalidation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// Drop one key.
    Key(String),
    /// Drop every entry carrying this tag key.
    Tag(String),
    /// Drop every key matching this pattern (see `key::matches_pattern`).
    Pattern(String),
    /// Drop everything.
    Flush,
}

impl Event {
    fn field(&self) -> (&'static str, &str) {
        match self {
            Event::Key(k) => ("k", k),
            Event::Tag(t) => ("t", t),
            Event::Pattern(p) => ("x", p),
            Event::Flush => ("all", "1"),
        }
    }

    /// Applies the event to this process: drops the L1 copies, and voids
    /// the loads and writes in progress here, which may hold older values
    /// than the writer that published the event.
    pub fn apply(&self, l1: &MemoryTier, flights: &Flights, families: &Families) {
        match self {
            Event::Key(k) => {
                flights.void(k);
                l1.invalidate(k);
            }
            Event::Tag(t) => {
                crate::registry::void_tagged(flights, families, t);
                l1.invalidate_tag(t);
            }
            Event::Pattern(p) => {
                flights.void_matching(|k| crate::key::matches_pattern(p, k));
                l1.invalidate_pattern(p);
            }
            Event::Flush => {
                flights.void_all();
                l1.invalidate_all();
            }
        }
    }
}

/// Where this process publishes, and who it is.
#[derive(Debug, Clone)]
pub(crate) struct Publisher {
    stream: String,
    id: String,
    max_len: usize,
}

impl Publisher {
    pub fn new(namespace: &str, max_len: usize) -> Publisher {
        Publisher {
            stream: format!("{namespace}:bus"),
            id: format!("{:016x}", rand::random::<u64>()),
            max_len,
        }
    }

    /// The id of the stream's newest entry (zero if there is none).
    pub async fn last_id(
        &self,
        l2: &crate::tier::redis::RedisTier,
    ) -> Result<EntryId, crate::Error> {
        let reply: Value = l2
            .run(
                "XREVRANGE",
                redis::cmd("XREVRANGE")
                    .arg(&self.stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1),
            )
            .await?;
        let id = match reply {
            Value::Array(entries) => entries.into_iter().next().and_then(|e| match e {
                Value::Array(mut parts) if !parts.is_empty() => string_of(&parts.swap_remove(0)),
                _ => None,
            }),
            _ => None,
        };
        Ok(id.and_then(|s| EntryId::parse(&s)).unwrap_or_default())
    }

    /// Appends the publication of `event` to `pipe` (its reply is ignored).
    pub fn add(&self, pipe: &mut Batch, event: &Event) {
        let (field, value) = event.field();
        pipe.cmd("XADD")
            .arg(&self.stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg("*")
            .arg("p")
            .arg(&self.id)
            .arg(field)
            .arg(value)
            .ignore();
    }
}

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct EntryId(u64, u64);

impl EntryId {
    fn parse(s: &str) -> Option<EntryId> {
        let (ms, seq) = s.split_once('-')?;
        Some(EntryId(ms.parse().ok()?, seq.parse().ok()?))
    }

    fn render(self) -> String {
        format!("{}-{}", self.0, self.1)
    }
}

/// What the listener has done, for `Cache::sync_invalidations` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The last entry applied (or skipped as our own).
    pub position: EntryId,
    /// Entries applied from other processes.
    pub applied: u64,
    /// Times the whole L1 was flushed because an invalidation may be lost.
    pub flushes: u64,
    /// Whether the listener's connection is up.
    pub connected: bool,
}

/// The running listener: stops when dropped.
pub(crate) struct Listener {
    task: JoinHandle<()>,
    pub progress: watch::Receiver<Progress>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings of the listener.
pub(crate) struct ListenerSettings {
    pub dialer: Dialer,
    pub publisher: Publisher,
    pub l1: Arc<MemoryTier>,
    pub flights: Arc<Flights>,
    pub families: Arc<Families>,
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long one `XREAD` blocks. Also how soon a silently dead
    /// connection is noticed (plus the op timeout).
    pub block: Duration,
}

/// Starts the listener task.
pub(crate) fn spawn(settings: ListenerSettings) -> Listener {
    let (tx, rx) = watch::channel(Progress::default());
    let task = tokio::spawn(listen(settings, tx));
    Listener { task, progress: rx }
}

/// Why a session ended: the connection failed somehow. Reconnect.
type SessionEnd = redis::RedisError;

/// Where the listener is in the stream, kept across reconnections.
#[derive(Default)]
struct Cursor {
    /// The last entry read (`None` before the first connection).
    position: Option<EntryId>,
    /// The stream's `entries-added` count that matches `position`: every
    /// entry ever added up to it, read or not.
    seen: u64,
    /// The Redis server's `run_id`.
    server: Option<String>,
    /// No session has started yet.
    first: bool,
}

async fn listen(settings: ListenerSettings, progress: watch::Sender<Progress>) {
    let mut cursor = Cursor {
        first: true,
        ..Cursor::default()
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let generation = settings.dialer.generation();
        let outcome = match settings.dialer.connect(settings.connect_timeout).await {
            Ok(mut conn) => {
                backoff = Duration::from_millis(50);
                session(&settings, &mut conn, generation, &mut cursor, &progress).await
            }
            Err(e) => Err(e),
        };
        progress.send_modify(|p| p.connected = false);
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "invalidation bus disconnected; reconnecting");
        }
        metrics::counter!("larder_bus_reconnects_total").increment(1);
        // Bounded exponential backoff; the wait is the point here.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Flushes L1 because an invalidation may have been missed.
fn flush(settings: &ListenerSettings, progress: &watch::Sender<Progress>, reason: &'static str) {
    settings.flights.void_all();
    settings.l1.invalidate_all();
    progress.send_modify(|p| p.flushes += 1);
    metrics::counter!("larder_bus_flushes_total", "reason" => reason).increment(1);
    tracing::warn!(
        reason,
        "flushed the in-process cache: invalidations may have been missed"
    );
}

async fn session(
    settings: &ListenerSettings,
    conn: &mut OwnConn,
    generation: u64,
    cursor: &mut Cursor,
    progress: &watch::Sender<Progress>,
) -> Result<(), SessionEnd> {
    // Name the connection, so that operators (and tests) can find it.
    let name = format!("larder-bus:{}", settings.publisher.id);
    let _: () = tokio::time::timeout(
        settings.op_timeout,
        conn.query_at(
            redis::cmd("CLIENT").arg("SETNAME").arg(&name),
            &settings.publisher.stream,
        ),
    )
    .await
    .map_err(timed_out)??;

    // A different server (restart or failover) may have lost anything.
    let run_id = server_id(settings, conn).await?;
    if cursor.server.is_some() && cursor.server != run_id {
        flush(settings, progress, "server_changed");
        cursor.position = None;
    }
    cursor.server = run_id;

    let mut info_cmd = redis::cmd("XINFO");
    info_cmd.arg("STREAM").arg(&settings.publisher.stream);
    let state = tokio::time::timeout(settings.op_timeout, info_cmd.query_async::<Value>(conn))
        .await
        .map_err(timed_out)?;
    let state = stream_state(state)?;
    match (cursor.position, state) {
        // First connection (or a new server): start from the end; L1 holds
        // nothing older that this stream could still invalidate.
        (None, Some(s)) => {
            // What this process cached before its listener first connected
            // may have been invalidated meanwhile (a slow first connection,
            // as a cluster connection is): drop it. Not counted as a flush:
            // nothing was lost that the stream could have replayed.
            if cursor.first {
                settings.flights.void_all();
                settings.l1.invalidate_all();
            }
            cursor.position = Some(s.last);
            cursor.seen = s.entries_added;
        }
        (None, None) => {
            cursor.position = Some(EntryId::default());
            cursor.seen = 0;
        }
        // Reconnection: replay from where we were, unless entries we never
        // saw were trimmed away, or the stream itself is gone.
        (Some(at), Some(s)) if s.max_deleted > at => {
            flush(settings, progress, "trimmed");
            cursor.position = Some(s.last);
            cursor.seen = s.entries_added;
        }
        (Some(_), Some(_)) => {}
        (Some(at), None) => {
            if at != EntryId::default() {
                flush(settings, progress, "stream_lost");
            }
            cursor.position = Some(EntryId::default());
            cursor.seen = 0;
        }
    }
    cursor.first = false;
    let position = cursor.position.unwrap_or_default();
    progress.send_modify(|p| {
        p.connected = true;
        p.position = position;
    });

    let mut checked = tokio::time::Instant::now();
    loop {
        // A Sentinel failover moved the master: this connection is on the
        // old server. Reconnect (and, seeing a new server, flush).
        if settings.dialer.generation() != generation {
            return Err(session_end("the redis master changed"));
        }
        // On a cluster the connection follows a failover of the stream's
        // master by itself, so the server is checked again as we go: a
        // promoted replica may lack what the old master had not replicated.
        if checked.elapsed() >= SERVER_CHECK_EVERY {
            checked = tokio::time::Instant::now();
            if server_id(settings, conn).await? != cursor.server {
                return Err(session_end("the redis server changed"));
            }
        }
        let from = cursor.position.unwrap_or_default().render();
        // The read and the stream's state right after it, in one round trip.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        pipe.cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(settings.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&settings.publisher.stream)
            .arg(&from);
        pipe.add_command(info_cmd.clone());
        let (read, state): (Value, Value) =
            tokio::time::timeout(settings.block + settings.op_timeout, pipe.query_async(conn))
                .await
                .map_err(timed_out)??;
        if let Value::ServerError(e) = read {
            return Err(redis::RedisError::from(e));
        }
        let entries = parse_xread(read);
        let mut applied = 0;
        let mut last = cursor.position.unwrap_or_default();
        cursor.seen += entries.len() as u64;
        for (id, fields) in entries {
            last = last.max(id);
            if fields.get("p").map(String::as_str) == Some(settings.publisher.id.as_str()) {
                continue;
            }
            let event = if let Some(k) = fields.get("k") {
                Event::Key(k.clone())
            } else if let Some(t) = fields.get("t") {
                Event::Tag(t.clone())
            } else if let Some(x) = fields.get("x") {
                Event::Pattern(x.clone())
            } else {
                // `all`, or an entry this version does not understand:
                // dropping everything is the safe reading.
                Event::Flush
            };
            event.apply(&settings.l1, &settings.flights, &settings.families);
            applied += 1;
        }
        cursor.position = Some(last);
        match stream_state(Ok(state)) {
            // Caught up, yet fewer entries read than were ever added since our
            // start: some were trimmed before we could read them.
            Ok(Some(s)) if s.last == last && s.entries_added != cursor.seen => {
                if s.entries_added > cursor.seen {
                    flush(settings, progress, "trimmed");
                }
                cursor.seen = s.entries_added;
            }
            Ok(Some(_)) => {}
            Ok(None) if last != EntryId::default() => {
                flush(settings, progress, "stream_lost");
                cursor.position = Some(EntryId::default());
                cursor.seen = 0;
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        metrics::counter!("larder_bus_events_total").increment(applied);
        let position = cursor.position.unwrap_or_default();
        progress.send_modify(|p| {
            p.position = position;
            p.applied += applied;
        });
    }
}

/// How often a connected listener checks that its server is the same.
const SERVER_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The `run_id` of the server holding the bus stream.
async fn server_id(
    settings: &ListenerSettings,
    conn: &mut OwnConn,
) -> Result<Option<String>, SessionEnd> {
    let info: String = tokio::time::timeout(
        settings.op_timeout,
        conn.query_at(redis::cmd("INFO").arg("server"), &settings.publisher.stream),
    )
    .await
    .map_err(timed_out)??;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|s| s.trim().to_string()))
}

fn session_end(why: &str) -> SessionEnd {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        why.to_string(),
    ))
}

fn timed_out(_: tokio::time::error::Elapsed) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "invalidation bus read timed out",
    ))
}

/// What `XINFO STREAM` says about the stream.
struct StreamState {
    /// Its newest id.
    last: EntryId,
    /// The highest id ever trimmed or deleted.
    max_deleted: EntryId,
    /// How many entries were ever added.
    entries_added: u64,
}

/// Reads an `XINFO STREAM` reply; `None` if the stream does not exist.
fn stream_state(reply: redis::RedisResult<Value>) -> Result<Option<StreamState>, SessionEnd> {
    let value = match reply {
        Ok(Value::ServerError(e)) if e.details().is_some_and(|d| d.contains("no such key")) => {
            return Ok(None);
        }
        Ok(Value::ServerError(e)) => return Err(redis::RedisError::from(e)),
        Ok(v) => v,
        // "ERR no such key": the stream does not exist (yet, or any more).
        Err(e) if e.to_string().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    let fields = map_of(value);
    let id = |name: &str| {
        fields
            .get(name)
            .and_then(string_of)
            .and_then(|s| EntryId::parse(&s))
            .unwrap_or_default()
    };
    let entries_added = fields
        .get("entries-added")
        .and_then(string_of)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Some(StreamState {
        last: id("last-generated-id"),
        max_deleted: id("max-deleted-entry-id"),
        entries_added,
    }))
}

fn string_of(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A RESP2 flat array or a RESP3 map, as field name → value.
fn map_of(v: Value) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    match v {
        Value::Array(items) => {
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let Some(k) = string_of(&k) {
                    out.insert(k, v);
                }
            }
        }
        Value::Map(pairs) => {
            for (k, v) in pairs {
                if let Some(k) = string_of(&k) {
                    out.insert(k, v);
                }
            }
        }
        _ => {}
    }
    out
}

/// `XREAD` reply → entries (id, fields). Nil (timeout) → none.
fn parse_xread(v: Value) -> Vec<(EntryId, HashMap<String, String>)> {
    let streams = match v {
        Value::Array(s) => s,
        Value::Map(pairs) => pairs
            .into_iter()
            .map(|(k, v)| Value::Array(vec![k, v]))
            .collect(),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut pair) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = pair.pop() else {
            continue;
        };
        for entry in entries {
            let Value::Array(mut e) = entry else { continue };
            if e.len() != 2 {
                continue;
            }
            let fields = e.pop();
            let id = e
                .pop()
                .and_then(|id| string_of(&id))
                .and_then(|s| EntryId::parse(&s));
            let (Some(id), Some(Value::Array(fv))) = (id, fields) else {
                continue;
            };
            let mut map = HashMap::new();
            let mut it = fv.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let (Some(k), Some(v)) = (string_of(&k), string_of(&v)) {
                    map.insert(k, v);
                }
            }
            out.push((id, map));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_numerically() {
        let a = EntryId::parse("1700000000000-9").unwrap();
        let b = EntryId::parse("1700000000000-10").unwrap();
        let c = EntryId::parse("1700000000001-0").unwrap();
        assert!(a < b && b < c);
        assert_eq!(a.render(), "1700000000000-9");
        assert!(EntryId::parse("nope").is_none());
    }

    #[test]
    fn xread_replies_parse() {
        let entry = |id: &str, k: &str, v: &str| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"p".to_vec()),
                    Value::BulkString(b"me".to_vec()),
                    Value::BulkString(k.as_bytes().to_vec()),
                    Value::BulkString(v.as_bytes().to_vec()),
                ]),
            ])
        };
        let reply = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"ns:bus".to_vec()),
            Value::Array(vec![
                entry("1-1", "k", "ns:{a:1}"),
                entry("1-2", "t", "ns:tag:{u:1}"),
            ]),
        ])]);
        let entries = parse_xread(reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0, EntryId(1, 2));
        assert_eq!(entries[1].1["t"], "ns:tag:{u:1}");
        assert!(parse_xread(Value::Nil).is_empty());
    }
}
