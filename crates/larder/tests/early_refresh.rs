//! Probabilistic early refresh (XFetch) under steady load on a hot key.
//!
//! In a binary of its own: it counts what reaches the loader as entries
//! expire, which the other concurrency tests, run beside it, would disturb
//! by taking the CPU.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder::{Cache, Policy};
use support::{Tiers, cache};

#[derive(Debug, thiserror::Error)]
#[error("database down")]
struct DbDown;

/// Drives `callers` readers at `key` for `run`, each reading every `every`;
/// returns (loader calls, readers that had to wait for a load).
async fn hot_key(
    cache: &Cache,
    run: Duration,
    every: Duration,
    load_time: Duration,
) -> (usize, u64) {
    let items = cache.family::<u64, String>("item").unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (items, loads) = (items.clone(), Arc::clone(&loads));
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
    (loads.load(Ordering::SeqCst), items.stats().misses)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_keeps_a_hot_key_from_ever_expiring_under_load() {
    let ttl = Duration::from_millis(500);
    let run = Duration::from_millis(3000);
    let load_time = Duration::from_millis(20);
    let with = Policy::new("item", "item:{id}").ttl(ttl);
    let without = Policy::new("item", "item:{id}").ttl(ttl).early_refresh(0.0);
    let (cache_without, _) = cache(Tiers::L1Redis, &[without]).await;
    // 20 readers every 10 ms: 2,000 reads/s on one key, 6 TTLs. The first
    // read of each reader is a miss (the key starts cold): 20 misses.
    let (loads_without, waited_without) =
        hot_key(&cache_without, run, Duration::from_millis(10), load_time).await;
    assert!(
        waited_without >= 5 * 20 / 2,
        "without it, each expiry stalls the readers: {waited_without}"
    );
    for tiers in [Tiers::L1Redis, Tiers::Redis] {
        let (cache_with, _) = cache(tiers, std::slice::from_ref(&with)).await;
        let (loads, waited) = hot_key(&cache_with, run, Duration::from_millis(10), load_time).await;
        println!(
            "{tiers:?}: early refresh: {loads} loads, {waited} misses; without: {loads_without} loads, {waited_without} misses"
        );
        assert!(
            (5..=12).contains(&loads),
            "{tiers:?}: about one load per TTL: {loads}"
        );
        assert!(
            waited <= 20 + 5,
            "{tiers:?}: past the cold start, readers almost never wait: {waited}"
        );
    }
}
