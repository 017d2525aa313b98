//! "Cache Invalidation, Strategy 1: Delete on Write": update the database,
//! then delete the cached copy; the next read loads the new row.
//!
//!     cargo run -p larder-examples --example delete_on_write

mod support;

use std::time::Duration;

use larder::Policy;
use support::Portfolio;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::demo_db(10).await?;
    let cache = support::builder("delete-on-write")
        .family(Policy::new("portfolio", "portfolio:{user_id}").ttl(Duration::from_secs(60)))
        .build()
        .await?;
    let portfolios = cache.family::<i64, Portfolio>("portfolio")?;
    let read = |id: i64| {
        let db = db.clone();
        let portfolios = portfolios.clone();
        async move {
            portfolios
                .get_or_load(&id, move || support::load_portfolio(db, id))
                .await
        }
    };

    println!("before: {:?}", read(7).await?);

    // 1. Write the database (the source of truth) and commit.
    sqlx::query("UPDATE users SET name = 'renamed' WHERE id = 7")
        .execute(&db)
        .await?;
    // 2. Only then delete the cached copy (Redis first, then this process's L1).
    portfolios.invalidate(&7).await?;

    let after = read(7).await?;
    println!("after:  {after:?}");
    assert_eq!(after.map(|p| p.name.clone()).as_deref(), Some("renamed"));
    Ok(())
}
