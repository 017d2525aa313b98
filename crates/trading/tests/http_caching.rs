//! HTTP caching: strong ETags, `304 Not Modified` answered from the cache,
//! `Cache-Control` that tells the truth (private per-user data, public market
//! data, `no-store` where the article says never to cache), on both setups.

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use support::{BOTH, SERVICE_TOKEN, call, login, send, start};
use tower::ServiceExt;

/// `GET path` as the service token with extra headers: status, headers, body.
async fn get_with(
    router: &Router,
    path: &str,
    extra: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut request = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {SERVICE_TOKEN}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        router.clone().oneshot(request.body(Body::empty()).unwrap()),
    )
    .await
    .expect("an answer within 30 s")
    .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}

fn header(headers: &HeaderMap, name: header::HeaderName) -> &str {
    headers
        .get(&name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn max_age(control: &str) -> u64 {
    control
        .split(',')
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .unwrap_or_else(|| panic!("no max-age in {control}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_current_etag_is_a_304_with_no_body_and_a_stale_one_a_200() {
    for setup in BOTH {
        let (_state, router, _db) = start(setup, false).await;
        let path = "/api/users/1/portfolio";
        let (status, headers, body) = get_with(&router, path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{setup:?}");
        let etag = header(&headers, header::ETAG).to_string();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
            "{etag}"
        );
        let control = header(&headers, header::CACHE_CONTROL);
        assert!(
            control.starts_with("private"),
            "{setup:?}: per-user data: {control}"
        );
        assert!(max_age(control) <= 60, "{control}");
        assert_eq!(header(&headers, header::VARY), "authorization");
        // The body is the portfolio's JSON, the same as a fresh rendering.
        let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            serde_json::to_vec(&parsed).unwrap().len(),
            body.len(),
            "compact JSON"
        );

        let weak = format!("W/{etag}");
        let listed = format!("\"nope\", {etag}");
        for inm in [etag.as_str(), weak.as_str(), listed.as_str(), "*"] {
            let (status, headers, body) = get_with(&router, path, &[("if-none-match", inm)]).await;
            assert_eq!(
                status,
                StatusCode::NOT_MODIFIED,
                "{setup:?} If-None-Match: {inm}"
            );
            assert!(body.is_empty(), "a 304 has no body");
            assert_eq!(header(&headers, header::ETAG), etag);
            assert!(header(&headers, header::CACHE_CONTROL).starts_with("private"));
            assert_eq!(header(&headers, header::VARY), "authorization");
        }
        let (status, _, body) =
            get_with(&router, path, &[("if-none-match", "\"0123456789abcdef\"")]).await;
        assert_eq!(status, StatusCode::OK, "an ETag of something else");
        assert!(!body.is_empty());

        // A write changes the data, so the ETag: the old one is a 200 now.
        let token = login(&router, 1).await;
        let order = r#"{"symbol":"TCS","side":"buy","qty":1}"#;
        let (status, _, json) =
            call(&router, "POST", "/api/orders", Some(order), Some(&token)).await;
        assert_eq!(status, StatusCode::CREATED, "{json}");
        let (status, headers, _) = get_with(&router, path, &[("if-none-match", &etag)]).await;
        assert_eq!(status, StatusCode::OK, "{setup:?}: after the order");
        assert_ne!(header(&headers, header::ETAG), etag);

        // The profile, likewise; a profile write changes its ETag.
        let (_, headers, _) = get_with(&router, "/api/users/2/profile", &[]).await;
        let profile_etag = header(&headers, header::ETAG).to_string();
        let (status, _, _) = get_with(
            &router,
            "/api/users/2/profile",
            &[("if-none-match", &profile_etag)],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        let (status, _) = send(
            &router,
            "PUT",
            "/api/users/2/profile",
            r#"{"name":"New Name","email":"two@example.com"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, headers, _) = get_with(
            &router,
            "/api/users/2/profile",
            &[("if-none-match", &profile_etag)],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(header(&headers, header::ETAG), profile_etag);
    }
}

#[tokio::test]
async fn market_data_is_public_and_what_is_never_cached_says_no_store() {
    for setup in BOTH {
        let (_state, router, _db) = start(setup, false).await;
        let (status, headers, _) = get_with(&router, "/api/stocks/TCS/price", &[]).await;
        assert_eq!(status, StatusCode::OK);
        let control = header(&headers, header::CACHE_CONTROL);
        assert!(control.starts_with("public"), "{control}");
        assert!(
            max_age(control) <= 2,
            "at most the price's two seconds: {control}"
        );
        assert!(headers.get(header::VARY).is_none(), "the same for everyone");
        let etag = header(&headers, header::ETAG).to_string();
        let (status, _, body) = get_with(
            &router,
            "/api/stocks/TCS/price",
            &[("if-none-match", &etag)],
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.is_empty());

        for path in [
            "/api/users/1/balance",
            "/api/users/1/trades",
            "/api/users/999999/portfolio",
            "/api/nowhere",
        ] {
            let (_, headers, _) = get_with(&router, path, &[]).await;
            assert_eq!(
                header(&headers, header::CACHE_CONTROL),
                "no-store",
                "{setup:?} {path}"
            );
        }
        // Per-user responses are never public, whatever the endpoint.
        for path in [
            "/api/users/1/portfolio",
            "/api/users/1/profile",
            "/api/users/1/watchlist",
        ] {
            let (_, headers, _) = get_with(&router, path, &[]).await;
            let control = header(&headers, header::CACHE_CONTROL);
            assert!(!control.contains("public"), "{path}: {control}");
        }
    }
}

#[tokio::test]
async fn the_dashboard_and_the_openapi_document_revalidate_with_etags() {
    let (_state, router, _db) = start(support::Setup::Embedded, false).await;
    for path in ["/", "/openapi.json"] {
        let (status, headers, body) = get_with(&router, path, &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
        let etag = header(&headers, header::ETAG).to_string();
        assert_eq!(header(&headers, header::CACHE_CONTROL), "no-cache");
        let (status, headers, body) = get_with(&router, path, &[("if-none-match", &etag)]).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(body.is_empty());
        assert_eq!(header(&headers, header::ETAG), etag);
    }
}
