//! A private Sentinel setup per test: a master, replicas and three
//! sentinels, for tests that kill the master and watch the failover.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;

/// The master name the sentinels monitor.
pub const SENTINEL_MASTER: &str = "larder";

/// One master, `replicas` replicas, three sentinels (quorum 2, master
/// down after 500 ms), on free loopback ports; all killed on drop.
pub struct RedisSentinel {
    servers: Vec<RedisServer>,
    sentinels: Vec<(Child, u16)>,
    dir: std::path::PathBuf,
}

impl RedisSentinel {
    /// Starts everything and waits until every sentinel sees the master
    /// with all its replicas and the other sentinels.
    pub fn start(replicas: usize) -> RedisSentinel {
        let dir =
            std::env::temp_dir().join(format!("larder-sentinel-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let sync = ["--repl-diskless-sync-delay", "0"];
        let master = RedisServer::start(&sync);
        let master_port = master.port().to_string();
        let mut servers = vec![master];
        for _ in 0..replicas {
            servers.push(RedisServer::start(&[
                "--replicaof",
                "127.0.0.1",
                &master_port,
                "--repl-diskless-sync-delay",
                "0",
            ]));
        }
        // Told up front: sentinels otherwise learn of replicas from the
        // master's INFO, which they read every 10 s.
        let known: String = servers[1..]
            .iter()
            .map(|r| {
                format!(
                    "sentinel known-replica {SENTINEL_MASTER} 127.0.0.1 {}\n",
                    r.port()
                )
            })
            .collect();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 500\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n{known}",
                    dir = dir.display()
                ),
            )
            .expect("temp dir is writable");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run redis-server --sentinel ({e}): apt-get install redis-sentinel"
                    )
                });
            sentinels.push((child, port));
        }
        let setup = RedisSentinel {
            servers,
            sentinels,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for (_, port) in &setup.sentinels {
            loop {
                let info = cli(*port, &["SENTINEL", "MASTER", SENTINEL_MASTER]);
                let field = |name: &str| {
                    let lines: Vec<&str> = info.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 1))
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0)
                };
                if field("num-slaves") == replicas && field("num-other-sentinels") == 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel on {port} did not see the whole setup within 30 s"
                );
                // Polling other processes' state: no event to await.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        setup.wait_until_replicas_synced(Duration::from_secs(20));
        setup
    }

    /// `redis://127.0.0.1:<port>` of each sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|(_, p)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// Server `i` (0 is the first master, then the replicas).
    pub fn server(&self, i: usize) -> &RedisServer {
        &self.servers[i]
    }

    /// Server `i`, to kill or restart it.
    pub fn server_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.servers[i]
    }

    /// The index of the server the sentinels name as master now.
    pub fn master(&self) -> Option<usize> {
        let (_, port) = self.sentinels.first()?;
        let reply = cli(
            *port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
        );
        let port: u16 = reply.lines().nth(1)?.trim().parse().ok()?;
        self.servers.iter().position(|s| s.port() == port)
    }

    /// Waits until the sentinels name a master other than server `old`.
    pub fn wait_for_failover(&self, old: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.master().filter(|m| *m != old) {
                return m;
            }
            assert!(Instant::now() < deadline, "no failover within {timeout:?}");
            // Polling other processes' state: no event to await.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every live replica's link to its master is up.
    pub fn wait_until_replicas_synced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let synced = self.servers.iter().filter(|s| s.is_up()).all(|s| {
                let info = cli(s.port(), &["INFO", "replication"]);
                !info.contains("role:slave") || info.contains("master_link_status:up")
            });
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas did not sync within {timeout:?}"
            );
            // Polling other processes' state: no event to await.
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.servers.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn cli(port: u16, args: &[&str]) -> String {
    crate::redis_server::cli_output(port, None, args)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}
