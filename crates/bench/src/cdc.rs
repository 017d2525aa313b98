//! Change-stream latency: from a `COMMIT` made by a plain SQL connection to
//! the L1 drop in another process, through the slot, the listener (in
//! process A), Redis and the bus (to process B). Measured beside the bus
//! alone (`invalidate` in A → drop in B), which is its floor, and with the
//! listener's echo window on (the default) and off.

use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use larder::cdc::{ChangeListener, Mapping, TableRule};
use larder::{Cache, Policy};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

/// Settings of the cdc scenario.
#[derive(Debug, Clone, Args)]
pub struct CdcArgs {
    /// Redis carrying the invalidations.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PostgreSQL with `wal_level = logical`; the scenario works in a schema
    /// of its own and drops it, its publication and its slot at the end.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Commits to time per row of the table.
    #[arg(long, default_value_t = 500)]
    pub samples: u64,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/cdc.json")]
    pub json: std::path::PathBuf,
}

struct Row {
    label: &'static str,
    histogram: Histogram<u64>,
}

pub async fn run(args: CdcArgs) -> anyhow::Result<()> {
    let tag = format!("{:08x}", rand::random::<u32>());
    let schema = format!("bench_cdc_{tag}");
    let slot = format!("larder_bench_{tag}");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&args.database_url)
        .await?;
    for sql in [
        format!("CREATE SCHEMA {schema}"),
        format!("CREATE TABLE {schema}.items (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)"),
        format!("INSERT INTO {schema}.items SELECT g, 0 FROM generate_series(0, 99) g"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await?;
    }
    let result = measure(&args, &pool, &schema, &slot, &tag).await;
    // Clean up whatever happened: a slot left behind keeps WAL for ever.
    for sql in [
        format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ),
        format!("DROP PUBLICATION IF EXISTS {slot}"),
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
    ] {
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&pool)
            .await
        {
            eprintln!("cleanup `{sql}` failed: {e}");
        }
    }
    result
}

async fn measure(
    args: &CdcArgs,
    pool: &sqlx::PgPool,
    schema: &str,
    slot: &str,
    tag: &str,
) -> anyhow::Result<()> {
    let namespace = format!("bench-cdc-{tag}");
    let build = || async {
        Cache::builder()
            .namespace(&namespace)
            .redis_url(&args.redis_url)
            .redis_timeout(Duration::from_secs(1))
            .family(Policy::new("item", "item:{id}").ttl(Duration::from_secs(600)))
            .build()
            .await
    };
    // Two caches with their own connections: two processes as far as Redis
    // and PostgreSQL can tell. A holds the slot; B is where reads happen.
    let (a, b) = (build().await?, build().await?);
    let items_a = a.family::<i64, i64>("item")?;
    let items_b = b.family::<i64, i64>("item")?;
    anyhow::ensure!(
        b.sync_invalidations(Duration::from_secs(5)).await?,
        "process B's bus did not connect"
    );
    let fill = |key: i64| {
        let items_b = items_b.clone();
        async move {
            items_b
                .get_or_load(
                    &key,
                    move || async move { Ok::<_, std::io::Error>(Some(key)) },
                )
                .await
        }
    };
    let wait_drop = |seen: u64, started: Instant| {
        let b = b.clone();
        async move {
            let deadline = started + Duration::from_secs(5);
            while b.bus_stats().applied == seen {
                anyhow::ensure!(Instant::now() < deadline, "B never dropped its copy");
                tokio::task::yield_now().await;
            }
            Ok::<Duration, anyhow::Error>(started.elapsed())
        }
    };
    let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let mut rows = Vec::new();

    // The floor: the bus alone.
    let mut bus = histogram()?;
    for i in 0..args.samples {
        let key = (i % 100) as i64;
        fill(key).await?;
        let seen = b.bus_stats().applied;
        let started = Instant::now();
        items_a.invalidate(&key).await?;
        bus.record(wait_drop(seen, started).await?.as_micros().max(1) as u64)?;
    }
    rows.push(Row {
        label: "bus only: invalidate in A -> L1 drop in B",
        histogram: bus,
    });

    let update = format!("UPDATE {schema}.items SET v = v + 1 WHERE id = $1");
    for (window, label, commit_label) in [
        (
            Duration::from_millis(20),
            "COMMIT returned -> L1 drop in B (echo window 20 ms, default)",
            "COMMIT itself (window 20 ms run)",
        ),
        (
            Duration::ZERO,
            "COMMIT returned -> L1 drop in B (echo window 0)",
            "COMMIT itself (window 0 run)",
        ),
    ] {
        let listener = ChangeListener::builder(&a, &args.database_url)
            .slot(slot)
            .publication(slot)
            .mapping(
                Mapping::new().table(format!("{schema}.items"), TableRule::new().key("item:{id}")),
            )
            .echo_window(window)
            .retry_every(Duration::from_millis(100))
            .start()
            .await?;
        anyhow::ensure!(
            listener.wait_consumer(Duration::from_secs(10)).await,
            "the listener did not take the slot"
        );
        let mut drop_us = histogram()?;
        let mut commit_us = histogram()?;
        for i in 0..args.samples {
            let key = (i % 100) as i64;
            fill(key).await?;
            let seen = b.bus_stats().applied;
            let sent = Instant::now();
            sqlx::query(sqlx::AssertSqlSafe(update.clone()))
                .bind(key)
                .execute(pool)
                .await?;
            let committed = Instant::now();
            commit_us.record((committed - sent).as_micros().max(1) as u64)?;
            drop_us.record(wait_drop(seen, committed).await?.as_micros().max(1) as u64)?;
        }
        listener.stop().await;
        rows.push(Row {
            label,
            histogram: drop_us,
        });
        rows.push(Row {
            label: commit_label,
            histogram: commit_us,
        });
    }

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\nchange stream — {} commits per row, PostgreSQL and Redis on loopback ({})\n",
        args.samples,
        crate::report::machine()
    );
    println!("{:<64}{:>10}{:>10}{:>10}", "", "p50", "p99", "max");
    let mut figures = Vec::new();
    for r in &rows {
        let h = &r.histogram;
        println!(
            "{:<64}{:>8.3}ms{:>8.3}ms{:>8.3}ms",
            r.label,
            ms(h, 0.5),
            ms(h, 0.99),
            h.max() as f64 / 1000.0
        );
        figures.push(json!({
            "row": r.label,
            "p50_ms": ms(h, 0.5),
            "p99_ms": ms(h, 0.99),
            "max_ms": h.max() as f64 / 1000.0,
        }));
    }
    let figures = json!({
        "scenario": "change stream",
        "machine": crate::report::machine(),
        "samples": args.samples,
        "rows": figures,
    });
    crate::report::save_figures(&args.json, &figures)
}
