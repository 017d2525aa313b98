//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, the OpenAPI
//! document, the dashboard (`/` and its data, `/api/stats`), and the JSON
//! 404.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::caching::{DASHBOARD, IfNoneMatch, OPENAPI};
use super::error::ApiError;
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/", get(dashboard))
        .route("/api/stats", get(stats))
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

/// Readiness: ready when the database answers (within a second). Redis
/// down is "degraded", still ready: reads fall back to the database.
async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Value>) {
    let database = tokio::time::timeout(std::time::Duration::from_secs(1), app.db.ping()).await;
    let up = matches!(database, Ok(Ok(())));
    let redis = crate::live::redis_state(&app);
    let status = if !up {
        "not ready"
    } else if matches!(redis, "open" | "half_open") {
        "degraded"
    } else {
        "ready"
    };
    let code = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": status,
            "database": if up { "up" } else { "down" },
            "redis": redis,
        })),
    )
}

/// The API's OpenAPI 3.1 document (crates/trading/static/openapi.json),
/// with an ETag.
async fn openapi(if_none_match: IfNoneMatch) -> Response {
    OPENAPI.respond(&if_none_match)
}

/// The live dashboard (crates/trading/static/dashboard.html): one page,
/// no external scripts, polling `/api/stats` every second.
async fn dashboard(if_none_match: IfNoneMatch) -> Response {
    let mut response = DASHBOARD.respond(&if_none_match);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'",
        ),
    );
    response
}

/// The dashboard's data: the last two minutes, one point a second.
async fn stats(State(app): State<AppState>) -> Json<Value> {
    Json(json!({
        "interval_ms": 1000,
        "database": app.db.kind(),
        "redis": crate::live::redis_state(&app),
        "families": app.family_names(),
        "points": app.live.points(),
    }))
}
