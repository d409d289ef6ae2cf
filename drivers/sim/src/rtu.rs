//! A simulated RS-485 bus: several [`ModbusSim`] slaves, each with its own unit id, served by
//! tokio-modbus's RTU server over a pseudo-terminal, the line the gateway opens by its path.
//! Between the two sits a relay that can put noise on the line (a corrupted copy of an answer
//! ahead of the answer), as a long unterminated cable does.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_modbus::server::rtu::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Response, SlaveRequest};
use tokio_serial::{SerialPort, SerialStream};

use crate::server::{Answer, ModbusSim, SimService};

/// A bus of simulated slaves on a pseudo-terminal. Dropping it ends the bus.
#[derive(Debug)]
pub struct RtuBusSim {
    path: String,
    noise: Arc<AtomicU64>,
    noise_sent: Arc<AtomicU64>,
    // The gateway's end is held open so its path stays valid until the bus is dropped.
    _gateway_end: SerialStream,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RtuBusSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RtuBusSim {
    /// Serves `slaves` (unit id, device) on a new pseudo-terminal; the gateway opens
    /// [`RtuBusSim::path`]. A unit id not in `slaves` is not answered, as on a real bus.
    pub fn start(slaves: Vec<(u8, ModbusSim)>) -> io::Result<RtuBusSim> {
        let (line_master, gateway_end) = SerialStream::pair().map_err(io::Error::from)?;
        let (relay_end, server_end) = SerialStream::pair().map_err(io::Error::from)?;
        let path = gateway_end
            .name()
            .ok_or_else(|| io::Error::other("the pseudo-terminal has no path"))?;
        let service = BusService {
            slaves: slaves.into_iter().map(|(u, d)| (u, d.service())).collect(),
        };
        let server = tokio::spawn(async move {
            if let Err(e) = Server::new(server_end).serve_forever(service).await {
                tracing::debug!(error = %e, "simulated RTU bus server ended");
            }
        });
        let noise = Arc::new(AtomicU64::new(0));
        let noise_sent = Arc::new(AtomicU64::new(0));
        let relay = tokio::spawn(relay(
            line_master,
            relay_end,
            noise.clone(),
            noise_sent.clone(),
        ));
        Ok(RtuBusSim {
            path,
            noise,
            noise_sent,
            _gateway_end: gateway_end,
            tasks: vec![server, relay],
        })
    }

    /// The path of the gateway's end of the line, e.g. `/dev/pts/7`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Puts a corrupted copy ahead of each of the next `answers` answers on the line.
    pub fn inject_noise(&self, answers: u64) {
        self.noise.fetch_add(answers, Ordering::SeqCst);
    }

    /// How many corrupted frames were put on the line.
    pub fn noise_sent(&self) -> u64 {
        self.noise_sent.load(Ordering::SeqCst)
    }
}

/// Copies bytes both ways between the gateway's line and the server's, adding noise on the
/// way back when asked.
async fn relay(
    line: SerialStream,
    server: SerialStream,
    noise: Arc<AtomicU64>,
    noise_sent: Arc<AtomicU64>,
) {
    let (mut line_rx, mut line_tx) = tokio::io::split(line);
    let (mut server_rx, mut server_tx) = tokio::io::split(server);
    let forward = async move {
        let mut buf = [0u8; 512];
        loop {
            match line_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let back = async move {
        let mut buf = [0u8; 512];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let chunk = &buf[..n];
            let take = noise
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                .is_ok();
            if take && n > 3 {
                let mut bad = chunk.to_vec();
                // Flip a data byte: the frame keeps its shape and fails its CRC.
                bad[n - 3] ^= 0x5A;
                if line_tx.write_all(&bad).await.is_err() {
                    break;
                }
                noise_sent.fetch_add(1, Ordering::SeqCst);
            }
            if line_tx.write_all(chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(forward, back);
}

/// Hands each request to the slave it is addressed to.
#[derive(Debug)]
struct BusService {
    slaves: BTreeMap<u8, SimService>,
}

impl Service for BusService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        match self.slaves.get(&request.slave) {
            Some(slave) => slave.call(request.request),
            // Nobody on the bus has this address: silence.
            None => Box::pin(async { Ok(None) }),
        }
    }
}

/// Serves `slaves` as RTU devices behind a serial device server: RTU frames over the TCP
/// connections `listener` accepts. Runs until accepting fails.
pub async fn serve_rtu_over_tcp(
    listener: tokio::net::TcpListener,
    slaves: Vec<(u8, ModbusSim)>,
) -> io::Result<()> {
    let service = Arc::new(BusService {
        slaves: slaves.into_iter().map(|(u, d)| (u, d.service())).collect(),
    });
    let server = tokio_modbus::server::rtu_over_tcp::Server::new(listener);
    let on_connected = |stream: tokio::net::TcpStream, _peer: std::net::SocketAddr| {
        let service = Arc::clone(&service);
        async move { io::Result::Ok(Some((service, stream))) }
    };
    let on_process_error = |err: io::Error| {
        tracing::debug!(%err, "simulated device server connection ended with an error");
    };
    server.serve(&on_connected, on_process_error).await
}
