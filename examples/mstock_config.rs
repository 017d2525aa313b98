//! "Real-World Example: Caching at Mstock": the article's `CacheConfig` as a
//! policy file, and typed families over it. Orders, balances and trade
//! history are deliberately absent: they are never cached.
//!
//!     cargo run -p larder-examples --example mstock_config

mod support;

use std::collections::HashMap;

use larder::Policies;

const CACHE_CONFIG: &str = r#"
# CACHED: high-read, tolerates slight staleness
[families.stock_price]
key = "stock:{symbol}:price"
ttl = "2s"                 # the exchange pushes updates every ~1 s
strategy = "write-through"

[families.watchlist]
key = "watchlist:{user_id}"
ttl = "5m"
strategy = "cache-aside"   # invalidated on watchlist update

[families.user_session]
key = "session:{session_id}"
ttl = "30m"
strategy = "write-through"

[families.market_depth]
key = "depth:{symbol}"
ttl = "1s"                 # must be near real-time
strategy = "write-through"

# NOT CACHED: order execution, account balance, trade history.
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let policies = Policies::from_toml_str(CACHE_CONFIG)?;
    for p in policies.iter() {
        println!(
            "{:<14} {:<22} {:?} {:?}",
            p.name(),
            p.key_template(),
            p.get_ttl(),
            p.get_strategy()
        );
    }
    let cache = support::builder("mstock")
        .policies(policies)
        .build()
        .await?;
    let prices = cache.family::<String, String>("stock_price")?;
    let watchlists = cache.family::<i64, Vec<String>>("watchlist")?;

    let symbol = "RELIANCE".to_string();
    println!("price key in Redis: {}", prices.key(&symbol)?);
    prices.set(&symbol, "2431.55".into()).await?;

    let list = watchlists
        .get_or_load(&42, || async {
            Ok::<_, std::io::Error>(Some(vec![
                "RELIANCE".to_string(),
                "TCS".to_string(),
                "INFY".to_string(),
            ]))
        })
        .await?
        .unwrap_or_default();
    // The watchlist's prices in one round trip.
    let got = prices
        .get_many(&list, |missing: Vec<String>| async move {
            // Stand-in for `SELECT symbol, last_price FROM instruments WHERE symbol = ANY($1)`.
            let quotes = HashMap::from([
                ("TCS".to_string(), "3912.10"),
                ("INFY".to_string(), "1544.00"),
            ]);
            Ok::<_, std::io::Error>(
                missing
                    .into_iter()
                    .filter_map(|s| quotes.get(&s).map(|p| (s, p.to_string())))
                    .collect(),
            )
        })
        .await?;
    for (symbol, price) in list.iter().zip(got) {
        println!(
            "{symbol:<10} {}",
            price.as_deref().map(String::as_str).unwrap_or("-")
        );
    }
    Ok(())
}
