//! The front of every request, in one middleware (each `from_fn` layer
//! boxes a future and clones a service per request): the rate limits
//! (`rate_limit.rs`), `Cache-Control: no-store` on `/api/` responses that
//! set nothing (`caching.rs`), and the request metrics,
//! `http_request_duration_seconds{route}` and
//! `http_requests_total{route,status}`, plus the dashboard's samples.
//! Outermost, so that timeouts, panics and 429s are counted and marked too.
//!
//! The metric handles are made once per route and status and kept here:
//! `metrics::histogram!("…", "route" => route.to_owned())` builds and hashes
//! its key (and allocates its label) on every call, which on a cached read
//! was a measurable share of the request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Histogram};

use crate::app::AppState;

/// The handles of one route.
struct Route {
    duration: Histogram,
    /// By status code: a handful per route.
    requests: Mutex<Vec<(u16, Counter)>>,
    /// The dashboard polls `/api/stats` every second: not its own traffic.
    sampled: bool,
    name: Arc<str>,
}

impl Route {
    fn new(name: &str) -> Route {
        Route {
            duration: metrics::histogram!("http_request_duration_seconds", "route" => name.to_owned()),
            requests: Mutex::new(Vec::new()),
            sampled: name != "/api/stats",
            name: Arc::from(name),
        }
    }

    fn count(&self, status: u16) {
        let mut by_status = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = by_status.iter().find(|(s, _)| *s == status) {
            c.increment(1);
            return;
        }
        let c = metrics::counter!(
            "http_requests_total",
            "route" => self.name.to_string(),
            "status" => status.to_string()
        );
        c.increment(1);
        by_status.push((status, c));
    }
}

/// Routes seen so far. Route templates, never raw paths: the set is as
/// small as the router.
static ROUTES: std::sync::LazyLock<RwLock<HashMap<String, Arc<Route>>>> =
    std::sync::LazyLock::new(|| RwLock::new(HashMap::new()));

fn route(name: &str) -> Arc<Route> {
    if let Some(r) = ROUTES.read().unwrap_or_else(|p| p.into_inner()).get(name) {
        return Arc::clone(r);
    }
    let mut routes = ROUTES.write().unwrap_or_else(|p| p.into_inner());
    Arc::clone(
        routes
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Route::new(name))),
    )
}

/// Limits, then runs the request, then marks and counts its answer.
pub async fn front(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let route = route(
        req.extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", |p| p.as_str()),
    );
    let start = Instant::now();
    let api = req.uri().path().starts_with("/api/");
    // The request's span (the cache's answers and loads are recorded inside
    // it). Only an OpenTelemetry layer enables it: otherwise `debug_span!`
    // is a disabled no-op and none of its fields are formatted.
    let span = tracing::debug_span!(
        target: "trading::request",
        "request",
        otel.name = format_args!("{} {}", req.method(), route.name),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = &*route.name,
        http.response.status_code = tracing::field::Empty,
    );
    let mut response = match super::rate_limit::check(&app, &req) {
        Some(limited) => limited,
        None => tracing::Instrument::instrument(next.run(req), span.clone()).await,
    };
    span.record("http.response.status_code", response.status().as_u16());
    if api {
        super::caching::no_store_unless_set(&mut response);
    }
    let took = start.elapsed();
    route.duration.record(took.as_secs_f64());
    if route.sampled {
        app.live.record(took);
    }
    route.count(response.status().as_u16());
    response
}
