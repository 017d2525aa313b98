//! "Key Takeaways: monitor your hit rate": per-family counters, readable in
//! process (`Family::stats`) and exported through the `metrics` facade
//! (`larder_cache_requests_total{family,result}`) for Prometheus.
//!
//!     cargo run -p larder-examples --example hit_rate

mod support;

use std::time::Duration;

use larder::Policy;
use support::Portfolio;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::demo_db(1_000).await?;
    let cache = support::builder("hit-rate")
        .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
        .build()
        .await?;
    let portfolios = cache.family::<i64, Portfolio>("portfolio")?;

    // A skewed workload: a few users are much more active than the rest.
    let mut x: u64 = 7;
    for _ in 0..20_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let id = 1 + (u.powi(4) * 1000.0) as i64;
        let db = db.clone();
        portfolios
            .get_or_load(&id, move || support::load_portfolio(db, id))
            .await?;
    }

    let s = portfolios.stats();
    let rate = s.hit_rate().unwrap_or(0.0);
    println!(
        "{} requests: {} L1 hits, {} Redis hits, {} misses -> hit rate {:.1}%",
        s.requests(),
        s.hits_l1,
        s.hits_l2,
        s.misses,
        rate * 100.0
    );
    if rate < 0.8 {
        println!("below 80%: rethink what you cache and for how long");
    }
    assert!(rate > 0.9);
    Ok(())
}
