//! From the user's settings to redis-rs clients: which deployment, URLs,
//! TLS, TCP settings. Every connection larder opens (the shared one, the
//! bus listener's, a worker's, one per cluster node or sentinel) is built
//! here, so that AUTH/ACL, TLS and timeouts apply to each alike.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::Error;
use crate::breaker::BreakerSettings;

/// Which Redis the tier talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Deployment {
    /// One server (`redis_url`).
    Standalone(String),
    /// A master found by name through sentinels, followed across failovers.
    Sentinel {
        /// `redis://host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The name the sentinels monitor the master under.
        master: String,
    },
    /// A Redis Cluster, reached through any of these seed nodes.
    Cluster(Vec<String>),
}

impl Deployment {
    /// The URLs whose scheme decides TLS.
    fn urls(&self) -> Vec<&str> {
        match self {
            Deployment::Standalone(url) => vec![url.as_str()],
            Deployment::Sentinel { sentinels, .. } => {
                sentinels.iter().map(String::as_str).collect()
            }
            Deployment::Cluster(seeds) => seeds.iter().map(String::as_str).collect(),
        }
    }
}

/// Settings for the L2 connection.
#[derive(Debug, Clone)]
pub(crate) struct RedisSettings {
    pub deployment: Deployment,
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
    pub breaker: BreakerSettings,
    /// PEM root certificate(s) to trust for `rediss://` instead of the
    /// system's (a private CA).
    pub tls_root_cert: Option<Vec<u8>>,
}

impl RedisSettings {
    /// Checks the URLs' schemes against the `tls` feature, and installs
    /// rustls's crypto provider when one is needed.
    pub fn prepare_tls(&self) -> Result<(), Error> {
        let urls = self.deployment.urls();
        if urls.is_empty() {
            return Err(Error::RedisUrl("no Redis address given".into()));
        }
        let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
        if tls != 0 && tls != urls.len() {
            return Err(Error::RedisUrl(
                "mixed redis:// and rediss:// addresses: use one scheme for every node".into(),
            ));
        }
        #[cfg(feature = "tls")]
        if tls > 0 {
            // redis-rs uses rustls without choosing a crypto provider. Another
            // part of the program may have installed one already; either way
            // one is installed after this line.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        #[cfg(not(feature = "tls"))]
        if tls > 0 || self.tls_root_cert.is_some() {
            return Err(Error::RedisUrl(
                "rediss:// and TLS root certificates need larder's `tls` feature".into(),
            ));
        }
        Ok(())
    }
}

/// Parses a URL, with larder's TCP settings. The error never repeats the
/// URL: it may hold a password.
pub(crate) fn info(url: &str) -> Result<ConnectionInfo, Error> {
    let info = url
        .into_connection_info()
        .map_err(|e| Error::RedisUrl(e.to_string()))?;
    Ok(info.set_tcp_settings(tcp_settings()))
}

/// A client for one server.
pub(crate) fn client(
    info: ConnectionInfo,
    root_cert: Option<&[u8]>,
) -> Result<redis::Client, Error> {
    match root_cert {
        #[cfg(feature = "tls")]
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        #[cfg(not(feature = "tls"))]
        Some(_) => {
            return Err(Error::RedisUrl(
                "a TLS root certificate needs larder's `tls` feature".into(),
            ));
        }
        None => redis::Client::open(info),
    }
    .map_err(|e| Error::RedisUrl(e.to_string()))
}

/// `template` (credentials, database, TLS) pointed at another server: a
/// cluster node or a master a sentinel named.
pub(crate) fn with_addr(template: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match template.addr() {
        ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => ConnectionAddr::Tcp(host.to_string(), port),
    };
    template.clone().set_addr(addr)
}

/// `host:port` of a connection address (for logs, metrics and breakers).
pub(crate) fn addr_name(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        ConnectionAddr::Unix(path) => path.display().to_string(),
        #[allow(unreachable_patterns)]
        _ => "unknown".into(),
    }
}

/// TCP settings of every Redis connection: keep-alive probes on an idle
/// connection, and `TCP_USER_TIMEOUT` so that a connection whose peer has
/// vanished (failover, network partition, no RST) errors within seconds
/// and gets replaced, instead of timing every command out for the ~15
/// minutes the kernel's retransmission defaults take.
pub(crate) fn tcp_settings() -> redis::io::tcp::TcpSettings {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1));
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let keepalive = keepalive.with_retries(3);
    let settings = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    let settings = settings.set_user_timeout(Duration::from_secs(10));
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_address_keeps_credentials_and_database() {
        let template = info("redis://app:secret@10.0.0.1:6379/3").unwrap();
        let moved = with_addr(&template, "127.0.0.1", 7001);
        assert_eq!(addr_name(&moved), "127.0.0.1:7001");
        assert_eq!(moved.redis_settings().username(), Some("app"));
        assert_eq!(moved.redis_settings().password(), Some("secret"));
        assert_eq!(moved.redis_settings().db(), 3);
    }

    #[test]
    fn mixed_schemes_are_refused() {
        let settings = RedisSettings {
            deployment: Deployment::Cluster(vec![
                "redis://127.0.0.1:7000".into(),
                "rediss://127.0.0.1:7001".into(),
            ]),
            op_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            breaker: BreakerSettings::default(),
            tls_root_cert: None,
        };
        assert!(matches!(settings.prepare_tls(), Err(Error::RedisUrl(_))));
    }
}
