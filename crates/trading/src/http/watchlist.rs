//! `GET/PUT /api/users/{id}/watchlist`: cache-aside five minutes; writes go
//! behind (the article's `updateWatchlist`): acknowledged once cached and
//! queued, persisted in batches by the service's worker.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use larder::Rendered;
use serde::Serialize;

use super::auth::ActingFor;
use super::caching::{CachedJson, IfNoneMatch};
use super::error::ApiError;
use super::extract::JsonBody;
use crate::app::AppState;
use crate::price::Price;
use crate::watchlist::{Watchlist, WatchlistUpdate};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users/{id}/watchlist", get(watchlist).put(update))
}

/// A watchlist with each symbol's last price.
#[derive(Debug, Serialize)]
struct WithPrices {
    #[serde(flatten)]
    watchlist: Arc<Watchlist>,
    /// Symbol → price (`null`: no such instrument).
    prices: BTreeMap<String, Option<Arc<Price>>>,
}

/// The user's watchlist (a write not yet persisted included), with each
/// symbol's price: all of them in one multi-key cache round trip
/// (`get_many`), and one database query for the ones missing. Composed per
/// request, so rendered per request too; its ETag still spares the client
/// the body (a 304) when nothing changed.
async fn watchlist(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
    if_none_match: IfNoneMatch,
) -> Result<CachedJson<WithPrices>, ApiError> {
    let db = app.db.clone();
    let watchlist = app
        .watchlists
        .get_or_load(&id, move || async move { db.watchlist(id).await })
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    let found = app.prices_of(&watchlist.symbols).await?;
    let prices = watchlist.symbols.iter().cloned().zip(found).collect();
    // Prices move every second or two: revalidate every time (max-age 0).
    let rendered = Rendered::new(Arc::new(WithPrices { watchlist, prices }), Duration::ZERO)?;
    Ok(CachedJson::private(rendered, if_none_match))
}

/// Caches and queues the new watchlist; 202 Accepted: the database gets it
/// shortly, and reads return it meanwhile.
async fn update(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
    JsonBody(body): JsonBody<WatchlistUpdate>,
) -> Result<(StatusCode, Json<Watchlist>), ApiError> {
    body.validate().map_err(ApiError::BadRequest)?;
    // A write for a user who does not exist would only fail in the worker.
    app.profile(id).await?;
    let watchlist = Watchlist {
        user_id: id,
        symbols: body.symbols,
    };
    app.watchlists.write_behind(&id, watchlist.clone()).await?;
    Ok((StatusCode::ACCEPTED, Json(watchlist)))
}
