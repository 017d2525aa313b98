//! The `larder` binary end to end, against the real Redis (or the cluster
//! of `LARDER_TEST_REDIS_CLUSTER_URLS`) and PostgreSQL, on entries written
//! by the library.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use larder::write_behind::Write;
use larder::{Cache, Family};
use serde_json::Value;

const CONFIG: &str = r#"
[families.item]
key = "item:{id}"
ttl = "60s"
grace = "30s"
negative_ttl = "30s"
tags = ["user:{id}"]

[families.quick]
key = "quick:{id}"
ttl = "50ms"
grace = "1h"

[families.order]
key = "user:{user_id}:order:{order_id}"
ttl = "60s"

[families.kv]
key = "kv:{id}"
ttl = "5m"
strategy = "write-behind"
"#;

/// A namespace, its config file, and caches on the test Redis.
struct Env {
    ns: String,
    config: PathBuf,
}

impl Env {
    fn new() -> Env {
        let ns = testkit::namespace();
        let config = std::env::temp_dir().join(format!("{ns}.toml"));
        std::fs::write(&config, CONFIG).expect("write the test config");
        Env { ns, config }
    }

    /// A cache as a service instance would have one (L1 and the bus on).
    async fn cache(&self) -> Cache {
        testkit::require_redis().await;
        let b = Cache::builder()
            .namespace(&self.ns)
            .policies(larder::Policies::from_toml_str(CONFIG).unwrap())
            .redis_timeout(Duration::from_secs(2));
        let b = match testkit::redis_target() {
            testkit::RedisTarget::Standalone(url) => b.redis_url(url),
            testkit::RedisTarget::Cluster(seeds) => b.redis_cluster(seeds),
        };
        b.build().await.unwrap()
    }

    /// Runs `larder args…` with the service's settings in the environment.
    async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_larder"));
        cmd.args(args)
            .env("LARDER_NAMESPACE", &self.ns)
            .env("LARDER_CACHE_CONFIG", &self.config)
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS");
        match testkit::redis_target() {
            testkit::RedisTarget::Standalone(url) => cmd.env("REDIS_URL", url),
            testkit::RedisTarget::Cluster(seeds) => cmd.env("REDIS_CLUSTER_URLS", seeds.join(",")),
        };
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || cmd.output().expect("run larder")),
        )
        .await
        .expect("larder finished within 30 s")
        .unwrap()
    }

    /// Runs with `--json` and parses the output; asserts the exit code.
    async fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all).await;
        assert_eq!(
            out.status.code(),
            Some(code),
            "larder {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "larder {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

async fn read(items: &Family<u64, String>, id: u64, row: &str) -> Option<String> {
    let row = row.to_string();
    items
        .get_or_load(
            &id,
            move || async move { Ok::<_, std::io::Error>(Some(row)) },
        )
        .await
        .unwrap()
        .map(|v| (*v).clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_what_the_library_wrote() {
    let env = Env::new();
    let cache = env.cache().await;
    let items = cache.family::<u64, String>("item").unwrap();
    items.set(&1, "hello".into()).await.unwrap();
    let found = env.json(&["inspect", "item", "1"], 0).await;
    let entry = &found["entry"];
    assert_eq!(entry["value"], "hello");
    assert_eq!(entry["negative"], false);
    assert_eq!(entry["fresh"], true);
    let fresh_until = entry["fresh_until_ms"].as_u64().unwrap();
    let grace_until = entry["grace_until_ms"].as_u64().unwrap();
    assert_eq!(grace_until - fresh_until, 30_000, "grace from the policy");
    assert!(entry["ttl_ms"].as_u64().unwrap() > 60_000, "ttl + grace");
    assert_eq!(found["tags"][0]["is_current"], true);

    // A negative entry: the loader found nothing.
    let none = items
        .get_or_load(&2, || async { Ok::<Option<String>, std::io::Error>(None) })
        .await
        .unwrap();
    assert!(none.is_none());
    let found = env.json(&["inspect", "item", "2"], 0).await;
    assert_eq!(found["entry"]["negative"], true);
    assert_eq!(found["entry"]["value"], Value::Null);

    // After a tag invalidation the entry is still there, stamped with an
    // older tag version.
    let out = env.run(&["invalidate", "--tag", "user:{id}", "1"]).await;
    assert!(out.status.success(), "{out:?}");
    let found = env.json(&["inspect", "item", "1"], 0).await;
    assert_eq!(found["tags"][0]["is_current"], false);

    // Nothing there: exit code 4.
    let found = env.json(&["inspect", "item", "99"], 4).await;
    assert_eq!(found["entry"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_a_stale_entry_within_grace() {
    let env = Env::new();
    let cache = env.cache().await;
    let quick = cache.family::<u64, String>("quick").unwrap();
    quick.set(&1, "old".into()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = env.json(&["inspect", "quick", "1"], 0).await;
        if found["entry"]["fresh"] == false {
            assert_eq!(found["entry"]["value"], "old", "still served within grace");
            assert!(
                found["entry"]["grace_until_ms"].as_u64().unwrap()
                    > found["entry"]["fresh_until_ms"].as_u64().unwrap()
            );
            break;
        }
        assert!(Instant::now() < deadline, "the 50 ms entry went stale");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_a_pending_write_behind_write() {
    let env = Env::new();
    let cache = env.cache().await;
    let kv = cache.family::<u64, String>("kv").unwrap();
    kv.write_behind(&7, "queued".into()).await.unwrap();
    let found = env.json(&["inspect", "kv", "7"], 0).await;
    assert_eq!(found["pending"]["value"], "queued");
    assert!(found["pending"]["version"].as_u64().unwrap() > 0);
    let status = env.json(&["write-behind", "status"], 0).await;
    assert_eq!(status[0]["family"], "kv");
    assert_eq!(status[0]["length"], 1);
    // No worker runs: drain gives up within its bound, exit code 3.
    let drained = env
        .json(&["write-behind", "drain", "kv", "--timeout", "300ms"], 3)
        .await;
    assert_eq!(drained["drained"], false);
    assert_eq!(drained["left"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_removes_exactly_what_it_says_in_other_processes_too() {
    let env = Env::new();
    let (writer, other) = (env.cache().await, env.cache().await);
    let items = writer.family::<u64, String>("item").unwrap();
    let theirs = other.family::<u64, String>("item").unwrap();
    for id in 1..=3 {
        items.set(&id, format!("v{id}")).await.unwrap();
        // In the other process's L1.
        assert_eq!(
            read(&theirs, id, "db").await.as_deref(),
            Some(format!("v{id}").as_str())
        );
    }
    assert!(
        other
            .sync_invalidations(Duration::from_secs(5))
            .await
            .unwrap()
    );
    let out = env.run(&["invalidate", "--key", "item", "2"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        other
            .sync_invalidations(Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert_eq!(
        read(&theirs, 2, "db").await.as_deref(),
        Some("db"),
        "2 is gone from L1"
    );
    assert_eq!(
        read(&theirs, 1, "db").await.as_deref(),
        Some("v1"),
        "1 stays"
    );
    assert_eq!(
        read(&theirs, 3, "db").await.as_deref(),
        Some("v3"),
        "3 stays"
    );

    // A pattern over one user's orders, not another's.
    let orders = writer.family::<(u64, u64), String>("order").unwrap();
    for (u, o) in [(1, 1), (1, 2), (1, 3), (2, 1)] {
        orders.set(&(u, o), "BUY".into()).await.unwrap();
    }
    let done = env
        .json(&["invalidate", "--pattern", "order", "1", "*"], 0)
        .await;
    assert_eq!(done["removed"], 3);
    let left = env.json(&["inspect", "order", "2", "1"], 0).await;
    assert_eq!(left["entry"]["value"], "BUY");

    // Usage errors say so and fail.
    let out = env.run(&["invalidate", "--key", "item", "1", "2"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 part(s), 2 given"));
    let out = env.run(&["inspect", "nosuch", "1"]).await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_sample_the_family_and_bus_tail_shows_invalidations() {
    let env = Env::new();
    let cache = env.cache().await;
    let items = cache.family::<u64, String>("item").unwrap();
    for id in 0..30 {
        items.set(&id, "x".repeat(100)).await.unwrap();
    }
    let stats = env.json(&["stats", "item", "order"], 0).await;
    assert_eq!(stats[0]["family"], "item");
    assert_eq!(stats[0]["keys"], 30);
    assert_eq!(stats[0]["complete"], true);
    assert!(stats[0]["bytes"].as_u64().unwrap() > 30 * 100);
    assert!(stats[0]["ttl_ms_min"].as_u64().unwrap() > 60_000);
    assert_eq!(stats[1]["keys"], 0);
    // A bounded sample says it is one.
    let stats = env.json(&["stats", "item", "--sample", "10"], 0).await;
    assert_eq!(stats[0]["keys"], 10);
    assert_eq!(stats[0]["complete"], false);

    // The bus from its start: the 30 writes' key events, then ours.
    let out = env
        .run(&["--json", "bus", "tail", "--from", "0", "--count", "30"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 30);
    assert!(events.iter().all(|e| e["kind"] == "key"));
    assert_eq!(events[0]["target"], items.key(&0).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_decoded_and_replayed_into_postgres() {
    let env = Env::new();
    let db = testkit::TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("CREATE TABLE kv (k BIGINT PRIMARY KEY, v TEXT NOT NULL, version BIGINT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let cache = env.cache().await;
    let kv = cache.family::<u64, String>("kv").unwrap();
    for k in 0..3u64 {
        kv.write_behind(&k, format!("value {k}")).await.unwrap();
    }
    // The database refuses every write: all three end as dead letters.
    let failing = cache
        .write_behind_worker(&kv, |_batch: Vec<Write<u64, String>>| async {
            Err::<(), _>(std::io::Error::other("constraint violated"))
        })
        .max_attempts(1)
        .start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cache.dead_letters("kv").await.unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "three dead letters");
        tokio::task::yield_now().await;
    }
    failing.shutdown(Duration::from_secs(5)).await;

    let dead = env
        .json(&["write-behind", "dead-letters", "list", "kv"], 0)
        .await;
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len(), 3);
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().unwrap().contains("constraint violated"))
    );
    let mut values: Vec<&str> = dead.iter().map(|d| d["value"].as_str().unwrap()).collect();
    values.sort();
    assert_eq!(values, ["value 0", "value 1", "value 2"]);

    // One replayed by id, then the rest; an unknown id is exit code 3.
    let first = dead[0]["id"].as_str().unwrap();
    let replayed = env
        .json(&["write-behind", "dead-letters", "replay", "kv", first], 0)
        .await;
    assert_eq!(replayed[0]["replayed"], true);
    env.json(
        &["write-behind", "dead-letters", "replay", "kv", "--all"],
        0,
    )
    .await;
    env.json(&["write-behind", "dead-letters", "replay", "kv", first], 3)
        .await;
    assert!(cache.dead_letters("kv").await.unwrap().is_empty());

    // A working database now: the replayed writes land, with their versions.
    let p = pool.clone();
    let worker = cache
        .write_behind_worker(&kv, move |batch: Vec<Write<u64, String>>| {
            let p = p.clone();
            async move {
                for w in batch {
                    sqlx::query(
                        "INSERT INTO kv VALUES ($1, $2, $3) ON CONFLICT (k) DO UPDATE \
                         SET v = EXCLUDED.v, version = EXCLUDED.version WHERE kv.version < EXCLUDED.version",
                    )
                    .bind(w.key as i64)
                    .bind(&w.value)
                    .bind(w.version as i64)
                    .execute(&p)
                    .await?;
                }
                Ok::<_, sqlx::Error>(())
            }
        })
        .start();
    let report = worker.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    let rows: Vec<(i64, String, i64)> = sqlx::query_as("SELECT k, v, version FROM kv ORDER BY k")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for (k, v, version) in rows {
        assert_eq!(v, format!("value {k}"));
        let original = dead
            .iter()
            .find(|d| d["value"] == v)
            .and_then(|d| d["version"].as_i64())
            .unwrap();
        assert_eq!(version, original, "replayed with its original version");
    }
    let status = env.json(&["write-behind", "status", "kv"], 0).await;
    assert_eq!(status[0]["length"], 0);
    assert_eq!(status[0]["dead_letters"], 0);
}

#[tokio::test]
async fn without_redis_settings_it_says_what_to_set() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["stats"])
        .env_remove("REDIS_URL")
        .env_remove("REDIS_CLUSTER_URLS")
        .env_remove("REDIS_SENTINEL_URLS")
        .env("LARDER_CACHE_CONFIG", "/nonexistent.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nonexistent.toml"));
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_larder"))
        .args(["write-behind", "dead-letters", "replay", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("original versions"));
}
