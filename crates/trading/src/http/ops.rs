//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, the OpenAPI
//! document, the dashboard (`/` and its data, `/api/stats`), and the JSON
//! 404.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::caching::{DASHBOARD, IfNoneMatch, OPENAPI};
use super::error::{ApiError, TooManyRequests};
use crate::app::AppState;
use crate::live::Point;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route("/", get(dashboard))
        .route("/api/stats", get(stats))
}

/// Liveness, and what the process runs on.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Health {
    /// Always `ok`.
    #[schema(examples("ok"))]
    status: &'static str,
    /// `postgres` or `sqlite`.
    #[schema(examples("postgres", "sqlite"))]
    database: &'static str,
    cache: CacheInfo,
}

/// The cache's tiers.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct CacheInfo {
    /// Whether caching is on.
    enabled: bool,
    /// Whether a Redis tier is configured.
    redis: bool,
}

/// Liveness: the process is up and serving. Also says what it runs on.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "ops",
    operation_id = "healthz",
    summary = "Liveness",
    description = "The process is up and serving; also says what it runs on.",
    responses((status = 200, description = "Alive.", body = Health)),
)]
async fn healthz(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        database: app.db.kind(),
        cache: CacheInfo {
            enabled: app.cache.is_enabled(),
            redis: app.cache.has_redis(),
        },
    })
}

/// Prometheus text format: larder's per-family counters, the service's
/// database query counter and HTTP latency histograms.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "larder's per-family counters, the database query counter and the HTTP latency histograms, in the Prometheus text format.",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain")),
)]
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

/// Whether the service can serve.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Readiness {
    /// `ready`, `degraded` (Redis unreachable: reads fall back to the
    /// database) or `not ready` (the database does not answer).
    #[schema(examples("ready", "degraded", "not ready"))]
    status: &'static str,
    /// `up` or `down`.
    #[schema(examples("up", "down"))]
    database: &'static str,
    /// The Redis circuit breaker: `none` (no Redis configured), `closed`,
    /// `open` or `half_open`.
    #[schema(examples("none", "closed", "open", "half_open"))]
    redis: &'static str,
}

/// Readiness: ready when the database answers (within a second). Redis
/// down is "degraded", still ready: reads fall back to the database.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "ops",
    operation_id = "readyz",
    summary = "Readiness",
    description = "Whether the service can serve: the database answers. `redis` reports the Redis circuit breaker's state (`none` without Redis).",
    responses(
        (status = 200, description = "Ready (or degraded: Redis unreachable, reads fall back to the database).", body = Readiness),
        (status = 503, description = "Not ready: the database does not answer.", body = Readiness),
    ),
)]
async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<Readiness>) {
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
        Json(Readiness {
            status,
            database: if up { "up" } else { "down" },
            redis,
        }),
    )
}

/// The API's OpenAPI 3.1 document (generated: `http/openapi.rs`), with an
/// ETag.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    operation_id = "openapi",
    summary = "This document",
    description = "The OpenAPI 3.1 description of the service, generated from its code.",
    params(IfNoneMatch),
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object),
        (status = 304, description = "Not Modified: the client's ETag is current (revalidated on every use: `Cache-Control: no-cache`). No body.",
            headers(("ETag" = String, description = "Strong ETag of the document."))),
    ),
)]
async fn openapi(if_none_match: IfNoneMatch) -> Response {
    OPENAPI.respond(&if_none_match)
}

/// The live dashboard (crates/trading/static/dashboard.html): one page,
/// no external scripts, polling `/api/stats` every second.
#[utoipa::path(
    get,
    path = "/",
    tag = "ops",
    operation_id = "dashboard",
    summary = "Dashboard",
    description = "An HTML dashboard plotting `GET /api/stats`.",
    params(IfNoneMatch),
    responses(
        (status = 200, description = "The dashboard page.", body = String, content_type = "text/html"),
        (status = 304, description = "Not Modified: the client's ETag is current (revalidated on every use: `Cache-Control: no-cache`). No body.",
            headers(("ETag" = String, description = "Strong ETag of the page."))),
    ),
)]
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

/// What the dashboard plots.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Stats {
    /// Time between two points, in milliseconds.
    #[schema(minimum = 1)]
    interval_ms: u64,
    /// `postgres` or `sqlite`.
    database: &'static str,
    /// The Redis circuit breaker's state (as in `/readyz`).
    redis: &'static str,
    /// The cache families, the keys of each point's `hit_rate`.
    families: Vec<String>,
    /// Oldest first.
    points: Vec<Point>,
}

/// The dashboard's data: the last two minutes, one point a second.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "ops",
    operation_id = "stats",
    summary = "Dashboard data",
    description = "The recent time series the dashboard plots: throughput, latency, database load, cache hit rates, the breaker state and the write-behind queue.",
    responses(
        (status = 200, description = "The stats.", body = Stats),
        (status = 429, response = TooManyRequests),
    ),
)]
async fn stats(State(app): State<AppState>) -> Json<Stats> {
    Json(Stats {
        interval_ms: crate::live::INTERVAL.as_millis() as u64,
        database: app.db.kind(),
        redis: crate::live::redis_state(&app),
        families: app.family_names(),
        points: app.live.points(),
    })
}
