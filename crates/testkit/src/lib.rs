//! Test support: real Redis and PostgreSQL, isolated per test.
//!
//! Tests never mock Redis or the database. They use the servers the machine
//! runs (or those named by `LARDER_TEST_REDIS_URL` and
//! `LARDER_TEST_DATABASE_URL`), each test in its own key namespace or its own
//! database, and fail loudly, saying how to start the missing service, when
//! one is not there. `./scripts/test` starts them (installing them if needed).

mod fault_proxy;
mod pg;
mod redis_server;

use std::time::Duration;

pub use fault_proxy::{Fault, FaultProxy};
pub use pg::TestDatabase;
pub use redis_server::RedisServer;

/// The shared Redis used by tests.
pub fn redis_url() -> String {
    std::env::var("LARDER_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The PostgreSQL maintenance database tests create their databases from.
pub fn postgres_admin_url() -> String {
    std::env::var("LARDER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh key namespace (`t-<random>`), so that tests sharing one Redis
/// never see each other's keys.
pub fn namespace() -> String {
    format!("t-{:016x}", rand::random::<u64>())
}

/// Panics with instructions unless the test Redis answers `PING`.
pub async fn require_redis() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let attempt = async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok::<_, redis::RedisError>(conn)
    };
    match tokio::time::timeout(Duration::from_secs(3), attempt).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => panic!("{}", missing_redis(&e.to_string())),
        Err(_) => panic!("{}", missing_redis("no answer within 3 s")),
    }
}

fn missing_redis(why: &str) -> String {
    format!(
        "this test needs Redis at {} ({why}).\n\
         Start it with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no\n\
         or run the whole suite with ./scripts/test, which starts (or installs) it;\n\
         set LARDER_TEST_REDIS_URL to use another server.",
        redis_url()
    )
}
