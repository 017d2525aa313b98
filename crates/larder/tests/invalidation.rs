//! Invalidation across processes: the bus, tags, patterns.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use larder::key::Any;
use larder::{Cache, Family, Policy};
use redis::AsyncCommands;
use support::{Tiers, bounded, cache, cache_in, raw};

const SYNC: Duration = Duration::from_secs(10);

fn policy(name: &str, key: &str) -> Policy {
    Policy::new(name, key).ttl(Duration::from_secs(300))
}

/// Reads `key`, counting loader calls in `loads`; the loader answers `fresh`.
async fn read<K: larder::key::KeyParts + 'static>(
    family: &Family<K, String>,
    key: &K,
    loads: &Arc<AtomicUsize>,
    fresh: &str,
) -> String {
    let (loads, fresh) = (Arc::clone(loads), fresh.to_string());
    family
        .get_or_load(key, move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(Some(fresh))
        })
        .await
        .unwrap()
        .map(|v| (*v).clone())
        .unwrap_or_default()
}

/// The ids of the bus listeners' connections of `cache`'s namespace peers.
async fn kill_bus_connections(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    let ids: Vec<String> = list
        .lines()
        .filter(|l| l.contains(" name=larder-bus:"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("id="))
                .map(str::to_string)
        })
        .collect();
    for id in &ids {
        let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(conn)
            .await;
    }
    ids.len()
}

#[tokio::test]
async fn a_write_in_one_process_drops_the_l1_copy_in_another() {
    let policies = [policy("item", "item:{id}")];
    let (a, ns) = cache(Tiers::L1Redis, &policies).await;
    let b = cache_in(&ns, Tiers::L1Redis, &policies).await;
    let (items_a, items_b) = (
        a.family::<u64, String>("item").unwrap(),
        b.family::<u64, String>("item").unwrap(),
    );
    let loads = Arc::new(AtomicUsize::new(0));
    for id in [1, 2] {
        read(&items_b, &id, &loads, "v1").await;
        assert_eq!(read(&items_b, &id, &loads, "?").await, "v1");
    }
    assert_eq!(items_b.stats().hits_l1, 2, "b serves both from its L1");

    items_a.set(&1, "v2".into()).await.unwrap();
    items_a.invalidate(&2).await.unwrap();
    assert!(b.sync_invalidations(SYNC).await.unwrap());
    assert_eq!(
        read(&items_b, &1, &loads, "?").await,
        "v2",
        "the written value, from Redis"
    );
    assert_eq!(
        read(&items_b, &2, &loads, "v3").await,
        "v3",
        "invalidated: loaded again"
    );
    assert_eq!(b.bus_stats().flushes, 0);
    assert!(b.bus_stats().applied >= 2);
}

#[tokio::test]
async fn invalidations_published_while_the_bus_is_down_are_not_lost() {
    // A private server, so that killing bus connections touches only ours.
    let server = testkit::RedisServer::start(&[]);
    let ns = testkit::namespace();
    let build = || async {
        Cache::builder()
            .namespace(&ns)
            .redis_url(server.url())
            .family(policy("item", "item:{id}"))
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    let (items_a, items_b) = (
        a.family::<u64, String>("item").unwrap(),
        b.family::<u64, String>("item").unwrap(),
    );
    let loads = Arc::new(AtomicUsize::new(0));
    let mut conn = server.connect().await;
    for round in 0..5u64 {
        let ids: Vec<u64> = (0..50).map(|i| round * 100 + i).collect();
        for id in &ids {
            read(&items_b, id, &loads, "old").await;
        }
        assert!(b.sync_invalidations(SYNC).await.unwrap());
        assert!(kill_bus_connections(&mut conn).await >= 1);
        // Published while b's listener is (very likely) reconnecting.
        for id in &ids {
            items_a.set(id, "new".into()).await.unwrap();
        }
        assert!(
            b.sync_invalidations(SYNC).await.unwrap(),
            "round {round}: b caught up"
        );
        for id in &ids {
            assert_eq!(
                read(&items_b, id, &loads, "?").await,
                "new",
                "round {round}: id {id} served stale"
            );
        }
    }
    assert_eq!(
        b.bus_stats().flushes,
        0,
        "replayed from the stream, not flushed"
    );
}

#[tokio::test]
async fn invalidations_trimmed_away_while_disconnected_flush_l1() {
    let server = testkit::RedisServer::start(&[]);
    let ns = testkit::namespace();
    let build = || async {
        Cache::builder()
            .namespace(&ns)
            .redis_url(server.url())
            .family(policy("item", "item:{id}"))
            .build()
            .await
            .unwrap()
    };
    let (a, b) = (build().await, build().await);
    let (items_a, items_b) = (
        a.family::<u64, String>("item").unwrap(),
        b.family::<u64, String>("item").unwrap(),
    );
    let loads = Arc::new(AtomicUsize::new(0));
    read(&items_b, &1, &loads, "old").await;
    let mut conn = server.connect().await;
    assert!(kill_bus_connections(&mut conn).await >= 1);
    // The invalidation, and then its removal from the stream (as a flood of
    // invalidations past `bus_max_len` would), in one atomic step.
    let stream = format!("{ns}:bus");
    let _: () = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg(items_a.key(&1).unwrap())
        .arg("not a larder value: the next read reloads")
        .ignore()
        .cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("p")
        .arg("someone")
        .arg("k")
        .arg(items_a.key(&1).unwrap())
        .ignore()
        .cmd("XTRIM")
        .arg(&stream)
        .arg("MAXLEN")
        .arg(0)
        .ignore()
        .query_async(&mut conn)
        .await
        .unwrap();
    // A later invalidation that does survive, to wait on.
    items_a.invalidate(&2).await.unwrap();
    assert!(b.sync_invalidations(SYNC).await.unwrap());
    assert_eq!(
        b.bus_stats().flushes,
        1,
        "the lost invalidation was detected"
    );
    assert_eq!(
        read(&items_b, &1, &loads, "reloaded").await,
        "reloaded",
        "not served stale"
    );
}

#[tokio::test]
async fn a_different_redis_server_flushes_l1() {
    let mut server = testkit::RedisServer::start(&[]);
    let ns = testkit::namespace();
    let url = server.url();
    let build = |url: String| {
        let ns = ns.clone();
        async move {
            Cache::builder()
                .namespace(&ns)
                .redis_url(url)
                .redis_timeout(Duration::from_secs(1))
                .family(policy("item", "item:{id}"))
                .build()
                .await
                .unwrap()
        }
    };
    let b = build(url.clone()).await;
    let items_b = b.family::<u64, String>("item").unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    read(&items_b, &1, &loads, "before restart").await;
    assert!(b.sync_invalidations(SYNC).await.unwrap());
    server.restart();
    // A writer on the new, empty server: b must not trust what it held.
    let a = build(url).await;
    let items_a = a.family::<u64, String>("item").unwrap();
    bounded("writer reconnects", async {
        while items_a.set(&1, "after restart".into()).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(b.sync_invalidations(SYNC).await.unwrap());
    assert!(b.bus_stats().flushes >= 1);
    assert_eq!(read(&items_b, &1, &loads, "?").await, "after restart");
}

#[tokio::test]
async fn a_tag_invalidation_reaches_every_family_and_process_in_one_round_trip() {
    let server = testkit::RedisServer::start(&[]);
    let ns = testkit::namespace();
    let policies = [
        policy("portfolio", "portfolio:{user_id}").tag("user:{user_id}"),
        policy("watchlist", "watchlist:{user_id}").tag("user:{user_id}"),
        policy("orders", "orders:{user_id}:{day}").tag("user:{user_id}"),
    ];
    let build = |l1: bool| {
        let (ns, url, policies) = (ns.clone(), server.url(), policies.clone());
        async move {
            let mut b = Cache::builder().namespace(&ns).redis_url(url);
            if !l1 {
                b = b.l1_max_bytes(0);
            }
            for p in policies {
                b = b.family(p);
            }
            b.build().await.unwrap()
        }
    };
    let (a, b, c) = (build(true).await, build(true).await, build(false).await);
    let loads = Arc::new(AtomicUsize::new(0));
    let fams = |cache: &Cache| {
        (
            cache.family::<u64, String>("portfolio").unwrap(),
            cache.family::<u64, String>("watchlist").unwrap(),
            cache.family::<(u64, String), String>("orders").unwrap(),
        )
    };
    let (pb, wb, ob) = fams(&b);
    let (pc, _, _) = fams(&c);
    for user in [42u64, 43] {
        read(&pb, &user, &loads, "old").await;
        read(&wb, &user, &loads, "old").await;
        read(&ob, &(user, "monday".to_string()), &loads, "old").await;
    }
    assert_eq!(loads.load(Ordering::SeqCst), 6);
    let mut conn = server.connect().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();

    a.invalidate_tag("user:{user_id}", &42u64).await.unwrap();

    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    for cmd in ["scan", "keys", "del", "unlink"] {
        assert!(
            !info.contains(&format!("cmdstat_{cmd}:")),
            "no {cmd} for a tag:\n{info}"
        );
    }
    assert!(info.contains("cmdstat_incr:calls=1,"), "{info}");
    assert!(b.sync_invalidations(SYNC).await.unwrap());
    assert_eq!(read(&pb, &42, &loads, "new").await, "new");
    assert_eq!(read(&wb, &42, &loads, "new").await, "new");
    assert_eq!(
        read(&ob, &(42, "monday".into()), &loads, "new").await,
        "new"
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        9,
        "user 42's three entries reloaded"
    );
    assert_eq!(
        read(&pb, &43, &loads, "?").await,
        "old",
        "user 43 untouched"
    );
    // A process without L1 sees the tag's new version in Redis.
    assert_eq!(read(&pc, &42, &loads, "new").await, "new");
    assert_eq!(read(&pc, &43, &loads, "?").await, "old");
}

#[tokio::test]
async fn a_user_id_of_star_invalidates_only_that_users_keys() {
    let policies = [
        policy("order", "user:{user_id}:order:{order_id}"),
        policy("line", "user:{user_id}:order:{order_id}:line:{n}"),
    ];
    let (a, ns) = cache(Tiers::L1Redis, &policies).await;
    let b = cache_in(&ns, Tiers::L1Redis, &policies).await;
    let orders_a = a.family::<(String, u64), String>("order").unwrap();
    let orders_b = b.family::<(String, u64), String>("order").unwrap();
    let lines_a = a.family::<(String, u64, u64), String>("line").unwrap();
    let users = ["*", "42", "4", "*x", "a:b", "[*]", "%2A"];
    let loads = Arc::new(AtomicUsize::new(0));
    for user in users {
        for order in 0..3u64 {
            orders_a
                .set(&(user.to_string(), order), format!("{user}/{order}"))
                .await
                .unwrap();
            lines_a
                .set(&(user.to_string(), order, 1), "line".into())
                .await
                .unwrap();
            read(&orders_b, &(user.to_string(), order), &loads, "?").await;
        }
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        0,
        "b read them all from Redis"
    );

    let deleted = orders_a
        .invalidate_pattern(&("*".to_string(), Any))
        .await
        .unwrap();
    assert_eq!(deleted, 3, "user `*`'s three orders, nothing else");
    assert!(b.sync_invalidations(SYNC).await.unwrap());
    let mut conn = raw().await;
    for user in users {
        for order in 0..3u64 {
            let key = orders_a.key(&(user.to_string(), order)).unwrap();
            let exists: bool = conn.exists(&key).await.unwrap();
            assert_eq!(
                exists,
                user != "*",
                "order {order} of user {user:?} in Redis"
            );
            let line: bool = conn
                .exists(lines_a.key(&(user.to_string(), order, 1)).unwrap())
                .await
                .unwrap();
            assert!(line, "another family's keys are never matched");
            let seen = read(&orders_b, &(user.to_string(), order), &loads, "reloaded").await;
            let want = if user == "*" {
                "reloaded".to_string()
            } else {
                format!("{user}/{order}")
            };
            assert_eq!(seen, want, "b's L1 for user {user:?}");
        }
    }
    assert_eq!(loads.load(Ordering::SeqCst), 3);
    assert!(
        matches!(
            orders_a.invalidate_pattern(&Any).await,
            Err(larder::Error::Pattern { .. })
        ),
        "arity is checked"
    );
}
