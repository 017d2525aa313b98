//! Runs the reference service as a child process for a measurement.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

/// A running `trading` process, stopped (SIGTERM, then kill) on drop.
pub struct Service {
    child: Child,
    /// Its base URL.
    pub base_url: String,
}

/// The `trading` binary next to this one (both are built into target/<profile>).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("trading")))
        .unwrap_or_else(|| PathBuf::from("trading"))
}

impl Service {
    /// Starts `binary` on `port` with extra arguments and environment, and
    /// waits until `/healthz` answers (seeding a new database can take a
    /// minute or two).
    pub async fn start(
        binary: &PathBuf,
        port: u16,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Service> {
        if !binary.exists() {
            bail!(
                "{} not found: build it first with `cargo build --release -p trading` (or pass --service-bin)",
                binary.display()
            );
        }
        let mut cmd = Command::new(binary);
        cmd.arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let mut service = Service {
            child,
            base_url: format!("http://127.0.0.1:{port}"),
        };
        service.wait_ready(Duration::from_secs(600)).await?;
        Ok(service)
    }

    async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: hyper::Uri = format!("{}/healthz", self.base_url).parse()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the service exited during start-up ({status})");
            }
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(1), client.get(uri.clone())).await
                && r.status().is_success()
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("the service did not become ready within {limit:?}");
            }
            // Polling a child process that offers no readiness signal to
            // wait on; bounded by `limit`.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The service's process id (`None` once it exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The resident memory of the service process, in bytes (Linux:
    /// `VmRSS` in `/proc/<pid>/status`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the service has exited"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
        Ok(kb * 1024)
    }

    /// Stops the service gracefully.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
