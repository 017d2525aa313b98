//! The load generator: HTTP GETs at a fixed rate (or as fast as possible),
//! latencies into an HDR histogram.
//!
//! At a fixed rate, request `i` is *due* at `start + i / rate`. When every
//! worker is busy past that moment (the server is slow), its latency is
//! measured from the due time, not from when a worker got round to sending
//! it: a server that stalls shows its stall in the percentiles instead of
//! hiding it by slowing the load down (the "coordinated omission" of
//! closed-loop tools).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

/// The bearer token sent with every request (the service's
/// `LARDER_SERVICE_TOKEN`, which may read any user's data); set once per
/// process before the first request.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sends `Authorization: Bearer <token>` with every request from now on.
pub fn set_token(token: String) {
    let _ = TOKEN.set(token);
}

/// One load phase.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub base_url: String,
    /// Path with `{id}` where the user id goes.
    pub path: String,
    /// Ids are drawn from 1..=users.
    pub users: u64,
    /// Zipf exponent of the id distribution (0 = uniform).
    pub zipf: f64,
    /// Requests per second; 0 means as fast as the workers can go.
    pub rate: u64,
    /// Concurrent connections.
    pub concurrency: usize,
    /// How long to run.
    pub duration: Duration,
    /// Progress bar label (`None`: no bar).
    pub label: Option<String>,
}

/// What a phase measured.
pub struct LoadResult {
    /// Latencies in microseconds, of every request (failures included).
    pub latency_us: Histogram<u64>,
    /// Responses with status 2xx or 404 (a valid answer for unknown ids).
    pub ok: u64,
    /// Other statuses and transport errors.
    pub errors: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(connector)
}

/// Draws user ids: Zipf-distributed ranks, rank r is user r (user 1 is the
/// hottest).
#[derive(Clone)]
struct Ids {
    zipf: Option<Zipf<f64>>,
    users: u64,
}

impl Ids {
    fn new(users: u64, s: f64) -> anyhow::Result<Ids> {
        let zipf = if s > 0.0 {
            Some(Zipf::new(users as f64, s).context("invalid zipf parameters")?)
        } else {
            None
        };
        Ok(Ids { zipf, users })
    }

    fn sample(&self, rng: &mut SmallRng) -> u64 {
        match &self.zipf {
            Some(z) => (z.sample(rng) as u64).clamp(1, self.users),
            None => rand::RngExt::random_range(rng, 1..=self.users),
        }
    }
}

/// Runs one phase.
pub async fn run(plan: &LoadPlan) -> anyhow::Result<LoadResult> {
    let client = client(plan.concurrency);
    let ids = Ids::new(plan.users, plan.zipf)?;
    let start = Instant::now();
    let end = start + plan.duration;
    let ticket = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let bar = progress(plan);
    let mut workers = Vec::with_capacity(plan.concurrency);
    for w in 0..plan.concurrency {
        let (client, ids, ticket, done) =
            (client.clone(), ids.clone(), ticket.clone(), done.clone());
        let plan = plan.clone();
        workers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(0x5eed ^ w as u64);
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                let due = if plan.rate > 0 {
                    let i = ticket.fetch_add(1, Ordering::Relaxed);
                    let due = start + Duration::from_secs_f64(i as f64 / plan.rate as f64);
                    if due >= end {
                        break;
                    }
                    if due > Instant::now() {
                        // An idle worker waits for its slot. The timer wakes
                        // it up to a millisecond late: that lateness is the
                        // generator's, not the server's, so the clock starts
                        // when the request really goes out.
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    } else {
                        // Behind schedule because the server was slow: the
                        // wait since the due time is the server's doing.
                        due
                    }
                } else {
                    let now = Instant::now();
                    if now >= end {
                        break;
                    }
                    now
                };
                let id = ids.sample(&mut rng);
                let uri = format!(
                    "{}{}",
                    plan.base_url,
                    plan.path.replace("{id}", &id.to_string())
                );
                let result = get(&client, &uri).await;
                // Failures are timed too: a slow 503 must not make a run
                // look faster by dropping out of the percentiles.
                let _ = hist.record(due.elapsed().as_micros().max(1) as u64);
                match result {
                    Ok(status) if (200..300).contains(&status) || status == 404 => ok += 1,
                    _ => errors += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (hist, ok, errors)
        }));
    }
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let elapsed = start.elapsed();
                bar.set_position(elapsed.as_millis() as u64);
                let n = done.load(Ordering::Relaxed);
                bar.set_message(format!(
                    "{:>8.0} req/s",
                    n as f64 / elapsed.as_secs_f64().max(0.001)
                ));
            }
        })
    };
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut errors) = (0, 0);
    for w in workers {
        let (h, o, e) = w.await?;
        latency_us.add(&h)?;
        ok += o;
        errors += e;
    }
    ticker.abort();
    bar.finish_and_clear();
    Ok(LoadResult {
        latency_us,
        ok,
        errors,
        elapsed: start.elapsed(),
    })
}

/// A request that has not finished after this long counts as an error, so
/// that a hung server cannot stall a run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn get(client: &HttpClient, uri: &str) -> anyhow::Result<u16> {
    let uri: hyper::Uri = uri.parse()?;
    tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut request = hyper::Request::get(uri);
        if let Some(token) = TOKEN.get() {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = client.request(request.body(Empty::new())?).await?;
        let status = response.status().as_u16();
        // Read the whole body: a response is done when its last byte arrives.
        response.into_body().collect().await?;
        Ok::<_, anyhow::Error>(status)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}"))?
}

fn progress(plan: &LoadPlan) -> ProgressBar {
    let Some(label) = &plan.label else {
        return ProgressBar::hidden();
    };
    let bar = ProgressBar::new(plan.duration.as_millis() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>18} [{bar:40}] {elapsed:>4}/{duration:4} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.clone());
    bar
}

/// The status of one GET (used to check the target before a run).
pub async fn status_of(uri: &str) -> anyhow::Result<u16> {
    get(&client(1), uri).await
}
