//! "Cache Stampede": a popular key expires and 200 requests miss at once.
//! The article's fix locks in Redis and sleeps 100 ms between retries; larder
//! makes the 199 others wait for the one load in progress, and wakes them the
//! moment it lands.
//!
//!     cargo run -p larder-examples --example stampede

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder::Policy;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cache = support::builder("stampede")
        .family(Policy::new("dashboard", "dashboard:{id}").ttl(Duration::from_secs(60)))
        .build()
        .await?;
    let dashboards = cache.family::<u32, String>("dashboard")?;
    let queries = Arc::new(AtomicUsize::new(0));

    let started = Instant::now();
    let mut requests = Vec::new();
    for _ in 0..200 {
        let (dashboards, queries) = (dashboards.clone(), Arc::clone(&queries));
        requests.push(tokio::spawn(async move {
            dashboards
                .get_or_load(&1, move || async move {
                    queries.fetch_add(1, Ordering::SeqCst);
                    // An expensive query.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, std::io::Error>(Some("the market dashboard".to_string()))
                })
                .await
        }));
    }
    for r in requests {
        r.await??;
    }
    println!(
        "200 concurrent misses -> {} database query, all answered in {:?}",
        queries.load(Ordering::SeqCst),
        started.elapsed()
    );
    assert_eq!(queries.load(Ordering::SeqCst), 1);
    Ok(())
}
