//! The live price stream's capacity: how many idle WebSocket connections
//! one instance holds and what each costs in memory, against the same
//! number of idle HTTP keep-alive connections to the same process (the
//! floor: a TCP connection and hyper's state), measured in one run.
//!
//! The WebSocket handshake is written by hand (a GET with `Upgrade`
//! headers, then reading the 101), so the client costs no dependency and
//! no per-connection buffers beyond the socket.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::service::{self, Service};

/// Settings of the ws scenario.
#[derive(Debug, Args)]
pub struct WsArgs {
    /// Idle connections to open of each kind.
    #[arg(long, default_value_t = 5_000)]
    pub connections: usize,
    /// Symbols each WebSocket follows.
    #[arg(long, default_value = "RELIANCE,TCS,INFY")]
    pub symbols: String,
    /// The `trading` binary to spawn (default: next to this one).
    #[arg(long)]
    pub service_bin: Option<PathBuf>,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "bench-results/ws.json")]
    pub json: PathBuf,
}

/// Reads one HTTP response head (up to the blank line).
async fn head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!("connection closed during the handshake");
        }
        buf.push(byte[0]);
        if buf.len() > 8192 {
            bail!("response head over 8 KiB");
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

async fn open_ws(addr: String, symbols: String) -> anyhow::Result<TcpStream> {
    open_ws_from(None, addr, symbols).await
}

/// A price-stream WebSocket to `addr`, from the loopback address `source`
/// when given (one source address runs out of ephemeral ports at ~28,000
/// connections to one destination).
pub(crate) async fn open_ws_from(
    source: Option<std::net::IpAddr>,
    addr: String,
    symbols: String,
) -> anyhow::Result<TcpStream> {
    let mut s = match source {
        None => TcpStream::connect(&addr).await?,
        Some(ip) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(ip, 0))?;
            socket.connect(addr.parse()?).await?
        }
    };
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = format!(
        "GET /ws/prices?symbols={symbols} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let head = head(&mut s).await?;
    if !head.starts_with("HTTP/1.1 101") {
        bail!("no upgrade: {}", head.lines().next().unwrap_or_default());
    }
    Ok(s)
}

async fn open_http(addr: String) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(&addr).await?;
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let head = head(&mut s).await?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("healthz: {}", head.lines().next().unwrap_or_default());
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(s)
}

/// Opens `n` connections with `open`, 64 at a time.
async fn open_many<F, Fut>(n: usize, open: F) -> anyhow::Result<Vec<TcpStream>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<TcpStream>> + Send + 'static,
{
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch = (n - out.len()).min(64);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            set.spawn(open());
        }
        while let Some(c) = set.join_next().await {
            out.push(c??);
        }
    }
    Ok(out)
}

/// Memory after the process settles (allocators return memory lazily:
/// take the lowest of a few readings a little apart).
pub(crate) async fn settled_rss(svc: &Service) -> anyhow::Result<u64> {
    let mut lowest = u64::MAX;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lowest = lowest.min(svc.rss_bytes()?);
    }
    Ok(lowest)
}

/// Reads WebSocket frames from `s` until one carries a price (bounded).
async fn receives_a_price(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if buf[..n].windows(8).any(|w| w == b"\"symbol\"") => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// One kind of idle connection, measured in a service process of its own
/// (a process does not hand freed memory back to the OS, so two kinds in
/// one process would measure each other).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Http,
    WebSocket,
}

struct Measured {
    baseline: u64,
    with: u64,
    open: Duration,
    alive: usize,
    sampled: usize,
}

pub async fn run(args: WsArgs) -> anyhow::Result<()> {
    let binary = args
        .service_bin
        .clone()
        .unwrap_or_else(service::default_binary);
    let n = args.connections;
    let http = spawn_and_measure(&args, &binary, Kind::Http).await?;
    let ws = spawn_and_measure(&args, &binary, Kind::WebSocket).await?;
    let per = |m: &Measured| m.with.saturating_sub(m.baseline) as f64 / n as f64;
    println!(
        "idle connections held by one trading instance ({n} of each kind, a fresh process each)"
    );
    println!(
        "{:<24} {:>12} {:>14} {:>14} {:>10}",
        "", "bytes/conn", "RSS at rest", "RSS with all", "open all"
    );
    for (name, m) in [("HTTP keep-alive", &http), ("WebSocket /ws/prices", &ws)] {
        println!(
            "{:<24} {:>12.0} {:>10.1} MiB {:>10.1} MiB {:>10.2?}",
            name,
            per(m),
            m.baseline as f64 / 1048576.0,
            m.with as f64 / 1048576.0,
            m.open
        );
    }
    println!(
        "{}/{} sampled WebSockets received a price from the feed while all {n} were open",
        ws.alive, ws.sampled
    );
    if ws.alive < ws.sampled {
        bail!(
            "{} of {} sampled WebSockets received no price within 10 s",
            ws.sampled - ws.alive,
            ws.sampled
        );
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.json,
        serde_json::to_string_pretty(&json!({
            "connections": n,
            "http_keepalive_bytes_per_conn": per(&http),
            "websocket_bytes_per_conn": per(&ws),
            "websocket_rss_baseline_bytes": ws.baseline,
            "websocket_rss_with_all_bytes": ws.with,
            "open_http_secs": http.open.as_secs_f64(),
            "open_ws_secs": ws.open.as_secs_f64(),
            "sampled_alive": ws.alive,
            "sampled": ws.sampled,
        }))?,
    )?;
    Ok(())
}

async fn spawn_and_measure(
    args: &WsArgs,
    binary: &PathBuf,
    kind: Kind,
) -> anyhow::Result<Measured> {
    let db = std::env::temp_dir().join(format!(
        "larder-bench-ws-{}-{kind:?}.db",
        std::process::id()
    ));
    let env = vec![
        ("LARDER_SEED_USERS".to_string(), "100".to_string()),
        ("LARDER_SQLITE_PATH".to_string(), db.display().to_string()),
        ("LARDER_RATE_LIMIT_IP".to_string(), "0".to_string()),
        (
            "LARDER_WS_MAX_CONNECTIONS".to_string(),
            (args.connections + 10).to_string(),
        ),
        ("LARDER_PRICE_UPDATES_PER_SEC".to_string(), "20".to_string()),
    ];
    let svc = Service::start(binary, service::free_port()?, &[], &env).await?;
    let addr = svc.base_url.trim_start_matches("http://").to_string();
    let result = measure(args, &svc, &addr, kind).await;
    svc.stop().await?;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    result
}

async fn measure(args: &WsArgs, svc: &Service, addr: &str, kind: Kind) -> anyhow::Result<Measured> {
    let n = args.connections;
    let baseline = settled_rss(svc).await?;
    let started = Instant::now();
    let mut conns = match kind {
        Kind::Http => open_many(n, || open_http(addr.to_string()))
            .await
            .context("opening HTTP connections")?,
        Kind::WebSocket => open_many(n, || open_ws(addr.to_string(), args.symbols.clone()))
            .await
            .context("opening WebSocket connections")?,
    };
    let open = started.elapsed();
    let with = settled_rss(svc).await?;
    let (mut alive, mut sampled) = (0, 0);
    if kind == Kind::WebSocket {
        // They are alive: a sample of them gets prices from the feed.
        sampled = conns.len().min(20);
        let step = (conns.len() / sampled.max(1)).max(1);
        for s in conns.iter_mut().step_by(step).take(sampled) {
            alive += receives_a_price(s, Duration::from_secs(10)).await as usize;
        }
    }
    Ok(Measured {
        baseline,
        with,
        open,
        alive,
        sampled,
    })
}
