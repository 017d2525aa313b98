//! What larder adds on a hit, measured against doing the same by hand in the
//! same run:
//!
//! - `l1_hit`: `get_or_load` on a key held in L1, against a bare moka `get` of
//!   the same value: moka's `future` cache (plain, with per-entry expiry, and
//!   formatting the key per call) and its `sync` cache, which larder's L1 uses.
//! - `l2_hit`: `get_or_load` with L1 off on a key held in Redis, against a bare
//!   `GET` + MessagePack decode of the same bytes on the same kind of client.
//!
//! `cargo bench -p larder --bench hit_path` (Redis at `REDIS_URL`, default
//! 127.0.0.1:6379). Results are recorded in docs/BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use larder::{Cache, Policy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holding {
    symbol: String,
    qty: i64,
    last_price: String,
    market_value: String,
}

/// The shape of the reference service's portfolio: 15 holdings, ~900 bytes
/// of MessagePack.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Portfolio {
    user_id: i64,
    holdings: Vec<Holding>,
    total_market_value: String,
}

fn portfolio(user_id: i64) -> Portfolio {
    Portfolio {
        user_id,
        holdings: (0..15)
            .map(|i| Holding {
                symbol: format!("SYM{i:03}"),
                qty: 10 + i,
                last_price: "1234.56".into(),
                market_value: "12345.60".into(),
            })
            .collect(),
        total_market_value: "185184.00".into(),
    }
}

/// Per-entry expiry, as larder's L1 uses.
struct FixedTtl;

impl moka::Expiry<String, Arc<Portfolio>> for FixedTtl {
    fn expire_after_create(
        &self,
        _: &String,
        _: &Arc<Portfolio>,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn policy() -> Policy {
    // No compression, so that the bare path decodes exactly the same bytes.
    Policy::new("portfolio", "portfolio:{user_id}")
        .ttl(Duration::from_secs(3600))
        .compress_above(usize::MAX)
}

fn l1_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cache = rt.block_on(async {
        Cache::builder()
            .family(policy())
            .build()
            .await
            .expect("cache")
    });
    let family = cache.family::<i64, Portfolio>("portfolio").expect("family");
    rt.block_on(async {
        family
            .get_or_load(&42, || async {
                Ok::<_, std::io::Error>(Some(portfolio(42)))
            })
            .await
            .expect("warm");
    });
    let moka: moka::future::Cache<String, Arc<Portfolio>> =
        moka::future::Cache::builder().max_capacity(1 << 20).build();
    // moka's sync flavour, which larder's L1 is built on.
    let moka_sync: moka::sync::Cache<String, Arc<Portfolio>> =
        moka::sync::Cache::builder().max_capacity(1 << 20).build();
    // moka's sync flavour configured as larder's L1 is (weigher, predicate
    // invalidation for tags and patterns, eviction listener, foldhash): what
    // the L1 costs before any of larder's own work.
    let moka_as_l1: moka::sync::Cache<String, Arc<Portfolio>, foldhash::fast::RandomState> =
        moka::sync::Cache::builder()
            .max_capacity(1 << 30)
            .weigher(|_, _: &Arc<Portfolio>| 900)
            .support_invalidation_closures()
            .eviction_listener(|_, _, _| {})
            .build_with_hasher(foldhash::fast::RandomState::default());
    let key = "larder:{portfolio:42}".to_string();
    moka_as_l1.insert(key.clone(), Arc::new(portfolio(42)));
    rt.block_on(moka.insert(key.clone(), Arc::new(portfolio(42))));
    moka_sync.insert(key.clone(), Arc::new(portfolio(42)));
    // The same, with per-entry expiry as larder's L1 has (a cache needs TTLs).
    let moka_ttl: moka::future::Cache<String, Arc<Portfolio>> = moka::future::Cache::builder()
        .max_capacity(1 << 20)
        .expire_after(FixedTtl)
        .build();
    rt.block_on(moka_ttl.insert(key.clone(), Arc::new(portfolio(42))));

    let mut g = c.benchmark_group("l1_hit");
    g.bench_function("larder_get_or_load", |b| {
        b.to_async(&rt).iter(|| async {
            let v = family
                .get_or_load(black_box(&42), || async { Ok::<_, std::io::Error>(None) })
                .await
                .expect("hit");
            black_box(v)
        })
    });
    // The same hit without the async harness: an L1 hit is a future that is
    // ready at once, so polling it once is what a caller pays. Compare this
    // one with `bare_moka_sync_get` (same harness).
    g.bench_function("larder_get_or_load_polled_once", |b| {
        b.iter(|| {
            let v = family
                .get_or_load(black_box(&42), || async { Ok::<_, std::io::Error>(None) })
                .now_or_never()
                .expect("an L1 hit is ready at once")
                .expect("hit");
            black_box(v)
        })
    });
    g.bench_function("larder_key_only", |b| {
        b.iter(|| black_box(family.key(black_box(&42))))
    });
    g.bench_function("bare_moka_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka.get(black_box(key.as_str())).await) })
    });
    g.bench_function("bare_moka_sync_get", |b| {
        b.iter(|| black_box(moka_sync.get(black_box(key.as_str()))))
    });
    g.bench_function("bare_moka_sync_get_configured_as_larder_l1", |b| {
        b.iter(|| black_box(moka_as_l1.get(black_box(key.as_str()))))
    });
    g.bench_function("bare_moka_get_with_ttl", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(moka_ttl.get(black_box(key.as_str())).await) })
    });
    g.bench_function("bare_moka_get_formatting_key", |b| {
        b.to_async(&rt).iter(|| async {
            let key = format!("larder:{{portfolio:{}}}", black_box(42));
            black_box(moka.get(&key).await)
        })
    });
    g.finish();
}

fn l2_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let namespace = format!("bench-{}", std::process::id());
    let (cache, mut conn) = rt.block_on(async {
        let cache = Cache::builder()
            .namespace(&namespace)
            .redis_url(redis_url())
            .redis_timeout(Duration::from_secs(1))
            .l1_max_bytes(0)
            .family(policy())
            .build()
            .await
            .expect("cache");
        let client = redis::Client::open(redis_url()).expect("redis url");
        let conn = client.get_connection_manager().await.unwrap_or_else(|e| {
            panic!(
                "this benchmark needs Redis at {} ({e}); start it or set REDIS_URL",
                redis_url()
            )
        });
        (cache, conn)
    });
    let family = cache.family::<i64, Portfolio>("portfolio").expect("family");
    let key = family.key(&42).expect("key");
    rt.block_on(async {
        family.set(&42, portfolio(42)).await.expect("set");
    });

    let mut g = c.benchmark_group("l2_hit");
    g.bench_function("larder_get_or_load", |b| {
        b.to_async(&rt).iter(|| async {
            let v = family
                .get_or_load(black_box(&42), || async { Ok::<_, std::io::Error>(None) })
                .await
                .expect("hit");
            black_box(v)
        })
    });
    g.bench_function("bare_redis_get_decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                let bytes = bytes.expect("present");
                // Skip larder's 22-byte header: the same payload, decoded the same way.
                let v: Portfolio = rmp_serde::from_slice(&bytes[22..]).expect("decode");
                black_box(v)
            }
        })
    });
    g.finish();
    rt.block_on(async {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&key).query_async(&mut conn).await;
    });
}

criterion_group!(benches, l1_hit, l2_hit);
criterion_main!(benches);
