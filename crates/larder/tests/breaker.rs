//! When Redis is sick: the circuit breaker stops requests from waiting on a
//! Redis that hangs, invalidations made meanwhile are replayed when it
//! answers again, and L1 is flushed on recovery. Each test runs its own
//! `redis-server`, which it pauses (SIGSTOP) or kills.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder::{BreakerSettings, BreakerState, Cache, Policy};
use support::bounded;
use testkit::RedisServer;

const OP_TIMEOUT: Duration = Duration::from_millis(100);

fn policy() -> Policy {
    Policy::new("item", "item:{id}")
        .ttl(Duration::from_secs(60))
        .tag("group:{id}")
}

async fn cache_on(server: &RedisServer, ns: &str, l1: bool, threshold: u32) -> Cache {
    let mut builder = Cache::builder()
        .namespace(ns)
        .redis_url(server.url())
        .redis_timeout(OP_TIMEOUT)
        .redis_breaker(BreakerSettings {
            failure_threshold: threshold,
            open_for: Duration::from_millis(200),
            max_open_for: Duration::from_secs(1),
        })
        .family(policy());
    if !l1 {
        builder = builder.l1_max_bytes(0);
    }
    builder.build().await.expect("cache builds")
}

/// Polls `done` (a condition on another process's state: there is nothing
/// to await) until it holds, for at most 10 s.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn read(cache: &Cache, id: u64, loaded: &str) -> String {
    let loaded = loaded.to_string();
    let items = cache.family::<u64, String>("item").unwrap();
    let got = items
        .get_or_load(
            &id,
            move || async move { Ok::<_, std::io::Error>(Some(loaded)) },
        )
        .await
        .expect("reads are served while redis is sick");
    (*got.expect("always found")).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_redis_opens_the_breaker_and_reads_stop_waiting_for_it() {
    let server = RedisServer::start(&[]);
    let cache = cache_on(&server, &testkit::namespace(), false, 3).await;
    let items = cache.family::<u64, String>("item").unwrap();
    assert_eq!(cache.redis_breaker(), Some(BreakerState::Closed));

    server.pause();
    let loads = Arc::new(AtomicUsize::new(0));
    let mut slow = 0;
    for id in 0..50u64 {
        let loads = Arc::clone(&loads);
        let started = Instant::now();
        let got = bounded(
            "read",
            items.get_or_load(&id, move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Some(format!("row {id}")))
            }),
        )
        .await
        .expect("served by the loader");
        assert_eq!(
            got.as_deref().map(String::as_str),
            Some(format!("row {id}").as_str())
        );
        let took = started.elapsed();
        assert!(
            took < OP_TIMEOUT * 3,
            "no read waits much longer than the redis timeout: {took:?}"
        );
        if took >= OP_TIMEOUT {
            slow += 1;
        }
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        50,
        "every read answered by the loader"
    );
    assert!(
        slow <= 3,
        "only the reads before the breaker opened waited for redis: {slow}"
    );
    assert_eq!(cache.redis_breaker(), Some(BreakerState::Open));

    // Redis answers again: the breaker probes, closes, and reads use Redis.
    server.resume();
    until("breaker closes", || {
        cache.redis_breaker() == Some(BreakerState::Closed)
    })
    .await;
    let hits_before = items.stats().hits_l2;
    for _ in 0..2 {
        // The first read loads and stores; the second hits Redis.
        items
            .get_or_load(&1000, || async {
                Ok::<_, std::io::Error>(Some("after".to_string()))
            })
            .await
            .unwrap();
    }
    assert_eq!(items.stats().hits_l2, hits_before + 1, "redis serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_made_while_redis_hangs_are_replayed_when_it_answers() {
    let server = RedisServer::start(&[]);
    let ns = testkit::namespace();
    // A's breaker opens at the first failure; B keeps its own.
    let a = cache_on(&server, &ns, true, 1).await;
    let b = cache_on(&server, &ns, true, 5).await;
    for id in [1, 2, 3] {
        assert_eq!(read(&b, id, "old").await, "old");
        assert_eq!(read(&a, id, "old").await, "old");
    }
    let items_a = a.family::<u64, String>("item").unwrap();

    server.pause();
    let started = Instant::now();
    // The database has changed rows 1, 2 (by tag) and 3 (a new value).
    items_a
        .invalidate(&1)
        .await
        .expect("no error reaches the caller");
    a.invalidate_tag("group:{id}", &2u64)
        .await
        .expect("no error reaches the caller");
    items_a
        .set(&3, "new".into())
        .await
        .expect("no error reaches the caller");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(a.redis_breaker(), Some(BreakerState::Open));
    assert_eq!(a.deferred_invalidations(), 3);
    // A itself no longer serves the old values.
    for id in [1, 2, 3] {
        assert_eq!(
            read(&a, id, "new").await,
            "new",
            "A, key {id}, during the outage"
        );
    }

    server.resume();
    until("A replays its invalidations", || {
        a.redis_breaker() == Some(BreakerState::Closed) && a.deferred_invalidations() == 0
    })
    .await;
    assert!(
        b.sync_invalidations(Duration::from_secs(5)).await.unwrap(),
        "B hears them"
    );
    for id in [1, 2, 3] {
        assert_eq!(
            read(&b, id, "new").await,
            "new",
            "B, key {id}, after recovery"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_flushes_l1_entries_that_may_have_missed_invalidations() {
    let server = RedisServer::start(&[]);
    let ns = testkit::namespace();
    let a = cache_on(&server, &ns, true, 1).await;
    assert_eq!(
        read(&a, 1, "loaded before the outage").await,
        "loaded before the outage"
    );
    server.pause();
    // A miss during the outage opens A's breaker (the read itself is served).
    assert_eq!(
        read(&a, 2, "loaded during the outage").await,
        "loaded during the outage"
    );
    assert_eq!(a.redis_breaker(), Some(BreakerState::Open));
    // Meanwhile another process changed key 1 and could not tell anyone.
    server.resume();
    until("breaker closes", || {
        a.redis_breaker() == Some(BreakerState::Closed)
    })
    .await;
    // The recovery flushed A's L1 (the replay task runs just after the
    // breaker closes): key 1 is read from Redis or reloaded, not from L1.
    let items = a.family::<u64, String>("item").unwrap();
    bounded("L1 flushed", async {
        while a.l1_usage().await.entries > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let l1_hits = items.stats().hits_l1;
    read(&a, 1, "reloaded").await;
    assert_eq!(items.stats().hits_l1, l1_hits, "not an L1 hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_behind_write_is_refused_not_lost_while_redis_is_down() {
    let mut server = RedisServer::start(&[]);
    let ns = testkit::namespace();
    let cache = Cache::builder()
        .namespace(&ns)
        .redis_url(server.url())
        .redis_timeout(OP_TIMEOUT)
        .family(
            Policy::new("note", "note:{id}")
                .ttl(Duration::from_secs(60))
                .strategy(larder::Strategy::WriteBehind),
        )
        .build()
        .await
        .unwrap();
    let notes = cache.family::<u64, String>("note").unwrap();
    server.kill();
    let started = Instant::now();
    let result = notes.write_behind(&1, "unsaved".into()).await;
    assert!(
        matches!(result, Err(larder::Error::Redis { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused quickly: {:?}",
        started.elapsed()
    );
}
