//! What only a Redis Cluster can do to a cache: one master sick while the
//! others are fine, a master killed and replaced by its replica, slots moved
//! while the cache serves. Each test runs a private cluster (testkit's
//! `RedisCluster`, real `redis-server` processes); the rest of the library's
//! tests run on a cluster too (`./scripts/test` runs them with
//! `LARDER_TEST_REDIS_CLUSTER_URLS`).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder::write_behind::Write;
use larder::{BreakerSettings, BreakerState, Cache, Family, Policy, Strategy};
use sqlx::PgPool;
use support::bounded;
use testkit::RedisCluster;

const OP_TIMEOUT: Duration = Duration::from_millis(100);

fn item_policy() -> Policy {
    Policy::new("item", "item:{id}").ttl(Duration::from_secs(60))
}

async fn cache_on(cluster: &RedisCluster, ns: &str, l1: bool, policies: &[Policy]) -> Cache {
    let mut b = Cache::builder()
        .namespace(ns)
        .redis_cluster(cluster.seed_urls())
        .redis_timeout(OP_TIMEOUT)
        .redis_breaker(BreakerSettings {
            failure_threshold: 3,
            open_for: Duration::from_millis(200),
            max_open_for: Duration::from_millis(500),
        });
    if !l1 {
        b = b.l1_max_bytes(0);
    }
    for p in policies {
        b = b.family(p.clone());
    }
    b.build().await.expect("cache on the cluster builds")
}

/// The "database": rows by id, and how many times each was loaded.
#[derive(Default)]
struct Rows {
    rows: Mutex<HashMap<u64, String>>,
    loads: AtomicU64,
}

impl Rows {
    fn set(&self, id: u64, v: &str) {
        self.rows.lock().unwrap().insert(id, v.to_string());
    }
}

async fn read(items: &Family<u64, String>, rows: &Arc<Rows>, id: u64) -> Option<String> {
    let rows = Arc::clone(rows);
    items
        .get_or_load(&id, move || async move {
            rows.loads.fetch_add(1, Ordering::Relaxed);
            let row = rows.rows.lock().unwrap().get(&id).cloned();
            Ok::<_, std::io::Error>(row)
        })
        .await
        .expect("reads never fail while the cluster is sick")
        .map(|v| (*v).clone())
}

/// Polls `done` (the state of other processes: nothing to await) for at
/// most `within`.
async fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sick_master_does_not_send_the_other_masters_keys_to_the_database() {
    let cluster = RedisCluster::start(3, 0);
    let ns = testkit::namespace();
    // Redis only (no L1): every read asks Redis.
    let cache = cache_on(&cluster, &ns, false, &[item_policy()]).await;
    let items = cache.family::<u64, String>("item").unwrap();
    let rows = Arc::new(Rows::default());
    let ids: Vec<u64> = (0..90).collect();
    for &id in &ids {
        rows.set(id, &format!("row {id}"));
        assert!(read(&items, &rows, id).await.is_some());
    }
    let sick = 0;
    let on_sick: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| cluster.master_of(&items.key(id).unwrap(), 1) == sick)
        .collect();
    assert!(
        !on_sick.is_empty() && on_sick.len() < ids.len(),
        "keys spread over the masters"
    );

    cluster.node(sick).pause();
    // Rounds of batch reads: the sick master's group times out until its
    // breaker opens; the others answer every time.
    let before = items.stats();
    let loaded = Arc::new(Mutex::new(Vec::<u64>::new()));
    for _ in 0..8 {
        let loaded = Arc::clone(&loaded);
        let rows = Arc::clone(&rows);
        let got = bounded(
            "a batch read with one master paused",
            items.get_many(&ids, move |missing: Vec<u64>| async move {
                loaded.lock().unwrap().extend(missing.iter().copied());
                let rows = rows.rows.lock().unwrap();
                Ok::<_, std::io::Error>(
                    missing
                        .into_iter()
                        .filter_map(|id| rows.get(&id).map(|v| (id, v.clone())))
                        .collect(),
                )
            }),
        )
        .await
        .expect("batch reads succeed");
        assert!(got.iter().all(Option::is_some));
    }
    let after = items.stats();
    let loaded: Vec<u64> = loaded.lock().unwrap().clone();
    assert!(
        loaded.iter().all(|id| on_sick.contains(id)),
        "only the paused master's keys reach the loader"
    );
    assert_eq!(
        after.hits_l2 - before.hits_l2,
        8 * (ids.len() - on_sick.len()) as u64,
        "every key on a healthy master was a Redis hit in every round"
    );
    assert_eq!(cache.redis_breaker(), Some(BreakerState::Open));

    // A single read of a healthy master's key is a Redis hit, at once.
    let healthy = ids
        .iter()
        .copied()
        .find(|id| !on_sick.contains(id))
        .unwrap();
    let started = Instant::now();
    let hits = items.stats().hits_l2;
    assert!(read(&items, &rows, healthy).await.is_some());
    assert_eq!(items.stats().hits_l2, hits + 1);
    assert!(
        started.elapsed() < OP_TIMEOUT,
        "no wait on the healthy master"
    );

    cluster.node(sick).resume();
    until(
        "the sick master's breaker closes again",
        Duration::from_secs(10),
        || cache.redis_breaker() == Some(BreakerState::Closed),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_master_is_replaced_and_no_read_fails_meanwhile() {
    let mut cluster = RedisCluster::start(3, 1);
    let ns = testkit::namespace();
    let cache = cache_on(&cluster, &ns, false, &[item_policy()]).await;
    let items = cache.family::<u64, String>("item").unwrap();
    let rows = Arc::new(Rows::default());
    for id in 0..60 {
        rows.set(id, &format!("row {id}"));
        read(&items, &rows, id).await;
    }
    let victim = cluster.master_of(&items.key(&0).unwrap(), 1);
    let replica = cluster
        .replica_of(victim)
        .expect("every master has a replica");

    // Readers under load while the master dies and its replica takes over.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (items, rows, stop, worst, reads) = (
            items.clone(),
            Arc::clone(&rows),
            Arc::clone(&stop),
            Arc::clone(&worst),
            Arc::clone(&reads),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let id = i % 60;
                i += 7;
                let started = Instant::now();
                let got = read(&items, &rows, id).await;
                assert_eq!(got, Some(format!("row {id}")), "every read answers the row");
                worst.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    until("readers running", Duration::from_secs(5), || {
        reads.load(Ordering::Relaxed) > 200
    })
    .await;
    cluster.node_mut(victim).kill();
    let killed = Instant::now();
    cluster.wait_until_master(replica, Duration::from_secs(15));
    let promoted = killed.elapsed();
    // Once the replica serves, the cache uses Redis for those keys again.
    let hits = items.stats().hits_l2;
    until(
        "redis hits on the promoted replica's keys",
        Duration::from_secs(10),
        || {
            items.stats().hits_l2 > hits + 100
                && cache.redis_breaker() == Some(BreakerState::Closed)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("a reader failed");
    }
    let worst = Duration::from_millis(worst.load(Ordering::Relaxed));
    eprintln!(
        "failover: replica promoted {promoted:?} after the kill; {} reads, slowest {worst:?}",
        reads.load(Ordering::Relaxed)
    );
    assert!(
        worst < Duration::from_secs(1),
        "reads stay bounded by the Redis timeout and the breaker, not the failover ({worst:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_flushes_l1_when_its_master_fails_over() {
    let mut cluster = RedisCluster::start(3, 1);
    let ns = testkit::namespace();
    let cache = cache_on(&cluster, &ns, true, &[item_policy()]).await;
    assert!(
        cache
            .sync_invalidations(Duration::from_secs(5))
            .await
            .unwrap()
    );
    let bus = format!("{ns}:bus");
    let victim = cluster.master_of(&bus, 0);
    let replica = cluster
        .replica_of(victim)
        .expect("every master has a replica");
    let flushes = cache.bus_stats().flushes;
    cluster.node_mut(victim).kill();
    cluster.wait_until_master(replica, Duration::from_secs(15));
    // The promoted replica may lack what its master had not replicated:
    // the listener sees another server and flushes.
    until(
        "the L1 flush after the bus's master failed over",
        Duration::from_secs(15),
        || cache.bus_stats().flushes > flushes,
    )
    .await;
    assert!(
        cache
            .sync_invalidations(Duration::from_secs(10))
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slots_moved_under_load_reach_no_caller_and_invalidations_still_invalidate() {
    let cluster = RedisCluster::start(3, 0);
    let ns = testkit::namespace();
    // Two processes; A writes, both read (L1 on, so B's copies must be
    // dropped by the bus too).
    let a = cache_on(&cluster, &ns, true, &[item_policy()]).await;
    let b = cache_on(&cluster, &ns, true, &[item_policy()]).await;
    let (items_a, items_b) = (
        a.family::<u64, String>("item").unwrap(),
        b.family::<u64, String>("item").unwrap(),
    );
    let rows = Arc::new(Rows::default());
    for id in 0..40 {
        rows.set(id, "v0");
        read(&items_a, &rows, id).await;
        read(&items_b, &rows, id).await;
    }
    // Move a third of the slots from the first master to the second while
    // rows change and are invalidated.
    let mut move_slots = cluster.reshard_command(0, 1, 1800);
    let reshard = tokio::task::spawn_blocking(move || {
        let status = move_slots.status().expect("redis-cli runs");
        assert!(status.success(), "redis-cli --cluster reshard failed");
    });
    let mut round = 0u64;
    loop {
        // The last round starts after the move has ended: a fill made while
        // its slot was migrating may have been refused (the value was still
        // served), and the count below is of keys on the masters afterwards.
        let moved = reshard.is_finished();
        round += 1;
        for id in 0..40 {
            let v = format!("v{round}");
            rows.set(id, &v);
            items_a
                .invalidate(&id)
                .await
                .expect("invalidations succeed during the move");
            assert_eq!(
                read(&items_a, &rows, id).await.as_deref(),
                Some(v.as_str()),
                "A reads its write back during the move"
            );
        }
        assert!(b.sync_invalidations(Duration::from_secs(5)).await.unwrap());
        for id in 0..40 {
            assert_eq!(
                read(&items_b, &rows, id).await,
                Some(format!("v{round}")),
                "B's copy was invalidated during the move"
            );
        }
        assert!(round < 500, "the reshard did not end");
        if moved && round >= 3 {
            break;
        }
    }
    reshard.await.expect("reshard finished");
    // After the move, a pattern invalidation still reaches every key.
    let deleted = items_a.invalidate_pattern(&larder::key::Any).await.unwrap();
    assert_eq!(deleted, 40, "every key found on the masters after the move");
}

async fn database() -> (testkit::TestDatabase, PgPool) {
    let db = testkit::TestDatabase::create().await;
    let pool = PgPool::connect(db.url()).await.unwrap();
    sqlx::query("CREATE TABLE kv (k BIGINT PRIMARY KEY, v TEXT NOT NULL, version BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    (db, pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_write_behind_writes_survive_the_queues_master_failing_over() {
    let mut cluster = RedisCluster::start(3, 1);
    let (_db, pool) = database().await;
    let ns = testkit::namespace();
    let policy = Policy::new("kv", "kv:{id}")
        .ttl(Duration::from_secs(300))
        .strategy(Strategy::WriteBehind);
    let cache = Cache::builder()
        .namespace(&ns)
        .redis_cluster(cluster.seed_urls())
        .redis_timeout(Duration::from_millis(300))
        // Acknowledge only what a replica holds too.
        .write_behind_replicas(1, Duration::from_millis(200))
        .family(policy)
        .build()
        .await
        .unwrap();
    let kv = cache.family::<u64, String>("kv").unwrap();
    let stream = format!("{ns}:{{wb:kv}}");
    let victim = cluster.master_of(&stream, 0);
    let replica = cluster
        .replica_of(victim)
        .expect("every master has a replica");

    // Writes before the kill, then writes until 100 more were acknowledged
    // (which can only happen once the replica has taken over).
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut failed = 0u64;
    let mut i = 0u64;
    while i < 150 {
        let v = format!("w{i}");
        kv.write_behind(&(i % 50), v.clone())
            .await
            .expect("writes before the kill");
        acked.insert(i % 50, v);
        i += 1;
    }
    cluster.node_mut(victim).kill();
    // While the replica takes over, writes are refused, not lost: each one
    // either fails or is acknowledged by a replica.
    for _ in 0..20 {
        let v = format!("w{i}");
        match kv.write_behind(&(i % 50), v.clone()).await {
            Ok(()) => {
                acked.insert(i % 50, v);
            }
            Err(_) => failed += 1,
        }
        i += 1;
        // Paces the attempts over the failover.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.wait_until_master(replica, Duration::from_secs(15));
    // The promoted replica has no replica of its own until the old master
    // comes back (as its replica): until then `WAIT 1` refuses every write.
    cluster.node_mut(victim).restart();
    cluster.wait_until_ok(Duration::from_secs(15));
    cluster.wait_until_replicas_synced(Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = 0;
    while after < 100 {
        assert!(
            Instant::now() < deadline,
            "writes not acknowledged again after the failover"
        );
        let v = format!("w{i}");
        match kv.write_behind(&(i % 50), v.clone()).await {
            Ok(()) => {
                acked.insert(i % 50, v);
                after += 1;
            }
            Err(_) => {
                failed += 1;
                // Paces the retries while the client learns the new topology.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        i += 1;
    }
    let pool2 = pool.clone();
    let worker = cache
        .write_behind_worker(&kv, move |batch: Vec<Write<u64, String>>| {
            let pool = pool2.clone();
            async move { upsert(&pool, &batch).await }
        })
        .claim_idle(Duration::from_millis(500))
        .start();
    let want = acked.clone();
    let pool3 = pool.clone();
    bounded("every acknowledged write in the database", async move {
        loop {
            let got = rows(&pool3).await;
            if want
                .iter()
                .all(|(k, v)| got.get(k) == Some(v) || newer(&got, k, v))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let report = worker.shutdown(Duration::from_secs(5)).await;
    eprintln!(
        "write-behind failover: {} keys acknowledged, {failed} writes refused during the failover, {report:?}",
        acked.len()
    );
}

/// Whether the database holds a write of `k` newer than `v` (`w<i>`).
fn newer(got: &HashMap<u64, String>, k: &u64, v: &str) -> bool {
    let n = |s: &str| s.trim_start_matches('w').parse::<u64>().unwrap_or(0);
    got.get(k).is_some_and(|g| n(g) > n(v))
}

async fn upsert(pool: &PgPool, batch: &[Write<u64, String>]) -> Result<(), std::io::Error> {
    let ks: Vec<i64> = batch.iter().map(|w| w.key as i64).collect();
    let vs: Vec<&str> = batch.iter().map(|w| w.value.as_str()).collect();
    let versions: Vec<i64> = batch.iter().map(|w| w.version as i64).collect();
    sqlx::query(
        "INSERT INTO kv (k, v, version) SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[])
         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, version = EXCLUDED.version
         WHERE kv.version < EXCLUDED.version",
    )
    .bind(&ks)
    .bind(&vs)
    .bind(&versions)
    .execute(pool)
    .await
    .map(|_| ())
    .map_err(std::io::Error::other)
}

async fn rows(pool: &PgPool) -> HashMap<u64, String> {
    sqlx::query_as::<_, (i64, String)>("SELECT k, v FROM kv")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k as u64, v))
        .collect()
}

/// AUTH and ACL users apply to every node of a cluster: the seeds' password
/// reaches the nodes redis-rs discovers and the per-node pipelines; a wrong
/// one is a Redis failure the cache serves through, without the secret in
/// any error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_or_an_acl_user_reaches_every_master() {
    let cluster = RedisCluster::start_with_password(
        3,
        0,
        "topsecret",
        &["--user", "alice", "on", ">wonderland", "~*", "&*", "+@all"],
    );
    let with_userinfo = |userinfo: &str| -> Vec<String> {
        cluster
            .seed_urls()
            .iter()
            .map(|u| u.replace(":topsecret@", &format!("{userinfo}@")))
            .collect()
    };
    let build = |seeds: Vec<String>, ns: String| async move {
        Cache::builder()
            .namespace(ns)
            .redis_cluster(seeds)
            .redis_timeout(Duration::from_secs(1))
            .l1_max_bytes(0)
            .family(item_policy())
            .build()
            .await
            .expect("builds")
    };
    // 30 keys: spread over the three masters' slots.
    let ids: Vec<u64> = (0..30).collect();
    for userinfo in [":topsecret", "alice:wonderland"] {
        let ns = testkit::namespace();
        let writer = build(with_userinfo(userinfo), ns.clone()).await;
        let items = writer.family::<u64, String>("item").unwrap();
        for &id in &ids {
            items.set(&id, format!("v{id}")).await.unwrap();
        }
        let reader = build(with_userinfo(userinfo), ns).await;
        let items = reader.family::<u64, String>("item").unwrap();
        let got = bounded(
            "a batch read",
            items.get_many(&ids, |_missing: Vec<u64>| async {
                Ok::<_, std::io::Error>(HashMap::new())
            }),
        )
        .await
        .unwrap();
        for (id, v) in ids.iter().zip(&got) {
            assert_eq!(
                v.as_deref().map(String::as_str),
                Some(format!("v{id}").as_str())
            );
        }
        let stats = items.stats();
        assert_eq!(
            (stats.hits_l2, stats.redis_errors),
            (30, 0),
            "{userinfo}: every key read from its master"
        );
    }
    // A wrong password: the cache builds (as on one server: Redis being
    // unusable is not a reason not to serve), serves from the loader,
    // counts it, and never leaks the secret.
    let bad = with_userinfo("alice:not-the-password");
    let builder = Cache::builder().redis_cluster(bad.clone());
    assert!(!format!("{builder:?}").contains("not-the-password"));
    let cache = build(bad, testkit::namespace()).await;
    let items = cache.family::<u64, String>("item").unwrap();
    let got = bounded(
        "a read with a wrong password",
        items.get_or_load(&1, || async {
            Ok::<_, std::io::Error>(Some("db".to_string()))
        }),
    )
    .await
    .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("db"));
    assert!(items.stats().redis_errors > 0);
    match items.invalidate(&1).await {
        Ok(()) => assert_eq!(cache.deferred_invalidations(), 1),
        Err(e) => panic!("an invalidation Redis refuses is deferred, not an error: {e}"),
    }
}

/// A cluster that is down when the cache is built is not a start-up error
/// (on one server it is not either): reads go to the loader, invalidations
/// are deferred, and once the nodes are back the cache connects by itself,
/// replays what it deferred and reads from Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_down_at_start_is_used_once_it_comes_up() {
    let mut cluster = RedisCluster::start(3, 0);
    for i in 0..3 {
        cluster.node_mut(i).kill();
    }
    let ns = testkit::namespace();
    let started = Instant::now();
    let cache = cache_on(&cluster, &ns, false, &[item_policy()]).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "building waited {:?} for a dead cluster",
        started.elapsed()
    );
    let items = cache.family::<u64, String>("item").unwrap();
    let rows = Arc::new(Rows::default());
    rows.set(1, "row 1");
    assert_eq!(read(&items, &rows, 1).await.as_deref(), Some("row 1"));
    assert!(items.stats().redis_errors > 0);
    items.invalidate(&1).await.expect("deferred, not an error");
    assert_eq!(cache.deferred_invalidations(), 1);
    // Enough failures to open the breaker in front of the unreached cluster.
    for id in 2..8 {
        rows.set(id, "row");
        read(&items, &rows, id).await;
    }
    assert_eq!(cache.redis_breaker(), Some(BreakerState::Open));

    // The nodes come back with their nodes.conf: the same cluster.
    for i in 0..3 {
        cluster.node_mut(i).restart();
    }
    cluster.wait_until_ok(Duration::from_secs(20));
    until(
        "the cache connected, replayed and read from Redis",
        Duration::from_secs(15),
        || cache.deferred_invalidations() == 0,
    )
    .await;
    let writer = cache_on(&cluster, &ns, false, &[item_policy()]).await;
    writer
        .family::<u64, String>("item")
        .unwrap()
        .set(&2, "from redis".to_string())
        .await
        .unwrap();
    let hits = items.stats().hits_l2;
    let got = items
        .get_or_load(&2, || async {
            Ok::<_, std::io::Error>(Some("from the loader".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(got.as_deref().map(String::as_str), Some("from redis"));
    assert_eq!(items.stats().hits_l2, hits + 1);
    assert_eq!(cache.redis_breaker(), Some(BreakerState::Closed));
}
