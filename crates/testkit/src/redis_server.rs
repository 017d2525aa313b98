//! A private `redis-server` per test, for tests that watch server-wide
//! counters (`INFO commandstats`) or break the server on purpose.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    /// Whether it was killed (and not restarted).
    down: bool,
    port: u16,
    extra: Vec<String>,
    /// Certificates of a TLS server, deleted with it.
    files: Option<std::path::PathBuf>,
}

impl RedisServer {
    /// Starts a server with persistence off and waits until it logs that it
    /// accepts connections. `extra` are more `--option value` arguments.
    pub fn start(extra: &[&str]) -> RedisServer {
        RedisServer::start_on(free_port(), extra)
    }

    /// Like [`start`](Self::start), on a port of the caller's choosing.
    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(port, &extra);
        RedisServer {
            child,
            down: false,
            port,
            extra,
            files: None,
        }
    }

    /// Whether it is running (not killed).
    pub fn is_up(&self) -> bool {
        !self.down
    }

    /// Starts a server that speaks only TLS on its port, with a certificate
    /// for `127.0.0.1` signed by a throwaway CA (made with the `openssl`
    /// command). Returns the server and the CA certificate (PEM) to trust.
    pub fn start_tls() -> (RedisServer, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("larder-tls-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let path = |name: &str| dir.join(name).display().to_string();
        std::fs::write(path("san.ext"), "subjectAltName=IP:127.0.0.1\n")
            .expect("temp dir is writable");
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=larder test CA",
                "-keyout",
                &path("ca.key"),
                "-out",
                &path("ca.crt"),
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &path("server.key"),
                "-out",
                &path("server.csr"),
            ],
            &[
                "x509",
                "-req",
                "-days",
                "1",
                "-in",
                &path("server.csr"),
                "-CA",
                &path("ca.crt"),
                "-CAkey",
                &path("ca.key"),
                "-CAcreateserial",
                "-extfile",
                &path("san.ext"),
                "-out",
                &path("server.crt"),
            ],
        ];
        for args in steps {
            let status = Command::new("openssl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("cannot run openssl ({e}): apt-get install openssl"));
            assert!(status.success(), "openssl {args:?} failed");
        }
        let port = free_port();
        let extra: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("server.crt"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.crt"),
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = spawn(port, &extra);
        let ca = std::fs::read(path("ca.crt")).expect("openssl wrote the CA certificate");
        (
            RedisServer {
                child,
                down: false,
                port,
                extra,
                files: Some(dir),
            },
            ca,
        )
    }

    /// `rediss://127.0.0.1:<port>`, for a server from `start_tls`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// Kills the server and starts a new, empty one on the same port (a new
    /// `run_id`, as after a crash or a failover).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(self.port, &self.extra);
        self.down = false;
    }

    /// Freezes the server (`SIGSTOP`): connections stay open and commands
    /// go unanswered, as with a Redis that hangs rather than refuses.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (`SIGCONT`).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (`SIGKILL`) and leaves it down; `restart` brings a
    /// new, empty one up on the same port.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.down = true;
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill {signal}: {e}"));
        assert!(status.success(), "kill {signal} redis-server failed");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection for the test's own commands.
    pub async fn connect(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("valid url");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("private redis-server accepts connections")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a paused (stopped) server too.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.files {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Runs `redis-server` on `port` and waits until it accepts connections.
fn spawn(port: u16, extra: &[String]) -> Child {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .args(extra.iter())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}): install it with `apt-get install redis-server` \
                     or run ./scripts/test, which does"
            )
        });
    let stdout = child.stdout.take().expect("stdout was piped");
    // Read the log until the server says it is ready (bounded: a server
    // that exits closes the pipe and ends the loop).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ready = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains("Ready to accept connections") {
            ready = true;
            break;
        }
        if Instant::now() > deadline {
            break;
        }
    }
    if !ready {
        let _ = child.kill();
        panic!("redis-server on port {port} did not become ready");
    }
    child
}

/// `redis-cli -p port args...`'s output ("" if it fails), authenticated
/// with `password` when given (through the environment: not on a command
/// line that `ps` shows).
pub(crate) fn cli_output(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    if let Some(pw) = password {
        cmd.env("REDISCLI_AUTH", pw);
    }
    cmd.args(["-p", &port.to_string()])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
