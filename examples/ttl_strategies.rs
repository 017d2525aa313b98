//! "TTL Strategies": a TTL per kind of data, as in the article's table, and
//! "No TTL (Keys Live Forever)" made impossible by accident.
//!
//!     cargo run -p larder-examples --example ttl_strategies

mod support;

use std::time::{Duration, Instant};

use larder::{Error, Policies};

const POLICIES: &str = r#"
[families.stock_price]      # changes every second
key = "stock:{symbol}:price"
ttl = "2s"

[families.market_depth]     # near real-time
key = "depth:{symbol}"
ttl = "5s"

[families.user_session]
key = "session:{id}"
ttl = "30m"

[families.portfolio]        # a balance between freshness and speed
key = "portfolio:{user_id}"
ttl = "60s"
jitter = "10%"              # entries loaded together do not expire together

[families.user_profile]     # rarely changes
key = "user:{id}:profile"
ttl = "1h"

[families.static_config]    # never changes: say so explicitly
key = "config:{name}"
ttl = "never"
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A family without a TTL is refused, not silently cached forever.
    match Policies::from_toml_str("[families.oops]\nkey = \"oops:{id}\"\n") {
        Err(e @ Error::Config { .. }) => println!("refused: {e}"),
        other => anyhow::bail!("a family without ttl was accepted: {other:?}"),
    }

    let cache = support::builder("ttl")
        .policies(Policies::from_toml_str(POLICIES)?)
        .build()
        .await?;
    let prices = cache.family::<String, String>("stock_price")?;
    let symbol = "RELIANCE".to_string();

    let mut loads = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(4500) {
        let price = prices
            .get_or_load(&symbol, || async {
                Ok::<_, std::io::Error>(Some("2431.55".to_string()))
            })
            .await?;
        if prices.stats().loader_calls > loads {
            loads = prices.stats().loader_calls;
            println!(
                "{:>6.2?}: loaded {price:?} from the source (TTL 2 s)",
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "{} reads, {loads} loads: one per TTL",
        prices.stats().requests()
    );
    assert!((2..=3).contains(&loads));
    Ok(())
}
