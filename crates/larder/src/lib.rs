//! # larder
//!
//! A two-tier cache for Rust services that sit in front of a database: an
//! in-process tier (L1, decoded values, no I/O on a hit) in front of Redis
//! (L2, shared by every process), in front of your loaders.
//!
//! It implements the patterns of "How Redis Caching Actually Works" without
//! the bugs of that article's snippets:
//!
//! - **Cache-aside** with [`Family::get_or_load`]: L1 → Redis → loader, with
//!   TTLs, jitter, and negative caching of "not found".
//! - **Stampede protection**: concurrent misses on one key share one load,
//!   within a process (single-flight) and across processes (a lease in Redis;
//!   the others are woken by the fill's notification instead of sleeping and
//!   retrying). Hot keys are refreshed shortly before they expire (XFetch,
//!   [`Policy::early_refresh`]).
//! - **No stale fill**: an invalidation voids the lease of every load in
//!   flight, so a load that read the old row can never store it afterwards.
//! - **Grace and fail-safe** ([`Policy::grace`]): past the TTL, the old value
//!   is served at once while one refresh runs, and while the database is
//!   down; [`Policy::soft_timeout`] and [`Policy::hard_timeout`] bound loads.
//! - **Batch reads** with [`Family::get_many`]: one `MGET`, one loader call.
//! - **Typed keys** ([`key`]): user input is escaped, so `*` or `a:b` in an id
//!   can neither collide with another key nor widen a pattern.
//! - **Redis failures** are routed around: every command has a timeout, and a
//!   read whose Redis call fails is answered by the loader.
//! - **Bad data is a miss**: a value in Redis that does not decode is counted,
//!   deleted and reloaded ([`codec`](crate::Codec) layout is versioned).
//! - **Invalidation from PostgreSQL's change stream** (feature
//!   `postgres-cdc`, module `cdc`): every committed change to a mapped
//!   table invalidates its keys and tags, whoever made it.
//! - **Hit-rate monitoring** per family through the `metrics` facade
//!   (see the [`metrics`](crate::FamilyStats) table) and [`Family::stats`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), larder::Error> {
//! use larder::{Cache, Policy};
//! use std::time::Duration;
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Portfolio { user_id: u64, total: String }
//!
//! let cache = Cache::builder()
//!     .namespace("app")
//!     // .redis_url("redis://127.0.0.1:6379")   // add the shared tier
//!     .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
//!     .build()
//!     .await?;
//! let portfolios = cache.family::<u64, Portfolio>("portfolio")?;
//!
//! let p = portfolios
//!     .get_or_load(&42, || async {
//!         // On a miss: query the database. Ok(None) means "no such user".
//!         Ok::<_, std::io::Error>(Some(Portfolio { user_id: 42, total: "1234.50".into() }))
//!     })
//!     .await?;
//! assert_eq!(p.unwrap().total, "1234.50");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod admin;
mod breaker;
mod builder;
mod bus;
mod cache;
#[cfg(feature = "postgres-cdc")]
pub mod cdc;
mod codec;
mod deferred;
mod error;
mod family;
mod flight;
pub mod key;
mod metrics;
mod notify;
mod orphans;
mod policy;
mod pubsub;
mod recovery;
mod registry;
pub mod render;
mod scripts;
mod tier;
pub mod write_behind;

pub use breaker::{BreakerSettings, BreakerState};
pub use builder::{
    CacheBuilder, DEFAULT_L1_MAX_BYTES, DEFAULT_MAX_KEY_LEN, DEFAULT_REDIS_CONNECT_TIMEOUT,
    DEFAULT_REDIS_TIMEOUT,
};
pub use cache::{BusStats, Cache, L1Usage};
pub use error::{BoxError, Error, SourceError};
pub use family::Family;
pub use metrics::FamilyStats;
pub use pubsub::Subscription;
pub use render::Rendered;
/// A value as written to the database, with the version the database gave
/// it (a row version, `updated_at` in microseconds: anything that increases
/// with every write of the row). What a write-through's `persist` returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<V> {
    /// The value as stored.
    pub value: V,
    /// Its version.
    pub version: u64,
}

pub use policy::{
    Codec, DEFAULT_COMPRESS_ABOVE, DEFAULT_EARLY_REFRESH, DEFAULT_LEASE_WAIT,
    DEFAULT_MAX_VALUE_SIZE, DEFAULT_NEGATIVE_TTL, Jitter, MAX_TAGS, Policies, Policy, Strategy,
    Ttl,
};
