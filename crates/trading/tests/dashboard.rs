//! The dashboard in a real headless browser: Debian's Chromium driven by
//! playwright-core (`tests/browser/dashboard.mjs`). The page must load, draw
//! non-zero data in its charts from live traffic, and log no console error.
//!
//! Needs `chromium`, `node` and `npm ci` in `crates/trading/tests/browser`;
//! `./scripts/test` installs all three.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use support::{Setup, call};
use trading::app::Background;

fn require_browser(dir: &Path) {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing: Vec<&str> = [
        (!Path::new(&chromium).exists()).then_some("chromium (apt-get install chromium)"),
        (std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_err())
        .then_some("node (apt-get install nodejs npm)"),
        (!dir.join("node_modules/playwright-core").exists())
            .then_some("playwright-core (cd crates/trading/tests/browser && npm ci)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        missing.is_empty(),
        "the dashboard test needs {}; ./scripts/test installs them",
        missing.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_draws_live_data_in_headless_chromium() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    require_browser(&dir);
    let (state, router, _db) = support::start(Setup::Embedded, false).await;
    let _background = Background::start(&state, 5, Duration::from_secs(30));
    let addr = support::serve(router.clone()).await;

    // Traffic for the charts: portfolio and price reads, mostly hits.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (router, stop) = (router.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let user = 1 + i % 20;
                call(
                    &router,
                    "GET",
                    &format!("/api/users/{user}/portfolio"),
                    None,
                    Some(support::SERVICE_TOKEN),
                )
                .await;
                call(&router, "GET", "/api/stocks/TCS/price", None, None).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let run = tokio::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(format!("http://{addr}"))
        .env("DASHBOARD_SCREENSHOT", &screenshot)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser check finishes within 90 s")
        .expect("node runs");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "dashboard check failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let summary: serde_json::Value =
        serde_json::from_str(stdout.trim().lines().last().unwrap_or(""))
            .unwrap_or_else(|_| panic!("not a JSON summary: {stdout}"));
    assert_eq!(summary["ok"], true, "{summary}");
    assert!(
        summary["requests_per_sec"].as_f64().unwrap_or(0.0) > 0.0,
        "{summary}"
    );
    assert_eq!(summary["console_errors"], serde_json::json!([]));

    // The data behind it.
    let (status, _, stats) = call(&router, "GET", "/api/stats", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let points = stats["points"].as_array().unwrap();
    assert!(!points.is_empty());
    let last = points.last().unwrap();
    assert!(last["hit_rate"]["portfolio"].as_f64().is_some(), "{last}");
    assert_eq!(last["breaker"], "none");
    // The price feed (5 updates/s) writes through to the database.
    assert!(
        points
            .iter()
            .any(|p| p["db_queries_per_sec"].as_f64().unwrap_or(0.0) > 0.0),
        "{stats}"
    );
    assert_eq!(stats["database"], "sqlite");
}
