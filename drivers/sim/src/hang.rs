//! A network front that makes any simulated device hang like a PLC whose program froze while
//! its TCP stack carries on: while frozen, connections are accepted and what they send is read
//! and dropped, but nothing is ever answered. Thawed, it forwards new connections to the device
//! behind it. The time of every accepted connection is kept, so a test sees how often a client
//! comes back.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Pause before accepting again after the listener failed, so a persistent failure does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// A front for a simulated device that can hang. Dropping it closes the listener and every
/// connection through it.
#[derive(Debug)]
pub struct HangingFront {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accepted: Arc<Mutex<Vec<Instant>>>,
    accept_task: JoinHandle<()>,
}

impl HangingFront {
    /// Listens on `bind` (port 0 for a free port) and forwards to `device`; starts thawed.
    pub async fn start(bind: SocketAddr, device: SocketAddr) -> io::Result<HangingFront> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (frozen, frozen_rx) = watch::channel(false);
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let accept_task = tokio::spawn(accept(listener, device, frozen_rx, accepted.clone()));
        Ok(HangingFront {
            addr,
            frozen,
            accepted,
            accept_task,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Frozen, every connection goes silent: what it sends is dropped and never answered,
    /// even after a thaw (as a hung PLC's connections stay dead). Thawed, new connections
    /// reach the device again.
    pub fn set_frozen(&self, frozen: bool) {
        tracing::debug!(frozen, addr = %self.addr, "hanging front");
        self.frozen.send_replace(frozen);
    }

    /// When each connection was accepted, oldest first.
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for HangingFront {
    fn drop(&mut self) {
        // The accept task owns the connection tasks: aborting it drops them all.
        self.accept_task.abort();
    }
}

async fn accept(
    listener: TcpListener,
    device: SocketAddr,
    frozen: watch::Receiver<bool>,
    accepted: Arc<Mutex<Vec<Instant>>>,
) {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                accepted
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Instant::now());
                connections.spawn(serve(client, device, frozen.clone()));
            }
            Err(e) => {
                tracing::debug!(error = %e, "hanging front cannot accept");
                tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Forwards one connection until either side closes it or the front freezes; from then on
/// the client is only listened to.
async fn serve(mut client: TcpStream, device: SocketAddr, mut frozen: watch::Receiver<bool>) {
    if !*frozen.borrow_and_update() {
        let Ok(mut device) = TcpStream::connect(device).await else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = device.set_nodelay(true);
        let (mut from_client, mut to_client) = client.split();
        let (mut from_device, mut to_device) = device.split();
        let mut up = [0u8; 4096];
        let mut down = [0u8; 4096];
        loop {
            tokio::select! {
                // Only whether it froze leaves this branch: the watch's guard must not be held
                // across the writes of the others.
                open = async { frozen.wait_for(|f| *f).await.is_ok() } => {
                    if !open {
                        return;
                    }
                    break;
                }
                n = from_client.read(&mut up) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if to_device.write_all(&up[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                n = from_device.read(&mut down) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if to_client.write_all(&down[..n]).await.is_err() {
                            return;
                        }
                    }
                },
            }
        }
    }
    // Hung: the connection stays open and nothing comes back, until the client gives up.
    let mut sink = [0u8; 4096];
    while let Ok(n) = client.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}
