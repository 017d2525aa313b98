//! Probabilistic early refresh (XFetch) under steady load on a hot key.
//!
//! In a binary of its own: it counts what reaches the loader as entries
//! expire, which the other concurrency tests, run beside it, would disturb
//! by taking the CPU.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder::{Cache, Family, Policy};
use support::{Tiers, cache, cache_in};

#[derive(Debug, thiserror::Error)]
#[error("database down")]
struct DbDown;

/// Drives 20 readers at one key for `run`, each reading every `every`,
/// spread over `caches` (processes sharing a namespace); returns (loader
/// calls, reads that missed and waited for a load).
async fn hot_key(
    caches: &[Cache],
    run: Duration,
    every: Duration,
    load_time: Duration,
) -> (usize, u64) {
    let families: Vec<Family<u64, String>> =
        caches.iter().map(|c| c.family("item").unwrap()).collect();
    let loads = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for r in 0..20 {
        let (items, loads) = (families[r % families.len()].clone(), Arc::clone(&loads));
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            while Instant::now() < deadline {
                tick.tick().await;
                let loads = Arc::clone(&loads);
                items
                    .get_or_load(&1, move || async move {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(load_time).await; // the database's work
                        Ok::<_, DbDown>(Some("hot".to_string()))
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let misses = families.iter().map(|f| f.stats().misses).sum();
    (loads.load(Ordering::SeqCst), misses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_keeps_a_hot_key_from_ever_expiring_under_load() {
    let ttl = Duration::from_millis(500);
    let run = Duration::from_millis(3000);
    let load_time = Duration::from_millis(20);
    let every = Duration::from_millis(10);
    let with = Policy::new("item", "item:{id}").ttl(ttl);
    let without = Policy::new("item", "item:{id}").ttl(ttl).early_refresh(0.0);
    let (cache_without, _) = cache(Tiers::L1Redis, &[without]).await;
    // 20 readers every 10 ms: 2,000 reads/s on one key, 6 TTLs. The first
    // read of each reader is a miss (the key starts cold): 20 misses.
    let (loads_without, waited_without) = hot_key(&[cache_without], run, every, load_time).await;
    assert!(
        waited_without >= 5 * 20 / 2,
        "without it, each expiry stalls the readers: {waited_without}"
    );
    // One process with and without L1, then four processes sharing Redis:
    // their early refreshes must not add up to more loads.
    let setups: [(&str, Tiers, usize); 3] = [
        ("L1 + Redis", Tiers::L1Redis, 1),
        ("Redis only", Tiers::Redis, 1),
        ("4 processes, L1 + Redis", Tiers::L1Redis, 4),
    ];
    let mut one_process = usize::MAX;
    for (name, tiers, processes) in setups {
        let ns = testkit::namespace();
        let mut caches = Vec::new();
        for _ in 0..processes {
            caches.push(cache_in(&ns, tiers, std::slice::from_ref(&with)).await);
        }
        let (loads, waited) = hot_key(&caches, run, every, load_time).await;
        println!(
            "{name}: early refresh: {loads} loads, {waited} misses; without: {loads_without} loads, {waited_without} misses"
        );
        assert!(
            (5..=12).contains(&loads),
            "{name}: about one load per TTL: {loads}"
        );
        if processes == 1 {
            one_process = one_process.min(loads);
        } else {
            assert!(
                loads <= one_process + 2,
                "{name}: processes share one refresh: {loads} loads vs {one_process} for one process"
            );
        }
        // The cold start is 20 misses. The draw is random and the machine
        // shared: allow one of the five expiries to reach the readers (a
        // refresh drawn, or scheduled, later than a load before expiry).
        // Without early refresh, all five do.
        assert!(
            waited <= 20 + 20,
            "{name}: past the cold start, readers almost never wait: {waited} misses"
        );
    }
}
