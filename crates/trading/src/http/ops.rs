//! Operational endpoints: `/healthz`, `/metrics`, and the JSON 404.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::error::ApiError;
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// Liveness: the process is up and serving. Also says what it runs on.
async fn healthz(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "database": app.db.kind(),
        "cache": {
            "enabled": app.cache.is_enabled(),
            "redis": app.cache.has_redis(),
        },
    }))
}

/// Prometheus text format: larder's per-family counters, the service's
/// database query counter and HTTP latency histograms.
async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

/// Any route that does not exist.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
