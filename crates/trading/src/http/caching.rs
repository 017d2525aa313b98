//! HTTP caching (RFC 9110 conditional requests, RFC 9111 `Cache-Control`):
//! what a cached read tells the client and the proxies in between.
//!
//! - A cached entry goes out with its strong ETag (a hash of the body,
//!   the same in every instance) and `Cache-Control` that tells the truth:
//!   `private` for per-user data (with `Vary: Authorization`, so that a
//!   shared cache never hands one user's answer to another), `public` for
//!   market data, `max-age` from what is left of the entry's freshness.
//! - `If-None-Match` with the current ETag is a `304 Not Modified` with no
//!   body, answered from the cache (and only after authentication: the
//!   extractors run first).
//! - API responses that set nothing are `no-store` ([`no_store_unless_set`]):
//!   orders, balance and trades, errors, the session endpoints.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use larder::Rendered;
use larder::render::{if_none_match, strong_etag};
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::{
    Content, ObjectBuilder, Ref, RefOr, Required, Response as DocResponse, ResponseBuilder, Type,
};
use utoipa::{IntoParams, IntoResponses, ToSchema};

/// The request's `If-None-Match` header (absent: nothing matches). Never
/// rejects the request.
#[derive(Debug, Clone, Default)]
pub struct IfNoneMatch(Option<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(IfNoneMatch(
            parts.headers.get(header::IF_NONE_MATCH).cloned(),
        ))
    }
}

impl IfNoneMatch {
    /// Whether the client holds the representation with `etag`.
    pub fn matches(&self, etag: &[u8]) -> bool {
        self.0
            .as_ref()
            .is_some_and(|h| if_none_match(h.as_bytes(), etag))
    }
}

/// In the OpenAPI document: the optional `If-None-Match` header of every
/// cached read.
impl IntoParams for IfNoneMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("If-None-Match")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "ETags the client holds (RFC 9110 §13.1.2): a current one, or `*`, is answered 304 with no body.",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).build()))
                .build(),
        ]
    }
}

/// Who may keep a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Per-user data: the browser may keep it, a shared cache may not.
    Private,
    /// The same for everyone (market data).
    Public,
}

/// Longest `max-age` ever sent: an entry cached "forever" is still
/// revalidated daily.
const MAX_AGE_CAP: Duration = Duration::from_secs(24 * 3600);

/// A cached entry as a response: 200 with the rendered body, or 304.
pub struct CachedJson<T> {
    rendered: Rendered<T>,
    audience: Audience,
    if_none_match: IfNoneMatch,
}

impl<T> CachedJson<T> {
    /// Per-user data (`private`, `Vary: Authorization`).
    pub fn private(rendered: Rendered<T>, if_none_match: IfNoneMatch) -> Self {
        CachedJson {
            rendered,
            audience: Audience::Private,
            if_none_match,
        }
    }

    /// Data that is the same for everyone (`public`).
    pub fn public(rendered: Rendered<T>, if_none_match: IfNoneMatch) -> Self {
        CachedJson {
            rendered,
            audience: Audience::Public,
            if_none_match,
        }
    }
}

/// In the OpenAPI document: what every cached read answers, the body with
/// its validators (200) or the validators alone (304). The headers refer to
/// `#/components/headers`, which `http::openapi` fills in.
impl<T: ToSchema> IntoResponses for CachedJson<T> {
    fn responses() -> BTreeMap<String, RefOr<DocResponse>> {
        let with_validators = |response: ResponseBuilder| {
            response
                .header_ref("ETag", Ref::new("#/components/headers/ETag"))
                .header_ref(
                    "Cache-Control",
                    Ref::new("#/components/headers/CacheControl"),
                )
        };
        let ok = with_validators(ResponseBuilder::new().description(format!(
            "The {}, from the cache (or the database on a miss).",
            T::name()
        )))
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name(T::name()))),
        );
        let not_modified = with_validators(
            ResponseBuilder::new()
                .description("Not Modified: the client's ETag is current. No body."),
        );
        BTreeMap::from([
            ("200".to_owned(), RefOr::T(ok.build())),
            ("304".to_owned(), RefOr::T(not_modified.build())),
        ])
    }
}

/// `max-age` values up to this many seconds are formatted once per thread
/// and reused ([`cache_control`]); longer ones, rare, each time.
const MEMO_SECS: usize = 3600;

thread_local! {
    /// The `Cache-Control` values already made on this thread, by audience
    /// and seconds. A hit's header is then a reference count, not a
    /// `format!` and a copy: hot entries share a handful of values.
    static CONTROLS: std::cell::RefCell<[Vec<Option<HeaderValue>>; 2]> =
        const { std::cell::RefCell::new([Vec::new(), Vec::new()]) };
}

/// `private, max-age=N` (or `public`), N in whole seconds left.
fn cache_control(audience: Audience, fresh_for: Duration) -> HeaderValue {
    let secs = fresh_for.min(MAX_AGE_CAP).as_secs();
    let Ok(slot) = usize::try_from(secs) else {
        return format_cache_control(audience, secs);
    };
    if slot > MEMO_SECS {
        return format_cache_control(audience, secs);
    }
    CONTROLS.with_borrow_mut(|memo| {
        let by_secs = &mut memo[audience as usize];
        if by_secs.len() <= slot {
            by_secs.resize(slot + 1, None);
        }
        by_secs[slot]
            .get_or_insert_with(|| format_cache_control(audience, secs))
            .clone()
    })
}

fn format_cache_control(audience: Audience, secs: u64) -> HeaderValue {
    let scope = match audience {
        Audience::Private => "private",
        Audience::Public => "public",
    };
    // Digits and ASCII only: always a valid header value.
    HeaderValue::try_from(format!("{scope}, max-age={secs}"))
        .unwrap_or(HeaderValue::from_static("no-cache"))
}

/// The validators and caching headers both the 200 and the 304 carry
/// (RFC 9110 §15.4.5: a 304 repeats them).
fn cache_headers(
    headers: &mut HeaderMap,
    etag: HeaderValue,
    control: HeaderValue,
    audience: Audience,
) {
    headers.insert(header::ETAG, etag);
    headers.insert(header::CACHE_CONTROL, control);
    if audience == Audience::Private {
        headers.insert(header::VARY, HeaderValue::from_static("authorization"));
    }
}

impl<T> IntoResponse for CachedJson<T> {
    fn into_response(self) -> Response {
        let etag = HeaderValue::from_maybe_shared(self.rendered.etag_bytes().clone())
            .unwrap_or(HeaderValue::from_static("\"\""));
        let control = cache_control(self.audience, self.rendered.fresh_for());
        if self.if_none_match.matches(self.rendered.etag_bytes()) {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            cache_headers(response.headers_mut(), etag, control, self.audience);
            return response;
        }
        let mut response = self.rendered.body().clone().into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        cache_headers(headers, etag, control, self.audience);
        response
    }
}

/// A file built into the binary, served with an ETag and revalidated on
/// every use (`no-cache`): the dashboard, the OpenAPI document.
pub struct StaticFile {
    body: Bytes,
    etag: HeaderValue,
    content_type: &'static str,
}

impl StaticFile {
    /// Hashes `body` once.
    pub fn new(body: impl Into<Bytes>, content_type: &'static str) -> StaticFile {
        let body = body.into();
        let etag =
            HeaderValue::try_from(strong_etag(&body)).unwrap_or(HeaderValue::from_static("\"\""));
        StaticFile {
            body,
            etag,
            content_type,
        }
    }

    /// 200 with the file, or 304 when the client has it.
    pub fn respond(&self, if_none_match: &IfNoneMatch) -> Response {
        let mut response = if if_none_match.matches(self.etag.as_bytes()) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut r = self.body.clone().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            r
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// The dashboard page (crates/trading/static/dashboard.html).
pub static DASHBOARD: LazyLock<StaticFile> = LazyLock::new(|| {
    StaticFile::new(
        include_str!("../../static/dashboard.html"),
        "text/html; charset=utf-8",
    )
});

/// The OpenAPI document, generated from the handlers once (see
/// `http::openapi`).
pub static OPENAPI: LazyLock<StaticFile> =
    LazyLock::new(|| StaticFile::new(super::openapi::document(), "application/json"));

/// `Cache-Control: no-store` unless the response says otherwise: what the
/// front middleware does to every `/api/` answer. What the article says
/// never to cache (orders, balance, trades), errors and sessions end up so;
/// a cached read sets its own.
pub fn no_store_unless_set(response: &mut Response) {
    if !response.headers().contains_key(header::CACHE_CONTROL) {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_what_is_left_capped_at_a_day() {
        assert_eq!(
            cache_control(Audience::Private, Duration::from_millis(59_900)),
            "private, max-age=59"
        );
        assert_eq!(
            cache_control(Audience::Public, Duration::MAX),
            "public, max-age=86400"
        );
        assert_eq!(
            cache_control(Audience::Public, Duration::ZERO),
            "public, max-age=0"
        );
        // Memoized per thread: asked again, the same answers.
        for _ in 0..2 {
            for secs in [0, 1, 59, 3599, 3600, 3601, 86_400] {
                for (audience, scope) in
                    [(Audience::Private, "private"), (Audience::Public, "public")]
                {
                    assert_eq!(
                        cache_control(audience, Duration::from_secs(secs)),
                        format!("{scope}, max-age={secs}").as_str()
                    );
                }
            }
        }
    }
}
