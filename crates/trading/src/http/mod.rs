//! The HTTP API: one module per resource, one error type, shared layers.

mod account;
pub mod auth;
pub mod caching;
pub mod error;
pub mod extract;
pub mod front;
mod openapi;
mod ops;
mod portfolio;
mod price;
mod profile;
pub mod rate_limit;
mod session;
mod stream;
mod watchlist;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;

use crate::app::AppState;

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
        // One `layer` call: axum boxes each route's service once per call
        // (a clone and a boxed future per request and level), so the layers
        // are stacked here and applied as one.
        .layer(
            tower::ServiceBuilder::new()
                // Outermost: rate limits before any handler or extractor;
                // the request timeout; panics as 500s; and all of them
                // counted and marked.
                .layer(front::FrontLayer::new(state.clone(), request_timeout))
                // Enforced by the body extractors, so an oversize body is a
                // JSON 413.
                .layer(DefaultBodyLimit::max(BODY_LIMIT)),
        )
        .with_state(state)
}
