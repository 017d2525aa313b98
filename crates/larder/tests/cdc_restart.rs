//! The change stream across a PostgreSQL restart. A test binary of its own:
//! it restarts the shared local server, which would break the connections
//! of tests running beside it (test binaries run one at a time).

use std::process::Command;
use std::time::Duration;

use larder::cdc::{ChangeListener, Mapping, TableRule};
use larder::{Cache, Policy};
use sqlx::postgres::PgPoolOptions;
use testkit::TestDatabase;

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).max())
        .unwrap_or_else(|| {
            panic!(
                "this test restarts the local PostgreSQL with pg_ctlcluster and found no /etc/postgresql; \
                 run it through ./scripts/test on a machine with Debian's postgresql package"
            )
        });
    let status = Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect"])
        .arg(&version)
        .args(["main", "restart"])
        .status()
        .unwrap_or_else(|e| panic!("cannot run pg_ctlcluster: {e}"));
    assert!(
        status.success(),
        "pg_ctlcluster {version:?} main restart failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_loses_no_change() {
    let db = TestDatabase::create().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(db.url())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO users SELECT g, 'user ' || g FROM generate_series(1, 5) g")
        .execute(&pool)
        .await
        .unwrap();
    testkit::require_redis().await;
    let cache = Cache::builder()
        .namespace(testkit::namespace())
        .redis_url(testkit::redis_url())
        .family(Policy::new("profile", "user:{user_id}:profile").ttl(Duration::from_secs(3600)))
        .build()
        .await
        .unwrap();
    let slot = format!("larder_t_{:016x}", rand::random::<u64>());
    let listener = ChangeListener::builder(&cache, db.url())
        .slot(&slot)
        .publication(&slot)
        .mapping(Mapping::new().table("users", TableRule::new().key("user:{id}:profile")))
        .retry_every(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    assert!(listener.caught_up(Duration::from_secs(5)).await);
    let profiles = cache.family::<i64, String>("profile").unwrap();
    let read = |id: i64| {
        let pool = pool.clone();
        let profiles = profiles.clone();
        async move {
            profiles
                .get_or_load(&id, move || async move {
                    sqlx::query_scalar::<_, String>("SELECT name FROM users WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&pool)
                        .await
                })
                .await
                .unwrap()
                .map(|n| n.as_ref().clone())
        }
    };
    assert_eq!(read(1).await.as_deref(), Some("user 1"));

    restart_postgres();
    // The pool's connections died with the server; new ones are made.
    sqlx::query("UPDATE users SET name = 'after the restart' WHERE id = 1")
        .execute(&pool)
        .await
        .expect("the server is back");
    let mark: String =
        sqlx::query_scalar("SELECT pg_logical_emit_message(false, 'test', '')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        listener
            .wait_applied(&mark, Duration::from_secs(15))
            .await
            .unwrap()
    );
    assert_eq!(read(1).await.as_deref(), Some("after the restart"));
    assert!(listener.stats().sessions >= 2);
    listener.drop_slot().await.unwrap();
}
