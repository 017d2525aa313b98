//! The whole trading API over HTTP, on both setups (SQLite + L1, and
//! PostgreSQL + Redis): sessions and who may do what, orders against the
//! balance (also many at once), the uncached endpoints reading the database
//! every time, depth, readiness, rate limits, the OpenAPI document, the
//! price WebSocket, and two instances seeing each other's writes.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use rust_decimal::Decimal;
use serde_json::Value;
use support::{BOTH, Setup, call, exec, login};

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("{v} is not a decimal string"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_authenticate_and_authorize() {
    for setup in BOTH {
        let (state, router, _db) = support::start(setup, false).await;
        // Wrong password, unknown email, malformed body.
        let wrong = r#"{"email":"user7@example.com","password":"nope"}"#;
        let (status, headers, _) = call(&router, "POST", "/api/sessions", Some(wrong), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{setup:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        let nobody = r#"{"email":"nobody@example.com","password":"larder-demo"}"#;
        let (status, _, _) = call(&router, "POST", "/api/sessions", Some(nobody), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let extra = r#"{"email":"user7@example.com","password":"x","admin":true}"#;
        let (status, _, _) = call(&router, "POST", "/api/sessions", Some(extra), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let token = login(&router, 7).await;
        assert_eq!(token.len(), 64);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let (status, _, me) = call(&router, "GET", "/api/sessions/me", None, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        assert_eq!(me["user_id"], 7);
        assert!(me["expires_at"].as_str().unwrap().ends_with('Z'));

        // Every /api/users/{id}/... endpoint: 401 without a session, 403
        // with another user's, 200 with the owner's.
        for path in ["portfolio", "watchlist", "profile", "balance", "trades"] {
            let own = format!("/api/users/7/{path}");
            let other = format!("/api/users/8/{path}");
            let (status, _, _) = call(&router, "GET", &own, None, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{own} without a token");
            let (status, _, _) = call(&router, "GET", &own, None, Some("f00")).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{own} with a made-up token"
            );
            let (status, _, _) = call(&router, "GET", &other, None, Some(&token)).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{other} with user 7's session"
            );
            let (status, _, body) = call(&router, "GET", &own, None, Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{own}: {body}");
        }
        let (status, _, _) = call(
            &router,
            "PUT",
            "/api/users/8/watchlist",
            Some(r#"{"symbols":["TCS"]}"#),
            Some(&token),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "cannot change another's watchlist"
        );

        // The service token acts for users; it has no session of its own.
        let service = Some(support::SERVICE_TOKEN);
        let (status, _, _) = call(&router, "GET", "/api/sessions/me", None, service).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _, _) = call(&router, "DELETE", "/api/sessions/me", None, service).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let order = r#"{"symbol":"TCS","side":"buy","qty":1}"#;
        let (status, _, _) = call(&router, "POST", "/api/orders", Some(order), service).await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // The raw token is stored nowhere: Redis keys and values carry its
        // hash only.
        if setup == Setup::Production {
            let keys = testkit::scan_keys(&format!("{}*", state.cache.namespace())).await;
            assert!(keys.iter().any(|k| k.contains("session")), "{keys:?}");
            for key in keys {
                assert!(!key.contains(&token), "{key} holds the token");
            }
        }

        // Logout: the token is refused at once (its cached copy is gone).
        let (status, _, _) = call(&router, "DELETE", "/api/sessions/me", None, Some(&token)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _, _) = call(&router, "GET", "/api/sessions/me", None, Some(&token)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{setup:?}: a logged-out token"
        );
        let (status, _, _) = call(&router, "GET", "/api/users/7/balance", None, Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

/// An expired session is refused even while a cached copy exists, and a
/// session in use is extended (sliding expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_expire_and_slide() {
    for setup in BOTH {
        let (state, router, _db) = support::start(setup, false).await;
        let token = login(&router, 11).await;
        let hash = trading::session::token_hash(&token);
        // Pretend the session was last extended two minutes ago.
        let old = trading::session::now_ms() + 28 * 60 * 1000;
        let sql = format!("UPDATE sessions SET expires_at_ms = {old} WHERE token_hash = '{hash}'");
        exec(&state, &sql, &sql).await;
        state.sessions.invalidate(&hash).await.unwrap();
        let (status, _, me) = call(&router, "GET", "/api/sessions/me", None, Some(&token)).await;
        assert_eq!(status, StatusCode::OK);
        let expires = humantime::parse_rfc3339(me["expires_at"].as_str().unwrap()).unwrap();
        let left = expires
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        assert!(
            left > Duration::from_secs(29 * 60),
            "{setup:?}: the session was not extended: {left:?} left"
        );
        // Expired in the database, still cached: refused.
        let past = trading::session::now_ms() - 1;
        let sql = format!("UPDATE sessions SET expires_at_ms = {past} WHERE token_hash = '{hash}'");
        exec(&state, &sql, &sql).await;
        state
            .sessions
            .write_through(&hash, async move {
                Ok::<_, std::io::Error>(larder::Versioned {
                    version: u64::MAX,
                    value: trading::session::Session {
                        user_id: 11,
                        expires_at_ms: past,
                    },
                })
            })
            .await
            .unwrap();
        let (status, _, _) = call(&router, "GET", "/api/sessions/me", None, Some(&token)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{setup:?}: an expired session"
        );
        // The background sweep removes the row.
        let swept = state
            .db
            .sweep_sessions(trading::session::now_ms())
            .await
            .unwrap();
        assert_eq!(swept, 1, "{setup:?}");
        assert_eq!(state.db.session(&hash, 0).await.unwrap(), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_move_cash_and_holdings_and_refresh_the_portfolio() {
    for setup in BOTH {
        let (_state, router, _db) = support::start(setup, false).await;
        let token = login(&router, 5).await;
        let t = Some(token.as_str());
        let (_, _, before) = call(&router, "GET", "/api/users/5/portfolio", None, t).await;
        let (_, _, balance) = call(&router, "GET", "/api/users/5/balance", None, t).await;
        let cash = dec(&balance["balance"]);
        let held = |p: &Value, symbol: &str| {
            p["holdings"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h["symbol"] == symbol)
                .map(|h| h["qty"].as_i64().unwrap())
                .unwrap_or(0)
        };
        let tcs_before = held(&before, "TCS");

        let buy = r#"{"symbol":"TCS","side":"buy","qty":3}"#;
        let (status, _, receipt) = call(&router, "POST", "/api/orders", Some(buy), t).await;
        assert_eq!(status, StatusCode::CREATED, "{setup:?}: {receipt}");
        let amount = dec(&receipt["amount"]);
        assert_eq!(amount, dec(&receipt["price"]) * Decimal::from(3));
        assert_eq!(dec(&receipt["balance"]), cash - amount);
        // The portfolio was cached before the order; the order's tag
        // invalidation makes the next read show the new holding.
        let (_, _, after) = call(&router, "GET", "/api/users/5/portfolio", None, t).await;
        assert_eq!(
            held(&after, "TCS"),
            tcs_before + 3,
            "{setup:?}: stale portfolio"
        );
        let (_, _, balance) = call(&router, "GET", "/api/users/5/balance", None, t).await;
        assert_eq!(dec(&balance["balance"]), cash - amount);
        let (_, _, trades) = call(&router, "GET", "/api/users/5/trades?limit=5", None, t).await;
        assert_eq!(trades["trades"][0]["trade_id"], receipt["trade_id"]);
        assert_eq!(trades["trades"][0]["side"], "buy");

        // Selling everything removes the holding.
        let all = tcs_before + 3;
        let sell = format!(r#"{{"symbol":"TCS","side":"sell","qty":{all}}}"#);
        let (status, _, _) = call(&router, "POST", "/api/orders", Some(&sell), t).await;
        assert_eq!(status, StatusCode::CREATED);
        let (_, _, after) = call(&router, "GET", "/api/users/5/portfolio", None, t).await;
        assert_eq!(held(&after, "TCS"), 0);
        let (status, _, body) = call(&router, "POST", "/api/orders", Some(&sell), t).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"], "insufficient holdings");

        // Refused orders.
        for (body, want) in [
            (
                r#"{"symbol":"TCS","side":"buy","qty":1000000}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                r#"{"symbol":"NOSUCH","side":"buy","qty":1}"#,
                StatusCode::NOT_FOUND,
            ),
            (
                r#"{"symbol":"TCS","side":"buy","qty":0}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"symbol":"TCS","side":"hold","qty":1}"#,
                StatusCode::BAD_REQUEST,
            ),
            (
                r#"{"symbol":"TCS","side":"buy","qty":1,"price":"0.01"}"#,
                StatusCode::BAD_REQUEST,
            ),
            (r#"{"symbol":"TCS","#, StatusCode::BAD_REQUEST),
        ] {
            let (status, _, answer) = call(&router, "POST", "/api/orders", Some(body), t).await;
            assert_eq!(status, want, "{body}: {answer}");
            assert!(answer["error"].is_string());
        }
        let (status, _, _) = call(&router, "POST", "/api/orders", Some(buy), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = call(&router, "GET", "/api/users/5/trades?limit=0", None, t).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

/// Many orders at once for one user: exactly as many execute as the
/// balance pays for, and it never goes below zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_orders_cannot_overdraw() {
    for setup in BOTH {
        let (_state, router, _db) = support::start(setup, false).await;
        let token = login(&router, 9).await;
        let t = Some(token.as_str());
        let (_, _, price) = call(&router, "GET", "/api/stocks/TCS/price", None, t).await;
        let price = dec(&price["price"]);
        let (_, _, balance) = call(&router, "GET", "/api/users/9/balance", None, t).await;
        let cash = dec(&balance["balance"]);
        // Each order costs a bit over a seventh of the cash: 7 fit at most.
        let qty: i64 = (cash / (price * Decimal::from(7)))
            .floor()
            .try_into()
            .unwrap();
        assert!(qty >= 1, "TCS too dear for the test: {price}");
        let cost = price * Decimal::from(qty);
        let fits: i64 = (cash / cost).floor().try_into().unwrap();
        for round in 0..3 {
            let body = format!(r#"{{"symbol":"TCS","side":"buy","qty":{qty}}}"#);
            let tasks: Vec<_> = (0..40)
                .map(|_| {
                    let (router, body, token) = (router.clone(), body.clone(), token.clone());
                    tokio::spawn(async move {
                        call(&router, "POST", "/api/orders", Some(&body), Some(&token))
                            .await
                            .0
                    })
                })
                .collect();
            let mut executed = 0;
            for task in tasks {
                match task.await.unwrap() {
                    StatusCode::CREATED => executed += 1,
                    StatusCode::UNPROCESSABLE_ENTITY => {}
                    other => panic!("{setup:?}: an order answered {other}"),
                }
            }
            let (_, _, balance) = call(&router, "GET", "/api/users/9/balance", None, t).await;
            let left = dec(&balance["balance"]);
            assert!(left >= Decimal::ZERO, "{setup:?}: overdrawn: {left}");
            if round == 0 {
                assert_eq!(
                    executed, fits,
                    "{setup:?}: executed {executed} of {fits} affordable"
                );
                assert_eq!(left, cash - cost * Decimal::from(fits));
            } else {
                assert_eq!(executed, 0, "{setup:?}: nothing more is affordable");
            }
        }
        let (_, _, trades) = call(&router, "GET", "/api/users/9/trades?limit=500", None, t).await;
        assert_eq!(trades["trades"].as_array().unwrap().len() as i64, fits);
    }
}

/// Balance and trades are not cached: a change made behind the service's
/// back shows on the very next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uncached_endpoints_read_the_database_every_time() {
    for setup in BOTH {
        let (state, router, _db) = support::start(setup, false).await;
        let token = login(&router, 12).await;
        let t = Some(token.as_str());
        for cents in [123_456_i64, 7, 99_999_999] {
            exec(
                &state,
                &format!("UPDATE users SET balance = {cents} / 100.0 WHERE id = 12"),
                &format!("UPDATE users SET balance_cents = {cents} WHERE id = 12"),
            )
            .await;
            let (_, _, balance) = call(&router, "GET", "/api/users/12/balance", None, t).await;
            assert_eq!(
                dec(&balance["balance"]),
                Decimal::new(cents, 2),
                "{setup:?}"
            );
        }
        for n in 1..=3 {
            let buy = r#"{"symbol":"ITC","side":"buy","qty":1}"#;
            call(&router, "POST", "/api/orders", Some(buy), t).await;
            let (_, _, trades) = call(&router, "GET", "/api/users/12/trades", None, t).await;
            assert_eq!(trades["trades"].as_array().unwrap().len(), n, "{setup:?}");
        }
        exec(
            &state,
            "DELETE FROM trades WHERE user_id = 12",
            "DELETE FROM trades WHERE user_id = 12",
        )
        .await;
        let (_, _, trades) = call(&router, "GET", "/api/users/12/trades", None, t).await;
        assert_eq!(trades["trades"].as_array().unwrap().len(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn depth_is_written_through_and_served_from_the_cache() {
    for setup in BOTH {
        let (state, router, _db) = support::start(setup, false).await;
        let (status, _, depth) = call(&router, "GET", "/api/stocks/INFY/depth", None, None).await;
        assert_eq!(status, StatusCode::OK, "{depth}");
        let bids = depth["bids"].as_array().unwrap();
        let asks = depth["asks"].as_array().unwrap();
        assert_eq!((bids.len(), asks.len()), (5, 5));
        assert!(dec(&bids[0]["price"]) < dec(&asks[0]["price"]));
        let book = trading::depth::Book::around(Decimal::new(123_400, 2), None);
        trading::feed::update_depth(&state, "INFY", book)
            .await
            .unwrap();
        let loads = state.depths.stats().loader_calls;
        let (_, _, depth) = call(&router, "GET", "/api/stocks/INFY/depth", None, None).await;
        assert_eq!(depth["version"], 1, "{setup:?}: {depth}");
        assert!(dec(&depth["bids"][0]["price"]) < Decimal::new(123_400, 2));
        assert_eq!(
            state.depths.stats().loader_calls,
            loads,
            "a written-through book is read from the cache"
        );
        let (status, _, _) = call(&router, "GET", "/api/stocks/NOSUCH/depth", None, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_follows_the_database() {
    for setup in BOTH {
        let (state, router, _db) = support::start(setup, false).await;
        let (status, _, ready) = call(&router, "GET", "/readyz", None, None).await;
        assert_eq!(status, StatusCode::OK, "{ready}");
        assert_eq!(ready["database"], "up");
        let redis = if setup == Setup::Production {
            "closed"
        } else {
            "none"
        };
        assert_eq!(ready["redis"], redis);
        state.db.close().await;
        let (status, _, ready) = call(&router, "GET", "/readyz", None, None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
        assert_eq!(ready["database"], "down");
    }
}

/// The OpenAPI document (generated from the handlers) lists exactly the
/// routes the router serves, each with its responses, every reference
/// resolving.
#[tokio::test]
async fn openapi_documents_every_route() {
    let (_state, router, _db) = support::start(Setup::Embedded, false).await;
    let (status, _, doc) = call(&router, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                documented.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    documented.sort();
    // Each operation says what success looks like, and an authenticated one
    // what a missing session gets.
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses
                    .keys()
                    .any(|code| code.starts_with('2') || code == "101"),
                "{method} {path} documents no success"
            );
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path}: no 401");
            }
            // A revalidating read documents its 304 and its validator.
            let revalidates = op["parameters"]
                .as_array()
                .is_some_and(|params| params.iter().any(|p| p["name"] == "If-None-Match"));
            if revalidates {
                assert!(
                    responses["304"]["headers"].get("ETag").is_some(),
                    "{method} {path}: If-None-Match without a documented 304 + ETag"
                );
            }
        }
    }
    // Every `$ref` names a component that exists (utoipa takes the names
    // from types; a renamed type must not leave a dangling reference).
    fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(found.len() > 50, "only {} references", found.len());
    for r in found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    let mut served = vec![
        "GET /",
        "GET /api/stats",
        "GET /api/stocks/{symbol}/depth",
        "GET /api/stocks/{symbol}/price",
        "GET /api/users/{id}/balance",
        "GET /api/users/{id}/portfolio",
        "GET /api/users/{id}/profile",
        "GET /api/users/{id}/trades",
        "GET /api/users/{id}/watchlist",
        "GET /healthz",
        "GET /metrics",
        "GET /openapi.json",
        "GET /readyz",
        "GET /ws/prices",
        "DELETE /api/sessions/me",
        "GET /api/sessions/me",
        "POST /api/orders",
        "POST /api/sessions",
        "PUT /api/users/{id}/profile",
        "PUT /api/users/{id}/watchlist",
    ];
    served.sort();
    assert_eq!(documented, served);
    // And each documented route exists (a missing one is the JSON 404 "no
    // such route", or 405 for a wrong method).
    for route in &served {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path.replace("{id}", "1").replace("{symbol}", "TCS");
        let request = axum::http::Request::builder()
            .method(method)
            .uri(&path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from("{}"))
            .unwrap();
        let response = tower::ServiceExt::oneshot(router.clone(), request)
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{route}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body.starts_with(br#"{"error":"no such route"#)),
            "{route} is documented but not served"
        );
    }
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let (mut args, _db) = support::settings(Setup::Embedded, false).await;
    args.rate_limit_ip = 5.0; // bursts of 10
    args.rate_limit_session = 1.0; // bursts of 2
    args.login_attempts_per_min = 6.0; // bursts of 5
    let (_state, router) = support::from_args(&args).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let (status, headers, body) =
            call(&router, "GET", "/api/stocks/TCS/price", None, None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&wait), "Retry-After: {wait}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("too many requests")
            );
        }
        statuses.push(status);
    }
    assert!(
        statuses[..10].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(statuses[10], StatusCode::TOO_MANY_REQUESTS);
    // Health, readiness and metrics are never limited.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = tower::ServiceExt::oneshot(
            router.clone(),
            axum::http::Request::get(path)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    // Logins: five attempts, then 429, whatever the password.
    let (mut args, _db2) = support::settings(Setup::Embedded, false).await;
    args.rate_limit_ip = 0.0;
    args.rate_limit_session = 1.0;
    args.login_attempts_per_min = 6.0;
    let (_state, router) = support::from_args(&args).await;
    let wrong = r#"{"email":"user1@example.com","password":"guess"}"#;
    for i in 0..5 {
        let (status, _, _) = call(&router, "POST", "/api/sessions", Some(wrong), None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let (status, headers, _) = call(&router, "POST", "/api/sessions", Some(wrong), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=10).contains(&wait), "Retry-After: {wait}");

    // Per session: a busy token is limited, another is not.
    let (mut args, _db3) = support::settings(Setup::Embedded, false).await;
    args.rate_limit_ip = 0.0;
    args.rate_limit_session = 1.0;
    args.login_attempts_per_min = 0.0;
    let (_state, router) = support::from_args(&args).await;
    let a = login(&router, 1).await;
    let b = login(&router, 2).await;
    let mut limited = false;
    for _ in 0..3 {
        let (status, _, _) = call(&router, "GET", "/api/users/1/balance", None, Some(&a)).await;
        limited |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(
        limited,
        "the third request in a second is over a burst of 2"
    );
    let (status, _, _) = call(&router, "GET", "/api/users/2/balance", None, Some(&b)).await;
    assert_eq!(status, StatusCode::OK);
}

async fn next_price(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a price within 10 s")
        .expect("the stream is open")
        .expect("a message");
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_streams_the_prices_asked_for() {
    for setup in BOTH {
        let (state, router, _db) = support::start(setup, false).await;
        let addr = support::serve(router.clone()).await;
        let url = format!("ws://{addr}/ws/prices?symbols=TCS,INFY");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        // The handler took its slot (and subscribed) before answering 101.
        assert_eq!(state.hub.connections(), 1);
        // First the current prices, in symbol order.
        let (infy, tcs) = (next_price(&mut ws).await, next_price(&mut ws).await);
        assert_eq!(
            (infy["symbol"].as_str(), tcs["symbol"].as_str()),
            (Some("INFY"), Some("TCS"))
        );
        let (_, _, now) = call(&router, "GET", "/api/stocks/TCS/price", None, None).await;
        assert_eq!(tcs["price"], now["price"]);
        if setup == Setup::Production {
            wait_for_relay(&state).await;
        }
        for (symbol, cents) in [("ITC", 10_000), ("TCS", 250_000), ("INFY", 150_000)] {
            let p = trading::feed::update_price(&state, symbol, Decimal::new(cents, 2))
                .await
                .unwrap()
                .unwrap();
            state.hub.publish(&p).await;
        }
        // ITC was not asked for: the first message is TCS.
        let first = next_price(&mut ws).await;
        assert_eq!(first["symbol"], "TCS", "{setup:?}");
        assert_eq!(dec(&first["price"]), Decimal::new(250_000, 2));
        assert_eq!(next_price(&mut ws).await["symbol"], "INFY");
        drop(ws);

        // A plain GET (no upgrade) is a JSON 400, like any client error.
        let (status, _, body) = call(&router, "GET", "/ws/prices?symbols=TCS", None, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().unwrap().contains("WebSocket"),
            "{body}"
        );
        // Bad requests are refused before the upgrade.
        for query in ["", "?symbols=", "?symbols=*", "?other=1"] {
            let url = format!("ws://{addr}/ws/prices{query}");
            assert!(
                tokio_tungstenite::connect_async(url).await.is_err(),
                "{query} was accepted"
            );
        }
    }
}

/// With Redis, the hub's relay subscribes in the background: publish probe
/// ticks until one comes back.
async fn wait_for_relay(state: &trading::app::AppState) {
    let mut rx = state.hub.subscribe().expect("a slot").1;
    let probe = trading::price::Price {
        symbol: "PROBE".into(),
        price: Decimal::ONE,
        version: 0,
    };
    let started = std::time::Instant::now();
    loop {
        state.hub.publish(&probe).await;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the Redis relay never subscribed"
        );
    }
}

/// Two instances on one PostgreSQL and one Redis: an order on A shows in
/// the portfolio B serves (after B heard the invalidation), a logout on A
/// ends the session on B, and B's WebSocket clients get A's prices.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_see_each_others_writes() {
    let (args, _db) = support::settings(Setup::Production, false).await;
    let (a_state, a) = support::from_args(&args).await;
    let (b_state, b) = support::from_args(&args).await;
    let (c_state, c) = support::from_args(&args).await;
    let others = [(&b_state, &b), (&c_state, &c)];
    let token = login(&a, 21).await;
    let t = Some(token.as_str());
    // B and C hold the portfolio in their L1.
    let mut total = Decimal::ZERO;
    for (_, router) in others {
        let (_, _, before) = call(router, "GET", "/api/users/21/portfolio", None, t).await;
        total = dec(&before["total_market_value"]);
    }
    let buy = r#"{"symbol":"RELIANCE","side":"buy","qty":2}"#;
    let (status, _, receipt) = call(&a, "POST", "/api/orders", Some(buy), t).await;
    assert_eq!(status, StatusCode::CREATED, "{receipt}");
    for (state, router) in others {
        assert!(
            state
                .cache
                .sync_invalidations(Duration::from_secs(5))
                .await
                .unwrap()
        );
        let (_, _, after) = call(router, "GET", "/api/users/21/portfolio", None, t).await;
        assert_eq!(
            dec(&after["total_market_value"]),
            total + dec(&receipt["amount"]),
            "every instance serves the portfolio as of A's order"
        );
    }

    // Logout on A: B and C refuse the token once they heard.
    for (_, router) in others {
        let (status, _, _) = call(router, "GET", "/api/sessions/me", None, t).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = call(&a, "DELETE", "/api/sessions/me", None, t).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for (state, router) in others {
        assert!(
            state
                .cache
                .sync_invalidations(Duration::from_secs(5))
                .await
                .unwrap()
        );
        let (status, _, _) = call(router, "GET", "/api/sessions/me", None, t).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "another instance still accepts a logged-out token"
        );
    }

    // A price made on A reaches a client of B.
    let addr = support::serve(b).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/prices?symbols=LT"))
        .await
        .unwrap();
    assert_eq!(next_price(&mut ws).await["symbol"], "LT", "the snapshot");
    wait_for_relay(&b_state).await;
    let p = trading::feed::update_price(&a_state, "LT", Decimal::new(333_300, 2))
        .await
        .unwrap()
        .unwrap();
    a_state.hub.publish(&p).await;
    let got = next_price(&mut ws).await;
    assert_eq!(got["symbol"], "LT");
    assert_eq!(dec(&got["price"]), Decimal::new(333_300, 2));
}

/// A client that never reads is disconnected instead of making the server
/// buffer for it without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_websocket_client_that_never_reads_is_dropped() {
    let (state, router, _db) = support::start(Setup::Embedded, false).await;
    let addr = support::serve(router).await;
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/prices?symbols=TCS"))
        .await
        .unwrap();
    let (_slot, mut reader) = state.hub.subscribe().expect("a slot");
    assert_eq!(state.hub.connections(), 2);
    let tick = trading::price::Price {
        symbol: "TCS".into(),
        price: Decimal::new(250_000, 2),
        version: 1,
    };
    // Publish until the stalled client is cut off: it falls a ring behind
    // (or a send times out once the socket buffers are full). Bounded.
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    while state.hub.connections() > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still connected after {sent} updates"
        );
        for _ in 0..1000 {
            state.hub.publish(&tick).await;
        }
        sent += 1000;
        // Keep this test's own receiver current, as a healthy client would.
        while reader.try_recv().is_ok() {}
        tokio::task::yield_now().await;
    }
    assert!(sent >= trading::stream::CAPACITY as u64);
    drop(ws);
}
