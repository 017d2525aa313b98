//! Invalidation bus latency: from `invalidate` returning in process A to
//! process B having dropped its L1 copy.

use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use larder::{Cache, Policy};
use serde_json::json;

/// Settings of the bus scenario.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// Redis carrying the bus.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Invalidations to time.
    #[arg(long, default_value_t = 2_000)]
    pub samples: u64,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/bus.json")]
    pub json: std::path::PathBuf,
}

pub async fn run(args: BusArgs) -> anyhow::Result<()> {
    let namespace = format!("bench-bus-{:08x}", rand::random::<u32>());
    let build = || async {
        Cache::builder()
            .namespace(&namespace)
            .redis_url(&args.redis_url)
            .redis_timeout(Duration::from_secs(1))
            .family(Policy::new("item", "item:{id}").ttl(Duration::from_secs(600)))
            .build()
            .await
    };
    // Two caches, each with its own connections and listener: two processes
    // as far as Redis can tell.
    let (a, b) = (build().await?, build().await?);
    let items_a = a.family::<u64, String>("item")?;
    let items_b = b.family::<u64, String>("item")?;
    anyhow::ensure!(
        b.sync_invalidations(Duration::from_secs(5)).await?,
        "process B's bus did not connect"
    );
    let mut publish_us = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    let mut applied_us = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)?;
    for i in 0..args.samples {
        let key = i % 100;
        items_b
            .get_or_load(&key, move || async move {
                Ok::<_, std::io::Error>(Some(format!("v{key}")))
            })
            .await?;
        let seen = b.bus_stats().applied;
        let started = Instant::now();
        items_a.invalidate(&key).await?;
        let published = started.elapsed();
        // Spin (yielding) on B's counter: the finest clock there is here.
        let deadline = started + Duration::from_secs(5);
        while b.bus_stats().applied == seen {
            anyhow::ensure!(
                Instant::now() < deadline,
                "B never applied invalidation {i}"
            );
            tokio::task::yield_now().await;
        }
        let applied = started.elapsed();
        publish_us.record(published.as_micros().max(1) as u64)?;
        applied_us.record(applied.as_micros().max(1) as u64)?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\ninvalidation bus — {} invalidations, Redis on loopback ({})\n",
        args.samples,
        crate::report::machine()
    );
    println!("{:<48}{:>10}{:>10}{:>10}", "", "p50", "p99", "max");
    println!(
        "{:<48}{:>8.3}ms{:>8.3}ms{:>8.3}ms",
        "A: invalidate returns (UNLINK + XADD)",
        ms(&publish_us, 0.5),
        ms(&publish_us, 0.99),
        publish_us.max() as f64 / 1000.0
    );
    println!(
        "{:<48}{:>8.3}ms{:>8.3}ms{:>8.3}ms",
        "B: L1 copy dropped (from A's call)",
        ms(&applied_us, 0.5),
        ms(&applied_us, 0.99),
        applied_us.max() as f64 / 1000.0
    );
    let figures = json!({
        "scenario": "invalidation bus",
        "machine": crate::report::machine(),
        "samples": args.samples,
        "invalidate_ms": { "p50": ms(&publish_us, 0.5), "p99": ms(&publish_us, 0.99), "max": publish_us.max() as f64 / 1000.0 },
        "applied_in_b_ms": { "p50": ms(&applied_us, 0.5), "p99": ms(&applied_us, 0.99), "max": applied_us.max() as f64 / 1000.0 },
    });
    crate::report::save_figures(&args.json, &figures)
}
