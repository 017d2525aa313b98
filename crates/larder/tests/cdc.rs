//! Invalidation from PostgreSQL's change stream, against real PostgreSQL
//! (`wal_level = logical`: `./scripts/test` sets it) and real Redis (one
//! server, or the cluster of `LARDER_TEST_REDIS_CLUSTER_URLS`).
//!
//! Changes are made with plain SQL, never through the cache: what a
//! migration, a batch job or an admin in `psql` does.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder::cdc::{ChangeListener, Mapping, TableRule};
use larder::{Cache, Policy};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use support::{bounded, on_test_redis};
use testkit::{SlotGuard, TestDatabase};

const SECOND: Duration = Duration::from_secs(1);

/// A test database with two tables, a slot name of its own, and the slot
/// dropped however the test ends (a slot left behind keeps WAL forever and
/// keeps its database from being dropped).
struct World {
    pool: PgPool,
    slot: String,
    ns: String,
    // Dropped after the slot guard: the database cannot go while a slot
    // lives in it.
    _slot_guard: SlotGuard,
    db: TestDatabase,
}

impl World {
    async fn new() -> World {
        let db = TestDatabase::create().await;
        let pool = PgPoolOptions::new()
            .max_connections(12)
            .connect(db.url())
            .await
            .expect("the test database accepts connections");
        for ddl in [
            "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL, version BIGINT NOT NULL DEFAULT 0)",
            "CREATE TABLE holdings (user_id BIGINT NOT NULL, symbol TEXT NOT NULL, qty BIGINT NOT NULL, \
             PRIMARY KEY (user_id, symbol))",
        ] {
            sqlx::query(ddl).execute(&pool).await.expect("schema");
        }
        for id in 1..=50i64 {
            sqlx::query("INSERT INTO users (id, name) VALUES ($1, $2)")
                .bind(id)
                .bind(format!("user {id}"))
                .execute(&pool)
                .await
                .expect("seed users");
        }
        let guard = SlotGuard::random();
        World {
            pool,
            ns: testkit::namespace(),
            slot: guard.name().to_string(),
            _slot_guard: guard,
            db,
        }
    }

    fn mapping() -> Mapping {
        Mapping::new()
            .table(
                "users",
                TableRule::new().key("user:{id}:profile").tag("user:{id}"),
            )
            .table("holdings", TableRule::new().tag("holdings:{user_id}"))
    }

    /// A cache as one process of the service has it: L1 in front of the
    /// test Redis, in this world's namespace.
    async fn cache(&self) -> Cache {
        self.cache_on(on_test_redis(Cache::builder())).await
    }

    async fn cache_on(&self, builder: larder::CacheBuilder) -> Cache {
        builder
            .namespace(&self.ns)
            .redis_timeout(Duration::from_millis(500))
            .family(
                Policy::new("profile", "user:{user_id}:profile")
                    .ttl(Duration::from_secs(3600))
                    .tag("user:{user_id}"),
            )
            .family(
                Policy::new("portfolio", "portfolio:{user_id}")
                    .ttl(Duration::from_secs(3600))
                    .tag("holdings:{user_id}"),
            )
            .build()
            .await
            .expect("test cache builds")
    }

    async fn listener(&self, cache: &Cache) -> ChangeListener {
        ChangeListener::builder(cache, self.db.url())
            .slot(&self.slot)
            .publication(&self.slot)
            .mapping(World::mapping())
            .retry_every(Duration::from_millis(200))
            .echo_window(Duration::from_millis(5))
            .start()
            .await
            .expect("the listener starts")
    }

    /// A position after every transaction committed so far.
    async fn mark(&self) -> String {
        sqlx::query_scalar("SELECT pg_logical_emit_message(false, 'test', '')::text")
            .fetch_one(&self.pool)
            .await
            .expect("emit a logical message")
    }

    async fn name_in_db(&self, id: i64) -> String {
        sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("read a user")
    }

    async fn qty_in_db(&self, id: i64) -> i64 {
        sqlx::query_scalar("SELECT COALESCE(SUM(qty), 0)::bigint FROM holdings WHERE user_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("read holdings")
    }

    async fn set_name(&self, id: i64, name: &str) {
        sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
            .bind(id)
            .bind(name)
            .execute(&self.pool)
            .await
            .expect("update a user");
    }
}

/// Reads a profile through `cache`, loading from the database on a miss;
/// `loads` counts the loader calls.
async fn profile(cache: &Cache, pool: &PgPool, id: i64, loads: &Arc<AtomicU64>) -> String {
    let profiles = cache
        .family::<i64, String>("profile")
        .expect("profile family");
    let pool = pool.clone();
    let loads = Arc::clone(loads);
    profiles
        .get_or_load(&id, move || async move {
            loads.fetch_add(1, Ordering::Relaxed);
            sqlx::query_scalar::<_, String>("SELECT name FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
        })
        .await
        .expect("profile read")
        .map(|n| n.as_ref().clone())
        .unwrap_or_default()
}

async fn portfolio(cache: &Cache, pool: &PgPool, id: i64) -> i64 {
    let portfolios = cache
        .family::<i64, i64>("portfolio")
        .expect("portfolio family");
    let pool = pool.clone();
    portfolios
        .get_or_load(&id, move || async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(SUM(qty), 0)::bigint FROM holdings WHERE user_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
        })
        .await
        .expect("portfolio read")
        .map(|q| *q)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_in_sql_reaches_every_process_within_a_second() {
    let w = World::new().await;
    let (a, b) = (w.cache().await, w.cache().await);
    let listener = w.listener(&a).await;
    assert!(
        listener.caught_up(5 * SECOND).await,
        "a fresh slot is caught up"
    );
    let loads = Arc::new(AtomicU64::new(0));
    for cache in [&a, &b] {
        assert_eq!(profile(cache, &w.pool, 7, &loads).await, "user 7");
        assert_eq!(portfolio(cache, &w.pool, 7).await, 0);
    }

    // UPDATE, INSERT, DELETE, none of them through the cache.
    w.set_name(7, "renamed").await;
    sqlx::query("INSERT INTO holdings VALUES (7, 'TCS', 10)")
        .execute(&w.pool)
        .await
        .unwrap();
    let mark = w.mark().await;
    assert!(
        listener.wait_applied(&mark, SECOND).await.unwrap(),
        "the UPDATE and the INSERT were applied within a second"
    );
    for cache in [&a, &b] {
        assert!(cache.sync_invalidations(5 * SECOND).await.unwrap());
        assert_eq!(profile(cache, &w.pool, 7, &loads).await, "renamed");
        assert_eq!(portfolio(cache, &w.pool, 7).await, 10);
    }

    sqlx::query("DELETE FROM holdings WHERE user_id = 7")
        .execute(&w.pool)
        .await
        .unwrap();
    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, SECOND).await.unwrap());
    for cache in [&a, &b] {
        assert!(cache.sync_invalidations(5 * SECOND).await.unwrap());
        assert_eq!(
            portfolio(cache, &w.pool, 7).await,
            0,
            "the DELETE was applied"
        );
    }
    let stats = listener.stats();
    assert!(stats.consumer);
    assert_eq!(stats.transactions, 3);
    listener.drop_slot().await.expect("the slot is dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_while_no_listener_ran_are_applied_before_it_is_caught_up() {
    let w = World::new().await;
    let a = w.cache().await;
    let listener = w.listener(&a).await;
    assert!(listener.caught_up(5 * SECOND).await);
    let loads = Arc::new(AtomicU64::new(0));
    for id in 1..=5 {
        profile(&a, &w.pool, id, &loads).await;
    }
    listener.stop().await;
    drop(a);

    // The service is down: an admin edits rows.
    for id in 1..=5 {
        w.set_name(id, &format!("edited {id}")).await;
    }

    // A new process (empty L1) starts its listener on the same slot.
    let fresh = w.cache().await;
    let listener = w.listener(&fresh).await;
    assert!(
        listener.caught_up(5 * SECOND).await,
        "caught up with what it missed"
    );
    for id in 1..=5 {
        assert_eq!(
            profile(&fresh, &w.pool, id, &loads).await,
            format!("edited {id}"),
            "the Redis copy was invalidated before the first read"
        );
    }
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_invalidates_nothing_and_a_wide_transaction_each_key_once() {
    let w = World::new().await;
    let a = w.cache().await;
    let listener = w.listener(&a).await;
    assert!(listener.caught_up(5 * SECOND).await);
    let loads = Arc::new(AtomicU64::new(0));
    for id in 1..=50 {
        profile(&a, &w.pool, id, &loads).await;
    }
    let before = listener.stats();

    let mut tx = w.pool.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'never'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, 5 * SECOND).await.unwrap());
    assert_eq!(
        listener.stats().transactions,
        before.transactions,
        "a rollback is not a change"
    );
    assert_eq!(listener.stats().invalidations, before.invalidations);

    // One transaction, every user touched twice.
    let mut tx = w.pool.begin().await.unwrap();
    for _ in 0..2 {
        sqlx::query("UPDATE users SET name = name || '!'")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, 5 * SECOND).await.unwrap());
    let after = listener.stats();
    assert_eq!(after.transactions, before.transactions + 1);
    // 50 profile keys and 50 user tags, each once.
    assert_eq!(after.invalidations, before.invalidations + 100);
    let loaded = loads.load(Ordering::Relaxed);
    for id in 1..=50 {
        assert_eq!(
            profile(&a, &w.pool, id, &loads).await,
            format!("user {id}!!")
        );
    }
    assert_eq!(
        loads.load(Ordering::Relaxed),
        loaded + 50,
        "each profile reloaded once"
    );
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_writers_and_readers_end_with_the_cache_equal_to_the_database() {
    let w = Arc::new(World::new().await);
    let (a, b) = (w.cache().await, w.cache().await);
    let listener = w.listener(&a).await;
    assert!(listener.caught_up(5 * SECOND).await);
    const USERS: i64 = 12;
    let loads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for writer in 0..6u64 {
        let w = Arc::clone(&w);
        tasks.push(tokio::spawn(async move {
            for i in 0..40u64 {
                let id = ((writer * 7 + i * 5) % USERS as u64) as i64 + 1;
                let mut tx = w.pool.begin().await.unwrap();
                sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("w{writer}-{i}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query(
                    "INSERT INTO holdings VALUES ($1, 'X', 1) \
                     ON CONFLICT (user_id, symbol) DO UPDATE SET qty = holdings.qty + 1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for reader in 0..4u64 {
        let w = Arc::clone(&w);
        let cache = if reader % 2 == 0 {
            a.clone()
        } else {
            b.clone()
        };
        let loads = Arc::clone(&loads);
        tasks.push(tokio::spawn(async move {
            for i in 0..150u64 {
                let id = ((reader + i) % USERS as u64) as i64 + 1;
                profile(&cache, &w.pool, id, &loads).await;
                portfolio(&cache, &w.pool, id).await;
            }
        }));
    }
    for t in tasks {
        bounded("writers and readers", t).await.unwrap();
    }
    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, 10 * SECOND).await.unwrap());
    for cache in [&a, &b] {
        assert!(cache.sync_invalidations(5 * SECOND).await.unwrap());
        for id in 1..=USERS {
            assert_eq!(
                profile(cache, &w.pool, id, &loads).await,
                w.name_in_db(id).await,
                "user {id}"
            );
            assert_eq!(
                portfolio(cache, &w.pool, id).await,
                w.qty_in_db(id).await,
                "user {id}"
            );
        }
    }
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_when_the_consumer_dies_and_misses_nothing() {
    let w = World::new().await;
    let (a, b) = (w.cache().await, w.cache().await);
    let first = w.listener(&a).await;
    assert!(first.wait_consumer(5 * SECOND).await);
    let second = w.listener(&b).await;
    assert!(
        second.caught_up(5 * SECOND).await,
        "a standby sees the consumer caught up"
    );
    assert!(!second.stats().consumer, "one consumer per slot");
    let loads = Arc::new(AtomicU64::new(0));
    for id in 1..=10 {
        profile(&b, &w.pool, id, &loads).await;
    }

    // The consumer dies (dropped without a goodbye); rows change meanwhile.
    drop(first);
    for id in 1..=10 {
        w.set_name(id, &format!("during takeover {id}")).await;
    }
    assert!(
        second.wait_consumer(5 * SECOND).await,
        "the standby took the slot"
    );
    let mark = w.mark().await;
    assert!(second.wait_applied(&mark, 5 * SECOND).await.unwrap());
    for id in 1..=10 {
        assert_eq!(
            profile(&b, &w.pool, id, &loads).await,
            format!("during takeover {id}")
        );
    }
    second.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_hangs_l1_is_dropped_and_nothing_is_confirmed_then_redis_catches_up() {
    let w = World::new().await;
    let redis = testkit::RedisServer::start(&[]);
    let a = w.cache_on(Cache::builder().redis_url(redis.url())).await;
    let listener = w.listener(&a).await;
    assert!(listener.caught_up(5 * SECOND).await);
    let loads = Arc::new(AtomicU64::new(0));
    assert_eq!(profile(&a, &w.pool, 3, &loads).await, "user 3");

    redis.pause();
    w.set_name(3, "while redis hung").await;
    let mark = w.mark().await;
    let mut stats = listener.stats();
    for _ in 0..200 {
        if stats.degraded {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        stats = listener.stats();
    }
    assert!(
        stats.degraded,
        "the listener noticed Redis is not taking invalidations"
    );
    assert!(
        !listener.wait_applied(&mark, SECOND).await.unwrap(),
        "nothing is confirmed while Redis cannot take it"
    );
    // This process's L1 dropped its copy at once: the read goes past it
    // (Redis hangs, so to the database).
    assert_eq!(profile(&a, &w.pool, 3, &loads).await, "while redis hung");

    redis.resume();
    assert!(
        listener.wait_applied(&mark, 10 * SECOND).await.unwrap(),
        "re-read and applied once Redis answers"
    );
    // A process that starts now reads Redis first: the old copy is gone.
    let fresh = w.cache_on(Cache::builder().redis_url(redis.url())).await;
    assert_eq!(
        profile(&fresh, &w.pool, 3, &loads).await,
        "while redis hung"
    );
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_replication_connection_resumes_without_a_gap() {
    let w = World::new().await;
    let a = w.cache().await;
    let listener = w.listener(&a).await;
    assert!(listener.caught_up(5 * SECOND).await);
    let loads = Arc::new(AtomicU64::new(0));
    assert_eq!(profile(&a, &w.pool, 9, &loads).await, "user 9");
    // What a PostgreSQL restart or a network cut does to the session.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&w.slot)
    .fetch_all(&w.pool)
    .await
    .unwrap();
    assert_eq!(killed, [true]);
    w.set_name(9, "after the cut").await;
    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, 10 * SECOND).await.unwrap());
    assert!(listener.stats().sessions >= 2, "a new session was opened");
    assert_eq!(profile(&a, &w.pool, 9, &loads).await, "after the cut");
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_the_writer_invalidated_costs_no_load() {
    let w = World::new().await;
    let a = w.cache().await;
    let listener = w.listener(&a).await;
    assert!(listener.caught_up(5 * SECOND).await);
    let loads = Arc::new(AtomicU64::new(0));
    assert_eq!(profile(&a, &w.pool, 4, &loads).await, "user 4");

    // The service's own write: commit, invalidate, mark the transaction.
    let mut tx = w.pool.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'mine' WHERE id = 4")
        .execute(&mut *tx)
        .await
        .unwrap();
    let xid: i64 = sqlx::query_scalar("SELECT txid_current()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let profiles = a.family::<i64, String>("profile").unwrap();
    profiles.invalidate(&4).await.unwrap();
    a.invalidate_tag("user:{user_id}", &4i64).await.unwrap();
    assert!(a.skip_echo(xid as u64).await.unwrap());
    // Read again at once: one load, the new row.
    assert_eq!(profile(&a, &w.pool, 4, &loads).await, "mine");
    let loaded = loads.load(Ordering::Relaxed);

    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, 5 * SECOND).await.unwrap());
    assert_eq!(listener.stats().echoes, 1, "the echo was recognised");
    assert!(a.sync_invalidations(5 * SECOND).await.unwrap());
    assert_eq!(profile(&a, &w.pool, 4, &loads).await, "mine");
    assert_eq!(
        loads.load(Ordering::Relaxed),
        loaded,
        "the echo cost no load"
    );
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_cached_version_survives_the_echo_of_an_older_row() {
    let w = World::new().await;
    let a = w.cache().await;
    let listener = ChangeListener::builder(&a, w.db.url())
        .slot(&w.slot)
        .publication(&w.slot)
        .mapping(Mapping::new().table(
            "users",
            TableRule::new().key("user:{id}:profile").version("version"),
        ))
        .echo_window(Duration::ZERO)
        .start()
        .await
        .unwrap();
    assert!(listener.caught_up(5 * SECOND).await);
    let profiles = a.family::<i64, String>("profile").unwrap();
    // The service wrote version 5 through the cache; an older version (3)
    // of the row is committed by someone else's slow transaction.
    assert!(profiles.set_versioned(&2, "v5".into(), 5).await.unwrap());
    sqlx::query("UPDATE users SET name = 'v3', version = 3 WHERE id = 2")
        .execute(&w.pool)
        .await
        .unwrap();
    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, 5 * SECOND).await.unwrap());
    let loads = Arc::new(AtomicU64::new(0));
    assert_eq!(
        profile(&a, &w.pool, 2, &loads).await,
        "v5",
        "the older row did not undo it"
    );
    assert_eq!(loads.load(Ordering::Relaxed), 0);

    // A newer row (an admin raised the version) does invalidate it.
    sqlx::query("UPDATE users SET name = 'v9', version = 9 WHERE id = 2")
        .execute(&w.pool)
        .await
        .unwrap();
    let mark = w.mark().await;
    assert!(listener.wait_applied(&mark, 5 * SECOND).await.unwrap());
    assert_eq!(profile(&a, &w.pool, 2, &loads).await, "v9");
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_the_database_cannot_serve_fails_the_start_with_the_fix() {
    let w = World::new().await;
    let a = w.cache().await;
    let start = |mapping: Mapping| {
        ChangeListener::builder(&a, w.db.url())
            .slot(&w.slot)
            .publication(&w.slot)
            .mapping(mapping)
            .start()
    };
    let err = start(Mapping::new().table("users", TableRule::new().key("user:{nope}:profile")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no column `nope`"), "{err}");
    let err = start(Mapping::new().table("nowhere", TableRule::new().key("user:{id}:profile")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    // `name` is not in the primary key: a DELETE would not carry it.
    let err = start(Mapping::new().table("users", TableRule::new().key("user:{name}:profile")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
    sqlx::query("ALTER TABLE users REPLICA IDENTITY FULL")
        .execute(&w.pool)
        .await
        .unwrap();
    let listener =
        start(Mapping::new().table("users", TableRule::new().key("user:{name}:profile")))
            .await
            .expect("with REPLICA IDENTITY FULL the mapping is served");
    // A family the cache does not have is refused before any connection.
    let err = start(Mapping::new().table("users", TableRule::new().key("order:{id}")))
        .await
        .unwrap_err();
    assert!(matches!(err, larder::Error::Config { .. }), "{err}");
    let bad_url = ChangeListener::builder(&a, "mysql://x@y/z")
        .mapping(World::mapping())
        .start()
        .await
        .unwrap_err();
    assert!(bad_url.to_string().contains("postgres://"), "{bad_url}");
    listener.drop_slot().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_change() {
    let w = World::new().await;
    let mut redis = testkit::RedisServer::start(&[]);
    let a = w.cache_on(Cache::builder().redis_url(redis.url())).await;
    let listener = w.listener(&a).await;
    assert!(listener.caught_up(5 * SECOND).await);
    let loads = Arc::new(AtomicU64::new(0));
    assert_eq!(profile(&a, &w.pool, 5, &loads).await, "user 5");

    redis.kill();
    w.set_name(5, "while redis was down").await;
    let mark = w.mark().await;
    assert!(
        !listener.wait_applied(&mark, SECOND).await.unwrap(),
        "not confirmed while Redis is down"
    );
    redis.restart();
    assert!(
        listener.wait_applied(&mark, 10 * SECOND).await.unwrap(),
        "applied once Redis is back"
    );
    assert_eq!(
        profile(&a, &w.pool, 5, &loads).await,
        "while redis was down"
    );
    listener.drop_slot().await.unwrap();
}
