//! Correct under concurrency: no stale fill after an invalidation (in this
//! process or another), one loader across processes, grace and fail-safe,
//! soft and hard timeouts. (Early refresh, which is measured against the
//! clock, has a test binary of its own: `early_refresh.rs`.)

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder::{Error, Family, Policy};
use redis::AsyncCommands;
use sqlx::PgPool;
use support::{Tiers, bounded, cache, cache_in, raw};
use tokio::sync::{Notify, oneshot, watch};

#[derive(Debug, thiserror::Error)]
#[error("database down")]
struct DbDown;

/// A gate loaders wait at until the test opens it.
#[derive(Clone)]
struct Gate(watch::Sender<bool>);

impl Gate {
    fn new() -> Self {
        Gate(watch::channel(false).0)
    }
    async fn pass(&self) {
        let _ = self.0.subscribe().wait_for(|open| *open).await;
    }
    fn open(&self) {
        self.0.send_replace(true);
    }
}

fn policy() -> Policy {
    Policy::new("item", "item:{id}").ttl(Duration::from_secs(60))
}

async fn read(family: &Family<u64, String>, key: u64, value: &str) -> Option<String> {
    let value = value.to_string();
    family
        .get_or_load(&key, move || async move { Ok::<_, DbDown>(Some(value)) })
        .await
        .unwrap()
        .map(|v| (*v).clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_read_the_old_row_never_stores_it_after_another_process_invalidates() {
    let (a, ns) = cache(Tiers::L1Redis, &[policy()]).await;
    let b = cache_in(&ns, Tiers::L1Redis, &[policy()]).await;
    let (items_a, items_b) = (
        a.family::<u64, String>("item").unwrap(),
        b.family::<u64, String>("item").unwrap(),
    );
    let gate = Gate::new();
    let (started_tx, started) = oneshot::channel();
    let loading = tokio::spawn({
        let (items_a, gate) = (items_a.clone(), gate.clone());
        async move {
            items_a
                .get_or_load(&1, move || async move {
                    // Reads the row as it is now...
                    let _ = started_tx.send(());
                    gate.pass().await;
                    Ok::<_, DbDown>(Some("old row".to_string()))
                })
                .await
        }
    });
    bounded("loader started", started).await.unwrap();
    // ...the row changes in another process, which invalidates the key...
    items_b.invalidate(&1).await.unwrap();
    // ...and only then does the first load finish.
    gate.open();
    let first = bounded("first load", loading).await.unwrap().unwrap();
    assert_eq!(
        first.as_deref().map(String::as_str),
        Some("old row"),
        "its caller asked before the change"
    );

    let exists: bool = raw().await.exists(items_a.key(&1).unwrap()).await.unwrap();
    assert!(!exists, "the old row was not stored in Redis");
    assert_eq!(
        read(&items_a, 1, "new row").await.as_deref(),
        Some("new row"),
        "nor in A's L1"
    );
    assert_eq!(read(&items_b, 1, "?").await.as_deref(), Some("new row"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_random_reads_and_writes_every_cached_value_ends_equal_to_the_database() {
    testkit::require_redis().await;
    let db = testkit::TestDatabase::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    sqlx::query("CREATE TABLE rows (id BIGINT PRIMARY KEY, v TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    const KEYS: u64 = 16;
    for id in 0..KEYS {
        sqlx::query("INSERT INTO rows VALUES ($1, 'initial')")
            .bind(id as i64)
            .execute(&pool)
            .await
            .unwrap();
    }
    let ns = testkit::namespace();
    let caches = [
        cache_in(&ns, Tiers::L1Redis, &[policy()]).await,
        cache_in(&ns, Tiers::L1Redis, &[policy()]).await,
        cache_in(&ns, Tiers::Redis, &[policy()]).await,
    ];
    let families: Vec<Family<u64, String>> =
        caches.iter().map(|c| c.family("item").unwrap()).collect();
    let load = |pool: PgPool, id: u64| async move {
        // Loads slow enough to overlap with the writes.
        tokio::task::yield_now().await;
        let v: Option<String> = sqlx::query_scalar("SELECT v FROM rows WHERE id = $1")
            .bind(id as i64)
            .fetch_optional(&pool)
            .await?;
        tokio::task::yield_now().await;
        Ok::<_, sqlx::Error>(v)
    };
    for round in 0..10u64 {
        let mut tasks = Vec::new();
        for t in 0..24u64 {
            let (family, pool) = (families[(t % 3) as usize].clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..40u64 {
                    let id = (t * 7 + i * 3 + round) % KEYS;
                    if (t + i) % 5 == 0 {
                        // A writer: the database, then delete on write.
                        sqlx::query("UPDATE rows SET v = $2 WHERE id = $1")
                            .bind(id as i64)
                            .bind(format!("r{round} t{t} i{i}"))
                            .execute(&pool)
                            .await
                            .unwrap();
                        family.invalidate(&id).await.unwrap();
                    } else {
                        let pool = pool.clone();
                        family
                            .get_or_load(&id, move || load(pool, id))
                            .await
                            .unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            bounded("worker", t).await.unwrap();
        }
        for c in &caches {
            assert!(c.sync_invalidations(Duration::from_secs(10)).await.unwrap());
        }
        for id in 0..KEYS {
            let truth: String = sqlx::query_scalar("SELECT v FROM rows WHERE id = $1")
                .bind(id as i64)
                .fetch_one(&pool)
                .await
                .unwrap();
            for (i, family) in families.iter().enumerate() {
                let cached = family
                    .get_or_load(&id, || async {
                        Ok::<_, DbDown>(Some("not cached".to_string()))
                    })
                    .await
                    .unwrap();
                let cached = cached.as_deref().map(String::as_str);
                assert!(
                    cached == Some(truth.as_str()) || cached == Some("not cached"),
                    "round {round}, key {id}, cache {i}: cached {cached:?}, database {truth:?} (redis errors {}, deferred {})",
                    family.stats().redis_errors,
                    caches[i].deferred_invalidations()
                );
            }
        }
        let timeouts: u64 = families.iter().map(|f| f.stats().lease_timeouts).sum();
        assert_eq!(
            timeouts, 0,
            "round {round}: a lease wait ran out (a fill or invalidation did not wake it)"
        );
        // Start the next round from the database.
        for id in 0..KEYS {
            families[0].invalidate(&id).await.unwrap();
        }
        for c in &caches {
            assert!(c.sync_invalidations(Duration::from_secs(10)).await.unwrap());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_callers_across_four_processes_cause_one_load() {
    let ns = testkit::namespace();
    let mut caches = Vec::new();
    for _ in 0..4 {
        caches.push(cache_in(&ns, Tiers::L1Redis, &[policy()]).await);
    }
    let families: Vec<Family<u64, String>> =
        caches.iter().map(|c| c.family("item").unwrap()).collect();
    let gate = Gate::new();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (family, gate, loads) = (families[i % 4].clone(), gate.clone(), Arc::clone(&loads));
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let v = family
                .get_or_load(&7, move || async move {
                    loads.fetch_add(1, Ordering::SeqCst);
                    gate.pass().await;
                    Ok::<_, DbDown>(Some("loaded once".to_string()))
                })
                .await
                .unwrap();
            (v, started.elapsed())
        }));
    }
    // Every caller is parked: on its process's load, which (but one) waits
    // on the lease holder's fill.
    bounded("callers gathering", async {
        while families.iter().map(|f| f.waiting(&7)).sum::<usize>() < 1000
            || families.iter().map(|f| f.stats().lease_waits).sum::<u64>() < 3
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let released = Instant::now();
    gate.open();
    let mut after_release = Vec::new();
    for t in tasks {
        let (v, _) = bounded("caller", t).await.unwrap();
        assert_eq!(v.as_deref().map(String::as_str), Some("loaded once"));
        after_release.push(released.elapsed());
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "one loader call across four processes"
    );
    let waits: u64 = families.iter().map(|f| f.stats().lease_waits).sum();
    assert_eq!(
        waits, 3,
        "the three other processes waited for the lease holder"
    );
    let slowest = after_release.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(1),
        "woken by the fill, not by polling: {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_serves_stale_at_once_while_one_refresh_runs_and_keeps_it_when_the_loader_fails() {
    let p = Policy::new("item", "item:{id}")
        .ttl(Duration::from_millis(150))
        .grace(Duration::from_millis(1500));
    for tiers in [Tiers::L1, Tiers::L1Redis, Tiers::Redis] {
        let (cache, _) = cache(tiers, std::slice::from_ref(&p)).await;
        let items = cache.family::<u64, String>("item").unwrap();
        assert_eq!(read(&items, 1, "v1").await.as_deref(), Some("v1"));
        // The TTL passing is what is under test.
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Stale: served at once, one refresh in the background.
        let gate = Gate::new();
        let loads = Arc::new(AtomicUsize::new(0));
        let slow = |gate: Gate, loads: Arc<AtomicUsize>| {
            move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                gate.pass().await;
                Ok::<_, DbDown>(Some("v2".to_string()))
            }
        };
        for _ in 0..5 {
            let started = Instant::now();
            let got = items
                .get_or_load(&1, slow(gate.clone(), Arc::clone(&loads)))
                .await
                .unwrap();
            assert_eq!(
                got.as_deref().map(String::as_str),
                Some("v1"),
                "{tiers:?}: stale, at once"
            );
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "{tiers:?}: not waiting for the refresh"
            );
        }
        bounded("refresh started", async {
            while loads.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        gate.open();
        bounded("refresh", async {
            while items.stats().refreshes == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "{tiers:?}: one refresh for five stale reads"
        );
        assert_eq!(
            read(&items, 1, "?").await.as_deref(),
            Some("v2"),
            "{tiers:?}: refreshed"
        );
        assert_eq!(items.stats().stale_hits, 5);

        // Fail-safe: the database is down when v2 goes stale.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let failing = || async { Err::<Option<String>, _>(DbDown) };
        let got = items.get_or_load(&1, failing).await.unwrap();
        assert_eq!(
            got.as_deref().map(String::as_str),
            Some("v2"),
            "{tiers:?}: stale served"
        );
        bounded("failed refresh", async {
            while items.stats().refresh_failures == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let got = items.get_or_load(&1, failing).await.unwrap();
        assert_eq!(
            got.as_deref().map(String::as_str),
            Some("v2"),
            "{tiers:?}: still served after the failure"
        );
        // Past the grace window, there is nothing left to serve.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let result = items.get_or_load(&1, failing).await;
        assert!(
            matches!(result, Err(Error::Loader(_))),
            "{tiers:?}: {result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_timeout_serves_stale_and_a_hard_timeout_errors_while_the_load_fills_on() {
    let p = Policy::new("item", "item:{id}")
        .ttl(Duration::from_millis(150))
        .grace(Duration::from_secs(10))
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_millis(300));
    let (cache, _) = cache(Tiers::L1Redis, &[p]).await;
    let items = cache.family::<u64, String>("item").unwrap();
    read(&items, 1, "v1").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let gate = Gate::new();
    let g = gate.clone();
    let started = Instant::now();
    let got = items
        .get_or_load(&1, move || async move {
            g.pass().await;
            Ok::<_, DbDown>(Some("v2".to_string()))
        })
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(
        got.as_deref().map(String::as_str),
        Some("v1"),
        "stale after the soft timeout"
    );
    assert!(
        waited >= Duration::from_millis(90) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
    gate.open();
    bounded("refresh fills on", async {
        while items.stats().refreshes == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert_eq!(read(&items, 1, "?").await.as_deref(), Some("v2"));

    // A cold key: no stale value, so the hard timeout applies.
    let gate = Gate::new();
    let (g, filled) = (gate.clone(), Arc::new(Notify::new()));
    let started = Instant::now();
    let result = items
        .get_or_load(&2, move || async move {
            g.pass().await;
            Ok::<_, DbDown>(Some("slow".to_string()))
        })
        .await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_millis(1000));
    assert_eq!(items.stats().loader_timeouts, 1);
    gate.open();
    let _ = filled;
    bounded("load fills after the timeout", async {
        loop {
            let got = items
                .get_or_load(&2, || async {
                    Ok::<_, DbDown>(Some("loaded again".to_string()))
                })
                .await
                .unwrap();
            if got.as_deref().map(String::as_str) == Some("slow") {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}
