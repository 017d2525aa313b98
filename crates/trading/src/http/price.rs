//! `GET /api/stocks/{symbol}/price` (two seconds) and
//! `GET /api/stocks/{symbol}/depth` (one second): both written through by
//! the price feed, read cache-first.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::caching::{CachedJson, IfNoneMatch};
use super::error::{ApiError, BadRequest, InternalError, NotFound, TooManyRequests, Unavailable};
use super::extract::Symbol;
use crate::app::AppState;
use crate::depth::Depth;
use crate::price::Price;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/stocks/{symbol}/price", get(price))
        .route("/api/stocks/{symbol}/depth", get(depth))
}

/// The last price, from the cache or (on a miss) the database; public
/// (the same for everyone), `max-age` what is left of its two seconds.
#[utoipa::path(
    get,
    path = "/api/stocks/{symbol}/price",
    tag = "stocks",
    operation_id = "getPrice",
    summary = "Get an instrument's last price",
    description = "Written through by the price feed, cached 2 s; public (the same for everyone).",
    params(("symbol" = crate::schema::Symbol, Path, description = "Ticker symbol (anything else is a 400)."), IfNoneMatch),
    responses(
        CachedJson<Price>,
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn price(
    State(app): State<AppState>,
    Symbol(symbol): Symbol,
    if_none_match: IfNoneMatch,
) -> Result<CachedJson<Price>, ApiError> {
    let db = app.db.clone();
    let key = symbol.clone();
    let price = app
        .prices
        .get_or_load_rendered(&key, move || async move { db.price(&symbol).await })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no instrument {key}")))?;
    Ok(CachedJson::public(price, if_none_match))
}

/// The top of the book, from the cache or (on a miss) the database.
#[utoipa::path(
    get,
    path = "/api/stocks/{symbol}/depth",
    tag = "stocks",
    operation_id = "getDepth",
    summary = "Get an instrument's market depth",
    description = "The top 5 levels of each side of the book. Written through, cached 1 s.",
    params(("symbol" = crate::schema::Symbol, Path, description = "Ticker symbol (anything else is a 400).")),
    responses(
        (status = 200, description = "The depth.", body = Depth),
        (status = 400, response = BadRequest),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn depth(
    State(app): State<AppState>,
    Symbol(symbol): Symbol,
) -> Result<Json<Arc<Depth>>, ApiError> {
    let db = app.db.clone();
    let key = symbol.clone();
    app.depths
        .get_or_load(&key, move || async move { db.depth(&symbol).await })
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no instrument {key}")))
}
