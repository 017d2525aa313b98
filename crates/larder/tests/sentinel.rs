//! Redis behind Sentinel: the cache finds the master by name and follows it
//! across a failover. Each test runs a private master, replicas and three
//! sentinels (testkit's `RedisSentinel`, real processes).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder::{BreakerSettings, Cache, Family, Policy};
use testkit::{RedisSentinel, SENTINEL_MASTER};

async fn cache_on(setup: &RedisSentinel, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .redis_sentinel(setup.sentinel_urls(), SENTINEL_MASTER)
        .redis_timeout(Duration::from_millis(100))
        .redis_breaker(BreakerSettings {
            failure_threshold: 3,
            open_for: Duration::from_millis(200),
            max_open_for: Duration::from_millis(500),
        })
        .family(Policy::new("item", "item:{id}").ttl(Duration::from_secs(60)))
        .build()
        .await
        .expect("cache behind sentinel builds")
}

async fn read(items: &Family<u64, String>, id: u64, row: &str) -> String {
    let row = row.to_string();
    items
        .get_or_load(
            &id,
            move || async move { Ok::<_, std::io::Error>(Some(row)) },
        )
        .await
        .expect("reads never fail during a failover")
        .map(|v| (*v).clone())
        .unwrap_or_default()
}

/// Polls `done` (other processes' state: nothing to await).
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_unknown_master_name_is_not_fatal_and_reads_use_the_loader() {
    let setup = RedisSentinel::start(0);
    let cache = Cache::builder()
        .redis_sentinel(setup.sentinel_urls(), "no-such-master")
        .redis_timeout(Duration::from_millis(100))
        .family(Policy::new("item", "item:{id}").ttl(Duration::from_secs(60)))
        .build()
        .await
        .expect("the cache starts without a master");
    let items = cache.family::<u64, String>("item").unwrap();
    assert_eq!(read(&items, 1, "from the loader").await, "from the loader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_follows_the_master_across_a_failover() {
    let started = Instant::now();
    let mut setup = RedisSentinel::start(2);
    eprintln!("sentinel setup up in {:?}", started.elapsed());
    let ns = testkit::namespace();
    // The "database" the readers' loader reads: written before the cache,
    // as a write-through would.
    let db: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
    let (a, b) = (cache_on(&setup, &ns).await, cache_on(&setup, &ns).await);
    let (items_a, items_b) = (
        a.family::<u64, String>("item").unwrap(),
        b.family::<u64, String>("item").unwrap(),
    );
    for id in 0..20 {
        db.lock().unwrap().insert(id, format!("v0-{id}"));
        items_a.set(&id, format!("v0-{id}")).await.unwrap();
        assert_eq!(read(&items_b, id, "?").await, format!("v0-{id}"));
    }
    assert!(b.sync_invalidations(Duration::from_secs(5)).await.unwrap());
    let flushes = b.bus_stats().flushes;

    // Readers on A while the master dies.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let worst = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..4u64 {
        let (items, db, stop, reads, worst) = (
            items_a.clone(),
            Arc::clone(&db),
            Arc::clone(&stop),
            Arc::clone(&reads),
            Arc::clone(&worst),
        );
        readers.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let row = db
                    .lock()
                    .unwrap()
                    .get(&(i % 20))
                    .cloned()
                    .unwrap_or_default();
                let got = read(&items, i % 20, &row).await;
                assert!(!got.is_empty(), "a read answered");
                worst.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                reads.fetch_add(1, Ordering::Relaxed);
                i += 3;
                // An L1 hit never yields: without this, four readers would
                // hold every worker thread (timers and the cache's own
                // tasks included), as no real handler with I/O does.
                tokio::task::yield_now().await;
            }
        }));
    }
    until("readers running", Duration::from_secs(5), || {
        reads.load(Ordering::Relaxed) > 100
    })
    .await;
    let old = setup.master().expect("a master");
    setup.server_mut(old).kill();
    let killed = Instant::now();
    let new = setup.wait_for_failover(old, Duration::from_secs(20));
    let promoted = killed.elapsed();

    // Writes reach the new master once the cache has switched to it.
    eprintln!("failover after {promoted:?}");
    db.lock().unwrap().insert(1, "after".into());
    let deadline = Instant::now() + Duration::from_secs(10);
    // `set` skips Redis quietly while it is down: check the new master.
    let mut conn = setup.server(new).connect().await;
    let key = items_a.key(&1).unwrap();
    loop {
        items_a.set(&1, "after".into()).await.unwrap();
        let stored: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if stored.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "no write reached the new master");
        // Paces the retries while the cache re-resolves the master.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "write on the new master {:?} after the kill",
        killed.elapsed()
    );
    // B's listener saw a new server and flushed its L1, then applies A's
    // invalidations from the new master.
    until(
        "B's flush after the failover",
        Duration::from_secs(10),
        || b.bus_stats().flushes > flushes,
    )
    .await;
    assert!(b.sync_invalidations(Duration::from_secs(10)).await.unwrap());
    // B's loader reads the "database", as a real one would: its own command
    // connection may still be re-resolving the master (a miss then goes to
    // the loader), but an L1 copy of the old value must be gone.
    assert_eq!(read(&items_b, 1, "after").await, "after");

    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.expect("a reader failed");
    }
    let worst = Duration::from_millis(worst.load(Ordering::Relaxed));
    eprintln!(
        "sentinel failover: new master named {promoted:?} after the kill; {} reads, slowest {worst:?}",
        reads.load(Ordering::Relaxed)
    );
    assert!(
        worst < Duration::from_secs(1),
        "reads stayed bounded ({worst:?})"
    );
}
