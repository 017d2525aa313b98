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
  redis.call('SET', pending_key, v, 'PX', pending_ttl)
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
/// KEYS[1] pending key. ARGV[1] the encoded value that was persisted.
/// Returns 1 if cleared.
pub(crate) static CLEAR_PENDING: LazyLock<redis::Script> = LazyLock::new(|| {
    with_prelude(
        r#"
local cur = redis.call('GET', KEYS[1])
if cur and (not versioned(cur) or cmp_version(cur, ARGV[1]) <= 0) then
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
