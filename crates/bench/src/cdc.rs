//! Change-stream latency: from a `COMMIT` made by a plain SQL connection to
//! the L1 drop in another process, through the slot, the listener (in
//! process A), Redis and the bus (to process B). Measured beside the bus
//! alone (`invalidate` in A → drop in B), which is its floor, and with the
//! listener's echo window on (the default) and off.
//!
//! Then the throughput: one `UPDATE` of many rows (a batch job), once with a
//! key per row and once with a tag per user, timed from the `COMMIT` to the
//! listener having applied and confirmed it, with the slot's lag sampled on
//! the way and what it cost PostgreSQL (WAL written, the walsender's CPU) and
//! Redis (commands, CPU).

use std::time::{Duration, Instant};

use anyhow::Context as _;
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
    /// Rows one `UPDATE` changes in the throughput part (0 skips it).
    #[arg(long, default_value_t = 100_000)]
    pub batch: u64,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/cdc.json")]
    pub json: std::path::PathBuf,
}

/// Users the throughput part's holdings belong to: its `UPDATE` bumps this
/// many tags.
const USERS: u64 = 1_000;

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
        // The throughput tables, filled before their slot exists so that the
        // fill is not part of what is measured.
        format!("CREATE TABLE {schema}.by_key (id BIGINT PRIMARY KEY, qty BIGINT NOT NULL)"),
        format!(
            "INSERT INTO {schema}.by_key SELECT g, 0 FROM generate_series(1, {}) g",
            args.batch
        ),
        format!(
            "CREATE TABLE {schema}.holdings (id BIGINT PRIMARY KEY, \
             user_id BIGINT NOT NULL, qty BIGINT NOT NULL)"
        ),
        format!(
            "INSERT INTO {schema}.holdings SELECT g, g % {USERS}, 0 FROM generate_series(1, {}) g",
            args.batch
        ),
        format!("ALTER TABLE {schema}.holdings REPLICA IDENTITY FULL"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await?;
    }
    let result = measure(&args, &pool, &schema, &slot, &tag).await;
    // Clean up whatever happened: a slot left behind keeps WAL for ever.
    let batch_slot = format!("{slot}_batch");
    let mut cleanup = Vec::new();
    for s in [&slot, &batch_slot] {
        cleanup.push(format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{s}'"
        ));
        cleanup.push(format!("DROP PUBLICATION IF EXISTS {s}"));
    }
    cleanup.push(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    for sql in cleanup {
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
            // What the throughput part's holdings invalidate, by tag.
            .family(
                Policy::new("portfolio", "portfolio:{user_id}")
                    .ttl(Duration::from_secs(600))
                    .tag("holdings:{user_id}"),
            )
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

    let batches = if args.batch > 0 {
        throughput(args, pool, &a, schema, &format!("{slot}_batch")).await?
    } else {
        Vec::new()
    };

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
        "batch": batches,
    });
    crate::report::save_figures(&args.json, &figures)
}

/// What Redis says it has done so far (`INFO`).
#[derive(Debug, Clone, Copy)]
struct RedisCounters {
    commands: u64,
    cpu: Duration,
}

async fn redis_counters(
    redis: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<RedisCounters> {
    let info: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(redis)
        .await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .with_context(|| format!("INFO has no {name}"))
    };
    let seconds = |name: &str| -> anyhow::Result<f64> { Ok(field(name)?.parse::<f64>()?) };
    Ok(RedisCounters {
        commands: field("total_commands_processed")?.parse()?,
        cpu: Duration::from_secs_f64(seconds("used_cpu_user")? + seconds("used_cpu_sys")?),
    })
}

/// One `UPDATE` of `args.batch` rows per mapping, each timed from its
/// `COMMIT` to the listener in `a` having applied and confirmed it.
async fn throughput(
    args: &CdcArgs,
    pool: &sqlx::PgPool,
    a: &Cache,
    schema: &str,
    slot: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut redis = redis::Client::open(args.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let listener = ChangeListener::builder(a, &args.database_url)
        .slot(slot)
        .publication(slot)
        .mapping(
            Mapping::new()
                .table(
                    format!("{schema}.by_key"),
                    TableRule::new().key("item:{id}"),
                )
                .table(
                    format!("{schema}.holdings"),
                    TableRule::new().tag("holdings:{user_id}"),
                ),
        )
        .echo_window(Duration::ZERO)
        .retry_every(Duration::from_millis(100))
        // The batch is meant to put the slot behind; the alarm is not news.
        .max_lag_bytes(u64::MAX)
        .start()
        .await?;
    anyhow::ensure!(
        listener.caught_up(Duration::from_secs(30)).await,
        "the throughput listener did not catch up"
    );
    let walsender: Option<i32> =
        sqlx::query_scalar("SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .fetch_one(pool)
            .await?;
    let walsender = walsender.context("the throughput slot has no walsender")? as u32;
    let lsn = || async {
        sqlx::query_scalar::<_, String>("SELECT pg_current_wal_lsn()::text")
            .fetch_one(pool)
            .await
    };
    let lag = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_one(pool)
        .await
    };

    println!(
        "\nchange stream throughput — one UPDATE of {} rows per row of the table\n",
        args.batch
    );
    println!(
        "{:<34}{:>10}{:>12}{:>12}{:>11}{:>10}{:>13}{:>12}{:>10}{:>11}",
        "",
        "UPDATE",
        "->applied",
        "rows/s",
        "max lag",
        "WAL",
        "walsender",
        "listener",
        "Redis",
        "Redis"
    );
    println!(
        "{:<34}{:>10}{:>12}{:>12}{:>11}{:>10}{:>13}{:>12}{:>10}{:>11}",
        "", "", "", "", "MiB", "MiB", "CPU ms", "CPU ms", "commands", "CPU ms"
    );
    let mut figures = Vec::new();
    for (table, label) in [
        ("by_key", "a key per row"),
        ("holdings", "a tag per user (1,000 users)"),
    ] {
        let wal_before = lsn().await?;
        let redis_before = redis_counters(&mut redis).await?;
        let walsender_before = crate::report::cpu_time(walsender)?;
        let ours_before = crate::report::cpu_time(std::process::id())?;
        let invalidations_before = listener.stats().invalidations;
        let started = Instant::now();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "UPDATE {schema}.{table} SET qty = qty + 1"
        )))
        .execute(pool)
        .await?;
        let committed = Instant::now();
        let wal_after = lsn().await?;
        let wal_bytes: i64 =
            sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint")
                .bind(&wal_after)
                .bind(&wal_before)
                .fetch_one(pool)
                .await?;
        // Sample the slot's lag (a poll of another process's state) until
        // the listener has confirmed the commit; bounded.
        let mut max_lag = 0i64;
        loop {
            if listener
                .wait_applied(&wal_after, Duration::from_millis(50))
                .await?
            {
                break;
            }
            max_lag = max_lag.max(lag().await?.unwrap_or(0));
            anyhow::ensure!(
                committed.elapsed() < Duration::from_secs(300),
                "the listener did not apply the batch within 5 minutes"
            );
        }
        let applied = committed.elapsed();
        let redis_after = redis_counters(&mut redis).await?;
        let walsender_cpu = crate::report::cpu_time(walsender)? - walsender_before;
        let ours_cpu = crate::report::cpu_time(std::process::id())? - ours_before;
        let invalidations = listener.stats().invalidations - invalidations_before;
        let update = committed - started;
        let rows_per_s = args.batch as f64 / applied.as_secs_f64();
        let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
        let redis_commands = redis_after.commands - redis_before.commands;
        let redis_cpu = redis_after.cpu.saturating_sub(redis_before.cpu);
        println!(
            "{:<34}{:>8.0}ms{:>10.0}ms{:>12.0}{:>11.1}{:>10.1}{:>13}{:>12}{:>10}{:>11}",
            label,
            update.as_secs_f64() * 1e3,
            applied.as_secs_f64() * 1e3,
            rows_per_s,
            mib(max_lag),
            mib(wal_bytes),
            walsender_cpu.as_millis(),
            ours_cpu.as_millis(),
            redis_commands,
            redis_cpu.as_millis()
        );
        figures.push(json!({
            "row": label,
            "rows": args.batch,
            "invalidations": invalidations,
            "update_ms": update.as_secs_f64() * 1e3,
            "commit_to_applied_ms": applied.as_secs_f64() * 1e3,
            "rows_per_s": rows_per_s,
            "max_lag_bytes": max_lag,
            "wal_bytes": wal_bytes,
            "walsender_cpu_ms": walsender_cpu.as_millis() as u64,
            "listener_process_cpu_ms": ours_cpu.as_millis() as u64,
            "redis_commands": redis_commands,
            "redis_cpu_ms": redis_cpu.as_millis() as u64,
        }));
    }
    listener.stop().await;
    Ok(figures)
}
