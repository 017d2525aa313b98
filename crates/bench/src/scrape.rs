//! Reads the service's Prometheus `/metrics`: database queries and cache
//! results are *counted by the service*, not estimated by the bench.

use std::collections::HashMap;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The counters a scenario compares before and after a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// `trading_db_queries_total`, all queries.
    pub db_queries: f64,
    /// `larder_cache_requests_total` for the family, by result.
    pub hits: f64,
    /// Requests that went to the loader.
    pub misses: f64,
}

impl Counters {
    /// What happened between `self` (earlier) and `later`.
    pub fn delta(&self, later: &Counters) -> Counters {
        Counters {
            db_queries: later.db_queries - self.db_queries,
            hits: later.hits - self.hits,
            misses: later.misses - self.misses,
        }
    }

    /// Share of cache requests answered without the loader.
    pub fn hit_rate(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0.0).then(|| self.hits / total)
    }
}

/// Scrapes `<base>/metrics`; `None` if the target has no such endpoint (it
/// may be another implementation of the API).
pub async fn scrape(base_url: &str, family: &str) -> Option<Counters> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("{base_url}/metrics").parse().ok()?;
    let response = client.get(uri).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    Some(parse(&text, family))
}

/// Sums the samples we need out of the exposition text.
pub fn parse(text: &str, family: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, labels_of(rest.trim_end_matches('}'))),
            None => (series, HashMap::new()),
        };
        match name {
            "trading_db_queries_total" => c.db_queries += value,
            "larder_cache_requests_total"
                if labels.get("family").map(String::as_str) == Some(family) =>
            {
                match labels.get("result").map(String::as_str) {
                    Some("miss") => c.misses += value,
                    Some(_) => c.hits += value,
                    None => {}
                }
            }
            _ => {}
        }
    }
    c
}

fn labels_of(s: &str) -> HashMap<String, String> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim_matches('"').to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_services_exposition() {
        let text = "# TYPE x counter\n\
            trading_db_queries_total{query=\"portfolio\"} 12\n\
            larder_cache_requests_total{family=\"portfolio\",result=\"hit_l1\"} 80\n\
            larder_cache_requests_total{family=\"portfolio\",result=\"hit_l2\"} 5\n\
            larder_cache_requests_total{family=\"portfolio\",result=\"negative_hit\"} 3\n\
            larder_cache_requests_total{family=\"portfolio\",result=\"miss\"} 12\n\
            larder_cache_requests_total{family=\"other\",result=\"miss\"} 99\n";
        let c = parse(text, "portfolio");
        assert_eq!(c.db_queries, 12.0);
        assert_eq!(c.hits, 88.0);
        assert_eq!(c.misses, 12.0);
        assert_eq!(c.hit_rate(), Some(0.88));
    }
}
