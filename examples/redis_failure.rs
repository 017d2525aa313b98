//! "Not Handling Redis Failures Gracefully": with Redis gone, the app keeps
//! working (slower). Every Redis command has a timeout, so a dead or hanging
//! Redis costs each request at most that long before the database answers.
//!
//!     cargo run -p larder-examples --example redis_failure

mod support;

use std::time::{Duration, Instant};

use larder::{Cache, Policy};
use support::Portfolio;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::demo_db(10).await?;
    let cache = Cache::builder()
        // Nothing listens here: Redis is "down".
        .redis_url("redis://127.0.0.1:1")
        .redis_timeout(Duration::from_millis(50))
        .l1_max_bytes(0) // no in-process tier, so every read tries Redis
        .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
        .build()
        .await?; // an unreachable Redis does not stop the application from starting
    let portfolios = cache.family::<i64, Portfolio>("portfolio")?;

    for id in 1..=3 {
        let started = Instant::now();
        let db = db.clone();
        let p = portfolios
            .get_or_load(&id, move || support::load_portfolio(db, id))
            .await?;
        println!(
            "user {id}: {:?} in {:?} (from the database)",
            p.map(|p| p.total_value.clone()),
            started.elapsed()
        );
    }
    let s = portfolios.stats();
    println!(
        "redis errors counted: {}, requests failed: 0",
        s.redis_errors
    );
    assert!(s.redis_errors >= 3);
    Ok(())
}
