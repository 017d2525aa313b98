//! A private Redis Cluster per test, for tests that kill, pause or reshard
//! nodes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::RedisServer;

/// `masters` masters with `replicas` replicas each, on free loopback ports,
/// killed on drop. Nodes time out after 1 s (`cluster-node-timeout`), so a
/// killed master's replica takes over within a few seconds.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
    masters: usize,
    /// `requirepass` of every node (and `masterauth`), if any.
    password: Option<String>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster (`redis-cli --cluster
    /// create`) and waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, None, &[])
    }

    /// The same, every node requiring `password` (`requirepass`, and
    /// `masterauth` for its replicas), with `extra` arguments for each node
    /// (e.g. `--user alice on >pw ~* &* +@all`). [`seed_urls`](Self::seed_urls)
    /// carry the password.
    pub fn start_with_password(
        masters: usize,
        replicas: usize,
        password: &str,
        extra: &[&str],
    ) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, Some(password), extra)
    }

    fn start_with(
        masters: usize,
        replicas: usize,
        password: Option<&str>,
        extra: &[&str],
    ) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        let dir =
            std::env::temp_dir().join(format!("larder-cluster-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let count = masters * (replicas + 1);
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            let port = cluster_port();
            let conf = dir.join(format!("nodes-{i}.conf")).display().to_string();
            let node_dir = dir.display().to_string();
            let mut args: Vec<&str> = Vec::new();
            if let Some(pw) = password {
                args.extend(["--requirepass", pw, "--masterauth", pw]);
            }
            args.extend(extra);
            args.extend([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "1000",
                "--cluster-require-full-coverage",
                "no",
                // A replica that never finished its first sync does not
                // take over; Redis 7 delays that sync by 5 s otherwise.
                "--repl-diskless-sync-delay",
                "0",
                "--dir",
                &node_dir,
            ]);
            nodes.push(RedisServer::start_on(port, &args));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let cluster = RedisCluster {
            nodes,
            dir,
            masters,
            password: password.map(str::to_string),
        };
        let status = cluster
            .redis_cli()
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): apt-get install redis-tools"));
        assert!(status.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok(Duration::from_secs(20));
        cluster.wait_until_replicas_synced(Duration::from_secs(20));
        cluster
    }

    /// Waits until every replica's link to its master is up (its first
    /// sync done): before, a failover would find no replica to promote.
    pub fn wait_until_replicas_synced(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let synced = self.nodes.iter().filter(|n| n.is_up()).all(|n| {
                let info = self.cli(n.port(), &["INFO", "replication"]);
                !info.contains("role:slave") || info.contains("master_link_status:up")
            });
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replicas did not sync within {timeout:?}"
            );
            // Polling another process's state: no event to await.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Seed URLs for a cluster client (every node).
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| match &self.password {
                Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", n.port()),
                None => n.url(),
            })
            .collect()
    }

    /// `redis-cli`, authenticated when the cluster has a password.
    fn redis_cli(&self) -> Command {
        let mut cmd = Command::new("redis-cli");
        if let Some(pw) = &self.password {
            // redis-cli reads it from the environment: not on a command line
            // that `ps` shows.
            cmd.env("REDISCLI_AUTH", pw);
        }
        cmd
    }

    /// `redis-cli -p port args...`'s output ("" if it fails).
    fn cli(&self, port: u16, args: &[&str]) -> String {
        crate::redis_server::cli_output(port, self.password.as_deref(), args)
    }

    /// How many masters it was created with.
    pub fn masters(&self) -> usize {
        self.masters
    }

    /// Node `i` (the first `masters` were created as masters).
    pub fn node(&self, i: usize) -> &RedisServer {
        &self.nodes[i]
    }

    /// Node `i`, to kill or restart it.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The index of the node that is master of `key`'s slot now, asked of
    /// the live node `ask`.
    pub fn master_of(&self, key: &str, ask: usize) -> usize {
        let slot: u16 = self
            .cli(self.nodes[ask].port(), &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        let nodes = self.cli(self.nodes[ask].port(), &["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 9 || !cols[2].contains("master") || cols[2].contains("fail") {
                continue;
            }
            let port: u16 = cols[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for range in &cols[8..] {
                let (first, last) = match range.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap_or(u16::MAX), b.parse().unwrap_or(0)),
                    None => {
                        let s = range.parse().unwrap_or(u16::MAX);
                        (s, s)
                    }
                };
                if first <= slot && slot <= last {
                    return self
                        .nodes
                        .iter()
                        .position(|n| n.port() == port)
                        .expect("a master of this cluster");
                }
            }
        }
        panic!("no master serves slot {slot}");
    }

    /// The cluster node id of node `i` (for `redis-cli --cluster reshard`).
    pub fn node_id(&self, i: usize) -> String {
        self.cli(self.nodes[i].port(), &["CLUSTER", "MYID"])
            .trim()
            .to_string()
    }

    /// The command that moves `slots` slots from node `from` to node `to`
    /// while the cluster serves (`redis-cli --cluster reshard`), for the
    /// test to run (on a blocking thread) while it drives load. Waits first
    /// until the nodes agree on the configuration (redis-cli refuses to
    /// reshard before).
    pub fn reshard_command(&self, from: usize, to: usize, slots: usize) -> Command {
        self.wait_until_agreed(Duration::from_secs(20));
        let mut cmd = self.redis_cli();
        cmd.args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", self.nodes[from].port()))
            .args(["--cluster-from", &self.node_id(from)])
            .args(["--cluster-to", &self.node_id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Waits until `redis-cli --cluster check` passes: every node agrees
    /// on the slots and none is open or migrating.
    pub fn wait_until_agreed(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let first = self.nodes.iter().find(|n| n.is_up()).expect("a live node");
        loop {
            let ok = self
                .redis_cli()
                .args(["--cluster", "check"])
                .arg(format!("127.0.0.1:{}", first.port()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster's nodes did not agree within {timeout:?}"
            );
            // Polling another process's state: no event to await.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every live node says `cluster_state:ok` and agrees on
    /// the masters (after a failover: the replica was promoted).
    pub fn wait_until_ok(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_up()).all(|n| {
                self.cli(n.port(), &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within {timeout:?}"
            );
            // Polling another process's state: no event to await.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until node `i` is a master (a replica promoted after its
    /// master died).
    pub fn wait_until_master(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .cli(self.nodes[i].port(), &["ROLE"])
            .starts_with("master")
        {
            assert!(
                Instant::now() < deadline,
                "node {i} was not promoted within {timeout:?}"
            );
            // Polling another process's state: no event to await.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The replica of master node `master`, if it has one (by index).
    pub fn replica_of(&self, master: usize) -> Option<usize> {
        let id = self.node_id(master);
        self.nodes.iter().enumerate().position(|(i, n)| {
            i != master
                && n.is_up()
                && self
                    .cli(n.port(), &["CLUSTER", "NODES"])
                    .lines()
                    .any(|l| l.contains("myself") && l.contains("slave") && l.contains(&id))
        })
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    for _ in 0..200 {
        let port: u16 = 20_000 + (rand::random::<u16>() % 25_000);
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free loopback port pair for a cluster node");
}
