//! "Serialization Overhead": what a cached value costs, and how larder keeps
//! it down. Values go to Redis as MessagePack (compact, tolerant of added
//! fields), lz4-compressed above 1 KiB; the in-process tier keeps them decoded,
//! so a hit there deserialises nothing. Oversized values are refused.
//!
//!     cargo run -p larder-examples --example serialization

mod support;

use std::time::Duration;

use larder::{Codec, Error, Policy};
use serde::{Deserialize, Serialize};

/// The article's BAD example: the user with all their orders.
#[derive(Clone, Serialize, Deserialize)]
struct UserWithEverything {
    id: u64,
    name: String,
    orders: Vec<String>,
}

/// The GOOD example: only what the hot path needs.
#[derive(Clone, Serialize, Deserialize)]
struct UserSummary {
    id: u64,
    name: String,
    portfolio_value: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ttl = Duration::from_secs(60);
    let cache = support::builder("serialization")
        .family(
            Policy::new("user_full", "user:{id}:full")
                .ttl(ttl)
                .max_value_size(64 * 1024),
        )
        .family(Policy::new("user_summary", "user:{id}:summary").ttl(ttl))
        .family(
            Policy::new("user_json", "user:{id}:json")
                .ttl(ttl)
                .codec(Codec::Json),
        )
        .build()
        .await?;
    let full = cache.family::<u64, UserWithEverything>("user_full")?;
    let summary = cache.family::<u64, UserSummary>("user_summary")?;
    let json = cache.family::<u64, UserSummary>("user_json")?;

    let everything = UserWithEverything {
        id: 123,
        name: "Asha".into(),
        orders: (0..5_000)
            .map(|i| format!("order #{i}: BUY 10 RELIANCE @ 2431.55"))
            .collect(),
    };
    match full.set(&123, everything).await {
        Err(Error::ValueTooLarge { size, max, .. }) => {
            println!("refused the whole user: {size} bytes encoded, limit {max}")
        }
        other => anyhow::bail!("expected ValueTooLarge, got {other:?}"),
    }

    let small = UserSummary {
        id: 123,
        name: "Asha".into(),
        portfolio_value: "1786769.74".into(),
    };
    summary.set(&123, small.clone()).await?;
    json.set(&123, small).await?;
    let usage = cache.l1_usage().await;
    println!(
        "cached the summary instead: L1 holds {} entries, {} bytes charged (MessagePack and JSON copies)",
        usage.entries, usage.bytes
    );
    // An L1 hit hands out the decoded value itself: an Arc, no parsing.
    let hit = summary
        .get_or_load(&123, || async { Ok::<_, std::io::Error>(None) })
        .await?
        .expect("just set");
    println!("hit: {} is worth {}", hit.name, hit.portfolio_value);
    Ok(())
}
