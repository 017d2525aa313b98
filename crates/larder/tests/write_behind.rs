//! Write-behind against real Redis and PostgreSQL: durability across a
//! worker crash, retries and dead letters, read-your-writes.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use larder::write_behind::Write;
use larder::{Cache, Family, Policy, Strategy};
use redis::AsyncCommands;
use sqlx::PgPool;
use support::bounded;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct PersistError(String);

fn policy() -> Policy {
    Policy::new("kv", "kv:{id}")
        .ttl(Duration::from_secs(300))
        .strategy(Strategy::WriteBehind)
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

/// One multi-row, version-checked upsert for the whole batch.
async fn upsert(pool: &PgPool, batch: &[Write<u64, String>]) -> Result<(), PersistError> {
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
    .map_err(|e| PersistError(e.to_string()))
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

async fn cache(ns: &str, redis: bool) -> Cache {
    let mut b = Cache::builder().namespace(ns).family(policy());
    if redis {
        testkit::require_redis().await;
        b = support::on_test_redis(b).redis_timeout(Duration::from_secs(2));
    }
    b.build().await.unwrap()
}

/// 50 keys, each written 4 times; returns the last value of each.
async fn write_a_lot(family: &Family<u64, String>) -> HashMap<u64, String> {
    let mut last = HashMap::new();
    for round in 0..4 {
        for k in 0..50u64 {
            let v = format!("key {k} round {round}");
            family.write_behind(&k, v.clone()).await.unwrap();
            last.insert(k, v);
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_queued_write_lands_as_last_written_even_when_a_worker_dies_mid_batch() {
    for redis in [true, false] {
        let (_db, pool) = database().await;
        let ns = testkit::namespace();
        let cache = cache(&ns, redis).await;
        let kv = cache.family::<u64, String>("kv").unwrap();
        let last = write_a_lot(&kv).await;

        // Worker 1 writes its first batch to the database, then dies before
        // acknowledging it.
        let (reached, wait_reached) = tokio::sync::oneshot::channel();
        let reached = std::sync::Mutex::new(Some(reached));
        let p = pool.clone();
        let first = cache
            .write_behind_worker(&kv, move |batch: Vec<Write<u64, String>>| {
                let p = p.clone();
                let signal = reached.lock().unwrap().take();
                async move {
                    upsert(&p, &batch[..batch.len() / 2]).await?;
                    if let Some(s) = signal {
                        let _ = s.send(());
                    }
                    std::future::pending::<()>().await;
                    Ok::<_, PersistError>(())
                }
            })
            .batch_size(64)
            .consumer("worker-1")
            .start();
        bounded("worker 1 mid-batch", wait_reached).await.unwrap();
        first.abort();

        // Worker 2 takes over what worker 1 left, and everything else.
        let p = pool.clone();
        let second = cache
            .write_behind_worker(&kv, move |batch: Vec<Write<u64, String>>| {
                let p = p.clone();
                async move { upsert(&p, &batch).await }
            })
            .claim_idle(Duration::from_millis(100))
            .consumer("worker-2")
            .start();
        // More writes while it runs.
        let last = {
            let mut last = last;
            for k in 40..60u64 {
                kv.write_behind(&k, format!("late {k}")).await.unwrap();
                last.insert(k, format!("late {k}"));
            }
            last
        };
        // Worker 1's unacknowledged entries become claimable after
        // `claim_idle`; worker 2 persists them with the rest. The rows can
        // be right before that (newer writes of the same keys landed), so
        // wait for the queue to be empty too, as worker 2 sees it: a
        // shutdown does not wait for entries another worker still holds.
        bounded("drain", async {
            while rows(&pool).await != last || kv.stats().write_behind_pending != 0 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let report = second.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            rows(&pool).await,
            last,
            "redis={redis}: every write, as last written"
        );
        assert!(report.drained, "redis={redis}: {report:?}");
        assert_eq!(report.left, 0);
        if redis {
            assert_markers_cleared(&kv, 0..60).await;
        }
    }
}

/// Every key's pending marker is gone, or (on a cluster, where a worker can
/// persist a write before it is staged) is a persisted mark, which readers
/// ignore.
async fn assert_markers_cleared(kv: &Family<u64, String>, keys: std::ops::Range<u64>) {
    let mut conn = testkit::require_redis().await;
    for k in keys {
        let marker: Option<Vec<u8>> = conn
            .get(format!("{}:wb", kv.key(&k).unwrap()))
            .await
            .unwrap();
        if let Some(m) = marker {
            assert!(
                m.len() == 9 && m[0] == b'P',
                "pending marker of {k} ({} bytes) cleared once persisted",
                m.len()
            );
        }
    }
}

/// Writers and a worker racing on the same keys, many rounds: every marker
/// is cleared once its write is persisted, and a reader in another process
/// sees the last write (from the cache or the database, never an older one).
/// The "database" is a map here, so that a write can be persisted sooner
/// after its enqueue than on PostgreSQL (on a cluster, before its stage).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_are_cleared_while_writers_race_the_worker() {
    type Rows = Arc<std::sync::Mutex<HashMap<u64, (u64, String)>>>;
    let db: Rows = Arc::default();
    let ns = testkit::namespace();
    let writer = cache(&ns, true).await;
    let kv = writer.family::<u64, String>("kv").unwrap();
    let d = Arc::clone(&db);
    let worker = writer
        .write_behind_worker(&kv, move |batch: Vec<Write<u64, String>>| {
            let mut rows = d.lock().unwrap();
            for w in batch {
                let row = rows.entry(w.key).or_insert((0, String::new()));
                if row.0 < w.version {
                    *row = (w.version, w.value);
                }
            }
            std::future::ready(Ok::<_, PersistError>(()))
        })
        .batch_size(2)
        .start();
    const KEYS: u64 = 40;
    let mut writers = Vec::new();
    for t in 0..KEYS {
        let kv = kv.clone();
        writers.push(tokio::spawn(async move {
            // Four writers per key.
            let k = t / 4;
            let mut last = (0, String::new());
            for round in 0..40u64 {
                let v = format!("{k}/{t}/{round}");
                kv.write_behind(&k, v.clone()).await.unwrap();
                last = (round, v);
            }
            (k, last)
        }));
    }
    let mut written: HashMap<u64, Vec<String>> = HashMap::new();
    for w in writers {
        let (k, (_, v)) = w.await.unwrap();
        written.entry(k).or_default().push(v);
    }
    let report = worker.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    let rows: HashMap<u64, String> = db
        .lock()
        .unwrap()
        .iter()
        .map(|(k, (_, v))| (*k, v.clone()))
        .collect();
    assert_eq!(rows.len(), (KEYS / 4) as usize);
    for (k, v) in &rows {
        assert!(
            written[k].contains(v),
            "key {k}: {v} is one writer's last write"
        );
    }
    assert_markers_cleared(&kv, 0..KEYS / 4).await;
    // Another process, after the cached values are gone: the database's
    // value, not a write older than it left behind as pending.
    let mut conn = testkit::require_redis().await;
    for k in 0..KEYS / 4 {
        let _: () = conn.del(kv.key(&k).unwrap()).await.unwrap();
    }
    let reader = cache(&ns, true).await;
    let reader_kv = reader.family::<u64, String>("kv").unwrap();
    for k in 0..KEYS / 4 {
        let row = rows.get(&k).cloned();
        let got = reader_kv
            .get_or_load(&k, move || async move { Ok::<_, PersistError>(row) })
            .await
            .unwrap();
        assert_eq!(got.as_deref(), rows.get(&k), "key {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_keeps_failing_is_retried_then_dead_lettered_while_others_proceed() {
    for redis in [true, false] {
        let (_db, pool) = database().await;
        let ns = testkit::namespace();
        let cache = cache(&ns, redis).await;
        let kv = cache.family::<u64, String>("kv").unwrap();
        for k in 0..20u64 {
            let v = if k == 7 {
                "poison".to_string()
            } else {
                format!("ok {k}")
            };
            kv.write_behind(&k, v).await.unwrap();
        }
        let p = pool.clone();
        let worker = cache
            .write_behind_worker(&kv, move |batch: Vec<Write<u64, String>>| {
                let p = p.clone();
                async move {
                    if batch.iter().any(|w| w.value == "poison") {
                        return Err(PersistError("violates a constraint".into()));
                    }
                    upsert(&p, &batch).await
                }
            })
            .max_attempts(3)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(40))
            .start();
        bounded("dead letter", async {
            while cache.dead_letters("kv").await.unwrap().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        let report = worker.shutdown(Duration::from_secs(10)).await;
        let rows = rows(&pool).await;
        assert_eq!(rows.len(), 19, "redis={redis}: the others were persisted");
        assert!(!rows.contains_key(&7));
        let dead = cache.dead_letters("kv").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].key, kv.key(&7).unwrap());
        assert!(
            dead[0].error.contains("violates a constraint"),
            "{:?}",
            dead[0]
        );
        assert_eq!(
            (report.persisted, report.dead_lettered),
            (19, 1),
            "redis={redis}"
        );
        assert!(report.drained, "redis={redis}: {report:?}");
    }
}

#[tokio::test]
async fn a_queued_write_is_read_back_even_after_its_cache_entry_is_deleted() {
    for redis in [true, false] {
        let (_db, pool) = database().await;
        sqlx::query("INSERT INTO kv VALUES (1, 'old row', 0)")
            .execute(&pool)
            .await
            .unwrap();
        let ns = testkit::namespace();
        let writer = cache(&ns, redis).await;
        let kv = writer.family::<u64, String>("kv").unwrap();
        kv.write_behind(&1, "new value".into()).await.unwrap();

        // The cache entry disappears (expiry, eviction, a hand-typed DEL)
        // before any worker ran.
        let reader = if redis {
            let mut conn = testkit::require_redis().await;
            let _: () = conn.del(kv.key(&1).unwrap()).await.unwrap();
            // Another process, with an empty L1.
            cache(&ns, true).await
        } else {
            kv.invalidate(&1).await.unwrap();
            writer.clone()
        };
        let readers_kv = reader.family::<u64, String>("kv").unwrap();
        let loads = Arc::new(AtomicBool::new(false));
        let l = Arc::clone(&loads);
        let p = pool.clone();
        let seen = readers_kv
            .get_or_load(&1, move || async move {
                l.store(true, Ordering::SeqCst);
                let v: Option<String> = sqlx::query_scalar("SELECT v FROM kv WHERE k = 1")
                    .fetch_optional(&p)
                    .await?;
                Ok::<_, sqlx::Error>(v)
            })
            .await
            .unwrap();
        assert_eq!(
            seen.as_deref().map(String::as_str),
            Some("new value"),
            "redis={redis}: not the old row"
        );
        assert!(
            !loads.load(Ordering::SeqCst),
            "redis={redis}: the database was not asked"
        );

        let p = pool.clone();
        let worker = writer
            .write_behind_worker(&kv, move |batch| {
                let p = p.clone();
                async move { upsert(&p, &batch).await }
            })
            .start();
        let report = worker.shutdown(Duration::from_secs(10)).await;
        assert!(report.drained, "redis={redis}: {report:?}");
        assert_eq!(rows(&pool).await[&1], "new value");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_and_reports_what_is_left() {
    let ns = testkit::namespace();
    let cache = cache(&ns, true).await;
    let kv = cache.family::<u64, String>("kv").unwrap();
    for k in 0..10u64 {
        kv.write_behind(&k, "v".into()).await.unwrap();
    }
    // A database that never answers.
    let worker = cache
        .write_behind_worker(&kv, |_batch: Vec<Write<u64, String>>| async {
            std::future::pending::<()>().await;
            Ok::<_, PersistError>(())
        })
        .start();
    let started = std::time::Instant::now();
    let report = worker.shutdown(Duration::from_millis(300)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded: {:?}",
        started.elapsed()
    );
    assert!(!report.drained);
    assert_eq!(report.persisted, 0);
    // The writes are still queued for the next worker.
    let mut conn = testkit::require_redis().await;
    let len: u64 = conn
        .xlen(support::write_behind_stream(&ns, "kv"))
        .await
        .unwrap();
    assert_eq!(len, 10);
}

#[tokio::test]
async fn write_behind_needs_a_write_behind_family() {
    let cache = Cache::builder()
        .family(Policy::new("plain", "plain:{id}").ttl(Duration::from_secs(1)))
        .build()
        .await
        .unwrap();
    let plain = cache.family::<u64, String>("plain").unwrap();
    assert!(matches!(
        plain.write_behind(&1, "x".into()).await,
        Err(larder::Error::Config { .. })
    ));
}

/// The ids of the clients whose name starts with `prefix` on the
/// standalone test server.
async fn clients_named(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter(|l| l.contains(&format!(" name={prefix}")))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

/// A worker's `XREADGROUP BLOCK` (like the bus listener's `XREAD BLOCK`)
/// waits longer than redis-rs's default response timeout (500 ms): on a
/// connection that kept it, an idle queue timed out, logged a warning and
/// reconnected every second. Idle, the worker keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_keeps_its_connection() {
    let url = testkit::redis_url();
    testkit::require_redis().await;
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the standalone test Redis (start it: redis-server --port 6379)");
    let ns = testkit::namespace();
    let cache = Cache::builder()
        .namespace(&ns)
        .family(policy())
        .redis_url(&url)
        .redis_timeout(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    let kv = cache.family::<u64, String>("kv").unwrap();
    let consumer = format!("{ns}-worker");
    let worker = cache
        .write_behind_worker(&kv, |_batch: Vec<Write<u64, String>>| async {
            Ok::<_, PersistError>(())
        })
        .consumer(&consumer)
        .start();
    let name = format!("larder-write-behind:{consumer}");
    let before = bounded("the worker's connection", async {
        loop {
            let ids = clients_named(&mut raw, &name).await;
            if !ids.is_empty() {
                return ids;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    // Idle for longer than a blocking read plus the old 500 ms cut-off,
    // twice over: this wait is what the test is about.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = clients_named(&mut raw, &name).await;
    assert_eq!(before, after, "an idle worker reconnected");
    worker.shutdown(Duration::from_secs(2)).await;
}
