//! "Strategy 2: Pattern-Based Invalidation", done safely: SCAN + UNLINK in
//! batches (never KEYS), every key part escaped so that a user id of `*`
//! matches that user only; and tags, which invalidate "all related caches"
//! in one round trip instead of scanning at all.
//!
//!     cargo run -p larder-examples --example pattern_invalidation

mod support;

use std::time::Duration;

use larder::Policy;
use larder::key::Any;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ttl = Duration::from_secs(300);
    let cache = support::builder("patterns")
        .family(
            Policy::new("order", "user:{user_id}:order:{order_id}")
                .ttl(ttl)
                .tag("user:{user_id}"),
        )
        .family(
            Policy::new("profile", "user:{user_id}:profile")
                .ttl(ttl)
                .tag("user:{user_id}"),
        )
        .build()
        .await?;
    let orders = cache.family::<(String, u32), String>("order")?;
    let profiles = cache.family::<String, String>("profile")?;
    for user in ["42", "*", "4"] {
        for order in 1..=3 {
            orders
                .set(
                    &(user.to_string(), order),
                    format!("order {order} of {user}"),
                )
                .await?;
        }
        profiles
            .set(&user.to_string(), format!("profile of {user}"))
            .await?;
    }

    // The article's `KEYS user:${userId}:*` with userId = "*" deletes
    // everyone's keys. Here it deletes user "*"'s orders only.
    let deleted = orders.invalidate_pattern(&("*".to_string(), Any)).await?;
    println!(
        "pattern (user \"*\", any order): {deleted} Redis keys deleted (0 without Redis: L1 only)"
    );
    let others = orders
        .get_or_load(&("42".to_string(), 1), || async {
            Ok::<_, std::io::Error>(None)
        })
        .await?;
    assert!(others.is_some(), "user 42's orders are untouched");

    // Everything about user 42, in every family tagged user:{user_id}: one
    // INCR, whatever the number of keys.
    cache
        .invalidate_tag("user:{user_id}", &"42".to_string())
        .await?;
    let gone = profiles
        .get_or_load(&"42".to_string(), || async {
            Ok::<_, std::io::Error>(None)
        })
        .await?;
    let kept = profiles
        .get_or_load(&"4".to_string(), || async { Ok::<_, std::io::Error>(None) })
        .await?;
    println!("after invalidate_tag(user 42): profile 42 {gone:?}, profile 4 {kept:?}");
    assert!(gone.is_none() && kept.is_some());
    Ok(())
}
