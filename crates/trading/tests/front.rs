//! The front layer (`http/front.rs`): the request timeout, a panicking
//! handler, `no-store` on `/api/` and the request metrics, on a router of
//! test handlers behind the same layer the service uses.

mod support;

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use serde_json::{Value, json};
use support::Setup;
use trading::http::front::FrontLayer;

/// The routes, behind the front with a `timeout`.
async fn router(timeout: Duration) -> (Router, support::Backing, trading::app::AppState) {
    let (state, _, backing) = support::start(Setup::Embedded, false).await;
    let router = Router::new()
        .route("/api/fast", get(|| async { Json(json!("fast")) }))
        .route(
            "/api/cached",
            get(|| async {
                (
                    [(header::CACHE_CONTROL, "public, max-age=5")],
                    Json(json!("cached")),
                )
            }),
        )
        .route(
            "/api/slow",
            get(|| async {
                std::future::pending::<()>().await;
                Json(json!("never"))
            }),
        )
        .route(
            "/api/after-a-while",
            get(|| async {
                tokio::task::yield_now().await;
                Json(json!("later"))
            }),
        )
        .route(
            "/api/boom",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("a handler bug");
                }
                Json(json!("unreachable"))
            }),
        )
        .route("/not-api", get(|| async { Json(json!("page")) }))
        .layer(FrontLayer::new(state.clone(), timeout));
    (router, backing, state)
}

/// `GET path`, no token: the status, the headers and the JSON answer.
async fn send(router: &Router, path: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
    support::call(router, "GET", path, None, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_timeout_is_a_503_and_a_quick_one_is_untouched() {
    let (router, _db, _) = router(Duration::from_millis(200)).await;
    let (status, _, body) = send(&router, "/api/slow").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"].is_string(), "a JSON error: {body}");
    // Pending once, then answered: the timer armed on the way does not fire.
    for _ in 0..100 {
        let (status, _, body) = send(&router, "/api/after-a-while").await;
        assert_eq!((status, body), (StatusCode::OK, json!("later")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_500_and_the_service_goes_on() {
    let (router, _db, _) = router(Duration::from_secs(5)).await;
    for _ in 0..3 {
        let (status, _, body) = send(&router, "/api/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !body.to_string().contains("a handler bug"),
            "no internals leak: {body}"
        );
    }
    let (status, _, body) = send(&router, "/api/fast").await;
    assert_eq!((status, body), (StatusCode::OK, json!("fast")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_answers_that_set_nothing_are_no_store() {
    let (router, _db, _) = router(Duration::from_secs(5)).await;
    let control = |h: &axum::http::HeaderMap| {
        h.get(header::CACHE_CONTROL)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (_, h, _) = send(&router, "/api/fast").await;
    assert_eq!(control(&h).as_deref(), Some("no-store"));
    let (_, h, _) = send(&router, "/api/boom").await;
    assert_eq!(control(&h).as_deref(), Some("no-store"), "errors too");
    let (_, h, _) = send(&router, "/api/cached").await;
    assert_eq!(control(&h).as_deref(), Some("public, max-age=5"), "kept");
    let (_, h, _) = send(&router, "/not-api").await;
    assert_eq!(control(&h), None, "only /api/");
}

/// Many tasks at once: every answer is counted under its route and status.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_is_counted_by_route_and_status() {
    let (router, _db, state) = router(Duration::from_secs(5)).await;
    let count = |route: &str, status: u16| -> u64 {
        let text = state.metrics.render();
        let prefix = format!("http_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let (ok0, boom0) = (count("/api/fast", 200), count("/api/boom", 500));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let router = router.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    let path = if i % 4 == 0 { "/api/boom" } else { "/api/fast" };
                    send(&router, path).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Other tests in this binary share the recorder: at least ours.
    assert!(count("/api/fast", 200) - ok0 >= 48 * 20);
    assert!(count("/api/boom", 500) - boom0 >= 16 * 20);
}
