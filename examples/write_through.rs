//! "Write-Through": every write goes to the database first; only a write the
//! database accepted reaches the cache. (The article writes both in
//! parallel, so a failed database write leaves the cache holding data the
//! database never got.)
//!
//!     cargo run -p larder-examples --example write_through

mod support;

use std::time::Duration;

use larder::{Error, Policy, Versioned};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = support::demo_db(10).await?;
    let cache = support::builder("write-through")
        .family(Policy::new("name", "user:{id}:name").ttl(Duration::from_secs(300)))
        .build()
        .await?;
    let names = cache.family::<i64, String>("name")?;

    // The database write comes first and returns the row's new version.
    let update = |id: i64, name: &'static str| {
        let db = db.clone();
        async move {
            let version: i64 = sqlx::query_scalar(
                "UPDATE users SET name = ?2, version = version + 1 WHERE id = ?1 RETURNING version",
            )
            .bind(id)
            .bind(name)
            .fetch_one(&db)
            .await?;
            Ok::<_, sqlx::Error>(Versioned {
                value: name.to_string(),
                version: version as u64,
            })
        }
    };
    let stored = names.write_through(&3, update(3, "Ada")).await?;
    println!("written through: {stored}");

    // A write the database refuses leaves the cache as it was.
    let refused = names
        .write_through(&3, async {
            Err::<Versioned<String>, _>(sqlx::Error::RowNotFound)
        })
        .await;
    assert!(matches!(refused, Err(Error::Persist(_))));
    let cached = names
        .get_or_load(&3, || async { Ok::<_, std::io::Error>(None) })
        .await?;
    println!("after a refused write the cache still holds: {cached:?}");
    assert_eq!(cached.as_deref().map(String::as_str), Some("Ada"));
    Ok(())
}
