//! The HTTP ceiling: what a cached read costs next to a handler that does
//! nothing. In one run, with the same client (wrk), connections and body
//! size: a bare handler returning the portfolio's bytes (the ceiling), the
//! service's warm portfolio read with a session, the same with
//! `If-None-Match` (304s), and a public price read. Each row: requests/s,
//! p50/p99, its share of the ceiling, and CPU time per request of the
//! serving process (from `/proc/<pid>/stat`).
//!
//! The rows are measured in rounds, each round running all four in a
//! rotated order, and every share is taken against the ceiling of its own
//! round: on a shared VM whose speed drifts by a third within minutes, a
//! ceiling measured once, first, made the shares of the rows after it
//! move by as much as the code under test did.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use crate::service::{self, Service};

/// Settings of the ceiling scenario.
#[derive(Debug, Clone, Args)]
pub struct CeilingArgs {
    /// Seconds of load per row and round (after a warm-up: a third of it in
    /// the first round, 2 s after).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Rounds of the four rows; each figure printed is the median of its
    /// rounds.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    pub connections: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    pub threads: u32,
    /// Users logged in and read in turn (each login is one argon2 check).
    #[arg(long, default_value_t = 50)]
    pub users: u32,
    /// The `trading` binary (default: next to this one).
    #[arg(long)]
    pub service_bin: Option<PathBuf>,
    /// PostgreSQL for the service (default: its embedded SQLite).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for the service (default: L1 only).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Where to write the figures (JSON; an SVG beside it).
    #[arg(long, default_value = "bench-results/ceiling.json")]
    pub json: PathBuf,
}

/// Settings of the bare server (a child process of the scenario).
#[derive(Debug, Clone, Args)]
pub struct BareArgs {
    /// Port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Size of the body every request gets.
    #[arg(long)]
    pub bytes: usize,
}

/// The ceiling: axum on tokio, as the service, answering every request
/// with the same bytes. No routing to speak of, no authentication, no
/// cache, no metrics.
pub async fn bare(args: BareArgs) -> anyhow::Result<()> {
    let body = axum::body::Bytes::from(vec![b'x'; args.bytes]);
    let app = axum::Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

struct Row {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx_3xx: u64,
    cpu_us_per_request: f64,
}

/// A duration as wrk prints it (`1.23ms`, `456.00us`, `1.02s`), in ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let (num, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| text.split_at(i))?;
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Runs wrk with `script` against `url`; requests/s, p50, p99 and the
/// count of non-2xx/3xx answers.
async fn wrk(
    args: &CeilingArgs,
    url: &str,
    script: &Path,
    duration: Duration,
) -> anyhow::Result<(f64, f64, f64, u64)> {
    let out = tokio::process::Command::new("wrk")
        .arg(format!("-t{}", args.threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .await
        .context("cannot run wrk: install it (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let line = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l[prefix.len()..].trim().to_string())
    };
    let rps: f64 = line("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p50 = line("50%").and_then(|v| wrk_ms(&v)).context("no p50")?;
    let p99 = line("99%").and_then(|v| wrk_ms(&v)).context("no p99")?;
    let bad = line("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((rps, p50, p99, bad))
}

/// Load against `url` with `script`: a warm-up, then the measured run with
/// the CPU time of `pid` around it.
async fn row(args: &CeilingArgs, target: &Target, warm_up: Duration) -> anyhow::Result<Row> {
    let Target {
        label,
        url,
        script,
        pid,
    } = target;
    let pid = *pid;
    eprintln!("{label}: warm-up, then {:?}", args.duration);
    wrk(args, url, script, warm_up).await?;
    let before = crate::report::cpu_time(pid)?;
    let (rps, p50, p99, bad) = wrk(args, url, script, args.duration).await?;
    let cpu = crate::report::cpu_time(pid)? - before;
    let requests = rps * args.duration.as_secs_f64();
    Ok(Row {
        requests_per_sec: rps,
        p50_ms: p50,
        p99_ms: p99,
        non_2xx_3xx: bad,
        cpu_us_per_request: cpu.as_secs_f64() * 1e6 / requests.max(1.0),
    })
}

/// A wrk script that sends `requests` (path and headers, Lua literals) in
/// turn.
fn script(
    dir: &Path,
    name: &str,
    requests: &[(String, Vec<(String, String)>)],
) -> anyhow::Result<PathBuf> {
    let mut lua = String::from("local reqs = {\n");
    for (path, headers) in requests {
        let hs: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("[{k:?}] = {v:?}"))
            .collect();
        lua.push_str(&format!(
            "  wrk.format(\"GET\", {path:?}, {{ {} }}),\n",
            hs.join(", ")
        ));
    }
    lua.push_str(
        "}\nlocal i = 0\nrequest = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n",
    );
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, lua)?;
    Ok(path)
}

/// One request (the setup's, not the measured load): status, headers, body.
async fn call(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> anyhow::Result<(u16, hyper::HeaderMap, Vec<u8>)> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<hyper::body::Bytes>>();
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(hyper::body::Bytes::from(
        body.unwrap_or_default(),
    )))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .context("no answer within 30 s")??;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await?.to_bytes().to_vec();
    Ok((status, headers, bytes))
}

/// Waits (bounded) until `url` answers at all.
async fn wait_for(url: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if call("GET", url, &[], None).await.is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("{url} did not answer within {limit:?}");
        }
        // A child process with no readiness signal to wait on; bounded.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs in as seeded user `id`; the session token.
async fn login(base: &str, id: u32) -> anyhow::Result<String> {
    let body = format!(r#"{{"email":"user{id}@example.com","password":"larder-demo"}}"#);
    let (status, _, text) = call("POST", &format!("{base}/api/sessions"), &[], Some(body)).await?;
    if status != 201 {
        bail!(
            "login of user {id}: {status} {}",
            String::from_utf8_lossy(&text)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&text)?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .context("no token in the login answer")
}

pub async fn run(args: CeilingArgs) -> anyhow::Result<()> {
    let binary = args
        .service_bin
        .clone()
        .unwrap_or_else(service::default_binary);
    let dir = std::env::temp_dir().join(format!("larder-ceiling-{:08x}", rand::random::<u32>()));
    std::fs::create_dir_all(&dir)?;
    let mut env = vec![
        (
            "LARDER_SEED_USERS".to_string(),
            (args.users.max(1000)).to_string(),
        ),
        (
            "LARDER_SQLITE_PATH".to_string(),
            dir.join("trading.db").display().to_string(),
        ),
        // One client address sends everything: limits would measure themselves.
        ("LARDER_RATE_LIMIT_IP".to_string(), "0".to_string()),
        ("LARDER_RATE_LIMIT_SESSION".to_string(), "0".to_string()),
        ("LARDER_LOGIN_ATTEMPTS_PER_MIN".to_string(), "0".to_string()),
        (
            "LARDER_NAMESPACE".to_string(),
            format!("bench-{:08x}", rand::random::<u32>()),
        ),
    ];
    if let Some(db) = &args.database_url {
        env.push(("DATABASE_URL".into(), db.clone()));
    }
    if let Some(redis) = &args.redis_url {
        env.push(("REDIS_URL".into(), redis.clone()));
    }
    let svc = Service::start(&binary, service::free_port()?, &[], &env).await?;
    let result = measure(&args, &svc, &dir).await;
    svc.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(args: &CeilingArgs, svc: &Service, dir: &Path) -> anyhow::Result<()> {
    let base = &svc.base_url;
    let pid = svc.pid().context("the service has exited")?;
    // Sessions and their users' current ETags.
    let mut reads = Vec::new();
    let mut revalidations = Vec::new();
    let mut body_len = 0usize;
    for id in 1..=args.users {
        let token = login(base, id).await?;
        let path = format!("/api/users/{id}/portfolio");
        let auth = ("Authorization".to_string(), format!("Bearer {token}"));
        let (status, headers, body) = call(
            "GET",
            &format!("{base}{path}"),
            &[(auth.0.as_str(), auth.1.as_str())],
            None,
        )
        .await?;
        if status != 200 {
            bail!("GET {path}: {status}");
        }
        let etag = headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .context("no ETag on the portfolio")?
            .to_string();
        body_len = body_len.max(body.len());
        reads.push((path.clone(), vec![auth.clone()]));
        revalidations.push((path, vec![auth, ("If-None-Match".to_string(), etag)]));
    }
    let symbols = [
        "TCS",
        "INFY",
        "RELIANCE",
        "HDFCBANK",
        "ICICIBANK",
        "SBIN",
        "ITC",
        "LT",
    ];
    let prices: Vec<_> = symbols
        .iter()
        .map(|s| (format!("/api/stocks/{s}/price"), Vec::new()))
        .collect();
    let bare_script = script(dir, "bare", &[("/".to_string(), Vec::new())])?;
    let read_script = script(dir, "portfolio", &reads)?;
    let revalidate_script = script(dir, "portfolio_304", &revalidations)?;
    let price_script = script(dir, "price", &prices)?;

    // The ceiling, in a process of its own as the service is.
    let bare_port = service::free_port()?;
    let mut bare = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "ceiling-bare",
            "--port",
            &bare_port.to_string(),
            "--bytes",
            &body_len.to_string(),
        ])
        .kill_on_drop(true)
        .spawn()?;
    let bare_url = format!("http://127.0.0.1:{bare_port}");
    wait_for(&format!("{bare_url}/"), Duration::from_secs(10)).await?;
    let bare_pid = bare.id().context("the bare server exited")?;

    let targets = [
        Target {
            label: "bare handler, same bytes (the ceiling)",
            url: bare_url,
            script: bare_script,
            pid: bare_pid,
        },
        Target {
            label: "portfolio, warm, with a session (L1 hits)",
            url: base.clone(),
            script: read_script,
            pid,
        },
        Target {
            label: "portfolio, If-None-Match (304)",
            url: base.clone(),
            script: revalidate_script,
            pid,
        },
        Target {
            label: "price, public",
            url: base.clone(),
            script: price_script,
            pid,
        },
    ];
    // rounds[r][t]: target t in round r.
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for r in 0..args.rounds as usize {
        eprintln!("round {} of {}", r + 1, args.rounds);
        let warm_up = if r == 0 {
            args.duration / 3
        } else {
            Duration::from_secs(2)
        };
        let mut measured: Vec<Option<Row>> = (0..targets.len()).map(|_| None).collect();
        // Rotated, so that no row is always the one measured first.
        for i in 0..targets.len() {
            let t = (i + r) % targets.len();
            measured[t] = Some(row(args, &targets[t], warm_up).await?);
        }
        rounds.push(measured.into_iter().flatten().collect());
    }
    let _ = bare.kill().await;

    println!(
        "\nthe HTTP ceiling — wrk -t{} -c{}, {:?} per row, {} round(s), {}-byte body, {} sessions ({})\n",
        args.threads,
        args.connections,
        args.duration,
        args.rounds,
        body_len,
        args.users,
        crate::report::machine()
    );
    println!("median of the rounds; share: against the ceiling of the same round (min-max)\n");
    println!(
        "{:<46}{:>12}{:>10}{:>10}{:>16}{:>12}{:>8}",
        "", "req/s", "p50", "p99", "ceiling", "CPU/req", "errors"
    );
    let mut figures = Vec::new();
    let mut bars = Vec::new();
    for (t, target) in targets.iter().enumerate() {
        let of =
            |f: &dyn Fn(&Row) -> f64| -> Vec<f64> { rounds.iter().map(|r| f(&r[t])).collect() };
        let shares = of(&|row: &Row| row.requests_per_sec);
        let shares: Vec<f64> = shares
            .iter()
            .zip(&rounds)
            .map(|(rps, round)| rps / round[0].requests_per_sec * 100.0)
            .collect();
        let rps = median(of(&|r| r.requests_per_sec));
        let p50 = median(of(&|r| r.p50_ms));
        let p99 = median(of(&|r| r.p99_ms));
        let cpu = median(of(&|r| r.cpu_us_per_request));
        let errors: u64 = rounds.iter().map(|r| r[t].non_2xx_3xx).sum();
        let (lo, hi) = shares
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
        let share = median(shares.clone());
        println!(
            "{:<46}{:>12.0}{:>8.2}ms{:>8.2}ms{:>5.0}% ({:>3.0}-{:>3.0}){:>10.1}us{:>8}",
            target.label, rps, p50, p99, share, lo, hi, cpu, errors
        );
        figures.push(json!({
            "row": target.label,
            "requests_per_sec": rps,
            "p50_ms": p50,
            "p99_ms": p99,
            "share_of_ceiling": share / 100.0,
            "share_of_ceiling_by_round": shares.iter().map(|s| s / 100.0).collect::<Vec<_>>(),
            "cpu_us_per_request": cpu,
            "non_2xx_3xx": errors,
            "rounds": rounds.iter().map(|r| json!({
                "requests_per_sec": r[t].requests_per_sec,
                "p50_ms": r[t].p50_ms,
                "p99_ms": r[t].p99_ms,
                "cpu_us_per_request": r[t].cpu_us_per_request,
            })).collect::<Vec<_>>(),
        }));
        bars.push((target.label.to_string(), rps));
    }
    let figures = json!({
        "scenario": "HTTP ceiling",
        "machine": crate::report::machine(),
        "wrk": { "threads": args.threads, "connections": args.connections, "seconds": args.duration.as_secs() },
        "rounds": args.rounds,
        "body_bytes": body_len,
        "rows": figures,
    });
    crate::report::save_figures(&args.json, &figures)?;
    crate::report::bars_svg(
        &args.json.with_extension("svg"),
        "The HTTP ceiling: requests/s (median of rounds), wrk, same run",
        &bars,
        "req/s",
    )
}

/// One load target: a row of the table.
struct Target {
    label: &'static str,
    url: String,
    script: PathBuf,
    pid: u32,
}

/// The median (the mean of the middle two for an even count).
fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
