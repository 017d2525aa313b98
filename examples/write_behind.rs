//! "Write-Behind (Write-Back)": the write is cached and queued at once; a
//! worker persists queued writes in batches. Unlike the article's version,
//! a read never brings back the old row while the write waits (the queued
//! write is served), and the queue survives a crash when Redis holds it.
//!
//!     cargo run -p larder-examples --example write_behind

mod support;

use std::time::Duration;

use larder::write_behind::Write;
use larder::{Policy, Strategy};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::demo_db(10).await?;
    sqlx::query("CREATE TABLE watchlists (user_id INTEGER PRIMARY KEY, symbols TEXT NOT NULL, version INTEGER NOT NULL)")
        .execute(&db)
        .await?;
    let cache = support::builder("write-behind")
        .family(
            Policy::new("watchlist", "watchlist:{user_id}")
                .ttl(Duration::from_secs(600))
                .strategy(Strategy::WriteBehind),
        )
        .build()
        .await?;
    let watchlists = cache.family::<i64, Vec<String>>("watchlist")?;

    // The article's updateWatchlist: instant for the user.
    for user in 1..=5 {
        watchlists
            .write_behind(&user, vec!["RELIANCE".into(), "TCS".into()])
            .await?;
    }
    watchlists.write_behind(&3, vec!["INFY".into()]).await?; // a second write to one key
    let read = watchlists
        .get_or_load(&3, || async { Ok::<_, std::io::Error>(None) })
        .await?;
    println!("read back before the database has it: {read:?}");

    // The worker: one multi-row upsert per batch; a row only changes if the
    // write is newer (delivery is at least once).
    let pool = db.clone();
    let worker = cache
        .write_behind_worker(&watchlists, move |batch: Vec<Write<i64, Vec<String>>>| {
            let pool = pool.clone();
            async move {
                println!("persisting a batch of {} (newest write per key)", batch.len());
                let mut q = sqlx::QueryBuilder::new("INSERT INTO watchlists (user_id, symbols, version) ");
                q.push_values(&batch, |mut b, w| {
                    b.push_bind(w.key).push_bind(w.value.join(",")).push_bind(w.version as i64);
                });
                q.push(" ON CONFLICT (user_id) DO UPDATE SET symbols = excluded.symbols, version = excluded.version WHERE watchlists.version < excluded.version");
                q.build().execute(&pool).await.map(|_| ())
            }
        })
        .start();
    let report = worker.shutdown(Duration::from_secs(10)).await;
    println!("drained: {report:?}");
    let stored: String = sqlx::query_scalar("SELECT symbols FROM watchlists WHERE user_id = 3")
        .fetch_one(&db)
        .await?;
    assert_eq!(stored, "INFY");
    println!("user 3 in the database: {stored}");
    Ok(())
}
