//! `GET /api/stocks/{symbol}/price`: two seconds, written through by the
//! price feed.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::error::ApiError;
use super::extract::Symbol;
use crate::app::AppState;
use crate::price::Price;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/stocks/{symbol}/price", get(price))
}

/// The last price, from the cache or (on a miss) the database.
async fn price(
    State(app): State<AppState>,
    Symbol(symbol): Symbol,
) -> Result<Json<Arc<Price>>, ApiError> {
    let db = app.db.clone();
    let key = symbol.clone();
    app.prices
        .get_or_load(&key, move || async move { db.price(&symbol).await })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no instrument {key}")))
}
