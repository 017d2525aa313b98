//! The Lua scripts larder runs in Redis, each loaded once and called by SHA.
//!
//! Scripts exist where two steps must not interleave with another client's:
//! reading the stored version and writing a newer value, or enqueueing a
//! write-behind entry and recording it as pending. Every key a script touches
//! is passed in `KEYS` and shares the value's hash tag, so the scripts run on
//! a cluster too; the one exception, `ENQUEUE_WRITE` (value and family
//! stream), has a cluster form in two steps (`STAGE_WRITE`).

use std::sync::LazyLock;

/// Compares the 8-byte big-endian versions at bytes 14..21 (1-based) of two
/// encoded values. Byte by byte, because Lua numbers are doubles (they lose
/// u64 precision) and Lua's string `<` follows the server's locale.
const CMP_VERSION: &str = r#"
local function cmp_version(a, b)
  for i = 14, 21 do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      if x < y then return -1 else return 1 end
    end
  end
  return 0
end
-- Whether `v` is an encoded value of layout 2 (header byte 0x2?), long
-- enough to carry a version.
local function versioned(v)
  return v and #v >= 22 and math.floor(string.byte(v, 1) / 16) == 2
end
-- A write-behind persisted mark: 'P' and the persisted version (8 bytes BE).
local function persisted_mark(v)
  return v and #v == 9 and string.byte(v, 1) == 80
end
-- Orders a persisted mark against a value's version.
local function cmp_mark(mark, value)
  for i = 0, 7 do
    local x, y = string.byte(mark, 2 + i), string.byte(value, 14 + i)
    if x ~= y then
      if x < y then return -1 else return 1 end
    end
  end
  return 0
end
"#;

fn with_prelude(body: &str) -> redis::Script {
    redis::Script::new(&format!("{CMP_VERSION}\n{body}"))
}

/// `SET` unless a newer version is stored.
///
/// KEYS[1] value key. ARGV[1] encoded value (version inside), ARGV[2] TTL in
/// ms (`0`: none). Returns 1 if stored, 0 if the stored version is newer.
pub(crate) static SET_IF_NEWER: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local cur = redis.call('GET', KEYS[1])
if versioned(cur) and cmp_version(cur, ARGV[1]) > 0 then
  return 0
end
if ARGV[2] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"#,
    )
});

/// Stages a queued write: the value, with its version patched in from the
/// queue entry's id, as the key's pending marker and (unless a newer
/// version is stored) as its cached value.
///
/// The version comes from the stream entry id (`ms << 20 | seq`, the order
/// Redis gave the writes), patched into the value's header here.
const STAGE: &str = r#"
local function stage(id, value_key, pending_key, encoded, ttl, pending_ttl)
  local dash = string.find(id, '-', 1, true)
  local ms = tonumber(string.sub(id, 1, dash - 1))
  local seq = tonumber(string.sub(id, dash + 1))
  if seq > 1048575 then seq = 1048575 end
  -- ms < 2^44 and seq < 2^20: both 32-bit halves of ms << 20 | seq are
  -- exact in Lua's doubles.
  local hi = math.floor(ms / 4096)
  local lo = (ms % 4096) * 1048576 + seq
  local function be32(x)
    return string.char(math.floor(x / 16777216) % 256, math.floor(x / 65536) % 256,
                       math.floor(x / 256) % 256, x % 256)
  end
  local v = string.sub(encoded, 1, 13) .. be32(hi) .. be32(lo) .. string.sub(encoded, 22)
  local mark = redis.call('GET', pending_key)
  -- On a cluster, stages of concurrent writes can arrive out of order, and
  -- a worker can persist a write between its XADD and this stage (leaving a
  -- persisted mark): the marker only ever moves to a newer version, and a
  -- write older than one already persisted is not staged at all.
  if persisted_mark(mark) then
    local c = cmp_mark(mark, v)
    if c > 0 then
      return
    elseif c < 0 then
      redis.call('SET', pending_key, v, 'PX', pending_ttl)
    end
  elseif not (versioned(mark) and cmp_version(mark, v) > 0) then
    redis.call('SET', pending_key, v, 'PX', pending_ttl)
  end
  local cur = redis.call('GET', value_key)
  if not (versioned(cur) and cmp_version(cur, v) > 0) then
    if ttl == '0' then
      redis.call('SET', value_key, v)
    else
      redis.call('SET', value_key, v, 'PX', ttl)
    end
  end
end
"#;

/// Write-behind enqueue on one server: append the write to the family's
/// stream, record it as pending (read-your-writes), and store it in the
/// cache, atomically.
///
/// KEYS[1] value key, KEYS[2] pending key, KEYS[3] stream. ARGV[1] encoded
/// value (version bytes zero), ARGV[2] value TTL ms (`0`: none), ARGV[3]
/// encoded key parts, ARGV[4] pending-marker TTL ms, ARGV[5] the value key
/// again (stored in the entry). Returns the stream entry id.
pub(crate) static ENQUEUE_WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(&format!(
        r#"{STAGE}
local id = redis.call('XADD', KEYS[3], '*', 'key', ARGV[5], 'k', ARGV[3], 'v', ARGV[1])
stage(id, KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[4])
return id
"#
    ))
});

/// Write-behind on a cluster, second step: the stream lives in another slot
/// than the value, so the entry is appended first (`XADD`, the write is then
/// durable in the queue) and staged beside the value by this script.
///
/// KEYS[1] value key, KEYS[2] pending key. ARGV[1] encoded value (version
/// bytes zero), ARGV[2] value TTL ms (`0`: none), ARGV[3] pending-marker
/// TTL ms, ARGV[4] the stream entry id. Returns 1.
pub(crate) static STAGE_WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(&format!(
        r#"{STAGE}
stage(ARGV[4], KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return 1
"#
    ))
});

/// A lease-guarded fill: stores the loaded value only if this load still
/// holds the key's lease (nobody invalidated or wrote the key since the load
/// started: both delete the lease), never over a newer version, and tells
/// the processes waiting for it.
///
/// KEYS[1] value key, KEYS[2] lease key. ARGV[1] lease token, ARGV[2]
/// encoded value, ARGV[3] TTL ms (`0`: none), ARGV[4] notification channel.
/// Returns 1 if stored.
pub(crate) static FILL: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local stored = 0
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  local cur = redis.call('GET', KEYS[1])
  if not (versioned(cur) and cmp_version(cur, ARGV[2]) > 0) then
    if ARGV[3] == '0' then
      redis.call('SET', KEYS[1], ARGV[2])
    else
      redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    end
    stored = 1
  end
end
redis.call('PUBLISH', ARGV[4], KEYS[1])
return stored
"#,
    )
});

/// Gives a lease back after a failed load, if it is still ours, and wakes
/// the processes waiting for it (one of them takes the lease and loads).
///
/// KEYS[1] lease key. ARGV[1] lease token, ARGV[2] notification channel,
/// ARGV[3] the value key (the notification's payload).
pub(crate) static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#,
    )
});

/// Clears a pending marker once its write (or a newer one) is in the
/// database; a newer pending write stays.
///
/// On a cluster a write's stage (which sets the marker) runs after its
/// `XADD`, so a worker can persist the write, or a newer one, before the
/// write is staged. Clearing there leaves a *persisted mark* instead (`P`
/// and the version, for `ARGV[2]` ms), which a late stage of this write or
/// an older one reads and stands down for: a marker nobody would clear, or
/// an older value resurfacing once the cached value expires, cannot follow.
/// On one server the enqueue is atomic and `ARGV[2]` is `0`: a delete.
///
/// KEYS[1] pending key. ARGV[1] the encoded value that was persisted,
/// ARGV[2] the persisted mark's TTL ms (`0`: none). Returns 1 if cleared.
pub(crate) static CLEAR_PENDING: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local cur = redis.call('GET', KEYS[1])
if versioned(cur) and cmp_version(cur, ARGV[1]) > 0 then
  return 0
end
if ARGV[2] ~= '0' then
  if not (persisted_mark(cur) and cmp_mark(cur, ARGV[1]) >= 0) then
    redis.call('SET', KEYS[1], 'P' .. string.sub(ARGV[1], 14, 21), 'PX', ARGV[2])
  end
  return 1
end
if cur then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#,
    )
});

/// Takes a key's load lease, unless the value changed since the caller
/// looked: a fill that landed between the caller's miss and its `SET NX`
/// (which the fill's deleted lease would otherwise let through) means there
/// is nothing to load.
///
/// A lease this process took earlier and could not fill or give back (the
/// fill's reply was lost with Redis's connection) is *orphaned*: nobody will
/// fill it, so the caller that knows its token takes it over instead of
/// waiting for it to expire.
///
/// KEYS[1] value key, KEYS[2] lease key. ARGV[1] lease token, ARGV[2] lease
/// TTL ms, ARGV[3] the first bytes of the value as the caller read it
/// (empty: there was none), ARGV[4..] the tokens of this process's orphaned
/// leases on the key (none: no orphans). Returns 1 if the lease is taken,
/// 0 if another holds it, 2 if the value changed (look again).
pub(crate) static LEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(
        r#"
if redis.call('GETRANGE', KEYS[1], 0, #ARGV[3] > 0 and #ARGV[3] - 1 or 0) ~= ARGV[3] then
  return 2
end
if #ARGV < 4 then
  -- No orphans (the usual case): one SET NX.
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
  end
  return 0
end
local cur = redis.call('GET', KEYS[2])
local mine = not cur
for i = 4, #ARGV do
  if cur == ARGV[i] then mine = true end
end
if mine then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"#,
    )
});

/// Deletes a value (and its lease) unless its stored version is at least
/// the given one: the change stream's invalidation of a versioned row, which
/// must not throw away the value the row's own writer cached.
///
/// KEYS[1] value key, KEYS[2] lease key. ARGV[1] 21 bytes: 13 ignored, then
/// the row's version, 8 bytes big-endian (the layout `cmp_version` reads).
/// Returns 1 if deleted, 0 if kept.
pub(crate) static DEL_IF_OLDER: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local cur = redis.call('GET', KEYS[1])
if versioned(cur) and cmp_version(cur, ARGV[1]) >= 0 then
  return 0
end
redis.call('UNLINK', KEYS[1], KEYS[2])
return 1
"#,
    )
});

/// The argument of [`DEL_IF_OLDER`] for `version`.
#[cfg(feature = "postgres-cdc")]
pub(crate) fn version_arg(version: u64) -> Vec<u8> {
    let mut arg = vec![0u8; 13];
    arg.extend(version.to_be_bytes());
    arg
}

/// Every script, for loading them after a connect or a `NOSCRIPT`.
pub(crate) fn all() -> [&'static redis::Script; 8] {
    [
        &SET_IF_NEWER,
        &DEL_IF_OLDER,
        &ENQUEUE_WRITE,
        &STAGE_WRITE,
        &CLEAR_PENDING,
        &FILL,
        &RELEASE,
        &LEASE,
    ]
}

/// The write-behind marker scripts in the orders a cluster can run them in
/// (a write's `XADD` and its stage are two steps there, so a worker's clear
/// can come first), on the Redis of the test run.
#[cfg(test)]
mod tests {
    use super::*;

    const MARK_TTL_MS: u64 = 60_000;

    /// A value as the writer encodes it: header (layout 2, no version, no
    /// tags), then a payload.
    fn encoded(payload: &str) -> Vec<u8> {
        let mut v = vec![0x20];
        v.extend([0u8; 21]);
        v.extend(payload.as_bytes());
        v
    }

    /// `encoded(payload)` with the version a stage gives entry `ms-seq`.
    fn persisted(payload: &str, ms: u64, seq: u64) -> Vec<u8> {
        let mut v = encoded(payload);
        v[13..21].copy_from_slice(&((ms << 20) | seq).to_be_bytes());
        v
    }

    struct Keys {
        value: String,
        pending: String,
    }

    fn keys() -> Keys {
        let value = format!("{}:{{kv:1}}", testkit::namespace());
        Keys {
            pending: format!("{value}:wb"),
            value,
        }
    }

    async fn stage(conn: &mut testkit::RawRedis, k: &Keys, payload: &str, id: &str) {
        let _: i64 = STAGE_WRITE
            .key(&k.value)
            .key(&k.pending)
            .arg(encoded(payload))
            .arg(0)
            .arg(60_000)
            .arg(id)
            .invoke_async(conn)
            .await
            .unwrap();
    }

    async fn clear(conn: &mut testkit::RawRedis, k: &Keys, value: Vec<u8>, mark_ttl: u64) {
        let _: i64 = CLEAR_PENDING
            .key(&k.pending)
            .arg(value)
            .arg(mark_ttl)
            .invoke_async(conn)
            .await
            .unwrap();
    }

    async fn get(conn: &mut testkit::RawRedis, key: &str) -> Option<Vec<u8>> {
        redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
    }

    #[tokio::test]
    async fn a_write_persisted_before_its_stage_leaves_no_pending_marker() {
        let mut conn = testkit::require_redis().await;
        let k = keys();
        clear(&mut conn, &k, persisted("a", 1000, 1), MARK_TTL_MS).await;
        stage(&mut conn, &k, "a", "1000-1").await;
        let mark = get(&mut conn, &k.pending).await.unwrap();
        assert!(crate::codec::is_persisted_mark(&mark), "{mark:?}");
        // The value is the database's: cached.
        assert_eq!(
            get(&mut conn, &k.value).await,
            Some(persisted("a", 1000, 1))
        );
    }

    #[tokio::test]
    async fn an_older_write_staged_after_a_newer_one_was_persisted_is_not_staged() {
        let mut conn = testkit::require_redis().await;
        let k = keys();
        stage(&mut conn, &k, "new", "1000-2").await;
        clear(&mut conn, &k, persisted("new", 1000, 2), MARK_TTL_MS).await;
        stage(&mut conn, &k, "old", "1000-1").await;
        let mark = get(&mut conn, &k.pending).await.unwrap();
        assert!(crate::codec::is_persisted_mark(&mark), "{mark:?}");
        assert_eq!(
            get(&mut conn, &k.value).await,
            Some(persisted("new", 1000, 2))
        );
        // A newer write after that is pending again.
        stage(&mut conn, &k, "newer", "1000-3").await;
        assert_eq!(
            get(&mut conn, &k.pending).await,
            Some(persisted("newer", 1000, 3))
        );
    }

    #[tokio::test]
    async fn stages_out_of_order_keep_the_newest_marker() {
        let mut conn = testkit::require_redis().await;
        let k = keys();
        stage(&mut conn, &k, "new", "1000-2").await;
        stage(&mut conn, &k, "old", "1000-1").await;
        assert_eq!(
            get(&mut conn, &k.pending).await,
            Some(persisted("new", 1000, 2))
        );
        // Persisting the older write leaves the newer pending.
        clear(&mut conn, &k, persisted("old", 1000, 1), MARK_TTL_MS).await;
        assert_eq!(
            get(&mut conn, &k.pending).await,
            Some(persisted("new", 1000, 2))
        );
    }

    #[tokio::test]
    async fn on_one_server_a_clear_deletes_the_marker() {
        let mut conn = testkit::require_redis().await;
        let k = keys();
        stage(&mut conn, &k, "a", "1000-1").await;
        clear(&mut conn, &k, persisted("a", 1000, 1), 0).await;
        assert_eq!(get(&mut conn, &k.pending).await, None);
        clear(&mut conn, &k, persisted("a", 1000, 1), 0).await;
        assert_eq!(get(&mut conn, &k.pending).await, None);
    }
}
