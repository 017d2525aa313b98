//! A TCP fault proxy for tests: sits between a client and a server on
//! loopback and, on command, delays replies, stops forwarding (a hung
//! server or a partition), resets every connection mid-command, or refuses
//! connections. Debian has no toxiproxy; this is the part of it the tests
//! need.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything as it comes.
    None,
    /// Holds each reply this long before forwarding it.
    Latency(Duration),
    /// Forwards nothing, in either direction, until the fault changes;
    /// connections stay open (a hung server, a partition).
    Blackhole,
    /// Resets every connection and every new one (a dead server).
    Refuse,
}

struct Control {
    fault: watch::Sender<Fault>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
}

/// A running proxy; stops (closing every connection) when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fault proxy cannot listen on loopback: {e}"));
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let control = Arc::new(Control {
            fault: watch::channel(Fault::None).0,
            resets: watch::channel(0).0,
        });
        let task = tokio::spawn(accept(listener, upstream, Arc::clone(&control)));
        FaultProxy {
            addr,
            control,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `fault` from now on.
    pub fn set(&self, fault: Fault) {
        self.control.fault.send_replace(fault);
    }

    /// Resets (TCP RST) every connection open now, mid-command or not; new
    /// connections go through.
    pub fn reset_connections(&self) {
        self.control.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.control.resets.send_modify(|n| *n += 1);
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *control.fault.borrow() == Fault::Refuse {
            reset(client);
            continue;
        }
        tokio::spawn(connection(client, upstream, Arc::clone(&control)));
    }
}

/// Closes `stream` with a RST rather than a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(client: TcpStream, upstream: SocketAddr, control: Arc<Control>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        reset(client);
        return;
    };
    // Every close the proxy makes is a reset (RST), as when a server dies
    // or a middlebox drops the connection, not a polite FIN.
    for socket in [&client, &server] {
        let _ = socket.set_nodelay(true);
        let _ = socket.set_zero_linger();
    }
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mut resets = control.resets.subscribe();
    resets.mark_unchanged();
    let requests = pump(client_read, server_write, control.fault.subscribe(), false);
    let replies = pump(server_read, client_write, control.fault.subscribe(), true);
    let mut fault = control.fault.subscribe();
    tokio::select! {
        _ = async { tokio::join!(requests, replies) } => {}
        _ = resets.changed() => {}
        _ = fault.wait_for(|f| *f == Fault::Refuse) => {}
    }
    // The pumps own the halves: dropping them here resets both sockets.
}

/// Copies `from` to `to`, applying the current fault to each chunk.
/// `replies`: this is the server-to-client direction (latency applies here).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    replies: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Hold the chunk while blackholed.
        if fault.wait_for(|f| *f != Fault::Blackhole).await.is_err() {
            return;
        }
        let current = *fault.borrow();
        match current {
            Fault::Latency(d) if replies => tokio::time::sleep(d).await,
            Fault::Refuse => return,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
