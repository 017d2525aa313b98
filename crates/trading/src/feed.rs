//! The price feed: a simulator standing in for the exchange. Each tick moves
//! one instrument's price by a small random step and writes it through: the
//! database first, then the cache, which keeps the highest version. The
//! book around the new price (market depth) is written through beside it,
//! and the price goes out on the live stream.

use std::sync::Arc;
use std::time::Duration;

use larder::Versioned;
use rand::RngExt;
use rust_decimal::Decimal;
use tokio::task::JoinHandle;

use crate::app::AppState;
use crate::db::DbError;
use crate::depth::Book;
use crate::http::error::ApiError;
use crate::price::Price;

/// Updates `symbol`'s price: write-through (database, then cache). `None`
/// if there is no such instrument.
pub async fn update_price(
    app: &AppState,
    symbol: &str,
    price: Decimal,
) -> Result<Option<Arc<Price>>, ApiError> {
    let db = app.db.clone();
    let result = app
        .prices
        .write_through(&symbol.to_string(), async {
            match db.update_price(symbol, price).await? {
                Some(p) => Ok(Versioned {
                    version: p.version,
                    value: p,
                }),
                None => Err(DbError::NotFound),
            }
        })
        .await;
    match result {
        Ok(p) => Ok(Some(p)),
        Err(larder::Error::Persist(e))
            if matches!(e.downcast_ref::<DbError>(), Some(DbError::NotFound)) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Replaces `symbol`'s book: write-through, like the price.
pub async fn update_depth(app: &AppState, symbol: &str, book: Book) -> Result<(), ApiError> {
    let db = app.db.clone();
    app.depths
        .write_through(&symbol.to_string(), async move {
            match db.update_depth(symbol, &book).await? {
                Some(d) => Ok(Versioned {
                    version: d.version,
                    value: d,
                }),
                None => Err(DbError::NotFound),
            }
        })
        .await?;
    Ok(())
}

/// The running feed; dropping it stops it.
pub struct Feed(JoinHandle<()>);

impl Drop for Feed {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the feed at `updates_per_sec` (0: no feed).
pub fn spawn(app: AppState, updates_per_sec: u32) -> Option<Feed> {
    if updates_per_sec == 0 {
        return None;
    }
    Some(Feed(tokio::spawn(async move {
        let instruments = match app.db.instruments().await {
            Ok(list) if !list.is_empty() => list,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "price feed: cannot list instruments; not running");
                return;
            }
        };
        let mut prices: Vec<(String, Decimal)> = instruments;
        let mut tick = tokio::time::interval(Duration::from_secs(1) / updates_per_sec);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let (i, step) = {
                let mut rng = rand::rng();
                // Popular (low-id) instruments trade more often.
                let u: f64 = rng.random();
                let i = ((u * u * u) * prices.len() as f64) as usize % prices.len();
                (i, rng.random_range(-50i64..=50))
            };
            let (symbol, last) = prices[i].clone();
            let symbol = &symbol;
            // A random walk of up to ±0.5%, never below 1.00.
            let next = (last + last * Decimal::new(step, 4))
                .round_dp(2)
                .max(Decimal::ONE);
            match update_price(&app, symbol, next).await {
                Ok(Some(price)) => {
                    prices[i].1 = next;
                    app.hub.publish(&price).await;
                    let book = {
                        let mut rng = rand::rng();
                        let mut sizes = || rng.random_range(1..=50) * 100;
                        Book::around(next, Some(&mut sizes))
                    };
                    if let Err(e) = update_depth(&app, symbol, book).await {
                        tracing::debug!(error = %e, "price feed: depth update failed");
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "price feed: update failed"),
            }
        }
    })))
}
