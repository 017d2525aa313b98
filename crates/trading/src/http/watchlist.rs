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
use utoipa::ToSchema;
use utoipa::openapi::{Object, ObjectBuilder, OneOfBuilder, Ref, Schema, Type};

use super::auth::ActingFor;
use super::caching::{CachedJson, IfNoneMatch};
use super::error::{
    ApiError, BadRequest, Forbidden, InternalError, NotFound, PayloadTooLarge, TooManyRequests,
    Unauthorized, Unavailable,
};
use super::extract::JsonBody;
use crate::app::AppState;
use crate::price::Price;
use crate::watchlist::{Watchlist, WatchlistUpdate};

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/users/{id}/watchlist", get(watchlist).put(update))
}

/// A user's watchlist with each listed symbol's last price.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WatchlistWithPrices)]
pub(super) struct WithPrices {
    #[serde(flatten)]
    watchlist: Arc<Watchlist>,
    #[schema(schema_with = prices_schema)]
    prices: BTreeMap<String, Option<Arc<Price>>>,
}

/// `prices` in the OpenAPI document (utoipa 6 cannot derive a map of
/// nullable values): each listed symbol's `Price`, or `null`.
fn prices_schema() -> Object {
    ObjectBuilder::new()
        .description(Some(
            "Each listed symbol's last price, or `null` when there is no such instrument.",
        ))
        .additional_properties(Some(Schema::OneOf(
            OneOfBuilder::new()
                .item(Ref::from_schema_name("Price"))
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .build(),
        )))
        .build()
}

/// The user's watchlist (a write not yet persisted included), with each
/// symbol's price: all of them in one multi-key cache round trip
/// (`get_many`), and one database query for the ones missing. Composed per
/// request, so rendered per request too; its ETag still spares the client
/// the body (a 304) when nothing changed.
#[utoipa::path(
    get,
    path = "/api/users/{id}/watchlist",
    tag = "users",
    operation_id = "getWatchlist",
    summary = "Get a user's watchlist",
    description = "The user's symbols (a write not yet persisted included) with each one's last price. Cached: cache-aside, 5 min; `PUT` is write-behind (cached and queued, persisted in batches).",
    security(("bearerAuth" = [])),
    params(("id" = crate::schema::UserId, Path, description = "The user id: a positive 64-bit integer (anything else is a 400)."), IfNoneMatch),
    responses(
        CachedJson<WithPrices>,
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
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
#[utoipa::path(
    put,
    path = "/api/users/{id}/watchlist",
    tag = "users",
    operation_id = "putWatchlist",
    summary = "Replace a user's watchlist",
    description = "Write-behind: the new list is cached and queued at once, and persisted to the database in batches shortly after; reads return it meanwhile.",
    security(("bearerAuth" = [])),
    params(("id" = crate::schema::UserId, Path, description = "The user id: a positive 64-bit integer (anything else is a 400).")),
    request_body = WatchlistUpdate,
    responses(
        (status = 202, description = "Accepted: cached and queued for the database.", body = Watchlist),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
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
