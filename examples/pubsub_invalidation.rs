//! "Strategy 3: Pub/Sub Invalidation (Multi-Server)": every server drops its
//! in-process copy when any server writes. Plain pub/sub loses messages
//! while a subscriber reconnects; larder's bus is a Redis Stream that each
//! server replays from where it was, and flushes its L1 only when it cannot.
//!
//! Needs Redis: REDIS_URL (default redis://127.0.0.1:6379).
//!
//!     cargo run -p larder-examples --example pubsub_invalidation

use std::time::Duration;

use larder::{Cache, Policy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let namespace = format!("example-pubsub-{}", std::process::id());
    // Two "servers": separate caches, separate connections, one Redis.
    let server = || async {
        Cache::builder()
            .namespace(&namespace)
            .redis_url(&url)
            .family(Policy::new("profile", "user:{id}:profile").ttl(Duration::from_secs(3600)))
            .build()
            .await
    };
    let (server1, server2) = (server().await?, server().await?);
    if !server2.sync_invalidations(Duration::from_secs(3)).await? {
        anyhow::bail!("no Redis at {url}: start one (redis-server) or set REDIS_URL");
    }
    let on1 = server1.family::<u64, String>("profile")?;
    let on2 = server2.family::<u64, String>("profile")?;

    on2.get_or_load(&42, || async {
        Ok::<_, std::io::Error>(Some("old name".to_string()))
    })
    .await?;
    println!("server 2 caches user 42 in its own memory: old name");

    on1.set(&42, "new name".into()).await?; // server 1 writes
    server2.sync_invalidations(Duration::from_secs(3)).await?;
    let seen = on2
        .get_or_load(&42, || async { Ok::<_, std::io::Error>(None) })
        .await?;
    println!("server 2 after server 1's write: {seen:?}");
    assert_eq!(seen.as_deref().map(String::as_str), Some("new name"));
    println!("bus: {:?}", server2.bus_stats());
    Ok(())
}
