//! The article's "never cache" endpoints: `POST /api/orders`,
//! `GET /api/users/{id}/balance`, `GET /api/users/{id}/trades`. Each reads
//! or writes the database on every request.
//!
//! An executed order changes the user's holdings, so it invalidates the
//! tag `holdings:{user_id}`: the cached portfolio (in every process) is
//! dropped once the transaction has committed.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{ActingFor, Caller};
use super::error::{
    ApiError, BadRequest, Forbidden, InternalError, NotFound, PayloadTooLarge, TooManyRequests,
    Unauthorized, Unavailable,
};
use super::extract::JsonBody;
use crate::app::AppState;
use crate::db::OrderOutcome;
use crate::order::{Balance, OrderRequest, Receipt, Trade};
use crate::session::now_ms;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/orders", post(place))
        .route("/api/users/{id}/balance", get(balance))
        .route("/api/users/{id}/trades", get(trades))
}

/// Executes a market order for the caller.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    operation_id = "placeOrder",
    summary = "Place a market order",
    description = "Buys or sells at the instrument's last price, for the session's user, in one database transaction (cash balance, holdings and the trade record). Never cached. The service token has no user of its own: it is answered with `403`.",
    security(("bearerAuth" = [])),
    request_body = OrderRequest,
    responses(
        (status = 201, description = "The executed order.", body = Receipt),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, description = "No such instrument.", body = super::error::ErrorBody),
        (status = 413, response = PayloadTooLarge),
        (status = 422, description = "Insufficient funds (buy) or insufficient holdings (sell).", body = super::error::ErrorBody),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn place(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(order): JsonBody<OrderRequest>,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let Caller::User { user_id, .. } = caller else {
        return Err(ApiError::Forbidden);
    };
    order.validate().map_err(ApiError::BadRequest)?;
    let outcome = app
        .db
        .execute_order(user_id, &order.symbol, order.side, order.qty, now_ms())
        .await?;
    match outcome {
        OrderOutcome::Executed(receipt, xid) => {
            metrics::counter!("trading_orders_total", "result" => "executed").increment(1);
            // Committed: the portfolio cached anywhere is now wrong. A
            // failure here is deferred by larder and replayed, and the
            // order stands either way.
            if let Err(e) = app
                .cache
                .invalidate_tag("holdings:{user_id}", &user_id)
                .await
            {
                tracing::warn!(error = %e, user_id, "portfolio invalidation failed after an order");
            }
            // The order's balance change needs no invalidation (no cached
            // family shows the balance), its holdings change was just made:
            // the change stream can skip the transaction.
            app.skip_echo(xid).await;
            Ok((StatusCode::CREATED, Json(receipt)))
        }
        OrderOutcome::UnknownSymbol => Err(ApiError::NotFound(format!(
            "no instrument {}",
            order.symbol
        ))),
        OrderOutcome::InsufficientFunds => {
            metrics::counter!("trading_orders_total", "result" => "insufficient_funds")
                .increment(1);
            Err(ApiError::Unprocessable("insufficient funds".into()))
        }
        OrderOutcome::InsufficientHoldings => {
            metrics::counter!("trading_orders_total", "result" => "insufficient_holdings")
                .increment(1);
            Err(ApiError::Unprocessable("insufficient holdings".into()))
        }
    }
}

/// The cash balance, from the database.
#[utoipa::path(
    get,
    path = "/api/users/{id}/balance",
    tag = "users",
    operation_id = "getBalance",
    summary = "Get a user's cash balance",
    description = "Never cached: always read from the database (the article's \"never cache\" data).",
    security(("bearerAuth" = [])),
    params(("id" = crate::schema::UserId, Path, description = "The user id: a positive 64-bit integer (anything else is a 400).")),
    responses(
        (status = 200, description = "The balance.", body = Balance),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn balance(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
) -> Result<Json<Balance>, ApiError> {
    let balance = app
        .db
        .balance(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    Ok(Json(Balance {
        user_id: id,
        balance,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct TradesQuery {
    /// How many trades to return: 1 to 500 (anything else is a 400).
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
}

/// A user's trades, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Trades {
    #[schema(value_type = crate::schema::UserId)]
    user_id: i64,
    /// At most `limit` (500).
    #[schema(max_items = 500)]
    trades: Vec<Trade>,
}

/// The latest trades, newest first, from the database.
#[utoipa::path(
    get,
    path = "/api/users/{id}/trades",
    tag = "users",
    operation_id = "listTrades",
    summary = "List a user's trades",
    description = "The user's trades, newest first. Never cached: always read from the database.",
    security(("bearerAuth" = [])),
    params(("id" = crate::schema::UserId, Path, description = "The user id: a positive 64-bit integer (anything else is a 400)."), TradesQuery),
    responses(
        (status = 200, description = "The trades.", body = Trades),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = InternalError),
        (status = 503, response = Unavailable),
    ),
)]
async fn trades(
    State(app): State<AppState>,
    ActingFor(id): ActingFor,
    query: Result<Query<TradesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Trades>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 500".into(),
        ));
    }
    let trades = app.db.trades(id, limit).await?;
    Ok(Json(Trades {
        user_id: id,
        trades,
    }))
}
