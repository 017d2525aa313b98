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

use super::auth::{ActingFor, Caller};
use super::error::ApiError;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TradesQuery {
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct Trades {
    user_id: i64,
    trades: Vec<Trade>,
}

/// The latest trades, newest first, from the database.
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
