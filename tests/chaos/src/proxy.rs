//! A TCP fault proxy: listens on a free loopback port, forwards every connection to one
//! upstream address, and breaks the path on command, as a flaky plant network would.
//!
//! - `Pass`: bytes flow untouched.
//! - `Cut`: every open connection is closed at once (new ones are accepted and forwarded).
//! - `Blackhole`: connections stay open but nothing gets through in either direction, and new
//!   connections are accepted but never reach the upstream: the peer only notices by timeout.
//!   What was sent meanwhile is held, not dropped, and flows once the path is back: a dead
//!   link loses packets, but TCP retransmits them or fails the connection; it never delivers a
//!   stream with a hole in it.
//! - `Delay(d)`: every chunk is held for `d` before it is forwarded.
//! - `Throttle(bps)`: each direction of each connection is limited to `bps` bytes a second.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const CHUNK: usize = 16 * 1024;
/// How long a connection attempt to the upstream may take before the client is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the proxy does to traffic right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Delay(Duration),
    Throttle(u64),
}

/// The proxy's shared control state: the mode, and a generation that `cut` bumps to close
/// every connection opened before it.
#[derive(Debug)]
struct Control {
    mode: watch::Sender<Mode>,
    generation: watch::Sender<u64>,
    connections: AtomicU64,
}

/// A running proxy; dropping it stops listening and closes its connections.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let control = Arc::new(Control {
            mode: watch::channel(Mode::Pass).0,
            generation: watch::channel(0).0,
            connections: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, upstream, Arc::clone(&control)));
        Ok(FaultProxy {
            addr,
            control,
            task,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn set(&self, mode: Mode) {
        self.control.mode.send_replace(mode);
    }

    /// Closes every open connection (both sides); later connections go through as before.
    pub fn cut(&self) {
        self.control.generation.send_modify(|g| *g += 1);
    }

    /// A handle that can change the mode after the proxy has moved elsewhere.
    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle(Arc::clone(&self.control))
    }

    /// Connections accepted so far.
    #[cfg(test)]
    pub fn connections(&self) -> u64 {
        self.control.connections.load(Ordering::Relaxed)
    }
}

/// Changes a proxy's mode from another task.
#[derive(Clone, Debug)]
pub struct ProxyHandle(Arc<Control>);

impl ProxyHandle {
    pub fn set(&self, mode: Mode) {
        self.0.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, control: Arc<Control>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        control.connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(serve(client, upstream, Arc::clone(&control)));
    }
}

/// One proxied connection, until either side closes, a cut, or an error.
async fn serve(client: TcpStream, upstream: SocketAddr, control: Arc<Control>) {
    let mut generation = control.generation.subscribe();
    let born = *generation.borrow_and_update();
    let mut mode = control.mode.subscribe();
    // A blackholed path swallows the connection attempt too: hold the client until the mode
    // changes or a cut closes it.
    while *mode.borrow_and_update() == Mode::Blackhole {
        tokio::select! {
            changed = mode.changed() => if changed.is_err() { return },
            _ = generation.changed() => return,
        }
    }
    let server = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(server)) => server,
        _ => return,
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, control.mode.subscribe());
    let down = pump(server_read, client_write, control.mode.subscribe());
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = async {
            while *generation.borrow_and_update() == born {
                if generation.changed().await.is_err() {
                    break;
                }
            }
        } => {}
    }
    // Dropping the halves closes both sockets.
}

/// Copies one direction, applying the mode to each chunk. Returns at end of stream or error.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut current = *mode.borrow_and_update();
        while current == Mode::Blackhole {
            if mode.changed().await.is_err() {
                return;
            }
            current = *mode.borrow_and_update();
        }
        match current {
            Mode::Pass | Mode::Blackhole => {}
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Throttle(bps) => {
                let secs = n as f64 / bps.max(1) as f64;
                tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
        s.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        match tokio::time::timeout(wait, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf.to_vec()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn passes_blackholes_and_cuts() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("connect");
        let wait = Duration::from_secs(2);
        assert_eq!(
            round_trip(&mut s, wait).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.set(Mode::Blackhole);
        assert_eq!(
            round_trip(&mut s, Duration::from_millis(300)).await,
            None,
            "nothing gets through a blackhole"
        );
        proxy.set(Mode::Pass);
        let mut held = [0u8; 4];
        tokio::time::timeout(wait, s.read_exact(&mut held))
            .await
            .expect("the held bytes arrive once the path is back")
            .expect("read");
        assert_eq!(&held, b"ping", "held, not dropped");
        assert_eq!(
            round_trip(&mut s, wait).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.cut();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(wait, s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a cut closes the connection: {read:?}"
        );
        let mut again = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("reconnect");
        assert_eq!(
            round_trip(&mut again, wait).await.as_deref(),
            Some(&b"ping"[..])
        );
        assert_eq!(proxy.connections(), 2);
    }

    #[tokio::test]
    async fn delays_by_the_set_amount() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        proxy.set(Mode::Delay(Duration::from_millis(200)));
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .expect("connect");
        let started = std::time::Instant::now();
        assert!(round_trip(&mut s, Duration::from_secs(5)).await.is_some());
        // Held once on the way up and once on the way down.
        assert!(started.elapsed() >= Duration::from_millis(400));
    }
}
