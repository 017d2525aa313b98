//! A watchlist screen needs many keys at once. `get_many` reads them with one
//! Redis round trip (MGET) and loads all the misses with one query, instead of
//! one round trip and one query per key.
//!
//!     cargo run -p larder-examples --example batch_reads

mod support;

use std::time::Duration;

use larder::Policy;
use support::Portfolio;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::demo_db(50).await?;
    let cache = support::builder("batch")
        .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
        .build()
        .await?;
    let portfolios = cache.family::<i64, Portfolio>("portfolio")?;

    for round in 1..=2 {
        let ids: Vec<i64> = (1..=10).chain([99]).collect();
        let db = db.clone();
        let found = portfolios
            .get_many(&ids, move |missing: Vec<i64>| async move {
                println!(
                    "  round {round}: one query for {} missing ids",
                    missing.len()
                );
                support::load_portfolios(db, &missing).await
            })
            .await?;
        let present = found.iter().filter(|p| p.is_some()).count();
        println!(
            "round {round}: {present} of {} portfolios (id 99 does not exist)",
            ids.len()
        );
    }
    assert_eq!(
        portfolios.stats().loader_calls,
        1,
        "the second round is all hits"
    );
    Ok(())
}
