//! Hit rates from the instances' `/metrics`.
//!
//! A plain HTTP/1.1 GET over a TCP stream, written here rather than pulling
//! an HTTP client (and TLS) into an operator tool for one request to a
//! loopback or cluster-internal endpoint; https URLs are refused with a
//! message saying so.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Requests per result of one family, summed over instances.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    /// Every request.
    pub total: f64,
    /// Those answered from the cache (L1, L2, stale within grace, negative).
    pub hits: f64,
}

impl Requests {
    /// The share answered from the cache, as the alert rule counts it.
    pub fn hit_rate(&self) -> Option<f64> {
        (self.total > 0.0).then(|| self.hits / self.total)
    }
}

/// The results counted as hits (the recording rule's `result=~…`).
const HITS: [&str; 4] = ["hit_l1", "hit_l2", "stale", "negative_hit"];

/// `larder_cache_requests_total` per family across `urls`, since each
/// instance started.
pub async fn hit_rates(urls: &[String]) -> anyhow::Result<HashMap<String, Requests>> {
    let mut out: HashMap<String, Requests> = HashMap::new();
    for url in urls {
        let text = tokio::time::timeout(Duration::from_secs(5), get(url))
            .await
            .with_context(|| format!("{url}: no answer within 5 s"))??;
        for (family, result, n) in parse(&text) {
            let r = out.entry(family).or_default();
            r.total += n;
            if HITS.contains(&result.as_str()) {
                r.hits += n;
            }
        }
    }
    Ok(out)
}

/// The body of `GET url`.
async fn get(url: &str) -> anyhow::Result<String> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url}: only http:// metrics URLs are supported");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let mut stream = TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: text/plain\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{url}: not an HTTP answer");
    };
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("{url}: {status}");
    }
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Ok(dechunk(body));
    }
    Ok(body.to_string())
}

/// A chunked body, joined.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// `(family, result, value)` of every `larder_cache_requests_total` sample.
fn parse(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("larder_cache_requests_total{")?;
            let (labels, value) = rest.split_once('}')?;
            let value: f64 = value.trim().split(' ').next()?.parse().ok()?;
            let label = |name: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"').to_string())
                })
            };
            Some((label("family")?, label("result")?, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_are_read_per_family_and_result() {
        let text = "# HELP larder_cache_requests_total x\n\
                    larder_cache_requests_total{family=\"portfolio\",result=\"hit_l1\"} 80\n\
                    larder_cache_requests_total{result=\"miss\",family=\"portfolio\"} 20\n\
                    larder_loader_calls_total{family=\"portfolio\"} 20\n";
        assert_eq!(
            parse(text),
            vec![
                ("portfolio".into(), "hit_l1".into(), 80.0),
                ("portfolio".into(), "miss".into(), 20.0)
            ]
        );
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
