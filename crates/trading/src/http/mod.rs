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
mod watchlist;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Counts requests and their latency per route (the route template, never
/// the raw path: ids would explode the label set).
async fn track(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let took = start.elapsed();
    metrics::histogram!("http_request_duration_seconds", "route" => route.clone())
        .record(took.as_secs_f64());
    // The dashboard's own numbers; its polling is not counted.
    if route != "/api/stats" {
        app.live.record(took);
    }
    metrics::counter!("http_requests_total", "route" => route, "status" => status).increment(1);
    response
}
