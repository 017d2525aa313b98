//! Values rendered once for HTTP ([`Rendered`]), and the ETag helpers a
//! service needs beside them. Rendering: the JSON body and its strong ETag, kept in
//! L1 beside the decoded value, so that an L1 hit serves shared bytes
//! instead of running `serde_json` per request (families with
//! [`Policy::render_json`](crate::Policy::render_json)).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::tier::memory::AnyValue;

/// A value's rendering: the JSON body and its ETag (quotes included, as the
/// header carries it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Body {
    pub json: Bytes,
    pub etag: Bytes,
}

impl Body {
    /// What it adds to an L1 entry's weight.
    pub fn weight(&self) -> usize {
        self.json.len() + self.etag.len()
    }
}

/// Renders a family's value, whatever its type: set when the family is
/// opened (its `V` is known then), called where a value enters L1.
pub(crate) type Renderer = fn(&AnyValue) -> Option<Body>;

/// The [`Renderer`] of a family of `V`.
pub(crate) fn json_renderer<V: Serialize + Send + Sync + 'static>(
    value: &AnyValue,
) -> Option<Body> {
    let value = value.downcast_ref::<V>()?;
    render(value).ok()
}

/// Renders `value` as JSON, with its ETag.
pub(crate) fn render<V: Serialize + ?Sized>(value: &V) -> Result<Body, serde_json::Error> {
    let json = serde_json::to_vec(value)?;
    let etag = etag_of(&json);
    Ok(Body {
        json: Bytes::from(json),
        etag,
    })
}

/// A strong ETag from the body's bytes: FNV-1a, 64 bits, as 16 hex digits in
/// quotes. A hash of the body, not of the entry, so that two processes (or
/// one after a restart) that hold the same data give the same ETag; FNV is
/// fixed by its definition, unlike std's hasher, so a rebuild does not change
/// every ETag either. Not a security boundary: a client can only make its
/// own conditional requests miss or match.
fn etag_of(body: &[u8]) -> Bytes {
    Bytes::from(strong_etag(body))
}

/// The strong ETag larder gives `body` (quotes included): for responses
/// that do not come from a family, such as static files, so that every
/// ETag a service sends is made one way.
///
/// ```
/// assert_eq!(larder::render::strong_etag(b""), "\"cbf29ce484222325\"");
/// ```
pub fn strong_etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// A cached value with its HTTP body rendered once per fill, from
/// [`Family::get_or_load_rendered`](crate::Family::get_or_load_rendered).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), larder::Error> {
/// use larder::{Cache, Policy};
/// use std::time::Duration;
///
/// let cache = Cache::builder()
///     .family(Policy::new("profile", "user:{id}:profile").ttl(Duration::from_secs(60)).render_json())
///     .build()
///     .await?;
/// let profiles = cache.family::<u64, String>("profile")?;
/// let r = profiles
///     .get_or_load_rendered(&1, || async { Ok::<_, std::io::Error>(Some("Ada".to_string())) })
///     .await?
///     .expect("found");
/// assert_eq!(&r.body()[..], b"\"Ada\"");
/// assert!(r.matches_if_none_match(r.etag().as_bytes()));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Rendered<V> {
    pub(crate) value: Arc<V>,
    pub(crate) body: Body,
    pub(crate) fresh_for: Duration,
}

impl<V: Serialize> Rendered<V> {
    /// Renders `value` now: for responses composed per request (a cached
    /// value joined with others), which still want a body and an ETag.
    /// `fresh_for` is what `max-age` may say about the result.
    pub fn new(value: Arc<V>, fresh_for: Duration) -> Result<Self, crate::Error> {
        let body = render(&*value).map_err(|e| crate::Error::Encode {
            family: std::any::type_name::<V>().to_string(),
            reason: e.to_string(),
        })?;
        Ok(Rendered {
            value,
            body,
            fresh_for,
        })
    }
}

impl<V> Rendered<V> {
    /// The decoded value, for callers that compute with it.
    pub fn value(&self) -> &Arc<V> {
        &self.value
    }

    /// The JSON body: shared bytes, cloned without copying.
    pub fn body(&self) -> &Bytes {
        &self.body.json
    }

    /// The strong ETag, quotes included (`"3f2a…"`), as an `ETag` header
    /// carries it. The same data gives the same ETag in every process.
    pub fn etag(&self) -> &str {
        // Built from ASCII hex and quotes only.
        std::str::from_utf8(&self.body.etag).unwrap_or("\"\"")
    }

    /// The ETag as shared bytes (for a header value without a copy).
    pub fn etag_bytes(&self) -> &Bytes {
        &self.body.etag
    }

    /// How long the cache still holds it fresh: what `Cache-Control:
    /// max-age` may say. Zero when unknown (a value that did not come
    /// through L1) or already stale (served within grace).
    pub fn fresh_for(&self) -> Duration {
        self.fresh_for
    }

    /// Whether an `If-None-Match` header value matches this entry, by the
    /// weak comparison RFC 9110 §13.1.2 prescribes for it: `*`, or any of a
    /// comma-separated list of entity tags whose opaque part equals this
    /// ETag's (`W/` prefixes ignored). A malformed list matches nothing.
    pub fn matches_if_none_match(&self, header: &[u8]) -> bool {
        if_none_match(header, &self.body.etag)
    }
}

/// Whether an `If-None-Match` header value matches `etag` (quotes
/// included): see [`Rendered::matches_if_none_match`].
///
/// ```
/// use larder::render::if_none_match;
/// assert!(if_none_match(br#"W/"a", "b""#, br#""b""#));
/// assert!(!if_none_match(br#""a""#, br#""b""#));
/// ```
pub fn if_none_match(header: &[u8], etag: &[u8]) -> bool {
    // Slices of the header, no copies: this runs on every conditional hit.
    let all = header.trim_ascii();
    if all == b"*" {
        return true;
    }
    all.split(|b| *b == b',').any(|candidate| {
        let candidate = candidate.trim_ascii();
        let opaque = candidate.strip_prefix(b"W/").unwrap_or(candidate);
        let quoted = opaque.len() >= 2 && opaque[0] == b'"' && opaque[opaque.len() - 1] == b'"';
        quoted && opaque == etag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_serde_json_and_the_etag_follows_the_bytes() {
        let a = render(&vec!["TCS", "INFY"]).unwrap();
        assert_eq!(
            &a.json[..],
            serde_json::to_vec(&vec!["TCS", "INFY"]).unwrap()
        );
        assert_eq!(
            a,
            render(&vec!["TCS", "INFY"]).unwrap(),
            "same data, same ETag"
        );
        assert_ne!(a.etag, render(&vec!["TCS"]).unwrap().etag);
        assert_eq!(a.etag.len(), 18);
        // FNV-1a of the empty string: fixed by definition, so stable across builds.
        assert_eq!(&etag_of(b"")[..], b"\"cbf29ce484222325\"");
    }

    #[test]
    fn if_none_match_follows_rfc_9110() {
        let etag = br#""abc""#;
        for (header, matches) in [
            (&br#""abc""#[..], true),
            (br#"W/"abc""#, true),
            (br#""x", "abc""#, true),
            (br#" "x" ,W/"abc" "#, true),
            (b"*", true),
            (b" * ", true),
            (br#""abcd""#, false),
            (br#""ab""#, false),
            (b"abc", false),
            (b"", false),
            (br#""x", *"#, false),
        ] {
            assert_eq!(
                if_none_match(header, etag),
                matches,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }
}
