//! A fresh PostgreSQL database per test.

use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// A database created for one test (`larder_t_<random>`), dropped on drop.
pub struct TestDatabase {
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates the database, or panics with instructions if PostgreSQL is not
    /// reachable.
    pub async fn create() -> TestDatabase {
        let admin = crate::postgres_admin_url();
        let name = format!("larder_t_{:016x}", rand::random::<u64>());
        let mut conn = connect(&admin).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} failed: {e}"));
        let _ = conn.close().await;
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("LARDER_TEST_DATABASE_URL must end in /<database>"),
        };
        TestDatabase { name, url }
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn connect(url: &str) -> PgConnection {
    match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("{}", missing_pg(&e.to_string())),
        Err(_) => panic!("{}", missing_pg("no answer within 5 s")),
    }
}

fn missing_pg(why: &str) -> String {
    format!(
        "this test needs PostgreSQL at {} ({why}).\n\
         Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
         or run the whole suite with ./scripts/test, which starts (or installs) it;\n\
         set LARDER_TEST_DATABASE_URL to use another server.",
        crate::postgres_admin_url()
    )
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside any async context we can borrow; use a small
        // runtime on its own thread. Best effort: a leftover test database is
        // removed by the next ./scripts/test run.
        let name = self.name.clone();
        let admin = crate::postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                    let _ = conn.close().await;
                }
            });
        })
        .join();
    }
}

/// Drops replication slot `0` however the test ends: a slot left behind
/// keeps WAL on the server for ever, and keeps its database from being
/// dropped while a listener holds it. Declare it after the
/// [`TestDatabase`], so that it drops first.
pub struct SlotGuard(pub String);

impl SlotGuard {
    /// A guard for a new, random slot name (`larder_t_<hex>`).
    pub fn random() -> SlotGuard {
        SlotGuard(format!("larder_t_{:016x}", rand::random::<u64>()))
    }

    /// The slot's name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let slot = self.0.clone();
        let admin = crate::postgres_admin_url();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut conn) = PgConnection::connect(&admin).await else {
                    return;
                };
                // A listener still running lets go once its walsender ends.
                for _ in 0..50 {
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    )
                    .bind(&slot)
                    .execute(&mut conn)
                    .await;
                    let _ = sqlx::query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name = $1 AND active_pid IS NULL",
                    )
                    .bind(&slot)
                    .execute(&mut conn)
                    .await;
                    let left: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                    )
                    .bind(&slot)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap_or(1);
                    if left == 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = conn.close().await;
            });
        })
        .join();
    }
}
