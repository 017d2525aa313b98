//! The HTTP API: one module per resource, one error type, shared layers.

mod account;
pub mod auth;
pub mod caching;
pub mod error;
pub mod extract;
mod ops;
mod portfolio;
mod price;
mod profile;
pub mod rate_limit;
mod session;
mod stream;
mod track;
mod watchlist;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::app::AppState;
use error::ApiError;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The whole API.
pub fn router(state: AppState, request_timeout: Duration) -> Router {
    Router::new()
        .merge(portfolio::routes())
        .merge(watchlist::routes())
        .merge(profile::routes())
        .merge(price::routes())
        .merge(session::routes())
        .merge(account::routes())
        .merge(stream::routes())
        .merge(ops::routes())
        .fallback(ops::not_found)
        .layer(middleware::from_fn(caching::no_store_by_default))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        // Enforced by the body extractors, so an oversize body is a JSON 413.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        // Before any handler or extractor: a limited request costs a map
        // lookup, not a session lookup or a query.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            rate_limit::limit,
        ))
        // Outermost, so that timeouts, panics and 429s are counted too.
        .layer(middleware::from_fn_with_state(state.clone(), track::track))
        .with_state(state)
}

