//! Write-behind throughput: how fast writes are acknowledged into the queue,
//! and how fast a worker lands them in PostgreSQL with batching against one
//! row at a time, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use larder::write_behind::Write;
use larder::{Cache, Family, Policy, Strategy};
use serde_json::json;
use sqlx::PgPool;

/// Settings of the write-behind scenario.
#[derive(Debug, Clone, Args)]
pub struct WriteBehindArgs {
    /// PostgreSQL to write to (a table `larder_bench_writes` is created and
    /// dropped there).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis holding the queue.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Writes per phase (each to its own key, so nothing coalesces).
    #[arg(long, default_value_t = 20_000)]
    pub writes: u64,
    /// Concurrent writers while enqueueing.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Batch size of the batching worker.
    #[arg(long, default_value_t = 500)]
    pub batch_size: usize,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/write-behind.json")]
    pub json: std::path::PathBuf,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Row {
    payload: String,
}

async fn upsert(pool: &PgPool, batch: &[Write<u64, Row>]) -> Result<(), sqlx::Error> {
    let ks: Vec<i64> = batch.iter().map(|w| w.key as i64).collect();
    let vs: Vec<&str> = batch.iter().map(|w| w.value.payload.as_str()).collect();
    let versions: Vec<i64> = batch.iter().map(|w| w.version as i64).collect();
    sqlx::query(
        "INSERT INTO larder_bench_writes (k, v, version)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[])
         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, version = EXCLUDED.version
         WHERE larder_bench_writes.version < EXCLUDED.version",
    )
    .bind(&ks)
    .bind(&vs)
    .bind(&versions)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Enqueues `n` writes to keys `base..base + n`; returns writes/s.
async fn enqueue(
    family: &Family<u64, Row>,
    base: u64,
    n: u64,
    concurrency: u64,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let family = family.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                let row = Row {
                    payload: format!("payload of row {}", base + i),
                };
                family.write_behind(&(base + i), row).await?;
                i += concurrency;
            }
            Ok::<_, larder::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Runs a worker with `batch_size` until `n` rows have landed; rows/s.
async fn drain(
    cache: &Cache,
    family: &Family<u64, Row>,
    pool: &PgPool,
    batch_size: usize,
    n: u64,
    base: u64,
) -> anyhow::Result<f64> {
    let p = pool.clone();
    let started = Instant::now();
    let worker = cache
        .write_behind_worker(family, move |batch: Vec<Write<u64, Row>>| {
            let p = p.clone();
            async move { upsert(&p, &batch).await }
        })
        .batch_size(batch_size)
        .start();
    let report = worker.shutdown(Duration::from_secs(600)).await;
    let took = started.elapsed();
    let landed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM larder_bench_writes WHERE k >= $1 AND k < $2")
            .bind(base as i64)
            .bind((base + n) as i64)
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(
        report.drained && landed as u64 == n,
        "only {landed} of {n} rows landed: {report:?}"
    );
    Ok(n as f64 / took.as_secs_f64())
}

pub async fn run(args: WriteBehindArgs) -> anyhow::Result<()> {
    let url = args
        .database_url
        .clone()
        .context("set DATABASE_URL (or --database-url) to a PostgreSQL database the bench may create a table in")?;
    let pool = PgPool::connect(&url)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::query("DROP TABLE IF EXISTS larder_bench_writes")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE larder_bench_writes (k BIGINT PRIMARY KEY, v TEXT NOT NULL, version BIGINT NOT NULL)")
        .execute(&pool)
        .await?;
    let cache = Cache::builder()
        .namespace(format!("bench-wb-{:08x}", rand::random::<u32>()))
        .redis_url(&args.redis_url)
        .redis_timeout(Duration::from_secs(1))
        .family(
            Policy::new("row", "row:{id}")
                .ttl(Duration::from_secs(600))
                .strategy(Strategy::WriteBehind),
        )
        .build()
        .await?;
    let family = Arc::new(cache.family::<u64, Row>("row")?);

    eprintln!(
        "enqueueing {} writes ({} writers) ...",
        args.writes, args.concurrency
    );
    let enqueue_batched = enqueue(&family, 0, args.writes, args.concurrency).await?;
    eprintln!("draining with batches of {} ...", args.batch_size);
    let batched = drain(&cache, &family, &pool, args.batch_size, args.writes, 0).await?;
    eprintln!("enqueueing again ...");
    let base = args.writes;
    let enqueue_single = enqueue(&family, base, args.writes, args.concurrency).await?;
    eprintln!("draining one row at a time ...");
    let single = drain(&cache, &family, &pool, 1, args.writes, base).await?;
    sqlx::query("DROP TABLE IF EXISTS larder_bench_writes")
        .execute(&pool)
        .await?;

    println!(
        "\nwrite-behind — {} writes per phase, PostgreSQL + Redis ({})\n",
        args.writes,
        crate::report::machine()
    );
    println!(
        "{:<44}{:>14}",
        "acknowledged writes/s into the queue",
        format!("{:.0}", (enqueue_batched + enqueue_single) / 2.0)
    );
    println!(
        "{:<44}{:>14}",
        format!("rows/s landed, batches of {}", args.batch_size),
        format!("{batched:.0}")
    );
    println!(
        "{:<44}{:>14}",
        "rows/s landed, one row at a time",
        format!("{single:.0}")
    );
    println!(
        "{:<44}{:>14}",
        "batching / one at a time",
        format!("{:.1}x", batched / single)
    );
    let figures = json!({
        "scenario": "write-behind",
        "machine": crate::report::machine(),
        "writes_per_phase": args.writes,
        "concurrency": args.concurrency,
        "batch_size": args.batch_size,
        "enqueue_writes_per_s": [enqueue_batched, enqueue_single],
        "rows_per_s_batched": batched,
        "rows_per_s_one_at_a_time": single,
        "speedup": batched / single,
    });
    crate::report::save_figures(&args.json, &figures)
}
