//! The HTTP API: one module per resource, one error type, shared layers.

mod account;
pub mod auth;
pub mod caching;
pub mod error;
pub mod extract;
mod openapi;
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
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        // Enforced by the body extractors, so an oversize body is a JSON 413.
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        // Outermost: rate limits before any handler or extractor, and
        // timeouts, panics and 429s counted and marked too.
        .layer(middleware::from_fn_with_state(state.clone(), track::front))
        .with_state(state)
}
