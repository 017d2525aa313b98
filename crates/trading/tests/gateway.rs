//! The article's production shape, for real: `scripts/topology up` (Nginx on
//! 127.0.0.1:8000 in front of three instances of this binary, a four-master
//! Redis Cluster, PostgreSQL), then requests through the gateway while
//! instances die. Uses the topology's fixed ports (8000, 8081-8083,
//! 7000-7007): it fails, saying so, if a topology is already running there.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

const GATEWAY: &str = "127.0.0.1:8000";
const INSTANCES: [u16; 3] = [8081, 8082, 8083];

/// The topology of this test: brought down, and its database dropped, on
/// drop (also when the test fails).
struct Topology {
    run_dir: PathBuf,
    db: String,
}

impl Topology {
    fn command(&self, verb: &str) -> Command {
        let mut cmd = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/topology"
        ));
        cmd.arg(verb)
            .env("LARDER_RUN_DIR", &self.run_dir)
            .env("LARDER_TOPOLOGY_DB", &self.db)
            .env("LARDER_TRADING_BIN", env!("CARGO_BIN_EXE_trading"))
            .env("LARDER_SEED_USERS", "200")
            .env("LARDER_DB_POOL_SIZE", "8")
            .env("LARDER_SERVICE_TOKEN", support::SERVICE_TOKEN)
            .env("RUST_LOG", "warn")
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn up() -> Topology {
        for port in [8000, 8081, 8082, 8083, 7000] {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "port {port} is taken: is a topology running? (scripts/topology down)"
            );
        }
        let topology = Topology {
            run_dir: std::env::temp_dir().join(format!("larder-gw-{}", testkit::namespace())),
            db: format!("larder_t_gw_{:08x}", rand::random::<u32>()),
        };
        let out = topology
            .command("up")
            .output()
            .expect("scripts/topology runs");
        assert!(
            out.status.success(),
            "scripts/topology up failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        topology
    }

    /// The pid of the instance on `port`, from the topology's pid file.
    fn pid(&self, port: u16) -> String {
        std::fs::read_to_string(self.run_dir.join(format!("topology/trading-{port}.pid")))
            .expect("the topology writes a pid file per instance")
            .trim()
            .to_string()
    }

    fn kill(&self, port: u16) {
        let status = Command::new("kill")
            .args(["-KILL", &self.pid(port)])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill the instance on {port}");
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = self.command("down").output();
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-qc"])
            // FORCE: the instances' replication connections may still be
            // closing; their (then inactive) slot goes with the database.
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db))
            .output();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// `GET path` on `addr` over a fresh connection: the status code (0 when
/// the connection failed).
async fn get(addr: &str, path: &str) -> (u16, String) {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            support::SERVICE_TOKEN
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
        let mut response = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(response)) => {
            let status = response
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (status, response)
        }
        _ => (0, String::new()),
    }
}

/// A login with a wrong password through the gateway, from the loopback
/// address `source` (optionally claiming to be `claims` in X-Real-IP):
/// the status code (0 when the connection failed).
async fn failed_login(source: &str, claims: Option<&str>) -> u16 {
    let attempt = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(
            format!("{source}:0")
                .parse()
                .map_err(std::io::Error::other)?,
        )?;
        let mut stream = socket
            .connect(GATEWAY.parse().map_err(std::io::Error::other)?)
            .await?;
        let body = r#"{"email":"user1@example.com","password":"not the password"}"#;
        let claim = claims.map_or(String::new(), |ip| format!("X-Real-IP: {ip}\r\n"));
        let request = format!(
            "POST /api/sessions HTTP/1.1\r\nHost: {GATEWAY}\r\n{claim}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await?;
        let mut response = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(response)) => response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// The sum of the `name{...}` series whose labels contain `with` in an
/// instance's `/metrics`.
async fn metric(port: u16, name: &str, with: &str) -> f64 {
    let (_, body) = get(&format!("127.0.0.1:{port}"), "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn price_stream() -> Ws {
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(format!("ws://{GATEWAY}/ws/prices?symbols=TCS")),
    )
    .await
    .expect("the WebSocket opens in time")
    .expect("the WebSocket opens through the gateway");
    ws
}

/// The next text message, within 10 s.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                return Some(t.to_string());
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_spreads_reads_retries_them_past_a_dead_instance_and_websockets_reconnect() {
    let topology = Topology::up();
    let route = "route=\"/api/stocks/{symbol}/price\"";

    // Spread: every instance answers some of the reads.
    for _ in 0..60 {
        let (status, body) = get(GATEWAY, "/api/stocks/TCS/price").await;
        assert_eq!(status, 200, "{body}");
    }
    for port in INSTANCES {
        assert!(
            metric(port, "http_requests_total", route).await > 0.0,
            "the instance on {port} served none of 60 reads"
        );
    }

    // Logins are limited per client, not per gateway: the instances trust
    // Nginx's X-Real-IP, and Nginx sets it from the peer (a client's own
    // X-Real-IP is overwritten). Each instance keeps its own budget, so
    // one client gets at most 3 x 5 attempts in a burst.
    let mut refused_after = None;
    for attempt in 1..=40 {
        let status = failed_login("127.0.0.2", None).await;
        assert!(status == 401 || status == 429, "login answered {status}");
        if status == 429 {
            refused_after = Some(attempt);
            break;
        }
    }
    let refused_after = refused_after.expect("40 bad logins from one client, none refused");
    assert!(
        refused_after > 5,
        "refused after {refused_after}: budgets are per instance"
    );
    assert_eq!(
        failed_login("127.0.0.3", None).await,
        401,
        "another client is not refused for the first one's attempts"
    );
    assert_eq!(
        failed_login("127.0.0.3", Some("127.0.0.9")).await,
        401,
        "a client cannot choose its bucket with its own X-Real-IP"
    );

    // One instance dies: Nginx retries its reads on the others.
    topology.kill(INSTANCES[1]);
    let mut failed = 0;
    for _ in 0..300 {
        let (status, _) = get(GATEWAY, "/api/stocks/TCS/price").await;
        if status != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "reads failed after one instance was killed");

    // A WebSocket through the gateway; its instance dies; the client
    // reconnects through the gateway and gets prices from another.
    let mut ws = price_stream().await;
    assert!(next_text(&mut ws).await.is_some(), "the snapshot");
    let mut holder = None;
    for port in [INSTANCES[0], INSTANCES[2]] {
        if metric(port, "trading_ws_connections", "").await >= 1.0 {
            holder = Some(port);
        }
    }
    let holder = holder.expect("one live instance holds the WebSocket");
    topology.kill(holder);
    let started = Instant::now();
    while next_text(&mut ws).await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the WebSocket outlived its instance"
        );
    }
    let mut ws = price_stream().await;
    let snapshot = next_text(&mut ws).await.expect("prices after reconnecting");
    assert!(snapshot.contains("TCS"), "{snapshot}");
    drop(topology);
}
