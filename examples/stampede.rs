//! "Cache Stampede": a popular key expires and 200 requests miss at once.
//! The article's fix locks in Redis and sleeps 100 ms between retries; larder
//! makes the others wait for the one load in progress and wakes them the
//! moment it lands: within a process through the shared load, across
//! processes through a lease in Redis and the fill's notification. With
//! `grace`, the expired value is served at once while one refresh runs, and
//! early refresh reloads a hot key before it expires at all.
//!
//!     cargo run -p larder-examples --example stampede
//!     REDIS_URL=redis://127.0.0.1:6379 cargo run -p larder-examples --example stampede

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder::{Family, Policy};

/// 200 concurrent requests for dashboard 1, spread over `families` (one
/// per process); returns how many reached the database.
async fn stampede(families: &[Family<u32, String>]) -> anyhow::Result<usize> {
    let queries = Arc::new(AtomicUsize::new(0));
    let mut requests = Vec::new();
    for i in 0..200 {
        let (dashboards, queries) = (families[i % families.len()].clone(), Arc::clone(&queries));
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
    Ok(queries.load(Ordering::SeqCst))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let policy = Policy::new("dashboard", "dashboard:{id}")
        .ttl(Duration::from_secs(1))
        // After the TTL: up to 30 s of the old value, served at once, while
        // one refresh runs (and while the database is down).
        .grace(Duration::from_secs(30));

    // One process.
    let cache = support::builder("stampede")
        .family(policy.clone())
        .build()
        .await?;
    let dashboards = cache.family::<u32, String>("dashboard")?;
    let started = Instant::now();
    let queries = stampede(std::slice::from_ref(&dashboards)).await?;
    println!(
        "one process: 200 concurrent misses -> {queries} database query, all answered in {:?}",
        started.elapsed()
    );
    assert_eq!(queries, 1);

    // Four processes sharing Redis (four caches with their own connections
    // are four processes as far as Redis can tell), on a key none has.
    if std::env::var("REDIS_URL").is_ok() {
        let mut processes = Vec::new();
        for _ in 0..4 {
            let cache = support::builder("stampede")
                .family(policy.clone())
                .build()
                .await?;
            processes.push(cache);
        }
        let families: Vec<Family<u32, String>> = processes
            .iter()
            .map(|c| c.family("dashboard"))
            .collect::<Result<_, _>>()?;
        families[0].invalidate(&1).await?;
        let started = Instant::now();
        let queries = stampede(&families).await?;
        println!(
            "four processes: 200 concurrent misses -> {queries} database query, all answered in {:?}",
            started.elapsed()
        );
        assert_eq!(
            queries, 1,
            "the lease lets one process load; the others wait for its fill"
        );
    }

    // Past the TTL, within grace: the old value at once, one refresh behind it.
    tokio::time::sleep(Duration::from_millis(1100)).await; // let the TTL run out
    let started = Instant::now();
    let value = dashboards
        .get_or_load(&1, || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<_, std::io::Error>(Some("the market dashboard, refreshed".to_string()))
        })
        .await?;
    println!(
        "after the TTL: {:?} in {:?} (stale, while a refresh runs)",
        value.as_deref(),
        started.elapsed()
    );
    assert_eq!(
        value.as_deref().map(String::as_str),
        Some("the market dashboard")
    );
    let refreshed = tokio::time::timeout(Duration::from_secs(5), async {
        while dashboards.stats().refreshes == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    anyhow::ensure!(refreshed.is_ok(), "the refresh did not finish within 5 s");
    let value = dashboards
        .get_or_load(&1, || async { Ok::<_, std::io::Error>(None) })
        .await?;
    println!("then: {:?}", value.as_deref());
    assert_eq!(
        value.as_deref().map(String::as_str),
        Some("the market dashboard, refreshed")
    );
    let stats = dashboards.stats();
    println!(
        "stale hits {}, refreshes {}",
        stats.stale_hits, stats.refreshes
    );
    Ok(())
}
