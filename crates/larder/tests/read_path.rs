//! The read path against real Redis: tiers, negative entries, TTLs, jitter,
//! batch reads, bad data, writes and invalidation.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder::{Cache, Codec, Error, Policy};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use support::{ALL_TIERS, Tiers, bounded, cache, cache_in, item_policy, raw};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: u64,
    name: String,
}

fn item(id: u64) -> Item {
    Item {
        id,
        name: format!("item {id}"),
    }
}

/// A loader that counts its calls.
fn counting(
    calls: &Arc<AtomicUsize>,
    value: Option<Item>,
) -> impl FnOnce() -> std::future::Ready<Result<Option<Item>, std::io::Error>> + Send + 'static {
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(value))
    }
}

#[tokio::test]
async fn miss_loads_once_then_hits_in_every_tier_setup() {
    for tiers in ALL_TIERS {
        let (cache, _) = cache(tiers, &[item_policy()]).await;
        let items = cache.family::<u64, Item>("item").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let got = items
                .get_or_load(&1, counting(&calls, Some(item(1))))
                .await
                .unwrap();
            assert_eq!(got.as_deref(), Some(&item(1)), "{tiers:?}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "{tiers:?}: loader runs once"
        );
        let s = items.stats();
        assert_eq!(s.misses, 1, "{tiers:?}");
        assert_eq!(s.loader_calls, 1, "{tiers:?}");
        match tiers {
            Tiers::Redis => assert_eq!((s.hits_l1, s.hits_l2), (0, 2), "{tiers:?}"),
            _ => assert_eq!((s.hits_l1, s.hits_l2), (2, 0), "{tiers:?}"),
        }
        assert_eq!(s.hit_rate(), Some(2.0 / 3.0));
    }
}

#[tokio::test]
async fn another_process_reads_the_value_from_redis() {
    let (a, ns) = cache(Tiers::L1Redis, &[item_policy()]).await;
    let b = cache_in(&ns, Tiers::L1Redis, &[item_policy()]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let items_a = a.family::<u64, Item>("item").unwrap();
    let items_b = b.family::<u64, Item>("item").unwrap();
    items_a
        .get_or_load(&7, counting(&calls, Some(item(7))))
        .await
        .unwrap();
    let got = items_b
        .get_or_load(&7, counting(&calls, Some(item(999))))
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&item(7)));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(items_b.stats().hits_l2, 1);
    // Now in b's L1 too.
    items_b
        .get_or_load(&7, counting(&calls, None))
        .await
        .unwrap();
    assert_eq!(items_b.stats().hits_l1, 1);
}

#[tokio::test]
async fn not_found_is_cached_as_a_negative_entry_in_both_tiers() {
    let policy = item_policy().negative_ttl(Duration::from_secs(5));
    let (a, ns) = cache(Tiers::L1Redis, std::slice::from_ref(&policy)).await;
    let b = cache_in(&ns, Tiers::L1Redis, &[policy]).await;
    let items_a = a.family::<u64, Item>("item").unwrap();
    let items_b = b.family::<u64, Item>("item").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        items_a
            .get_or_load(&404, counting(&calls, None))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        items_a
            .get_or_load(&404, counting(&calls, None))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        items_b
            .get_or_load(&404, counting(&calls, None))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the flood of unknown ids stops at the cache"
    );
    assert_eq!(items_a.stats().negative_hits, 1);
    assert_eq!(items_b.stats().negative_hits, 1);
    let pttl: i64 = raw().await.pttl(items_a.key(&404).unwrap()).await.unwrap();
    assert!(
        pttl > 0 && pttl <= 5000,
        "negative entry has its own short TTL, got {pttl} ms"
    );
}

#[tokio::test]
async fn an_undecodable_value_is_a_miss_that_is_reloaded_and_repaired() {
    let (a, ns) = cache(Tiers::L1Redis, &[item_policy()]).await;
    let items = a.family::<u64, Item>("item").unwrap();
    let key = items.key(&3).unwrap();
    let mut conn = raw().await;
    for garbage in [&b"{\"id\":3}"[..], b"", b"\x10\x00", &[0x1f; 40]] {
        let _: () = conn.set_ex(&key, garbage, 60).await.unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let got = items
            .get_or_load(&3, counting(&calls, Some(item(3))))
            .await
            .unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&item(3)),
            "garbage {garbage:?} is a miss"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Repaired: a fresh process reads the reloaded value from Redis.
        let b = cache_in(&ns, Tiers::Redis, &[item_policy()]).await;
        let items_b = b.family::<u64, Item>("item").unwrap();
        let got = items_b
            .get_or_load(&3, counting(&calls, None))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&item(3)));
        assert_eq!(items_b.stats().hits_l2, 1);
        items.invalidate(&3).await.unwrap();
    }
    assert_eq!(items.stats().decode_errors, 4);
}

#[tokio::test]
async fn entries_expire_from_both_tiers() {
    let policy = Policy::new("item", "item:{id}").ttl(Duration::from_millis(300));
    let (cache, _) = cache(Tiers::L1Redis, &[policy]).await;
    let items = cache.family::<u64, Item>("item").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    items
        .get_or_load(&1, counting(&calls, Some(item(1))))
        .await
        .unwrap();
    let mut conn = raw().await;
    let key = items.key(&1).unwrap();
    let pttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(pttl > 0 && pttl <= 300, "redis ttl is the family's: {pttl}");
    items.get_or_load(&1, counting(&calls, None)).await.unwrap();
    assert_eq!(items.stats().hits_l1, 1);
    // Expiry is what is under test here, so the test lets time pass.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let exists: bool = conn.exists(&key).await.unwrap();
    assert!(!exists, "expired from redis");
    items
        .get_or_load(&1, counting(&calls, Some(item(1))))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "expired from L1 too: loaded again"
    );
}

#[tokio::test]
async fn ttl_jitter_spreads_expiries_within_bounds() {
    let policy = Policy::new("item", "item:{id}")
        .ttl(Duration::from_secs(100))
        .jitter_fraction(0.5);
    let (cache, _) = cache(Tiers::Redis, &[policy]).await;
    let items = cache.family::<u64, Item>("item").unwrap();
    let ids: Vec<u64> = (0..300).collect();
    items
        .get_many(&ids, |missing: Vec<u64>| async move {
            Ok::<_, std::io::Error>(missing.into_iter().map(|id| (id, item(id))).collect())
        })
        .await
        .unwrap();
    let mut conn = raw().await;
    let mut ttls = Vec::new();
    for id in &ids {
        let pttl: i64 = conn.pttl(items.key(id).unwrap()).await.unwrap();
        ttls.push(pttl);
    }
    let (min, max) = (ttls.iter().min().unwrap(), ttls.iter().max().unwrap());
    assert!(
        *min >= 49_000,
        "no ttl below ttl - jitter (allowing 1 s of test time): {min}"
    );
    assert!(*max <= 100_000, "jitter never lengthens a ttl: {max}");
    assert!(
        max - min > 30_000,
        "ttls are spread, not equal: {min}..{max}"
    );
    // Roughly uniform: both halves of the window are used.
    let low = ttls.iter().filter(|t| **t < 75_000).count();
    assert!((60..240).contains(&low), "{low} of 300 in the lower half");
}

#[tokio::test]
async fn get_many_makes_one_redis_round_trip_and_one_loader_call() {
    // A private server, so INFO commandstats counts only this test.
    let server = testkit::RedisServer::start(&[]);
    let ns = testkit::namespace();
    let build = || async {
        Cache::builder()
            .namespace(&ns)
            .redis_url(server.url())
            .family(item_policy())
            .build()
            .await
            .unwrap()
    };
    let warm = build().await;
    let warm_items = warm.family::<u64, Item>("item").unwrap();
    for id in (0..20).step_by(2) {
        warm_items.set(&id, item(id)).await.unwrap();
    }
    let mut conn = server.connect().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();

    let cache = build().await;
    let items = cache.family::<u64, Item>("item").unwrap();
    let ids: Vec<u64> = (0..20).chain([4, 5]).collect(); // duplicates too
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let asked_in = Arc::clone(&asked);
    let got = items
        .get_many(&ids, move |missing: Vec<u64>| async move {
            asked_in.lock().unwrap().push(missing.clone());
            Ok::<_, std::io::Error>(
                missing
                    .into_iter()
                    .filter(|id| *id != 7)
                    .map(|id| (id, item(id)))
                    .collect(),
            )
        })
        .await
        .unwrap();
    for (id, value) in ids.iter().zip(&got) {
        let want = (*id != 7).then(|| item(*id));
        assert_eq!(value.as_deref(), want.as_ref(), "id {id}");
    }
    let asked = asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "one loader call");
    let mut missing = asked[0].clone();
    missing.sort();
    assert_eq!(
        missing,
        (1..20).step_by(2).collect::<Vec<u64>>(),
        "only the keys Redis lacked"
    );

    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = |cmd: &str| {
        info.lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|r| r.split(',').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("mget"), 1, "one MGET for all keys:\n{info}");
    // Each loaded value takes its lease (the lease script, one pipelined
    // round trip for all) and is stored by the lease-guarded fill script
    // (whose GETs of the lease and of the value Redis counts too), all fills
    // in one pipeline.
    assert_eq!(
        calls("evalsha"),
        2 * 10,
        "the 10 loaded values (9 + 1 negative): leased, stored:\n{info}"
    );
    assert_eq!(
        calls("getrange"),
        10,
        "each lease checks the value is still absent:\n{info}"
    );
    assert_eq!(
        calls("get"),
        2 * 10,
        "every GET is the fill script's own, none per key:\n{info}"
    );

    // All in L1 now: no more Redis reads.
    items
        .get_many(&ids, |_: Vec<u64>| async {
            Ok::<HashMap<u64, Item>, std::io::Error>(HashMap::new())
        })
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(info.contains("cmdstat_mget:calls=1,"), "{info}");
}

#[tokio::test]
async fn set_and_invalidate_reach_both_tiers_and_other_processes() {
    for tiers in ALL_TIERS {
        let (a, ns) = cache(tiers, &[item_policy()]).await;
        let items = a.family::<u64, Item>("item").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        items.set(&5, item(5)).await.unwrap();
        let got = items.get_or_load(&5, counting(&calls, None)).await.unwrap();
        assert_eq!(got.as_deref(), Some(&item(5)), "{tiers:?}");
        if tiers != Tiers::L1 {
            let b = cache_in(&ns, Tiers::Redis, &[item_policy()]).await;
            let got = b
                .family::<u64, Item>("item")
                .unwrap()
                .get_or_load(&5, counting(&calls, None))
                .await
                .unwrap();
            assert_eq!(
                got.as_deref(),
                Some(&item(5)),
                "{tiers:?}: set reached redis"
            );
        }
        items.invalidate(&5).await.unwrap();
        if tiers != Tiers::L1 {
            let exists: bool = raw().await.exists(items.key(&5).unwrap()).await.unwrap();
            assert!(!exists, "{tiers:?}: gone from redis");
        }
        let got = items
            .get_or_load(&5, counting(&calls, Some(item(6))))
            .await
            .unwrap();
        assert_eq!(
            got.as_deref(),
            Some(&item(6)),
            "{tiers:?}: reloaded after invalidate"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{tiers:?}");
    }
}

#[tokio::test]
async fn oversize_values_are_refused_on_set_and_served_uncached_on_load() {
    let policy = item_policy().max_value_size(100);
    let (cache, _) = cache(Tiers::L1Redis, &[policy]).await;
    let items = cache.family::<u64, Item>("item").unwrap();
    let big = Item {
        id: 1,
        name: "x".repeat(500),
    };
    match items.set(&1, big.clone()).await {
        Err(Error::ValueTooLarge { size, max: 100, .. }) => assert!(size > 500),
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..2 {
        let got = items
            .get_or_load(&1, counting(&calls, Some(big.clone())))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&big));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not cached");
    assert_eq!(items.stats().oversize, 3);
}

#[tokio::test]
async fn large_values_are_compressed_and_json_is_available() {
    let msgpack = item_policy();
    let json = Policy::new("json_item", "json_item:{id}")
        .ttl(Duration::from_secs(60))
        .codec(Codec::Json)
        .compress_above(usize::MAX);
    let (cache, ns) = cache(Tiers::L1Redis, &[msgpack.clone(), json.clone()]).await;
    let big = Item {
        id: 1,
        name: "abc".repeat(2000),
    };
    let items = cache.family::<u64, Item>("item").unwrap();
    let json_items = cache.family::<u64, Item>("json_item").unwrap();
    items.set(&1, big.clone()).await.unwrap();
    json_items.set(&1, big.clone()).await.unwrap();
    let mut conn = raw().await;
    let packed: Vec<u8> = conn.get(items.key(&1).unwrap()).await.unwrap();
    assert!(
        packed.len() < 1000,
        "6 KB of repetition compresses: {} bytes",
        packed.len()
    );
    let plain: Vec<u8> = conn.get(json_items.key(&1).unwrap()).await.unwrap();
    let text = String::from_utf8_lossy(&plain[22..]); // after the 22-byte header
    assert!(
        text.starts_with("{\"id\":1,"),
        "JSON payload after the header: {text:.40}"
    );
    // And both read back in another process.
    let b = cache_in(&ns, Tiers::Redis, &[msgpack, json]).await;
    for name in ["item", "json_item"] {
        let fam = b.family::<u64, Item>(name).unwrap();
        let got = fam
            .get_or_load(&1, || async { Ok::<_, std::io::Error>(None) })
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&big), "{name}");
    }
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_the_loader_quickly() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = Cache::builder()
        .namespace(testkit::namespace())
        .redis_url(format!("redis://127.0.0.1:{port}"))
        .redis_timeout(Duration::from_millis(100))
        .l1_max_bytes(0)
        .family(item_policy())
        .build()
        .await
        .expect("an unreachable redis does not fail the build");
    let items = cache.family::<u64, Item>("item").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    for id in 0..5 {
        let got = bounded(
            "read with redis down",
            items.get_or_load(&id, counting(&calls, Some(item(id)))),
        )
        .await
        .unwrap();
        assert_eq!(got.as_deref(), Some(&item(id)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert!(items.stats().redis_errors >= 5);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "each read waits at most for the redis timeout: {:?}",
        start.elapsed()
    );
    items
        .invalidate(&1)
        .await
        .expect("an invalidation redis cannot take is deferred, not an error");
    assert_eq!(
        cache.deferred_invalidations(),
        1,
        "and waits for redis to answer"
    );
}

#[tokio::test]
async fn a_disabled_cache_always_calls_the_loader() {
    let cache = Cache::builder()
        .enabled(false)
        .family(item_policy())
        .build()
        .await
        .unwrap();
    let items = cache.family::<u64, Item>("item").unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        items
            .get_or_load(&1, counting(&calls, Some(item(1))))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(items.stats().misses, 3);
}

#[tokio::test]
async fn configuration_mistakes_are_errors_at_build_or_open() {
    let no_ttl = Cache::builder()
        .family(Policy::new("p", "p:{id}"))
        .build()
        .await;
    assert!(
        matches!(no_ttl, Err(Error::Config { .. })),
        "a family without ttl is an error"
    );

    let overlap = Cache::builder()
        .family(Policy::new("a", "user:{id}").ttl(Duration::from_secs(1)))
        .family(Policy::new("b", "user:settings").ttl(Duration::from_secs(1)))
        .build()
        .await;
    assert!(
        matches!(overlap, Err(Error::Config { .. })),
        "colliding templates are an error"
    );

    let bad_url = Cache::builder().redis_url("http://nope").build().await;
    assert!(matches!(bad_url, Err(Error::RedisUrl(_))));
    let secret = Cache::builder()
        .redis_url("redis://user:hunter2@[::1:6379")
        .build()
        .await;
    match secret {
        Err(e) => assert!(
            !e.to_string().contains("hunter2"),
            "no password in errors: {e}"
        ),
        Ok(_) => panic!("malformed url accepted"),
    }

    let cache = Cache::builder()
        .family(item_policy())
        .build()
        .await
        .unwrap();
    assert!(matches!(
        cache.family::<u64, Item>("nope"),
        Err(Error::UnknownFamily(_))
    ));
    assert!(
        matches!(
            cache.family::<(u64, u64), Item>("item"),
            Err(Error::Config { .. })
        ),
        "arity is checked"
    );
    cache.family::<u64, Item>("item").unwrap();
    assert!(matches!(
        cache.family::<u64, String>("item"),
        Err(Error::FamilyTypeMismatch { .. })
    ));
    assert!(
        cache.family::<u64, Item>("item").is_ok(),
        "reopening with the same types is fine"
    );
}

#[tokio::test]
async fn hostile_keys_stay_in_their_lane_and_long_ones_are_refused() {
    let policy = Policy::new("user", "user:{name}").ttl(Duration::from_secs(60));
    let (cache, _) = cache(Tiers::L1Redis, &[policy]).await;
    let users = cache.family::<String, String>("user").unwrap();
    let names = ["*", "a:b", "x}", "{x}", "a b", "%2A", "", "ü"];
    for name in names {
        let name = name.to_string();
        let v = format!("value of {name}");
        users.set(&name, v).await.unwrap();
    }
    for name in names {
        let name = name.to_string();
        let got = users
            .get_or_load(&name, || async { Ok::<_, std::io::Error>(None) })
            .await
            .unwrap();
        assert_eq!(
            got.as_deref().map(String::as_str),
            Some(format!("value of {name}").as_str())
        );
        let key = users.key(&name).unwrap();
        assert!(!key.contains(['*', '?', '[', ']', '\\']), "{key}");
    }
    let long = "x".repeat(2000);
    assert!(matches!(users.key(&long), Err(Error::KeyTooLong { .. })));
    assert!(matches!(
        users.set(&long, "v".into()).await,
        Err(Error::KeyTooLong { .. })
    ));
}

#[tokio::test]
async fn password_and_acl_users_authenticate_and_never_leak() {
    let server = testkit::RedisServer::start(&[
        "--requirepass",
        "topsecret",
        "--user",
        "alice",
        "on",
        ">wonderland",
        "~*",
        "&*",
        "+@all",
    ]);
    let port = server.port();
    let build = |url: String, ns: String| async move {
        Cache::builder()
            .namespace(ns)
            .redis_url(url)
            .redis_timeout(Duration::from_secs(1))
            .l1_max_bytes(0)
            .family(item_policy())
            .build()
            .await
            .unwrap()
    };
    for url in [
        format!("redis://:topsecret@127.0.0.1:{port}"),
        format!("redis://alice:wonderland@127.0.0.1:{port}"),
    ] {
        let ns = testkit::namespace();
        let writer = build(url.clone(), ns.clone()).await;
        writer
            .family::<u64, Item>("item")
            .unwrap()
            .set(&1, item(1))
            .await
            .unwrap();
        let reader = build(url, ns).await;
        let items = reader.family::<u64, Item>("item").unwrap();
        let got = items
            .get_or_load(&1, || async { Ok::<_, std::io::Error>(None) })
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some(&item(1)));
        assert_eq!((items.stats().hits_l2, items.stats().redis_errors), (1, 0));
    }
    // A wrong password: the cache still serves (from the loader) and says why
    // in its counters, never with the secret in an error or debug output.
    let bad_url = format!("redis://alice:not-the-password@127.0.0.1:{port}");
    let builder = Cache::builder().redis_url(&bad_url);
    assert!(!format!("{builder:?}").contains("not-the-password"));
    let cache = build(bad_url.clone(), testkit::namespace()).await;
    let items = cache.family::<u64, Item>("item").unwrap();
    let got = items
        .get_or_load(&2, || async { Ok::<_, std::io::Error>(Some(item(2))) })
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some(&item(2)));
    assert!(items.stats().redis_errors > 0);
    items.invalidate(&2).await.expect("deferred, not an error");
    assert_eq!(
        cache.deferred_invalidations(),
        1,
        "a wrong password cannot unlink"
    );
    // A write-behind write has nowhere durable to go: its error is the one
    // that reaches the caller, and it must not carry the secret either.
    let queued = Cache::builder()
        .namespace(testkit::namespace())
        .redis_url(&bad_url)
        .redis_timeout(Duration::from_secs(1))
        .family(item_policy().strategy(larder::Strategy::WriteBehind))
        .build()
        .await
        .unwrap();
    match queued
        .family::<u64, Item>("item")
        .unwrap()
        .write_behind(&3, item(3))
        .await
    {
        Err(e) => {
            assert!(!e.to_string().contains("not-the-password"), "{e}");
            assert!(!format!("{e:?}").contains("not-the-password"), "{e:?}");
        }
        Ok(()) => panic!("a wrong password cannot enqueue"),
    }
}
