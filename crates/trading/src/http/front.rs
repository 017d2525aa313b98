//! The front of every request, as one hand-written tower layer: the rate
//! limits (`rate_limit.rs`), the request timeout, a panic turned into a 500,
//! `Cache-Control: no-store` on `/api/` answers that set nothing
//! (`caching.rs`), and the request metrics,
//! `http_request_duration_seconds{route}` and
//! `http_requests_total{route,status}`, plus the dashboard's samples.
//!
//! Why by hand, rather than `middleware::from_fn` beside tower-http's
//! `TimeoutLayer` and `CatchPanicLayer` (what this replaced): a cached read
//! is a few microseconds of the service's own work, and those three layers
//! cost about as much again. `from_fn` boxes a future and a clone of the
//! inner service per request; the timeout armed a timer per request (a
//! timer-wheel insert and removal under the driver's lock), though a cache
//! hit answers before any timer could fire. Here:
//!
//! - the timer is armed only if the handler does not answer on its first
//!   poll, so an L1 hit never touches the timer wheel (the deadline still
//!   runs from when the request arrived);
//! - one future type, no boxing;
//! - axum applies a layer to each route (and method) separately, so each
//!   instance keeps its route's metric handles: no lookup by route name per
//!   request, and the counters of the common statuses without a lock.
//!
//! Outermost, so that timeouts, panics and 429s are counted and marked too.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};
use tracing::instrument::{Instrument, Instrumented};

use super::error::ApiError;
use crate::app::AppState;

/// The layer: [`Front`] around each route.
#[derive(Clone)]
pub struct FrontLayer {
    app: AppState,
    timeout: Duration,
}

impl FrontLayer {
    /// Requests not answered within `timeout` get a 503.
    pub fn new(app: AppState, timeout: Duration) -> FrontLayer {
        FrontLayer { app, timeout }
    }
}

impl<S> Layer<S> for FrontLayer {
    type Service = Front<S>;

    fn layer(&self, inner: S) -> Front<S> {
        Front {
            inner,
            endpoint: Arc::new(Endpoint {
                app: self.app.clone(),
                timeout: self.timeout,
                route: OnceLock::new(),
            }),
        }
    }
}

/// What one route's front keeps: cloned with the service (axum clones a
/// route's service per request), so one reference count.
struct Endpoint {
    app: AppState,
    timeout: Duration,
    /// Set by the first request: the route template it matched is the same
    /// for every request this instance sees.
    route: OnceLock<RouteMetrics>,
}

/// The metric handles of one route.
struct RouteMetrics {
    duration: Histogram,
    /// `200` and `304`, nearly every answer of a cached read: no lock.
    ok: Counter,
    not_modified: OnceLock<Counter>,
    /// Any other status: a handful per route.
    others: Mutex<Vec<(u16, Counter)>>,
    /// The dashboard polls `/api/stats` every second: not its own traffic.
    sampled: bool,
    name: Arc<str>,
}

impl RouteMetrics {
    fn new(name: &str) -> RouteMetrics {
        RouteMetrics {
            duration: metrics::histogram!("http_request_duration_seconds", "route" => name.to_owned()),
            ok: Self::counter(name, 200),
            not_modified: OnceLock::new(),
            others: Mutex::new(Vec::new()),
            sampled: name != "/api/stats",
            name: Arc::from(name),
        }
    }

    fn counter(route: &str, status: u16) -> Counter {
        metrics::counter!(
            "http_requests_total",
            "route" => route.to_owned(),
            "status" => status.to_string()
        )
    }

    fn count(&self, status: StatusCode) {
        match status {
            StatusCode::OK => self.ok.increment(1),
            StatusCode::NOT_MODIFIED => self
                .not_modified
                .get_or_init(|| Self::counter(&self.name, 304))
                .increment(1),
            other => {
                let status = other.as_u16();
                let mut others = self.others.lock().unwrap_or_else(|p| p.into_inner());
                match others.iter().find(|(s, _)| *s == status) {
                    Some((_, c)) => c.increment(1),
                    None => {
                        let c = Self::counter(&self.name, status);
                        c.increment(1);
                        others.push((status, c));
                    }
                }
            }
        }
    }
}

/// [`FrontLayer`]'s service.
#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    endpoint: Arc<Endpoint>,
}

impl<S> Service<Request> for Front<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = FrontFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let started = Instant::now();
        let endpoint = Arc::clone(&self.endpoint);
        let route = endpoint.route.get_or_init(|| {
            RouteMetrics::new(
                req.extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", |p| p.as_str()),
            )
        });
        let api = req.uri().path().starts_with("/api/");
        // The request's span (the cache's answers and loads are recorded
        // inside it). Only an OpenTelemetry layer enables it: otherwise
        // `debug_span!` is a disabled no-op and none of its fields are
        // formatted.
        let span = tracing::debug_span!(
            target: "trading::request",
            "request",
            otel.name = format_args!("{} {}", req.method(), route.name),
            otel.kind = "server",
            http.request.method = %req.method(),
            http.route = &*route.name,
            http.response.status_code = tracing::field::Empty,
        );
        let state = match super::rate_limit::check(&endpoint.app, &req) {
            Some(limited) => State::Answered {
                response: Some(limited),
            },
            None => match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
                Ok(inner) => State::Running {
                    inner: inner.instrument(span.clone()),
                    timer: None,
                },
                Err(_) => State::Answered {
                    response: Some(panicked()),
                },
            },
        };
        FrontFuture {
            state,
            endpoint,
            started,
            api,
            span,
        }
    }
}

fn panicked() -> Response {
    ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

pin_project! {
    /// [`Front`]'s future: the handler's, bounded, then marked and counted.
    pub struct FrontFuture<F> {
        #[pin]
        state: State<F>,
        endpoint: Arc<Endpoint>,
        started: Instant,
        api: bool,
        span: tracing::Span,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// The handler runs; `timer` is armed the first time it is pending.
        Running {
            #[pin]
            inner: Instrumented<F>,
            timer: Option<Pin<Box<Sleep>>>,
        },
        /// Answered before any handler ran (a 429), or its call panicked.
        Answered { response: Option<Response> },
    }
}

impl<F> Future for FrontFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.state.project() {
            StateProj::Answered { response } => response.take().unwrap_or_else(panicked),
            StateProj::Running { inner, timer } => {
                match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Ready(Ok(response))) => response,
                    Ok(Poll::Ready(Err(never))) => match never {},
                    Ok(Poll::Pending) => {
                        let timeout = this.endpoint.timeout;
                        let deadline = *this.started + timeout;
                        let timer = timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        if timer.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        ApiError::Unavailable(anyhow::anyhow!(
                            "no answer within the request timeout ({timeout:?})"
                        ))
                        .into_response()
                    }
                    Err(_) => panicked(),
                }
            }
        };
        let status = response.status();
        this.span
            .record("http.response.status_code", status.as_u16());
        if *this.api {
            super::caching::no_store_unless_set(&mut response);
        }
        let took = this.started.elapsed();
        // Set by `call`, before this future existed.
        if let Some(route) = this.endpoint.route.get() {
            route.duration.record(took.as_secs_f64());
            if route.sampled {
                this.endpoint.app.live.record(took);
            }
            route.count(status);
        }
        Poll::Ready(Ok(response))
    }
}
