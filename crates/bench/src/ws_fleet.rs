//! The article's headline, 100,000 concurrent price-stream clients, held
//! at once by several `trading` instances sharing one Redis, with every
//! sampled client still receiving prices while all are connected.
//!
//! One process may hold only as many sockets as its open-file limit allows
//! (`ulimit -n`: 20,000 on the session machine, not raisable there), on
//! either side of a connection. So the load comes from several client
//! processes (this binary again, `bench ws-hold`), each from loopback
//! addresses of its own (127.0.1.10, 127.0.2.10, …), and the server side
//! is as many instances as the count needs. Only the first instance runs the price
//! feed: the others relay its prices from Redis pub/sub, so a client of
//! any instance receiving prices shows the whole path working.
//!
//! The feed runs slowly (1 update/s by default) on purpose: the point is
//! how many connections are held and what they cost, on two cores that
//! also run every client.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::service::{self, Service};
use crate::ws::{open_ws_from, settled_rss};

/// Settings of the ws-fleet scenario.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Connections to hold at once, in total.
    #[arg(long, default_value_t = 100_000)]
    pub connections: usize,
    /// Service instances to spawn (each holds connections / instances; keep
    /// that under the open-file limit).
    #[arg(long, default_value_t = 6)]
    pub instances: usize,
    /// Connect to these addresses (host:port, comma-separated; e.g. the
    /// topology's gateway 127.0.0.1:8000) instead of spawning instances.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Connections per client process (under the open-file limit).
    #[arg(long, default_value_t = 17_000)]
    pub per_client: usize,
    /// Symbols each WebSocket follows.
    #[arg(long, default_value = "RELIANCE,TCS,INFY")]
    pub symbols: String,
    /// Price updates per second of the feed (first instance only).
    #[arg(long, default_value_t = 1)]
    pub updates_per_sec: u32,
    /// Source addresses per client process (127.0.<process + 1>.10 and
    /// up): behind a gateway that limits per address, enough of them that
    /// the limit is not what is measured.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=240))]
    pub sources_per_client: u8,
    /// Clients sampled per client process: each must receive a new price.
    #[arg(long, default_value_t = 200)]
    pub sample: usize,
    /// Redis shared by the spawned instances (the price relay).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// The `trading` binary to spawn (default: next to this one).
    #[arg(long)]
    pub service_bin: Option<PathBuf>,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/ws-fleet.json")]
    pub json: PathBuf,
}

/// Settings of one client process (started by ws-fleet).
#[derive(Debug, Args)]
pub struct HoldArgs {
    /// Addresses to spread the connections over (round robin).
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// Connections to open and hold.
    #[arg(long)]
    pub connections: usize,
    /// Loopback address to connect from (the first of `--sources`).
    #[arg(long)]
    pub source: std::net::Ipv4Addr,
    /// Source addresses to rotate over, counting up from `--source`: a
    /// gateway that rate-limits per client address refuses one address's
    /// thousands of handshakes, as it should.
    #[arg(long, default_value_t = 1)]
    pub sources: u8,
    /// Symbols each WebSocket follows.
    #[arg(long)]
    pub symbols: String,
    /// Connections sampled when asked.
    #[arg(long)]
    pub sample: usize,
}

/// How long a sampled client may wait for a new price.
const SAMPLE_WITHIN: Duration = Duration::from_secs(30);
/// Handshakes in flight per client process.
const OPENING_AT_ONCE: usize = 128;

/// One held connection, as its reader task sees it.
#[derive(Default)]
struct Seen {
    prices: AtomicU32,
    closed: AtomicBool,
}

/// `bench ws-hold`: opens the connections, says `opened <n> <secs>` on
/// stdout, keeps reading every one of them (so that none falls behind and
/// is dropped by the server), and for each `sample` line on stdin answers
/// `sampled <alive> <of> <open> <received> <sample secs> <all secs>`:
/// sampled clients that got a new price within 30 s, how many were
/// sampled, connections still open, connections (of all) that got a new
/// price within the same 30 s, and how long the sample and all took.
/// Exits at EOF.
pub async fn hold(args: HoldArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut seen: Vec<Arc<Seen>> = Vec::with_capacity(args.connections);
    let mut opening = tokio::task::JoinSet::new();
    let mut next = 0usize;
    while seen.len() < args.connections {
        while opening.len() < OPENING_AT_ONCE && next < args.connections {
            let target = args.targets[next % args.targets.len()].clone();
            let [a, b, c, d] = args.source.octets();
            let d = d.saturating_add((next % usize::from(args.sources.max(1))) as u8);
            let source = IpAddr::from([a, b, c, d]);
            opening.spawn(open_ws_from(Some(source), target, args.symbols.clone()));
            next += 1;
        }
        let Some(opened) = opening.join_next().await else {
            break;
        };
        let mut stream = opened?.with_context(|| {
            format!(
                "connection {} of {} from {}",
                seen.len() + 1,
                args.connections,
                args.source
            )
        })?;
        let s = Arc::new(Seen::default());
        seen.push(Arc::clone(&s));
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let prices = buf[..n].windows(8).filter(|w| w == b"\"symbol\"").count();
                        s.prices.fetch_add(prices as u32, Ordering::Relaxed);
                    }
                }
            }
            s.closed.store(true, Ordering::Relaxed);
        });
    }
    let mut out = tokio::io::stdout();
    out.write_all(
        format!(
            "opened {} {:.3}\n",
            seen.len(),
            started.elapsed().as_secs_f64()
        )
        .as_bytes(),
    )
    .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() != "sample" {
            continue;
        }
        let before: Vec<u32> = seen
            .iter()
            .map(|s| s.prices.load(Ordering::Relaxed))
            .collect();
        let step = (seen.len() / args.sample.max(1)).max(1);
        let sampled: Vec<usize> = (0..seen.len()).step_by(step).take(args.sample).collect();
        let got = |i: usize| seen[i].prices.load(Ordering::Relaxed) > before[i];
        let asked = Instant::now();
        let deadline = asked + SAMPLE_WITHIN;
        // Polling counters that reader tasks bump; bounded by the deadline.
        // First the sample, then (same deadline) every connection.
        while Instant::now() < deadline && !sampled.iter().all(|&i| got(i)) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let alive = sampled.iter().filter(|&&i| got(i)).count();
        let sample_secs = asked.elapsed().as_secs_f64();
        while Instant::now() < deadline && !(0..seen.len()).all(got) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let all_secs = asked.elapsed().as_secs_f64();
        let open = seen
            .iter()
            .filter(|s| !s.closed.load(Ordering::Relaxed))
            .count();
        let received = (0..seen.len()).filter(|&i| got(i)).count();
        out.write_all(
            format!(
                "sampled {alive} {} {open} {received} {sample_secs:.3} {all_secs:.3}\n",
                sampled.len()
            )
            .as_bytes(),
        )
        .await?;
        out.flush().await?;
    }
    Ok(())
}

/// A client process and its pipes.
struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Client {
    fn spawn(
        args: &FleetArgs,
        targets: &[String],
        n: usize,
        source: std::net::Ipv4Addr,
    ) -> anyhow::Result<Client> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new(exe)
            .arg("ws-hold")
            .arg("--targets")
            .arg(targets.join(","))
            .arg("--connections")
            .arg(n.to_string())
            .arg("--source")
            .arg(source.to_string())
            .arg("--sources")
            .arg(args.sources_per_client.to_string())
            .arg("--symbols")
            .arg(&args.symbols)
            .arg("--sample")
            .arg(args.sample.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a client process (bench ws-hold)")?;
        let stdin = child.stdin.take().context("client stdin")?;
        let stdout = child.stdout.take().context("client stdout")?;
        Ok(Client {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
        })
    }

    /// The next line starting with `word`, split on spaces after it.
    async fn answer(&mut self, word: &str, within: Duration) -> anyhow::Result<Vec<f64>> {
        let line = tokio::time::timeout(within, self.stdout.next_line())
            .await
            .with_context(|| format!("a client process said nothing within {within:?}"))??;
        let Some(line) = line else {
            let status = self.child.wait().await?;
            bail!("a client process exited ({status}) before saying `{word}`");
        };
        let rest = line
            .strip_prefix(word)
            .with_context(|| format!("a client process said {line:?}, not {word}"))?;
        rest.split_whitespace()
            .map(|v| v.parse::<f64>().context("a number"))
            .collect()
    }
}

pub async fn run(args: FleetArgs) -> anyhow::Result<()> {
    let n = args.connections;
    let mut services = Vec::new();
    let targets = if args.targets.is_empty() {
        let binary = args
            .service_bin
            .clone()
            .unwrap_or_else(service::default_binary);
        let per_instance = n.div_ceil(args.instances.max(1));
        let namespace = format!("bench-ws-fleet-{}", std::process::id());
        for i in 0..args.instances.max(1) {
            let db = std::env::temp_dir().join(format!("{namespace}-{i}.db"));
            let feed = if i == 0 { args.updates_per_sec } else { 0 };
            let env = vec![
                ("LARDER_SEED_USERS".to_string(), "10".to_string()),
                ("LARDER_SQLITE_PATH".to_string(), db.display().to_string()),
                ("LARDER_RATE_LIMIT_IP".to_string(), "0".to_string()),
                ("REDIS_URL".to_string(), args.redis_url.clone()),
                ("LARDER_NAMESPACE".to_string(), namespace.clone()),
                (
                    "LARDER_WS_MAX_CONNECTIONS".to_string(),
                    (per_instance + 100).to_string(),
                ),
                ("LARDER_PRICE_UPDATES_PER_SEC".to_string(), feed.to_string()),
            ];
            let svc = Service::start(&binary, service::free_port()?, &[], &env)
                .await
                .with_context(|| format!("starting instance {i}"))?;
            services.push((svc, db));
        }
        services
            .iter()
            .map(|(s, _)| s.base_url.trim_start_matches("http://").to_string())
            .collect()
    } else {
        args.targets.clone()
    };
    let result = drive(&args, &targets, &services).await;
    for (svc, db) in services {
        svc.stop().await?;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
    result
}

async fn drive(
    args: &FleetArgs,
    targets: &[String],
    services: &[(Service, PathBuf)],
) -> anyhow::Result<()> {
    let n = args.connections;
    let mut baseline = Vec::new();
    for (svc, _) in services {
        baseline.push(settled_rss(svc).await?);
    }
    let started = Instant::now();
    let mut clients = Vec::new();
    let mut left = n;
    let mut k = 0u8;
    while left > 0 {
        let take = left.min(args.per_client.max(1));
        let process = k.checked_add(1).context("too many client processes")?;
        let source = std::net::Ipv4Addr::new(127, 0, process, 10);
        clients.push(Client::spawn(args, targets, take, source)?);
        left -= take;
        k = k.checked_add(1).context("too many client processes")?;
    }
    let mut opened = 0usize;
    for c in &mut clients {
        let a = c.answer("opened", Duration::from_secs(600)).await?;
        opened += a.first().copied().unwrap_or(0.0) as usize;
    }
    let open_secs = started.elapsed().as_secs_f64();
    let mut with = Vec::new();
    for (svc, _) in services {
        with.push(settled_rss(svc).await?);
    }
    for c in &mut clients {
        c.stdin.write_all(b"sample\n").await?;
        c.stdin.flush().await?;
    }
    let (mut alive, mut sampled, mut still_open, mut received) = (0usize, 0usize, 0usize, 0usize);
    let (mut sample_secs, mut all_secs) = (0f64, 0f64);
    for c in &mut clients {
        let a = c
            .answer("sampled", SAMPLE_WITHIN + Duration::from_secs(30))
            .await?;
        let get = |i: usize| a.get(i).copied().unwrap_or(0.0) as usize;
        alive += get(0);
        sampled += get(1);
        still_open += get(2);
        received += get(3);
        sample_secs = sample_secs.max(a.get(4).copied().unwrap_or(f64::NAN));
        all_secs = all_secs.max(a.get(5).copied().unwrap_or(f64::NAN));
    }
    drop(clients);

    let rss_with: u64 = with.iter().sum();
    let rss_base: u64 = baseline.iter().sum();
    let per_conn = rss_with.saturating_sub(rss_base) as f64 / opened.max(1) as f64;
    println!(
        "{opened} price-stream WebSockets held at once by {} ({k} client processes, \
         each from {} address(es) 127.0.<process>.10+)",
        if services.is_empty() {
            targets.join(", ")
        } else {
            format!("{} trading instances", services.len())
        },
        args.sources_per_client
    );
    println!("opened all in {open_secs:.1} s; {still_open} still open when sampled");
    println!(
        "{alive}/{sampled} sampled clients received a new price within {sample_secs:.1} s; \
         {received} of all {opened} within {all_secs:.1} s (bound {} s)",
        SAMPLE_WITHIN.as_secs()
    );
    if !services.is_empty() {
        for (i, (b, w)) in baseline.iter().zip(&with).enumerate() {
            println!(
                "instance {i}: RSS {:.1} MiB at rest, {:.1} MiB holding its share",
                *b as f64 / 1048576.0,
                *w as f64 / 1048576.0
            );
        }
        println!(
            "{per_conn:.0} bytes per connection (all instances' RSS with all open minus at rest, / {opened})"
        );
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&json!({
            "connections": opened,
            "instances": services.len(),
            "targets": targets,
            "client_processes": k,
            "sources_per_client": args.sources_per_client,
            "open_secs": open_secs,
            "still_open": still_open,
            "sampled": sampled,
            "sampled_alive": alive,
            "received_in_window": received,
            "sample_received_secs": sample_secs,
            "all_received_secs": all_secs,
            "rss_baseline_bytes": baseline,
            "rss_with_all_bytes": with,
            "bytes_per_connection": per_conn,
            "updates_per_sec": args.updates_per_sec,
        }))?,
    )?;
    if opened < n || still_open < opened {
        bail!("{n} connections wanted, {opened} opened, {still_open} still open");
    }
    if alive < sampled {
        bail!(
            "{} of {sampled} sampled clients received no new price within {}s",
            sampled - alive,
            SAMPLE_WITHIN.as_secs()
        );
    }
    Ok(())
}
