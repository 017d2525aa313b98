//! Families' policies: the article's `CacheConfig` table, in code or TOML.
//!
//! ```toml
//! [families.portfolio]
//! key = "portfolio:{user_id}"
//! strategy = "cache-aside"
//! ttl = "60s"
//! jitter = "10%"
//!
//! [families.stock_price]
//! key = "stock:{symbol}:price"
//! strategy = "write-through"
//! ttl = "2s"
//!
//! [families.watchlist]
//! key = "watchlist:{user_id}"
//! ttl = "5m"
//! tags = ["user:{user_id}"]   # invalidate_tag("user:{user_id}", &42) reaches it
//!
//! [families.country_list]
//! key = "countries"
//! ttl = "never"          # must be spelled out: a forgotten TTL is an error
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::key::{KeyTemplate, TagTemplate};

/// How long entries live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// Entries expire this long after they are written.
    After(Duration),
    /// Entries never expire and must be invalidated by hand. Only allowed when
    /// written explicitly (`ttl = "never"`), because a forgotten TTL is the
    /// article's "keys live forever" mistake.
    Never,
}

impl Ttl {
    /// Parses `"2s"`, `"5m"`, `"30m"`, `"24h"`, `"1h 30m"` or `"never"`.
    ///
    /// ```
    /// use larder::Ttl;
    /// use std::time::Duration;
    /// assert_eq!(Ttl::parse("5m").unwrap(), Ttl::After(Duration::from_secs(300)));
    /// assert_eq!(Ttl::parse("never").unwrap(), Ttl::Never);
    /// assert!(Ttl::parse("0s").is_err());
    /// assert!(Ttl::parse("60").is_err()); // a unit is required
    /// ```
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.trim() == "never" {
            return Ok(Ttl::Never);
        }
        let d = parse_duration(s)?;
        if d.is_zero() {
            return Err(format!("ttl `{s}` must be greater than zero"));
        }
        Ok(Ttl::After(d))
    }

    /// The duration, or `None` for [`Ttl::Never`].
    pub fn duration(self) -> Option<Duration> {
        match self {
            Ttl::After(d) => Some(d),
            Ttl::Never => None,
        }
    }
}

/// Parses a human duration with a unit (`250ms`, `2s`, `5m`, `24h`).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like \"2s\", \"5m\" or \"24h\": {e}"))
}

/// How much TTLs are spread so that keys written together do not expire
/// together (the thundering herd after a bulk load or a deploy).
///
/// The effective TTL is drawn uniformly from `[ttl - spread, ttl]`: jitter only
/// ever shortens a TTL, so `ttl` stays the upper bound on staleness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// No spread.
    None,
    /// Up to this fraction of the TTL (`"10%"` is `Fraction(0.1)`).
    Fraction(f64),
    /// Up to this long.
    Up(Duration),
}

impl Jitter {
    /// Parses `"10%"` or a duration such as `"5s"`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let pct: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("jitter `{s}` is not a percentage like \"10%\""))?;
            if !(0.0..100.0).contains(&pct) {
                return Err(format!("jitter `{s}` must be at least 0% and below 100%"));
            }
            return Ok(Jitter::Fraction(pct / 100.0));
        }
        parse_duration(s).map(Jitter::Up)
    }

    /// The largest amount this jitter removes from `ttl`.
    pub(crate) fn max_for(self, ttl: Duration) -> Duration {
        match self {
            Jitter::None => Duration::ZERO,
            Jitter::Fraction(f) => ttl.mul_f64(f),
            Jitter::Up(d) => d,
        }
    }
}

/// The wire format of values in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// MessagePack with field names: compact, self-describing, tolerant of
    /// added and removed fields. The default.
    #[default]
    #[serde(alias = "msgpack")]
    MessagePack,
    /// JSON: larger and slower, but readable with `redis-cli GET`.
    Json,
}

/// How a family is written. The read path is the same for all three; the
/// strategy says which write call the application uses and is checked by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Read through the cache, delete on write. The default.
    #[default]
    CacheAside,
    /// The database is written first, then the cache.
    WriteThrough,
    /// The cache and a durable queue are written; the database later.
    WriteBehind,
}

/// The policy of one family: what its keys look like and how its entries live.
///
/// Built in code with a builder-style API, or read from TOML with
/// [`Policies::from_toml_str`].
///
/// ```
/// use larder::Policy;
/// use std::time::Duration;
///
/// let policy = Policy::new("portfolio", "portfolio:{user_id}")
///     .ttl(Duration::from_secs(60))
///     .jitter_fraction(0.1)
///     .negative_ttl(Duration::from_secs(5));
/// assert!(policy.validate().is_ok());
///
/// // A family without a TTL is a configuration error...
/// assert!(Policy::new("p", "p:{id}").validate().is_err());
/// // ...unless "never" is explicit.
/// assert!(Policy::new("p", "p:{id}").ttl_never().validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) ttl: Option<Ttl>,
    pub(crate) jitter: Jitter,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) max_value_size: usize,
    pub(crate) compress_above: usize,
    pub(crate) codec: Codec,
    pub(crate) strategy: Strategy,
    pub(crate) l1: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) grace: Option<Duration>,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) hard_timeout: Option<Duration>,
    pub(crate) early_refresh: f64,
    pub(crate) lease_wait: Duration,
    pub(crate) render_json: bool,
}

/// Default limit on one encoded value: the article's "payload is very large
/// (>1MB)" line.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
/// Values larger than this are lz4-compressed before going to Redis.
pub const DEFAULT_COMPRESS_ABOVE: usize = 1024;
/// Default XFetch `beta` (see [`Policy::early_refresh`]).
pub const DEFAULT_EARLY_REFRESH: f64 = 1.0;
/// Default [`Policy::lease_wait`].
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(3);
/// Most tags one family may carry (each is read on every Redis read).
pub const MAX_TAGS: usize = 8;
/// Negative entries live at most this long unless the family says otherwise.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);

impl Policy {
    /// A policy for family `name` whose keys follow `key_template`
    /// (e.g. `stock:{symbol}:price`). A TTL must still be set.
    pub fn new(name: impl Into<String>, key_template: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            key: key_template.into(),
            ttl: None,
            jitter: Jitter::None,
            negative_ttl: None,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            compress_above: DEFAULT_COMPRESS_ABOVE,
            codec: Codec::default(),
            strategy: Strategy::default(),
            l1: true,
            tags: Vec::new(),
            grace: None,
            soft_timeout: None,
            hard_timeout: None,
            early_refresh: DEFAULT_EARLY_REFRESH,
            lease_wait: DEFAULT_LEASE_WAIT,
            render_json: false,
        }
    }

    /// Entries expire `ttl` after they are written.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(Ttl::After(ttl));
        self
    }

    /// Entries never expire (invalidate them by hand).
    pub fn ttl_never(mut self) -> Self {
        self.ttl = Some(Ttl::Never);
        self
    }

    /// Spreads TTLs by up to `fraction` (0.0 to below 1.0) of the TTL.
    pub fn jitter_fraction(mut self, fraction: f64) -> Self {
        self.jitter = Jitter::Fraction(fraction);
        self
    }

    /// Spreads TTLs by up to `spread`.
    pub fn jitter(mut self, spread: Duration) -> Self {
        self.jitter = Jitter::Up(spread);
        self
    }

    /// How long a "not found" from the loader is remembered. Defaults to the
    /// smaller of the TTL and 30 s.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Largest encoded value accepted (before compression). Larger values are
    /// refused by `set` and returned uncached by loads. Default 1 MiB.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// Values whose encoding is larger than this are lz4-compressed.
    /// Default 1 KiB; `usize::MAX` disables compression.
    pub fn compress_above(mut self, bytes: usize) -> Self {
        self.compress_above = bytes;
        self
    }

    /// The wire format in Redis. Default MessagePack.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The write strategy (informational on the read path).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Whether this family uses the in-process tier (default yes). Turn it off
    /// for data that must be shared exactly across processes.
    pub fn l1(mut self, enabled: bool) -> Self {
        self.l1 = enabled;
        self
    }

    /// Keeps each value's JSON rendering beside it in L1, made once when the
    /// value enters L1 (a fill, a Redis hit, a write) and counted in L1's
    /// byte budget, so that serving it over HTTP is a copy of shared bytes,
    /// not a `serde_json` run per request: see
    /// [`Family::get_or_load_rendered`](crate::Family::get_or_load_rendered).
    /// TOML: `render = "json"`.
    pub fn render_json(mut self) -> Self {
        self.render_json = true;
        self
    }

    /// Tags every entry with `template`, filled from the entry's own key
    /// parts by placeholder name: a `portfolio:{user_id}` family tagged
    /// `user:{user_id}` puts portfolio 42 under tag `user:42`, and
    /// [`Cache::invalidate_tag`](crate::Cache::invalidate_tag)`("user:{user_id}", &42)`
    /// makes it (and every other family's entry tagged so) a miss everywhere.
    pub fn tag(mut self, template: impl Into<String>) -> Self {
        self.tags.push(template.into());
        self
    }

    /// Stale-while-revalidate: for `grace` after the TTL, a stale value is
    /// served at once while one refresh runs in the background, and keeps
    /// being served if the loader fails or times out (fail-safe), until
    /// `grace` ends. Redis keeps entries for TTL + grace.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// With a grace window: how long a caller holding a stale value waits
    /// for the refresh before taking the stale value (the refresh goes on in
    /// the background and fills the cache). Unset: the stale value is
    /// served at once.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// How long a caller waits for a load before getting
    /// [`Error::Timeout`](crate::Error::Timeout). The load itself goes on and
    /// fills the cache for the next caller. Unset: callers wait as long as
    /// the loader takes.
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Probabilistic early refresh (XFetch, Vattani et al., VLDB 2015): a
    /// hit shortly before expiry refreshes the entry in the background with
    /// a probability that rises as expiry nears, scaled by how long the
    /// load took and by `beta` (1.0 by default; 0 turns it off; higher
    /// refreshes earlier). Hot keys then never expire under load.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = beta;
        self
    }

    /// How long a process waits for another process that holds the load
    /// lease of a key to fill it, before loading itself (uncached).
    /// Default 3 s.
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// The family name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key template as written.
    pub fn key_template(&self) -> &str {
        &self.key
    }

    /// The configured TTL, if any.
    pub fn get_ttl(&self) -> Option<Ttl> {
        self.ttl
    }

    /// The write strategy.
    pub fn get_strategy(&self) -> Strategy {
        self.strategy
    }

    /// Checks the policy; the same checks run when the cache is built.
    pub fn validate(&self) -> Result<(), Error> {
        self.compile().map(|_| ())
    }

    pub(crate) fn compile(&self) -> Result<CompiledPolicy, Error> {
        let fail = |reason: String| Error::config(self.name.clone(), reason);
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            return Err(fail(format!(
                "family name `{}` must be non-empty and made of [A-Za-z0-9_.-]",
                self.name
            )));
        }
        let template = KeyTemplate::parse(&self.key).map_err(fail)?;
        let ttl = self.ttl.ok_or_else(|| {
            fail("no ttl: every family needs one (e.g. ttl = \"60s\"); write ttl = \"never\" to keep entries until invalidated".into())
        })?;
        let max_jitter = match (ttl, self.jitter) {
            (_, Jitter::None) => Duration::ZERO,
            (Ttl::Never, _) => return Err(fail("jitter needs a finite ttl".into())),
            (Ttl::After(d), j) => {
                if let Jitter::Fraction(f) = j
                    && !(0.0..1.0).contains(&f)
                {
                    return Err(fail(format!("jitter fraction {f} must be in [0, 1)")));
                }
                let m = j.max_for(d);
                if m >= d {
                    return Err(fail("jitter must be smaller than the ttl".into()));
                }
                m
            }
        };
        let negative_ttl = match (self.negative_ttl, ttl) {
            (Some(n), _) if n.is_zero() => {
                return Err(fail("negative_ttl must be greater than zero".into()));
            }
            (Some(n), _) => n,
            (None, Ttl::After(d)) => d.min(DEFAULT_NEGATIVE_TTL),
            (None, Ttl::Never) => DEFAULT_NEGATIVE_TTL,
        };
        if self.tags.len() > MAX_TAGS {
            return Err(fail(format!("at most {MAX_TAGS} tags per family")));
        }
        let tags = self
            .tags
            .iter()
            .map(|t| TagTemplate::compile(t, &template))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        if self.max_value_size == 0 {
            return Err(fail("max_value_size must be greater than zero".into()));
        }
        // The codec's length fields are u32.
        if self.max_value_size > u32::MAX as usize / 2 {
            return Err(fail("max_value_size must be below 2 GiB".into()));
        }
        if self.grace.is_some() && ttl == Ttl::Never {
            return Err(fail("grace needs a finite ttl".into()));
        }
        if let (Some(soft), Some(hard)) = (self.soft_timeout, self.hard_timeout)
            && soft >= hard
        {
            return Err(fail(
                "soft_timeout must be shorter than hard_timeout".into(),
            ));
        }
        if self.soft_timeout.is_some() && self.grace.is_none() {
            return Err(fail(
                "soft_timeout only matters with a grace window (it is when a stale value is served)".into(),
            ));
        }
        if !(0.0..=10.0).contains(&self.early_refresh) {
            return Err(fail(format!(
                "early_refresh {} must be in [0, 10]",
                self.early_refresh
            )));
        }
        if self.lease_wait.is_zero() {
            return Err(fail("lease_wait must be greater than zero".into()));
        }
        Ok(CompiledPolicy {
            policy: self.clone(),
            template,
            ttl,
            max_jitter,
            negative_ttl,
            tags,
        })
    }
}

/// A validated policy with its template parsed and defaults resolved.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPolicy {
    pub policy: Policy,
    pub template: KeyTemplate,
    pub ttl: Ttl,
    pub max_jitter: Duration,
    pub negative_ttl: Duration,
    pub tags: Vec<TagTemplate>,
}

impl CompiledPolicy {
    /// The grace window (zero if none).
    pub fn grace(&self) -> Duration {
        self.policy.grace.unwrap_or_default()
    }

    /// How long a load lease lasts: longer than any load that is waited on.
    pub fn lease_ttl(&self) -> Duration {
        self.policy.hard_timeout.unwrap_or(Duration::from_secs(10)) + Duration::from_secs(1)
    }
}

impl CompiledPolicy {
    /// A TTL for one new entry, with jitter applied.
    pub fn draw_ttl(&self) -> Option<Duration> {
        let base = self.ttl.duration()?;
        if self.max_jitter.is_zero() {
            return Some(base);
        }
        let cut = rand::random_range(0..=self.max_jitter.as_micros() as u64);
        Some(base - Duration::from_micros(cut))
    }
}

/// A set of policies keyed by family name, usually read from a TOML file.
///
/// ```
/// let policies = larder::Policies::from_toml_str(r#"
///     [families.portfolio]
///     key = "portfolio:{user_id}"
///     ttl = "60s"
///     jitter = "10%"
///
///     [families.stock_price]
///     key = "stock:{symbol}:price"
///     strategy = "write-through"
///     ttl = "2s"
/// "#).unwrap();
/// assert_eq!(policies.get("portfolio").unwrap().key_template(), "portfolio:{user_id}");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Policies {
    pub(crate) families: BTreeMap<String, Policy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    families: BTreeMap<String, PolicyEntry>,
    /// What database changes invalidate: read by `cdc::Mapping` (feature
    /// `postgres-cdc`), allowed here so one file serves both.
    #[serde(default, rename = "invalidate")]
    _invalidate: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyEntry {
    key: String,
    ttl: Option<String>,
    jitter: Option<String>,
    negative_ttl: Option<String>,
    max_value_size: Option<usize>,
    compress_above: Option<usize>,
    codec: Option<Codec>,
    strategy: Option<Strategy>,
    l1: Option<bool>,
    #[serde(default)]
    tags: Vec<String>,
    grace: Option<String>,
    soft_timeout: Option<String>,
    hard_timeout: Option<String>,
    early_refresh: Option<f64>,
    lease_wait: Option<String>,
    render: Option<Render>,
}

/// What a family renders beside its values (TOML `render = "json"`).
#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Render {
    Json,
}

impl Policies {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) one policy.
    pub fn insert(&mut self, policy: Policy) {
        self.families.insert(policy.name.clone(), policy);
    }

    /// The policy of family `name`.
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.families.get(name)
    }

    /// All policies, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.families.values()
    }

    /// Parses the `[families.<name>]` tables of a TOML document. Unknown
    /// fields are errors, so a typo (`tll = "5m"`) does not silently leave a
    /// family without its TTL.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| Error::ConfigFile {
            path: "<string>".into(),
            reason: e.to_string(),
        })?;
        let mut out = Policies::new();
        for (name, e) in file.families {
            let bad = |field: &str, reason: String| {
                Error::config(name.clone(), format!("{field}: {reason}"))
            };
            let mut p = Policy::new(name.clone(), e.key);
            if let Some(t) = e.ttl {
                p.ttl = Some(Ttl::parse(&t).map_err(|r| bad("ttl", r))?);
            }
            if let Some(j) = e.jitter {
                p.jitter = Jitter::parse(&j).map_err(|r| bad("jitter", r))?;
            }
            if let Some(n) = e.negative_ttl {
                p.negative_ttl = Some(parse_duration(&n).map_err(|r| bad("negative_ttl", r))?);
            }
            if let Some(m) = e.max_value_size {
                p.max_value_size = m;
            }
            if let Some(c) = e.compress_above {
                p.compress_above = c;
            }
            if let Some(c) = e.codec {
                p.codec = c;
            }
            if let Some(s) = e.strategy {
                p.strategy = s;
            }
            if let Some(l1) = e.l1 {
                p.l1 = l1;
            }
            p.tags = e.tags;
            let duration = |field: &str, v: Option<String>| {
                v.map(|v| parse_duration(&v).map_err(|r| bad(field, r)))
                    .transpose()
            };
            p.grace = duration("grace", e.grace)?;
            p.soft_timeout = duration("soft_timeout", e.soft_timeout)?;
            p.hard_timeout = duration("hard_timeout", e.hard_timeout)?;
            if let Some(w) = duration("lease_wait", e.lease_wait)? {
                p.lease_wait = w;
            }
            if let Some(b) = e.early_refresh {
                p.early_refresh = b;
            }
            if let Some(Render::Json) = e.render {
                p.render_json = true;
            }
            p.validate()?;
            out.insert(p);
        }
        Ok(out)
    }

    /// Reads and parses a TOML policy file.
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::ConfigFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            Error::ConfigFile { reason, .. } => Error::ConfigFile {
                path: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_forms() {
        assert_eq!(
            Ttl::parse("2s").unwrap(),
            Ttl::After(Duration::from_secs(2))
        );
        assert_eq!(
            Ttl::parse("30m").unwrap(),
            Ttl::After(Duration::from_secs(1800))
        );
        assert_eq!(
            Ttl::parse("24h").unwrap(),
            Ttl::After(Duration::from_secs(86400))
        );
        assert_eq!(
            Ttl::parse("250ms").unwrap(),
            Ttl::After(Duration::from_millis(250))
        );
        assert!(Ttl::parse("").is_err());
        assert!(Ttl::parse("soon").is_err());
        assert!(Ttl::parse("-5s").is_err());
    }

    #[test]
    fn missing_ttl_in_toml_is_an_error() {
        let err = Policies::from_toml_str("[families.p]\nkey = \"p:{id}\"\n").unwrap_err();
        assert!(err.to_string().contains("no ttl"), "{err}");
    }

    #[test]
    fn unknown_field_in_toml_is_an_error() {
        let err =
            Policies::from_toml_str("[families.p]\nkey = \"p:{id}\"\ntll = \"5m\"\n").unwrap_err();
        assert!(err.to_string().contains("tll"), "{err}");
    }

    #[test]
    fn never_is_accepted_when_explicit() {
        let p = Policies::from_toml_str("[families.c]\nkey = \"countries\"\nttl = \"never\"\n")
            .unwrap();
        assert_eq!(p.get("c").unwrap().ttl, Some(Ttl::Never));
    }

    #[test]
    fn jitter_bounds() {
        assert!(
            Policy::new("p", "p:{id}")
                .ttl(Duration::from_secs(10))
                .jitter(Duration::from_secs(10))
                .validate()
                .is_err()
        );
        assert!(
            Policy::new("p", "p:{id}")
                .ttl(Duration::from_secs(10))
                .jitter_fraction(1.0)
                .validate()
                .is_err()
        );
        assert!(
            Policy::new("p", "p:{id}")
                .ttl_never()
                .jitter_fraction(0.1)
                .validate()
                .is_err()
        );
        let c = Policy::new("p", "p:{id}")
            .ttl(Duration::from_secs(10))
            .jitter_fraction(0.5)
            .compile()
            .unwrap();
        for _ in 0..1000 {
            let t = c.draw_ttl().unwrap();
            assert!(
                t >= Duration::from_secs(5) && t <= Duration::from_secs(10),
                "{t:?}"
            );
        }
    }

    #[test]
    fn negative_ttl_defaults_to_min_of_ttl_and_30s() {
        let c = Policy::new("p", "p:{id}")
            .ttl(Duration::from_secs(5))
            .compile()
            .unwrap();
        assert_eq!(c.negative_ttl, Duration::from_secs(5));
        let c = Policy::new("p", "p:{id}")
            .ttl(Duration::from_secs(600))
            .compile()
            .unwrap();
        assert_eq!(c.negative_ttl, DEFAULT_NEGATIVE_TTL);
    }
}
