//! "Working Code: Basic Cache-Aside" and "Cache Hit vs Cache Miss": the
//! article's `getUserPortfolio`. Check the cache; on a miss query the
//! database, store the row with a 60-second TTL, return it.
//!
//!     cargo run -p larder-examples --example cache_aside

mod support;

use std::time::{Duration, Instant};

use larder::Policy;
use support::Portfolio;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::demo_db(100).await?;
    let cache = support::builder("cache-aside")
        .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
        .build()
        .await?;
    let portfolios = cache.family::<i64, Portfolio>("portfolio")?;

    for attempt in 1..=3 {
        let started = Instant::now();
        let db = db.clone();
        // The loader runs only on a miss. It must own what it uses (here a
        // pool handle), because the load outlives a caller that gives up.
        let portfolio = portfolios
            .get_or_load(&42, move || support::load_portfolio(db, 42))
            .await?;
        println!(
            "attempt {attempt}: {portfolio:?} in {:?}",
            started.elapsed()
        );
    }

    // The article's `if (cached)` misses cached empty results. Here "no such
    // user" is an answer, and it is cached too (for the negative TTL).
    for _ in 0..3 {
        let db = db.clone();
        let missing = portfolios
            .get_or_load(&4242, move || support::load_portfolio(db, 4242))
            .await?;
        assert!(missing.is_none());
    }

    let s = portfolios.stats();
    println!(
        "hits: {} from L1, {} from Redis, {} negative; misses: {}; database queries: {}",
        s.hits_l1, s.hits_l2, s.negative_hits, s.misses, s.loader_calls
    );
    assert_eq!(
        s.loader_calls, 2,
        "one query for user 42, one for the unknown user"
    );
    Ok(())
}
