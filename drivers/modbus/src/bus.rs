//! One owner task per serial port. Every slave on an RS-485 bus talks through it: requests
//! are queued and served one at a time in arrival order, and since each slave's poller has at
//! most one request in flight, slaves that are due together take turns and are served at their
//! own poll rates. A slave that stops answering costs its own timeout only; its poller backs
//! off so it does not eat the bus. A port that cannot be opened is retried, never a crash.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::link::{LineCounters, RtuLine, Stream};
use crate::poller::ReadError;
use crate::rtu::{inter_frame_gap, Op, Reply};

/// Requests waiting for the bus; a poller waits when it is full.
const BUS_QUEUE: usize = 64;
/// How long a request may wait in the queue behind others before its poller gives up, on
/// top of its own timeout. Generous: a long bus of slow slaves queues for a while.
const QUEUE_WAIT: Duration = Duration::from_secs(60);
/// Pause between attempts to open a port that failed to open.
const REOPEN_PAUSE: Duration = Duration::from_secs(2);

/// Parity of a serial line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// How a serial port is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// The device path, e.g. `/dev/ttyAMA0`.
    pub path: String,
    pub baud: u32,
    pub parity: Parity,
    /// 7 or 8.
    pub data_bits: u8,
    /// 1 or 2.
    pub stop_bits: u8,
}

impl SerialSettings {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The RTU inter-frame gap at these settings.
    pub fn gap(&self) -> Duration {
        inter_frame_gap(self.baud, self.bits_per_char())
    }

    /// Opens the port with these settings.
    pub fn open(&self) -> io::Result<tokio_serial::SerialStream> {
        use tokio_serial::SerialPortBuilderExt as _;
        let data_bits = match self.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match self.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if self.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        tokio_serial::new(&self.path, self.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(io::Error::from)
    }
}

struct BusRequest {
    unit: u8,
    op: Op,
    limit: Duration,
    reply: oneshot::Sender<Result<Reply, ReadError>>,
}

/// A slave's way onto a bus. Cheap to clone; the bus owner ends when every clone is gone or
/// shutdown is asked for.
#[derive(Clone)]
pub struct BusClient {
    name: Arc<str>,
    tx: mpsc::Sender<BusRequest>,
    counters: Arc<LineCounters>,
}

impl std::fmt::Debug for BusClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl BusClient {
    /// The bus's name (its port path) for logs.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The line's counters: requests, answers, timeouts, CRC errors, stray bytes.
    pub fn counters(&self) -> Arc<LineCounters> {
        self.counters.clone()
    }

    /// Queues one request for `unit` and waits for its answer.
    pub async fn call(&self, unit: u8, op: Op, limit: Duration) -> Result<Reply, ReadError> {
        let (reply, answer) = oneshot::channel();
        let req = BusRequest {
            unit,
            op,
            limit,
            reply,
        };
        let gone = || ReadError::Transport("the serial bus has stopped".to_owned());
        match timeout(QUEUE_WAIT, self.tx.send(req)).await {
            Err(_) => return Err(ReadError::Timeout(QUEUE_WAIT)),
            Ok(Err(_)) => return Err(gone()),
            Ok(Ok(())) => {}
        }
        match timeout(QUEUE_WAIT + limit, answer).await {
            Err(_) => Err(ReadError::Timeout(QUEUE_WAIT + limit)),
            Ok(Err(_)) => Err(gone()),
            Ok(Ok(r)) => r,
        }
    }
}

/// Opens the line a bus runs on; called again after the line failed.
pub type Opener = Box<dyn FnMut() -> io::Result<Box<dyn Stream>> + Send>;

/// Starts the owner of the serial port `settings` names.
pub fn spawn_serial_bus(
    settings: SerialSettings,
    shutdown: watch::Receiver<bool>,
) -> (BusClient, JoinHandle<()>) {
    let gap = settings.gap();
    let name = settings.path.clone();
    let opener: Opener = Box::new(move || {
        let port = settings.open()?;
        Ok(Box::new(port) as Box<dyn Stream>)
    });
    spawn_bus(name, gap, opener, shutdown)
}

/// Starts a bus owner over whatever `opener` opens (a serial port, one end of a pty pair).
pub fn spawn_bus(
    name: String,
    gap: Duration,
    opener: Opener,
    shutdown: watch::Receiver<bool>,
) -> (BusClient, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(BUS_QUEUE);
    let counters = Arc::new(LineCounters::default());
    let client = BusClient {
        name: name.clone().into(),
        tx,
        counters: counters.clone(),
    };
    let task = tokio::spawn(own_bus(name, gap, opener, rx, counters, shutdown));
    (client, task)
}

async fn own_bus(
    name: String,
    gap: Duration,
    mut opener: Opener,
    mut rx: mpsc::Receiver<BusRequest>,
    counters: Arc<LineCounters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut line: Option<RtuLine> = None;
    let mut reopen_at = Instant::now();
    let mut open_failed_reported = false;
    loop {
        let req = tokio::select! {
            biased;
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() { break } else { continue }
            }
            req = rx.recv() => match req {
                Some(req) => req,
                None => break,
            },
        };
        if line.is_none() && Instant::now() >= reopen_at {
            match opener() {
                Ok(stream) => {
                    info!(bus = %name, "serial port open");
                    open_failed_reported = false;
                    line = Some(RtuLine::new(stream, gap, counters.clone()));
                }
                Err(e) => {
                    if !open_failed_reported {
                        warn!(bus = %name, error = %e, "cannot open the serial port; retrying");
                        open_failed_reported = true;
                    }
                    reopen_at = Instant::now() + REOPEN_PAUSE;
                }
            }
        }
        let Some(l) = line.as_mut() else {
            let _ = req.reply.send(Err(ReadError::Transport(format!(
                "serial port {name} is not open"
            ))));
            continue;
        };
        let result = l.transact(req.unit, &req.op, req.limit).await;
        // A bad answer is the slave's fault and a timeout leaves the line usable; a failing
        // port is the line's, and it is opened again.
        if let Err(ReadError::Transport(e)) = &result {
            warn!(bus = %name, error = %e, "serial line failed; reopening");
            line = None;
        }
        if result.is_err() {
            debug!(bus = %name, unit = req.unit, op = %req.op.describe(), "bus request failed");
        }
        let _ = req.reply.send(result);
    }
    let c = &counters;
    debug!(bus = %name,
        requests = c.requests.load(Ordering::Relaxed),
        crc_errors = c.crc_errors.load(Ordering::Relaxed),
        "bus owner stopped");
}
