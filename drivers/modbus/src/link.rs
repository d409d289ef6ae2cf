//! The transports a device is reached by: Modbus TCP (tokio-modbus), RTU frames over a TCP
//! stream (serial device servers), and a slave on a serial bus shared through its bus owner.
//! [`Link::call`] runs one [`Op`] on any of them with the same errors, so the poller, the write
//! path and the probe command do not care which one it is.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};

use crate::address::Area;
use crate::bus::BusClient;
use crate::poller::ReadError;
use crate::rtu::{decode_reply, request_frame, scan_response, Op, Reply, Scan};

/// How a device is reached.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Modbus TCP (MBAP header) to `host:port`.
    Tcp,
    /// RTU frames, CRC included, over a TCP connection to `host:port` (a serial device server).
    RtuOverTcp,
    /// A slave on a serial bus; the bus owner task serialises the requests of all its slaves.
    Serial(BusClient),
}

impl Transport {
    pub fn as_str(&self) -> &'static str {
        match self {
            Transport::Tcp => "modbus-tcp",
            Transport::RtuOverTcp => "modbus-rtu-tcp",
            Transport::Serial(_) => "modbus-rtu",
        }
    }
}

/// A byte stream an RTU line runs over: a serial port or a TCP connection.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// What an RTU line saw go wrong, for status and tests. Never a reason to stop.
#[derive(Debug, Default)]
pub struct LineCounters {
    /// Requests sent.
    pub requests: AtomicU64,
    /// Requests answered (with data or an exception).
    pub answers: AtomicU64,
    /// Requests that had no valid answer in time.
    pub timeouts: AtomicU64,
    /// Frames of the awaited shape whose CRC did not match.
    pub crc_errors: AtomicU64,
    /// Bytes that could not start the awaited answer (noise, late answers, other traffic).
    pub stray_bytes: AtomicU64,
}

/// One RTU line: sends a request frame, waits out the inter-frame gap, and scans what comes
/// back for the answer, counting CRC errors and stray bytes instead of failing on them.
pub struct RtuLine {
    stream: Box<dyn Stream>,
    gap: Duration,
    last_io: Instant,
    buf: Vec<u8>,
    counters: Arc<LineCounters>,
}

impl std::fmt::Debug for RtuLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuLine")
            .field("gap", &self.gap)
            .finish_non_exhaustive()
    }
}

/// Silence after which a partial frame is taken as noise: the sender has stopped mid-frame.
const MIN_FRAME_SILENCE: Duration = Duration::from_millis(20);

impl RtuLine {
    pub fn new(stream: Box<dyn Stream>, gap: Duration, counters: Arc<LineCounters>) -> RtuLine {
        RtuLine {
            stream,
            gap,
            last_io: Instant::now(),
            buf: Vec::with_capacity(256),
            counters,
        }
    }

    pub fn counters(&self) -> Arc<LineCounters> {
        self.counters.clone()
    }

    /// One request and its answer, within `limit`. A timeout leaves the line usable: whatever
    /// arrives late is discarded before the next request.
    pub async fn transact(
        &mut self,
        unit: u8,
        op: &Op,
        limit: Duration,
    ) -> Result<Reply, ReadError> {
        self.discard_pending().await?;
        let since = self.last_io.elapsed();
        if since < self.gap {
            tokio::time::sleep(self.gap - since).await;
        }
        let frame = request_frame(unit, op);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + limit;
        let sent = timeout(limit, async {
            self.stream.write_all(&frame).await?;
            self.stream.flush().await
        })
        .await;
        self.last_io = Instant::now();
        match sent {
            Err(_) => return Err(ReadError::Timeout(limit)),
            Ok(Err(e)) => return Err(ReadError::Transport(e.to_string())),
            Ok(Ok(())) => {}
        }
        // Unit 0 is a broadcast: nobody answers.
        if unit == 0 {
            return Ok(Reply::Written);
        }
        self.buf.clear();
        let silence = (self.gap * 10).max(MIN_FRAME_SILENCE);
        let function = op.function_code();
        loop {
            match scan_response(&self.buf, unit, function) {
                Scan::Answer { len, result } => {
                    self.buf.drain(..len);
                    self.counters.answers.fetch_add(1, Ordering::Relaxed);
                    let data = result.map_err(ReadError::Exception)?;
                    return decode_reply(op, &data).map_err(ReadError::BadAnswer);
                }
                Scan::Stray => {
                    self.counters.stray_bytes.fetch_add(1, Ordering::Relaxed);
                    self.buf.remove(0);
                    continue;
                }
                Scan::CrcError => {
                    self.counters.crc_errors.fetch_add(1, Ordering::Relaxed);
                    self.buf.remove(0);
                    continue;
                }
                Scan::Incomplete => {}
            }
            let now = Instant::now();
            if now >= deadline {
                self.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(ReadError::Timeout(limit));
            }
            // A partial frame waits for the rest only while the line keeps talking.
            let wait = if self.buf.is_empty() {
                deadline - now
            } else {
                silence.min(deadline - now)
            };
            let mut chunk = [0u8; 256];
            match timeout(wait, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    return Err(ReadError::Transport("the line was closed".to_owned()));
                }
                Ok(Ok(n)) => {
                    self.last_io = Instant::now();
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Ok(Err(e)) => return Err(ReadError::Transport(e.to_string())),
                Err(_) if !self.buf.is_empty() && Instant::now() < deadline => {
                    // The sender stopped mid-frame: its first byte was noise.
                    self.counters.stray_bytes.fetch_add(1, Ordering::Relaxed);
                    self.buf.remove(0);
                }
                Err(_) => {}
            }
        }
    }

    /// Drops bytes already waiting on the line (a late answer to a timed-out request, noise),
    /// so they cannot be taken for the next answer.
    async fn discard_pending(&mut self) -> Result<(), ReadError> {
        let mut chunk = [0u8; 256];
        // Bounded: a line that never stops talking is handled by the request timeout instead.
        for _ in 0..64 {
            match timeout(Duration::from_millis(1), self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) => return Err(ReadError::Transport("the line was closed".to_owned())),
                Ok(Ok(n)) => {
                    self.last_io = Instant::now();
                    self.counters
                        .stray_bytes
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => return Err(ReadError::Transport(e.to_string())),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }
}

/// An open way to one device.
pub enum Link {
    Tcp(Context),
    RtuOverTcp { line: RtuLine, unit: u8 },
    Serial { bus: BusClient, unit: u8 },
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::Tcp(_) => f.write_str("Link::Tcp"),
            Link::RtuOverTcp { unit, .. } => write!(f, "Link::RtuOverTcp(unit {unit})"),
            Link::Serial { bus, unit } => write!(f, "Link::Serial({}, unit {unit})", bus.name()),
        }
    }
}

impl Link {
    /// Opens the transport to `host:port` (ignored for a serial slave), bounded by `limit`.
    pub async fn open(
        transport: &Transport,
        host: &str,
        port: u16,
        unit: u8,
        limit: Duration,
    ) -> Result<Link, ReadError> {
        match transport {
            Transport::Serial(bus) => Ok(Link::Serial {
                bus: bus.clone(),
                unit,
            }),
            Transport::Tcp => {
                let addr = resolve(host, port, limit).await?;
                let ctx = timeout(
                    limit,
                    tokio_modbus::client::tcp::connect_slave(addr, Slave(unit)),
                )
                .await
                .map_err(|_| ReadError::Timeout(limit))?
                .map_err(|e| ReadError::Transport(format!("cannot connect to {addr}: {e}")))?;
                Ok(Link::Tcp(ctx))
            }
            Transport::RtuOverTcp => {
                let addr = resolve(host, port, limit).await?;
                let stream = timeout(limit, tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| ReadError::Timeout(limit))?
                    .map_err(|e| ReadError::Transport(format!("cannot connect to {addr}: {e}")))?;
                let _ = stream.set_nodelay(true);
                // A device server forwards whole frames; the serial gap is its business.
                let line = RtuLine::new(
                    Box::new(stream),
                    Duration::ZERO,
                    Arc::new(LineCounters::default()),
                );
                Ok(Link::RtuOverTcp { line, unit })
            }
        }
    }

    /// Whether opening proves nothing about the device, so its first read must: a serial
    /// slave and an RTU device behind a device server are "connected" only once they answer.
    pub fn needs_probe(&self) -> bool {
        !matches!(self, Link::Tcp(_))
    }

    /// Runs one request, bounded by `limit`.
    pub async fn call(&mut self, op: &Op, limit: Duration) -> Result<Reply, ReadError> {
        match self {
            Link::Tcp(ctx) => call_tcp(ctx, op, limit).await,
            Link::RtuOverTcp { line, unit } => line.transact(*unit, op, limit).await,
            Link::Serial { bus, unit } => bus.call(*unit, op.clone(), limit).await,
        }
    }

    /// Closes the transport politely (TCP only; a bus stays with its owner).
    pub async fn close(self, limit: Duration) {
        if let Link::Tcp(mut ctx) = self {
            let _ = timeout(limit, tokio_modbus::client::Client::disconnect(&mut ctx)).await;
        }
    }
}

async fn resolve(host: &str, port: u16, limit: Duration) -> Result<SocketAddr, ReadError> {
    let target = format!("{host}:{port}");
    if let Ok(a) = target.parse() {
        return Ok(a);
    }
    let mut addrs = timeout(limit, tokio::net::lookup_host(target.as_str()))
        .await
        .map_err(|_| ReadError::Timeout(limit))?
        .map_err(|e| ReadError::Transport(format!("cannot resolve {target}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| ReadError::Transport(format!("{target} resolves to no address")))
}

async fn call_tcp(ctx: &mut Context, op: &Op, limit: Duration) -> Result<Reply, ReadError> {
    type Nested<T> =
        Result<Result<Result<T, ExceptionCode>, tokio_modbus::Error>, tokio::time::error::Elapsed>;
    fn flatten<T>(r: Nested<T>, limit: Duration) -> Result<T, ReadError> {
        match r {
            Err(_) => Err(ReadError::Timeout(limit)),
            Ok(Err(e)) => Err(modbus_error(e)),
            Ok(Ok(Err(code))) => Err(ReadError::Exception(code)),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }
    match op {
        Op::Read { area, start, count } => {
            let (start, count) = (*start, *count);
            match area {
                Area::HoldingRegister => flatten(
                    timeout(limit, ctx.read_holding_registers(start, count)).await,
                    limit,
                )
                .map(Reply::Registers),
                Area::InputRegister => flatten(
                    timeout(limit, ctx.read_input_registers(start, count)).await,
                    limit,
                )
                .map(Reply::Registers),
                Area::Coil => flatten(timeout(limit, ctx.read_coils(start, count)).await, limit)
                    .map(Reply::Bits),
                Area::DiscreteInput => flatten(
                    timeout(limit, ctx.read_discrete_inputs(start, count)).await,
                    limit,
                )
                .map(Reply::Bits),
            }
        }
        Op::WriteCoil { address, on } => flatten(
            timeout(limit, ctx.write_single_coil(*address, *on)).await,
            limit,
        )
        .map(|()| Reply::Written),
        Op::WriteRegister { address, value } => flatten(
            timeout(limit, ctx.write_single_register(*address, *value)).await,
            limit,
        )
        .map(|()| Reply::Written),
        Op::WriteRegisters { address, words } => flatten(
            timeout(limit, ctx.write_multiple_registers(*address, words)).await,
            limit,
        )
        .map(|()| Reply::Written),
    }
}

/// A tokio-modbus failure in words.
fn modbus_error(e: tokio_modbus::Error) -> ReadError {
    match e {
        tokio_modbus::Error::Protocol(p) => ReadError::BadAnswer(p.to_string()),
        tokio_modbus::Error::Transport(io) => io_error(&io),
    }
}

/// tokio-modbus 0.17 turns the end of the stream (the device closed the connection) into
/// `io::Error::last_os_error()`, which carries whatever errno the thread last set: "Success
/// (os error 0)", or a stale EAGAIN from an earlier non-blocking read. So an OS error that is
/// none of a socket's own failures is that end of stream. The codec's own errors (bytes that
/// are not Modbus TCP) are not OS errors.
fn io_error(e: &std::io::Error) -> ReadError {
    use std::io::ErrorKind as Kind;
    match e.kind() {
        Kind::ConnectionReset => ReadError::Transport("the device reset the connection".into()),
        Kind::ConnectionAborted | Kind::BrokenPipe | Kind::NotConnected => {
            ReadError::Transport(format!("the connection broke: {e}"))
        }
        Kind::TimedOut | Kind::HostUnreachable | Kind::NetworkUnreachable | Kind::NetworkDown => {
            ReadError::Transport(format!("the network failed: {e}"))
        }
        _ if e.raw_os_error().is_none() => ReadError::BadAnswer(e.to_string()),
        _ => ReadError::Closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn the_end_of_the_stream_tokio_modbus_reports_as_an_os_error_reads_as_a_closed_connection() {
        // What `io::Error::last_os_error()` gives on a thread whose errno is 0 or EAGAIN.
        for errno in [0, 11] {
            let e = io::Error::from_raw_os_error(errno);
            let r = modbus_error(tokio_modbus::Error::Transport(e));
            assert!(matches!(r, ReadError::Closed), "errno {errno}: {r}");
            assert_eq!(
                r.to_string(),
                "the device closed the connection without answering"
            );
        }
    }

    #[test]
    fn socket_failures_and_bad_frames_keep_their_own_words() {
        let reset = io::Error::from_raw_os_error(104);
        assert_eq!(
            io_error(&reset).to_string(),
            "the connection failed: the device reset the connection"
        );
        let pipe = io::Error::from_raw_os_error(32);
        assert!(io_error(&pipe).to_string().contains("the connection broke"));
        let frame = io::Error::new(io::ErrorKind::InvalidData, "invalid protocol id");
        assert!(matches!(io_error(&frame), ReadError::BadAnswer(m) if m.contains("protocol id")));
    }
}
