//! What a Redis Cluster costs larder, against one server, in the same run:
//!
//! - `l2_hit`: `get_or_load` with L1 off on a key held in Redis, on one
//!   server and on a three-master cluster (slot routing, the per-master
//!   breaker), and a bare cluster `GET` + decode.
//! - `get_many_50`: a batch read of 50 keys (spread over the three masters'
//!   slots) with L1 off: one server (one `MGET`) against the cluster (one
//!   pipeline per master, in parallel), and redis-rs's own multi-slot `MGET`
//!   on the cluster (one command per slot).
//!
//! `cargo bench -p larder --bench cluster` (one server at `REDIS_URL`,
//! default 127.0.0.1:6379; the cluster at `REDIS_CLUSTER_URLS`, or a private
//! three-master one it starts). Results are in docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use larder::{Cache, Family, Policy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holding {
    symbol: String,
    qty: i64,
    last_price: String,
}

/// ~700 bytes of MessagePack, like a small portfolio.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Portfolio {
    user_id: i64,
    holdings: Vec<Holding>,
}

fn portfolio(user_id: i64) -> Portfolio {
    Portfolio {
        user_id,
        holdings: (0..15)
            .map(|i| Holding {
                symbol: format!("SYM{i:03}"),
                qty: 10 + i,
                last_price: "1234.56".into(),
            })
            .collect(),
    }
}

fn policy() -> Policy {
    Policy::new("portfolio", "portfolio:{user_id}")
        .ttl(Duration::from_secs(3600))
        .compress_above(usize::MAX)
}

/// The cluster to measure: `REDIS_CLUSTER_URLS`, or a private one (kept
/// alive by the returned guard).
fn cluster() -> (Vec<String>, Option<testkit::RedisCluster>) {
    match std::env::var("REDIS_CLUSTER_URLS") {
        Ok(urls) if !urls.is_empty() => (urls.split(',').map(str::to_string).collect(), None),
        _ => {
            let c = testkit::RedisCluster::start(3, 0);
            (c.seed_urls(), Some(c))
        }
    }
}

async fn family_on(builder: larder::CacheBuilder, ns: &str) -> (Cache, Family<i64, Portfolio>) {
    let cache = builder
        .namespace(ns)
        .redis_timeout(Duration::from_secs(1))
        .l1_max_bytes(0)
        .family(policy())
        .build()
        .await
        .expect("cache");
    let family = cache.family::<i64, Portfolio>("portfolio").expect("family");
    for id in 0..50 {
        family.set(&id, portfolio(id)).await.expect("set");
    }
    (cache, family)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (seeds, _private) = cluster();
    let standalone = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ns = format!("bench-cluster-{}", std::process::id());
    let ((_one, on_one), (_many, on_cluster), mut bare) = rt.block_on(async {
        let one = family_on(Cache::builder().redis_url(&standalone), &ns).await;
        let many = family_on(Cache::builder().redis_cluster(seeds.clone()), &ns).await;
        let bare = redis::cluster::ClusterClient::new(seeds.clone())
            .expect("cluster client")
            .get_async_connection()
            .await
            .expect("cluster connection");
        (one, many, bare)
    });
    let ids: Vec<i64> = (0..50).collect();
    let keys: Vec<String> = ids
        .iter()
        .map(|id| on_cluster.key(id).expect("key"))
        .collect();
    let none = |_: Vec<i64>| async { Ok::<_, std::io::Error>(HashMap::new()) };

    let mut g = c.benchmark_group("l2_hit");
    g.bench_function("larder_standalone", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                on_one
                    .get_or_load(black_box(&7), || async { Ok::<_, std::io::Error>(None) })
                    .await
                    .expect("hit"),
            )
        })
    });
    g.bench_function("larder_cluster", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                on_cluster
                    .get_or_load(black_box(&7), || async { Ok::<_, std::io::Error>(None) })
                    .await
                    .expect("hit"),
            )
        })
    });
    g.bench_function("bare_cluster_get_decode", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = bare.clone();
            let key = keys[7].clone();
            async move {
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                let v: Portfolio =
                    rmp_serde::from_slice(&bytes.expect("present")[22..]).expect("decode");
                black_box(v)
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("get_many_50");
    g.bench_function("larder_standalone", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(on_one.get_many(&ids, none).await.expect("hits")) })
    });
    g.bench_function("larder_cluster_3_masters", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(on_cluster.get_many(&ids, none).await.expect("hits")) })
    });
    g.bench_function("bare_cluster_mget_multi_slot", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = bare.clone();
            let keys = keys.clone();
            async move {
                let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .expect("MGET");
                black_box(values)
            }
        })
    });
    g.finish();
    rt.block_on(async {
        let _ = on_cluster.invalidate_pattern(&larder::key::Any).await;
        let _ = on_one.invalidate_pattern(&larder::key::Any).await;
        let _ = &mut bare;
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
