//! Keys built from typed parts.
//!
//! The article builds keys with string interpolation (`` `portfolio:${userId}` ``)
//! and later feeds them to `KEYS user:${userId}:*`. A user id of `*` then
//! matches everybody, and an id of `1:orders` collides with another family's
//! key. Here a key is a [`KeyTemplate`] (`portfolio:{user_id}`) filled with
//! typed parts, and every part is percent-escaped so that it can contain
//! neither the segment separator `:`, nor a Redis glob meta-character
//! (`* ? [ ] \`), nor a hash-tag brace (`{ }`).
//!
//! The escaping is injective (`%` itself is escaped), and a template is made
//! of whole `:`-separated segments, each either a literal or one placeholder,
//! so two different part lists can never produce the same key.

use std::fmt::Write as _;

use crate::Error;

/// Characters a part may keep as they are; every other byte becomes `%XX`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Appends `raw` to `out`, escaping every byte outside `[A-Za-z0-9_.-]` as
/// `%XX` (upper-case hex, per UTF-8 byte).
///
/// The output never contains `:`, `{`, `}`, or a Redis glob meta-character, and
/// distinct inputs give distinct outputs.
///
/// ```
/// let mut key = String::new();
/// larder::key::escape_into(&mut key, "a:b*");
/// assert_eq!(key, "a%3Ab%2A");
/// ```
pub fn escape_into(out: &mut String, raw: &str) {
    escape(out, raw)
}

/// Where escaped text goes: a `String`, or a key being built on the stack.
trait Sink {
    fn push_str(&mut self, s: &str);
}

impl Sink for String {
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s)
    }
}

#[inline]
fn escape(out: &mut impl Sink, raw: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Fast path: ids are nearly always plain.
    if raw.bytes().all(is_unreserved) {
        out.push_str(raw);
        return;
    }
    for (i, b) in raw.bytes().enumerate() {
        if is_unreserved(b) {
            // ASCII: one byte, so `i..i + 1` is a whole character.
            out.push_str(&raw[i..i + 1]);
        } else {
            let escaped = [
                '%',
                char::from(HEX[usize::from(b >> 4)]),
                char::from(HEX[usize::from(b & 0xF)]),
            ];
            for c in escaped {
                out.push_str(c.encode_utf8(&mut [0; 4]));
            }
        }
    }
}

/// A key being built: on the stack while it fits (nearly every key does),
/// in a `String` past that. A fresh L1 hit looks its key up and is done
/// with it, so building it on the stack saves the hit an allocation; the
/// paths that keep a key (a miss, a refresh) make it a `String` then.
pub(crate) struct KeyBuf {
    len: usize,
    inline: [u8; KeyBuf::INLINE],
    /// The whole key, once it outgrew `inline`.
    spilled: Option<String>,
}

impl KeyBuf {
    /// Room for a namespace, a family name and a 64-digit hash.
    const INLINE: usize = 96;

    #[inline]
    pub(crate) fn new() -> KeyBuf {
        KeyBuf {
            len: 0,
            inline: [0; KeyBuf::INLINE],
            spilled: None,
        }
    }

    #[inline]
    pub(crate) fn as_str(&self) -> &str {
        match &self.spilled {
            Some(s) => s,
            // SAFETY: `inline[..len]` only ever receives whole `&str`s
            // (`push_str` below), so it is valid UTF-8.
            None => unsafe { std::str::from_utf8_unchecked(&self.inline[..self.len]) },
        }
    }

    pub(crate) fn into_string(self) -> String {
        match self.spilled {
            Some(s) => s,
            None => self.as_str().to_owned(),
        }
    }

    /// Empties it, for the next key.
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.len = 0;
        self.spilled = None;
    }
}

impl Sink for KeyBuf {
    #[inline]
    fn push_str(&mut self, s: &str) {
        if let Some(spilled) = &mut self.spilled {
            spilled.push_str(s);
            return;
        }
        let end = self.len + s.len();
        if let Some(dest) = self.inline.get_mut(self.len..end) {
            dest.copy_from_slice(s.as_bytes());
            self.len = end;
        } else {
            let mut spilled = String::with_capacity(end.max(2 * KeyBuf::INLINE));
            spilled.push_str(self.as_str());
            spilled.push_str(s);
            self.spilled = Some(spilled);
        }
    }
}

/// Receives the parts of a key in template order. Handed to
/// [`KeyPart::write_part`].
pub struct PartWriter<'a> {
    out: &'a mut KeyBuf,
    layout: &'a KeyLayout,
    /// Parts written so far.
    written: usize,
    /// Whether [`Any`] writes a wildcard (building a pattern) or plain text.
    pattern: bool,
}

impl PartWriter<'_> {
    /// Writes one part as text; it is escaped on the way in.
    #[inline]
    pub fn text(&mut self, raw: &str) {
        self.begin_part();
        escape(self.out, raw);
    }

    /// Writes a wildcard when building a pattern; in a plain key, [`Any`] is
    /// just the text `*` (escaped like any other).
    fn wildcard(&mut self) {
        if self.pattern {
            self.begin_part();
            self.out.push_str("*");
        } else {
            self.text("*");
        }
    }

    /// Writes one integer part (never needs escaping).
    #[inline]
    pub fn int(&mut self, n: impl itoa::Integer) {
        self.begin_part();
        let mut buf = itoa::Buffer::new();
        self.out.push_str(buf.format(n));
    }

    /// Emits the literal text that precedes the next part. Extra parts get
    /// none; the caller sees `written != arity` and rejects the key.
    #[inline]
    fn begin_part(&mut self) {
        if let Some(lit) = self
            .layout
            .literals
            .get(self.written)
            .filter(|_| self.written < self.layout.arity)
        {
            self.out.push_str(lit);
        }
        self.written += 1;
    }

    /// Emits the trailing literal; returns how many parts were written.
    #[inline]
    fn finish(self) -> usize {
        if self.written == self.layout.arity
            && let Some(lit) = self.layout.literals.last()
        {
            self.out.push_str(lit);
        }
        self.written
    }
}

/// A template compiled for filling: the literal text around each
/// placeholder, with the separators (and, for full keys, the namespace and
/// hash-tag braces) already joined in, so that building a key is a few
/// `push_str`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyLayout {
    /// `arity + 1` pieces: before the first part, between parts, after the last.
    literals: Vec<Box<str>>,
    arity: usize,
}

impl KeyLayout {
    /// Lays out `template` between `prefix` and `suffix`.
    fn new(template: &KeyTemplate, prefix: &str, suffix: &str) -> KeyLayout {
        let mut literals = Vec::new();
        let mut cur = String::from(prefix);
        for (i, seg) in template.segments.iter().enumerate() {
            if i > 0 {
                cur.push(':');
            }
            match seg {
                Segment::Literal(lit) => cur.push_str(lit),
                Segment::Placeholder(_) => literals.push(std::mem::take(&mut cur).into_boxed_str()),
            }
        }
        cur.push_str(suffix);
        literals.push(cur.into_boxed_str());
        KeyLayout {
            arity: literals.len() - 1,
            literals,
        }
    }

    /// The pattern matching every key of the layout: each part a wildcard.
    pub(crate) fn match_all(&self) -> String {
        self.literals.join("*")
    }

    /// The literal text every key of the layout starts with.
    pub(crate) fn prefix(&self) -> &str {
        self.literals.first().map_or("", |l| l)
    }

    /// The full Redis key layout: `<namespace>:{<filled template>}`.
    ///
    /// The braces are a Redis Cluster hash tag: a value and the helper keys
    /// that later live beside it (`...}:lease`) hash to one slot, so one script
    /// can touch them all. Escaped parts cannot contain braces, so the tag is
    /// always exactly the filled template.
    pub(crate) fn full(namespace: &str, template: &KeyTemplate) -> KeyLayout {
        KeyLayout::new(template, &format!("{namespace}:{{"), "}")
    }

    /// Writes the key for `parts` into `out`; returns the number of parts
    /// written, which the caller compares with the arity.
    #[inline]
    fn fill_into<P: KeyParts + ?Sized>(&self, out: &mut KeyBuf, parts: &P) -> usize {
        let mut w = PartWriter {
            out,
            layout: self,
            written: 0,
            pattern: false,
        };
        parts.write_parts(&mut w);
        w.finish()
    }

    /// The pattern for `parts`, where [`Any`] parts match any value (see
    /// [`matches_pattern`]); and the parts written.
    pub(crate) fn fill_pattern<P: KeyParts + ?Sized>(&self, parts: &P) -> (String, usize) {
        let mut out = KeyBuf::new();
        let mut w = PartWriter {
            out: &mut out,
            layout: self,
            written: 0,
            pattern: true,
        };
        parts.write_parts(&mut w);
        let n = w.finish();
        (out.into_string(), n)
    }

    /// The layout of tag keys for `template`: `<namespace>:tag:{<filled>}`.
    pub(crate) fn tag(namespace: &str, template: &KeyTemplate) -> KeyLayout {
        KeyLayout::new(template, &tag_prefix(namespace), "}")
    }

    /// The key for parts given as text (the change stream's row values,
    /// an operator's command line), escaped exactly as typed parts are: the
    /// text `42` gives the key `42` does. Missing parts leave the key
    /// short; callers pass `arity` of them.
    pub(crate) fn fill_texts<S: AsRef<str>>(&self, parts: &[S]) -> String {
        self.fill_texts_as(parts, false)
    }

    /// The pattern for parts given as text, where a part `*` is any value.
    pub(crate) fn fill_texts_pattern<S: AsRef<str>>(&self, parts: &[S]) -> String {
        self.fill_texts_as(parts, true)
    }

    fn fill_texts_as<S: AsRef<str>>(&self, parts: &[S], pattern: bool) -> String {
        let mut out = KeyBuf::new();
        let mut w = PartWriter {
            out: &mut out,
            layout: self,
            written: 0,
            pattern,
        };
        for p in parts {
            match p.as_ref() {
                "*" => w.wildcard(),
                text => w.text(text),
            }
        }
        w.finish();
        out.into_string()
    }

    /// A new string holding the key for `parts`, and the parts written.
    pub(crate) fn fill<P: KeyParts + ?Sized>(&self, parts: &P) -> (String, usize) {
        let (out, n) = self.fill_buf(parts);
        (out.into_string(), n)
    }

    /// The key for `parts` where it fits, on the stack; and the parts
    /// written.
    pub(crate) fn fill_buf<P: KeyParts + ?Sized>(&self, parts: &P) -> (KeyBuf, usize) {
        let mut out = KeyBuf::new();
        let n = self.fill_into(&mut out, parts);
        (out, n)
    }

    /// The key for `parts` into `out` (cleared first), which the caller
    /// keeps in its own frame: a hit does not move the buffer around.
    #[inline]
    pub(crate) fn fill_in_place<P: KeyParts + ?Sized>(&self, out: &mut KeyBuf, parts: &P) -> usize {
        out.clear();
        self.fill_into(out, parts)
    }
}

/// A wildcard part, for pattern invalidation: `(42, Any)` on
/// `user:{user_id}:orders:{order_id}` means every order of user 42.
///
/// It matches exactly one whole part, never a separator, so it cannot reach
/// into another family's keys; and since real parts are escaped, a user id of
/// `*` is just that user's id, not a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Any;

impl KeyPart for Any {
    fn write_part(&self, w: &mut PartWriter<'_>) {
        w.wildcard()
    }
}

/// Whether `key` matches `pattern`, both full keys (`ns:{a:b:c}`) where a `*`
/// pattern segment matches any one segment (escaped parts never contain `:`
/// or `*`).
///
/// ```
/// use larder::key::matches_pattern;
/// assert!(matches_pattern("app:{user:42:*}", "app:{user:42:orders}"));
/// assert!(!matches_pattern("app:{user:42:*}", "app:{user:42:orders:7}"));
/// assert!(!matches_pattern("app:{user:*}", "app:{user:%2A:orders}"));
/// ```
pub fn matches_pattern(pattern: &str, key: &str) -> bool {
    let (Some((p_prefix, p_inner)), Some((k_prefix, k_inner))) =
        (pattern.split_once('{'), key.split_once('{'))
    else {
        return false;
    };
    if p_prefix != k_prefix {
        return false;
    }
    let (Some(p_inner), Some(k_inner)) = (p_inner.strip_suffix('}'), k_inner.strip_suffix('}'))
    else {
        return false;
    };
    let mut p = p_inner.split(':');
    let mut k = k_inner.split(':');
    loop {
        match (p.next(), k.next()) {
            (None, None) => return true,
            (Some(ps), Some(ks)) if ps == "*" || ps == ks => {}
            _ => return false,
        }
    }
}

/// One typed part of a key: an id, a symbol, a date...
///
/// Implemented for integers and strings. Implement it for your own id types:
///
/// ```
/// use larder::key::{KeyPart, PartWriter};
///
/// struct Symbol(String);
///
/// impl KeyPart for Symbol {
///     fn write_part(&self, w: &mut PartWriter<'_>) {
///         w.text(&self.0);
///     }
/// }
/// ```
pub trait KeyPart {
    /// Writes this part through `w` (which escapes it).
    fn write_part(&self, w: &mut PartWriter<'_>);
}

macro_rules! int_parts {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn write_part(&self, w: &mut PartWriter<'_>) { w.int(*self) }
        }
    )*};
}
int_parts!(
    i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
);

impl KeyPart for str {
    fn write_part(&self, w: &mut PartWriter<'_>) {
        w.text(self)
    }
}

impl KeyPart for String {
    fn write_part(&self, w: &mut PartWriter<'_>) {
        w.text(self)
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn write_part(&self, w: &mut PartWriter<'_>) {
        (**self).write_part(w)
    }
}

/// The whole key of a family: one [`KeyPart`], or a tuple of them for
/// templates with several placeholders.
///
/// `ARITY` is checked against the template when the family is opened, so a
/// `Family<(u64, String), _>` cannot be opened on `portfolio:{user_id}`.
pub trait KeyParts {
    /// How many placeholders this key fills.
    const ARITY: usize;
    /// Writes every part, in template order.
    fn write_parts(&self, w: &mut PartWriter<'_>);
}

impl<T: KeyPart> KeyParts for T {
    const ARITY: usize = 1;
    fn write_parts(&self, w: &mut PartWriter<'_>) {
        self.write_part(w)
    }
}

impl KeyParts for () {
    const ARITY: usize = 0;
    fn write_parts(&self, _: &mut PartWriter<'_>) {}
}

macro_rules! tuple_parts {
    ($n:expr; $($name:ident . $idx:tt),+) => {
        impl<$($name: KeyPart),+> KeyParts for ($($name,)+) {
            const ARITY: usize = $n;
            fn write_parts(&self, w: &mut PartWriter<'_>) {
                $( self.$idx.write_part(w); )+
            }
        }
    };
}
tuple_parts!(1; A.0);
tuple_parts!(2; A.0, B.1);
tuple_parts!(3; A.0, B.1, C.2);
tuple_parts!(4; A.0, B.1, C.2, D.3);
tuple_parts!(5; A.0, B.1, C.2, D.3, E.4);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Placeholder(String),
}

/// A parsed key template such as `stock:{symbol}:price`.
///
/// Rules, so that keys stay unambiguous: the template is a list of
/// `:`-separated segments; each segment is either a literal made of
/// `[A-Za-z0-9_.-]` or exactly one `{placeholder}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl KeyTemplate {
    /// Parses and validates a template.
    ///
    /// ```
    /// let t = larder::key::KeyTemplate::parse("stock:{symbol}:price").unwrap();
    /// assert_eq!(t.arity(), 1);
    /// assert!(larder::key::KeyTemplate::parse("stock{symbol}").is_err());
    /// ```
    pub fn parse(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("key template is empty".into());
        }
        let mut segments = Vec::new();
        for seg in source.split(':') {
            if seg.is_empty() {
                return Err(format!("key template `{source}` has an empty segment"));
            }
            if let Some(inner) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                if inner.is_empty()
                    || !inner
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "key template `{source}`: placeholder `{seg}` must be `{{name}}` with a name of letters, digits and `_`"
                    ));
                }
                segments.push(Segment::Placeholder(inner.to_string()));
            } else if seg.bytes().all(is_unreserved) {
                segments.push(Segment::Literal(seg.to_string()));
            } else {
                return Err(format!(
                    "key template `{source}`: segment `{seg}` must be a literal of [A-Za-z0-9_.-] or exactly one `{{placeholder}}` between `:` separators"
                ));
            }
        }
        Ok(Self {
            source: source.to_string(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The template with every placeholder's name left out
    /// (`user:{id}:profile` gives `user:{}:profile`): two templates with one
    /// skeleton build the same keys from the same parts.
    #[cfg(feature = "postgres-cdc")]
    pub(crate) fn skeleton(&self) -> String {
        let segments: Vec<&str> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Placeholder(_) => "{}",
            })
            .collect();
        segments.join(":")
    }

    /// Number of placeholders.
    pub fn arity(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s, Segment::Placeholder(_)))
            .count()
    }

    /// The placeholder names, in order.
    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Placeholder(p) => Some(p.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Whether some key of `self` could equal some key of `other`.
    ///
    /// Escaped parts can spell any literal, so two templates can collide when
    /// they have the same number of segments and every pair of segments is
    /// either two equal literals or involves a placeholder.
    pub fn may_overlap(&self, other: &KeyTemplate) -> bool {
        self.segments.len() == other.segments.len()
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|pair| match pair {
                    (Segment::Literal(a), Segment::Literal(b)) => a == b,
                    _ => true,
                })
    }

    /// Fills the template with `parts`, escaping each one. For display and
    /// tests; the cache adds its namespace and hash tag around this.
    ///
    /// ```
    /// let t = larder::key::KeyTemplate::parse("stock:{symbol}:price").unwrap();
    /// assert_eq!(t.fill(&"RELIANCE").unwrap(), "stock:RELIANCE:price");
    /// assert_eq!(t.fill(&"a:b").unwrap(), "stock:a%3Ab:price");
    /// ```
    pub fn fill<P: KeyParts + ?Sized>(&self, parts: &P) -> Result<String, String> {
        let (out, filled) = KeyLayout::new(self, "", "").fill(parts);
        if filled != self.arity() {
            return Err(format!(
                "template `{}` has {} placeholder(s) but {} part(s) were given",
                self.source,
                self.arity(),
                filled
            ));
        }
        Ok(out)
    }
}

/// A family's tag template (`user:{user_id}`), filled from the family's own
/// key parts by placeholder name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagTemplate {
    template: KeyTemplate,
    /// For each tag segment: a literal, or the index of the family key
    /// segment that holds the part.
    pieces: Vec<TagPiece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TagPiece {
    Literal(String),
    FromKey(usize),
}

impl TagTemplate {
    /// Compiles `tag` against the family's key template: every placeholder of
    /// the tag must be one of the family's.
    pub(crate) fn compile(tag: &str, family: &KeyTemplate) -> Result<TagTemplate, String> {
        let template = KeyTemplate::parse(tag).map_err(|e| format!("tag: {e}"))?;
        let mut pieces = Vec::new();
        for seg in &template.segments {
            match seg {
                Segment::Literal(l) => pieces.push(TagPiece::Literal(l.clone())),
                Segment::Placeholder(name) => {
                    let at = family
                        .segments
                        .iter()
                        .position(|s| matches!(s, Segment::Placeholder(p) if p == name))
                        .ok_or_else(|| {
                            format!(
                                "tag `{tag}` uses `{{{name}}}`, which key template `{}` does not have",
                                family.source
                            )
                        })?;
                    pieces.push(TagPiece::FromKey(at));
                }
            }
        }
        Ok(TagTemplate { template, pieces })
    }

    /// The tag's own template.
    #[cfg(feature = "postgres-cdc")]
    pub(crate) fn template(&self) -> &KeyTemplate {
        &self.template
    }

    /// The tag key for the family entry `value_key` (`<ns>:{a:42}` gives
    /// `<ns>:tag:{user:42}`). The parts are taken already escaped from the
    /// value key, so they are escaped exactly as in a key built directly.
    pub(crate) fn key_for(&self, namespace: &str, value_key: &str) -> Option<String> {
        let inner = value_key.split_once('{')?.1.strip_suffix('}')?;
        let segments: Vec<&str> = inner.split(':').collect();
        let mut out = tag_prefix(namespace);
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            match piece {
                TagPiece::Literal(l) => out.push_str(l),
                TagPiece::FromKey(at) => out.push_str(segments.get(*at)?),
            }
        }
        out.push('}');
        Some(out)
    }
}

fn tag_prefix(namespace: &str) -> String {
    format!("{namespace}:tag:{{")
}

/// The tag key for `template` filled with `parts`: what
/// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) bumps.
pub(crate) fn tag_key<P: KeyParts + ?Sized>(
    namespace: &str,
    template: &KeyTemplate,
    parts: &P,
) -> (String, usize) {
    KeyLayout::tag(namespace, template).fill(parts)
}

/// Checks a namespace prefix: non-empty, `[A-Za-z0-9_.-]` and `:` only.
pub(crate) fn validate_namespace(ns: &str) -> Result<(), Error> {
    if ns.is_empty() || ns.len() > 64 {
        return Err(Error::config(
            "cache",
            "namespace must be 1 to 64 characters",
        ));
    }
    if !ns.bytes().all(|b| is_unreserved(b) || b == b':') {
        return Err(Error::config(
            "cache",
            format!("namespace `{ns}` may only contain [A-Za-z0-9_.-:]"),
        ));
    }
    Ok(())
}

/// Formats a duration for messages (`1.5s`, `250ms`).
pub(crate) fn fmt_duration(d: std::time::Duration) -> String {
    let mut s = String::new();
    if d.as_millis() < 1000 {
        let _ = write!(s, "{}ms", d.as_millis());
    } else {
        let _ = write!(s, "{}s", d.as_secs_f64());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_past_the_stack_buffer_spills_whole() {
        let layout = KeyLayout::full("app", &KeyTemplate::parse("a:{x}:b:{y}").unwrap());
        for len in [0, 1, 100, 110, 111, 112, 113, 127, 128, 129, 300] {
            for fill in ["x", "é", "*"] {
                let part = fill.repeat(len);
                let (buf, n) = layout.fill_buf(&(part.as_str(), 7));
                assert_eq!(n, 2);
                let mut expected = String::from("app:{a:");
                escape_into(&mut expected, &part);
                expected.push_str(":b:7}");
                assert_eq!(buf.as_str(), expected, "{len} x {fill:?}");
                assert_eq!(buf.into_string(), expected);
            }
        }
    }

    fn t(s: &str) -> KeyTemplate {
        KeyTemplate::parse(s).unwrap()
    }

    #[test]
    fn fills_literals_around_placeholders() {
        assert_eq!(t("portfolio:{id}").fill(&42u64).unwrap(), "portfolio:42");
        assert_eq!(
            t("stock:{symbol}:price").fill(&"RELIANCE").unwrap(),
            "stock:RELIANCE:price"
        );
        assert_eq!(t("a:{x}:b:{y}:c").fill(&(1, "z")).unwrap(), "a:1:b:z:c");
        assert_eq!(t("config").fill(&()).unwrap(), "config");
        assert_eq!(t("{x}:{y}").fill(&("", "")).unwrap(), ":");
    }

    #[test]
    fn arity_mismatch_is_reported() {
        assert!(t("a:{x}:{y}").fill(&1).is_err());
        assert!(t("a:{x}").fill(&(1, 2)).is_err());
        assert!(t("a").fill(&1).is_err());
    }

    #[test]
    fn hostile_parts_are_escaped() {
        let tpl = t("user:{id}:orders");
        assert_eq!(tpl.fill(&"*").unwrap(), "user:%2A:orders");
        assert_eq!(tpl.fill(&"x}").unwrap(), "user:x%7D:orders");
        assert_eq!(tpl.fill(&"1:orders").unwrap(), "user:1%3Aorders:orders");
        assert_eq!(tpl.fill(&"%2A").unwrap(), "user:%252A:orders");
        assert_eq!(tpl.fill(&"é").unwrap(), "user:%C3%A9:orders");
    }

    #[test]
    fn patterns_have_whole_part_wildcards_and_escape_the_rest() {
        let l = KeyLayout::full("app", &t("user:{id}:orders:{order}"));
        assert_eq!(l.fill_pattern(&(42, Any)).0, "app:{user:42:orders:*}");
        assert_eq!(l.fill_pattern(&("*", Any)).0, "app:{user:%2A:orders:*}");
        // In a plain key, Any is only text.
        assert_eq!(l.fill(&(Any, 1)).0, "app:{user:%2A:orders:1}");
        let p = l.fill_pattern(&("*", Any)).0;
        assert!(matches_pattern(&p, "app:{user:%2A:orders:9}"));
        assert!(!matches_pattern(&p, "app:{user:42:orders:9}"));
        assert!(!matches_pattern(&p, "other:{user:%2A:orders:9}"));
        assert!(!matches_pattern("app:{user:*}", "app:{user:1:orders}"));
    }

    #[test]
    fn tags_are_filled_from_the_key_by_name() {
        let family = t("portfolio:{user_id}:{currency}");
        let tag = TagTemplate::compile("user:{user_id}", &family).unwrap();
        let (key, _) = KeyLayout::full("app", &family).fill(&("a:b", "INR"));
        assert_eq!(tag.key_for("app", &key).unwrap(), "app:tag:{user:a%3Ab}");
        // The same tag key as invalidate_tag builds from the raw part.
        assert_eq!(
            tag_key("app", &t("user:{user_id}"), &"a:b").0,
            "app:tag:{user:a%3Ab}"
        );
        assert!(TagTemplate::compile("user:{nope}", &family).is_err());
    }

    #[test]
    fn bad_templates_are_rejected() {
        for bad in [
            "", "a::b", "a{x}", "{x}y", "{}", "{a b}", "a b", "a:{x", "a*",
        ] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn overlap_detection() {
        assert!(t("user:{id}").may_overlap(&t("user:{name}")));
        assert!(t("user:{id}").may_overlap(&t("user:settings")));
        assert!(t("{a}:price").may_overlap(&t("stock:{b}")));
        assert!(!t("user:{id}").may_overlap(&t("user:{id}:profile")));
        assert!(!t("stock:{s}:price").may_overlap(&t("stock:{s}:depth")));
        assert!(!t("portfolio:{id}").may_overlap(&t("watchlist:{id}")));
    }

    #[test]
    fn full_key_wraps_template_in_hash_tag() {
        let (k, n) = KeyLayout::full("app", &t("portfolio:{id}")).fill(&7u32);
        assert_eq!(k, "app:{portfolio:7}");
        assert_eq!(n, 1);
        let (k, _) = KeyLayout::full("app", &t("a:{x}:b:{y}:c")).fill(&(1, "z"));
        assert_eq!(k, "app:{a:1:b:z:c}");
        let (k, n) = KeyLayout::full("app", &t("config")).fill(&());
        assert_eq!((k.as_str(), n), ("app:{config}", 0));
    }
}
