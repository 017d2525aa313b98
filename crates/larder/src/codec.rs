//! How values are laid out in Redis.
//!
//! ```text
//! byte 0       header: bits 7-4 layout version (2)
//!                      bit 3    negative entry ("not found"; no payload)
//!                      bit 2    payload is lz4-compressed
//!                      bits 1-0 format: 0 MessagePack, 1 JSON
//! bytes 1-8    fresh_until: unix time in ms (u64 LE) when the entry stops
//!              being fresh; u64::MAX for ttl = "never"
//! bytes 9-12   load_us: how long the loader took, in µs (u32 LE), for early refresh
//! bytes 13-20  version (u64 *big*-endian, 0 = none): the writer's row version;
//!              big-endian so that the compare-and-set script in Redis can
//!              order two versions byte by byte
//! byte 21      n: number of tag versions
//! next 8n      the versions (u64 LE) of the family's tags when the value
//!              was loaded; the entry is stale once any tag has moved on
//! then         payload; if compressed: u32 LE decoded length, then an lz4 block
//! ```
//!
//! Anything that does not match (another layout version, garbage, a truncated
//! value, a declared length over the family's limit) is a [`DecodeError`], which
//! the read path treats as a miss: counted, deleted, reloaded.
//!
//! `fresh_until` travels with the value so that an L1 copy made from an L2 hit
//! never outlives the L2 entry, whichever process wrote it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::policy::Codec;

const LAYOUT_VERSION: u8 = 2;
const NEGATIVE: u8 = 0b1000;
const LZ4: u8 = 0b0100;
const FORMAT_MASK: u8 = 0b0011;
const FORMAT_MSGPACK: u8 = 0;
const FORMAT_JSON: u8 = 1;
/// Header byte, fresh_until, load_us, version, tag count: the fixed part.
pub(crate) const HEADER_LEN: usize = 1 + 8 + 4 + 8 + 1;
/// Where the big-endian version sits (the CAS script reads it there).
pub(crate) const VERSION_OFFSET: usize = 13;

/// Whether a write-behind marker is a *persisted mark* (`P` and 8 version
/// bytes, left on a cluster by a worker that persisted a write before the
/// write was staged; see `scripts::CLEAR_PENDING`) rather than a pending
/// value. No value is 9 bytes: the header alone is longer.
pub(crate) fn is_persisted_mark(bytes: &[u8]) -> bool {
    bytes.len() == 9 && bytes[0] == b'P'
}

/// The negative and compressed flags of a stored value's header byte.
pub(crate) fn header_flags(bytes: &[u8]) -> (bool, bool) {
    let h = bytes.first().copied().unwrap_or(0);
    (h & NEGATIVE != 0, h & LZ4 != 0)
}

/// The header of a stored value alone (for an operator: even a payload
/// that does not decode has a readable header).
pub(crate) fn decode_header(bytes: &[u8]) -> Option<Meta> {
    if bytes.len() < HEADER_LEN || bytes[0] >> 4 != LAYOUT_VERSION {
        return None;
    }
    let u64_le = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let mut load = [0u8; 4];
    load.copy_from_slice(&bytes[9..13]);
    let mut version = [0u8; 8];
    version.copy_from_slice(&bytes[VERSION_OFFSET..VERSION_OFFSET + 8]);
    let ntags = bytes[21] as usize;
    if bytes.len() < HEADER_LEN + 8 * ntags {
        return None;
    }
    Some(Meta {
        fresh_until_ms: u64_le(1),
        load_us: u32::from_le_bytes(load),
        version: u64::from_be_bytes(version),
        tags: (0..ntags).map(|i| u64_le(HEADER_LEN + 8 * i)).collect(),
    })
}

/// Why bytes from Redis were not a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("value is {0} bytes, shorter than the {HEADER_LEN}-byte header")]
    Truncated(usize),
    #[error("layout version {0} (expected {LAYOUT_VERSION})")]
    Version(u8),
    #[error("unknown format {0}")]
    Format(u8),
    #[error("declared decoded length {declared} is over the {max}-byte limit")]
    TooLarge { declared: usize, max: usize },
    #[error("lz4: {0}")]
    Lz4(String),
    #[error("payload: {0}")]
    Payload(String),
}

/// Why a value could not be encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    TooLarge(usize),
    Serialize(String),
}

/// Metadata stored in front of every value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Unix ms when the entry stops being fresh (`u64::MAX`: never).
    pub fresh_until_ms: u64,
    /// How long the load took, in microseconds.
    pub load_us: u32,
    /// The writer's version of the value (0: none).
    pub version: u64,
    /// Versions of the family's tags when the value was loaded.
    pub tags: Vec<u64>,
}

impl Meta {
    /// Metadata for an entry written now with `ttl` (`None`: never expires).
    pub fn new(ttl: Option<Duration>, load_time: Duration) -> Self {
        let fresh_until_ms = match ttl {
            Some(ttl) => unix_ms().saturating_add(ttl.as_millis() as u64),
            None => u64::MAX,
        };
        Meta {
            fresh_until_ms,
            load_us: load_time.as_micros().min(u32::MAX as u128) as u32,
            version: 0,
            tags: Vec::new(),
        }
    }

    /// With the writer's version.
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// With the tag versions read before the load.
    pub fn with_tags(mut self, tags: Vec<u64>) -> Self {
        self.tags = tags;
        self
    }

    /// Time left until the entry stops being fresh (`None`: never expires;
    /// `Some(ZERO)`: already stale).
    pub fn remaining(&self) -> Option<Duration> {
        if self.fresh_until_ms == u64::MAX {
            return None;
        }
        Some(Duration::from_millis(
            self.fresh_until_ms.saturating_sub(unix_ms()),
        ))
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A decoded entry: a value or a remembered "not found".
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    pub value: Option<T>,
    pub meta: Meta,
    /// Size of the serialised value before compression: what it weighs in L1.
    pub payload_len: usize,
}

/// An encoded entry.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub bytes: Vec<u8>,
    /// Size of the serialised value before compression.
    pub payload_len: usize,
}

fn header(negative: bool, lz4: bool, format: u8) -> u8 {
    (LAYOUT_VERSION << 4) | if negative { NEGATIVE } else { 0 } | if lz4 { LZ4 } else { 0 } | format
}

fn put_meta(out: &mut Vec<u8>, h: u8, meta: &Meta) {
    out.push(h);
    out.extend_from_slice(&meta.fresh_until_ms.to_le_bytes());
    out.extend_from_slice(&meta.load_us.to_le_bytes());
    out.extend_from_slice(&meta.version.to_be_bytes());
    // A family has a handful of tags; more than 255 is refused by the policy.
    out.push(meta.tags.len().min(255) as u8);
    for t in meta.tags.iter().take(255) {
        out.extend_from_slice(&t.to_le_bytes());
    }
}

fn meta_len(meta: &Meta) -> usize {
    HEADER_LEN + 8 * meta.tags.len().min(255)
}

/// Encodes a negative entry.
pub(crate) fn encode_negative(meta: &Meta) -> Encoded {
    let mut out = Vec::with_capacity(meta_len(meta));
    put_meta(&mut out, header(true, false, FORMAT_MSGPACK), meta);
    Encoded {
        bytes: out,
        payload_len: 0,
    }
}

/// Encodes `value`. `max_size` bounds the serialised payload (before
/// compression); payloads over `compress_above` are lz4-compressed.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    codec: Codec,
    compress_above: usize,
    max_size: usize,
    meta: &Meta,
) -> Result<Encoded, EncodeError> {
    let format = match codec {
        Codec::MessagePack => FORMAT_MSGPACK,
        Codec::Json => FORMAT_JSON,
    };
    // Serialise straight after a placeholder header to avoid a copy in the
    // common, uncompressed case.
    let header_len = meta_len(meta);
    let mut out = Vec::with_capacity(header_len + 128);
    put_meta(&mut out, header(false, false, format), meta);
    match codec {
        Codec::MessagePack => rmp_serde::encode::write_named(&mut out, value)
            .map_err(|e| EncodeError::Serialize(e.to_string()))?,
        Codec::Json => serde_json::to_writer(&mut out, value)
            .map_err(|e| EncodeError::Serialize(e.to_string()))?,
    }
    let payload_len = out.len() - header_len;
    if payload_len > max_size {
        return Err(EncodeError::TooLarge(payload_len));
    }
    if payload_len > compress_above {
        let compressed = lz4_flex::block::compress(&out[header_len..]);
        // Keep the plain form when compression does not pay.
        if compressed.len() + 4 < payload_len {
            let mut packed = Vec::with_capacity(header_len + 4 + compressed.len());
            put_meta(&mut packed, header(false, true, format), meta);
            packed.extend_from_slice(&(payload_len as u32).to_le_bytes());
            packed.extend_from_slice(&compressed);
            return Ok(Encoded {
                bytes: packed,
                payload_len,
            });
        }
    }
    Ok(Encoded {
        bytes: out,
        payload_len,
    })
}

/// Decodes bytes read from Redis. `max_size` bounds the decoded payload, so a
/// forged length cannot make us allocate gigabytes.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    max_size: usize,
) -> Result<Decoded<T>, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(bytes.len()));
    }
    let h = bytes[0];
    if h >> 4 != LAYOUT_VERSION {
        return Err(DecodeError::Version(h >> 4));
    }
    let meta = decode_header(bytes).ok_or(DecodeError::Truncated(bytes.len()))?;
    let header_len = HEADER_LEN + 8 * meta.tags.len();
    let body = &bytes[header_len..];
    if h & NEGATIVE != 0 {
        if !body.is_empty() || h & LZ4 != 0 {
            return Err(DecodeError::Payload("negative entry with a payload".into()));
        }
        return Ok(Decoded {
            value: None,
            meta,
            payload_len: 0,
        });
    }
    let format = h & FORMAT_MASK;
    let decompressed;
    let payload: &[u8] = if h & LZ4 != 0 {
        if body.len() < 4 {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&body[..4]);
        let declared = u32::from_le_bytes(len) as usize;
        if declared > max_size {
            return Err(DecodeError::TooLarge {
                declared,
                max: max_size,
            });
        }
        let mut buf = vec![0u8; declared];
        let n = lz4_flex::block::decompress_into(&body[4..], &mut buf)
            .map_err(|e| DecodeError::Lz4(e.to_string()))?;
        if n != declared {
            return Err(DecodeError::Lz4(format!(
                "decoded {n} bytes, header declared {declared}"
            )));
        }
        decompressed = buf;
        &decompressed
    } else {
        if body.len() > max_size {
            return Err(DecodeError::TooLarge {
                declared: body.len(),
                max: max_size,
            });
        }
        body
    };
    let value = match format {
        FORMAT_MSGPACK => {
            rmp_serde::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))?
        }
        FORMAT_JSON => {
            serde_json::from_slice(payload).map_err(|e| DecodeError::Payload(e.to_string()))?
        }
        other => return Err(DecodeError::Format(other)),
    };
    Ok(Decoded {
        value: Some(value),
        meta,
        payload_len: payload.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct V1 {
        id: u64,
        name: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct V2 {
        id: u64,
        name: String,
        #[serde(default)]
        added: Option<String>,
    }

    fn meta() -> Meta {
        Meta::new(Some(Duration::from_secs(60)), Duration::from_millis(12))
    }

    #[test]
    fn version_and_tags_round_trip() {
        let m = meta()
            .with_version(0x0102_0304_0506_0708)
            .with_tags(vec![7, u64::MAX]);
        let bytes = encode(&"x", Codec::MessagePack, usize::MAX, 100, &m)
            .unwrap()
            .bytes;
        // Big-endian at the fixed offset, for the compare-and-set script.
        assert_eq!(
            &bytes[VERSION_OFFSET..VERSION_OFFSET + 8],
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        let d: Decoded<String> = decode(&bytes, 100).unwrap();
        assert_eq!(d.meta, m);
        assert_eq!(d.value.as_deref(), Some("x"));
        let neg: Decoded<String> = decode(&encode_negative(&m).bytes, 100).unwrap();
        assert_eq!((neg.value, neg.meta), (None, m));
    }

    #[test]
    fn round_trips_both_formats_and_compression() {
        let v = V1 {
            id: 7,
            name: "x".repeat(5000),
        };
        for codec in [Codec::MessagePack, Codec::Json] {
            for compress_above in [0, 1024, usize::MAX] {
                let bytes = encode(&v, codec, compress_above, 1 << 20, &meta())
                    .unwrap()
                    .bytes;
                let d: Decoded<V1> = decode(&bytes, 1 << 20).unwrap();
                assert_eq!(d.value.unwrap(), v);
                assert_eq!(d.meta.load_us, 12_000);
            }
        }
        let small = encode(&v, Codec::MessagePack, 1024, 1 << 20, &meta())
            .unwrap()
            .bytes;
        assert!(small.len() < 200, "5000 repeated bytes should compress");
    }

    #[test]
    fn tolerates_added_fields_both_ways() {
        let old = V1 {
            id: 1,
            name: "a".into(),
        };
        let bytes = encode(&old, Codec::MessagePack, usize::MAX, 1 << 20, &meta())
            .unwrap()
            .bytes;
        let newer: V2 = decode(&bytes, 1 << 20).unwrap().value.unwrap();
        assert_eq!(newer.added, None);
        let new = V2 {
            id: 1,
            name: "a".into(),
            added: Some("b".into()),
        };
        let bytes = encode(&new, Codec::MessagePack, usize::MAX, 1 << 20, &meta())
            .unwrap()
            .bytes;
        let older: V1 = decode(&bytes, 1 << 20).unwrap().value.unwrap();
        assert_eq!(older, old);
    }

    #[test]
    fn negative_entries_round_trip() {
        let bytes = encode_negative(&meta()).bytes;
        let d: Decoded<V1> = decode(&bytes, 1 << 20).unwrap();
        assert!(d.value.is_none());
    }

    #[test]
    fn oversize_values_are_refused() {
        let v = "x".repeat(2000);
        assert!(matches!(
            encode(&v, Codec::Json, usize::MAX, 1000, &meta()),
            Err(EncodeError::TooLarge(_))
        ));
    }

    #[test]
    fn decompression_bomb_is_bounded() {
        // A compressed value declaring 3 GiB.
        let mut bytes = Vec::new();
        put_meta(&mut bytes, header(false, true, FORMAT_MSGPACK), &meta());
        bytes.extend_from_slice(&(3u32 << 30).to_le_bytes());
        bytes.extend_from_slice(&[0x1f, 0, 0, 0]);
        assert!(matches!(
            decode::<V1>(&bytes, 1 << 20),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut bytes = encode(&1u32, Codec::MessagePack, usize::MAX, 100, &meta())
            .unwrap()
            .bytes;
        // A layout-1 value (what an older larder wrote) is a miss.
        bytes[0] = (1 << 4) | (bytes[0] & 0x0f);
        assert_eq!(
            decode::<u32>(&bytes, 100).unwrap_err(),
            DecodeError::Version(1)
        );
        assert!(decode::<u32>(b"hello", 100).is_err());
        assert!(decode::<u32>(b"{\"id\":1,\"name\":\"old json from the article\"}", 100).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<V1>(&bytes, 4096);
            let _ = decode::<String>(&bytes, 4096);
        }

        #[test]
        fn arbitrary_bytes_after_valid_header_never_panic(
            h in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut bytes = Vec::new();
            put_meta(&mut bytes, (LAYOUT_VERSION << 4) | (h & 0x0f), &meta());
            bytes.extend_from_slice(&body);
            let _ = decode::<V2>(&bytes, 4096);
        }

        #[test]
        fn truncations_of_valid_values_never_panic(cut in 0usize..200) {
            let v = V1 { id: 9, name: "y".repeat(150) };
            for compress_above in [0, usize::MAX] {
                let bytes = encode(&v, Codec::MessagePack, compress_above, 4096, &meta()).unwrap().bytes;
                let cut = cut.min(bytes.len());
                let _ = decode::<V1>(&bytes[..cut], 4096);
            }
        }
    }
}
