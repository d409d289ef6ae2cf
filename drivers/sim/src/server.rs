//! The simulated PLC on the network: a tokio-modbus TCP server over the shared [`Bank`], with
//! the faults integration tests inject (silence, exceptions, slowness, power loss) and the
//! counters they check afterwards.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use edge_modbus::Area;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_modbus::server::tcp::Server;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::bank::Bank;
use crate::protocol::{self, InjectedException};

/// How many reads [`ModbusSim::read_requests`] remembers; older ones are forgotten first.
pub const READ_LOG_CAPACITY: usize = 10_000;

/// How long [`ModbusSim::stop`] waits for connection tasks to close their sockets. They close
/// as soon as the runtime polls them, so this bound only matters on a runtime that is stuck.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Pause before accepting again after the listener failed (for example out of file descriptors),
/// so a persistent failure does not spin.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Shortest period [`ModbusSim::spawn_program`] runs at; a zero period would be a busy loop.
const MIN_PROGRAM_PERIOD: Duration = Duration::from_millis(1);

/// A simulated Modbus TCP PLC listening on a real socket.
///
/// Cloning is cheap and every clone controls the same device. The device answers every unit id
/// from one [`Bank`]. It stops listening and drops its connections when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct ModbusSim {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Arc<State>,
    addr: SocketAddr,
    /// `Some` while listening. An async mutex, so that stop and restart calls from several tasks
    /// run one after the other instead of racing for the port.
    listening: tokio::sync::Mutex<Option<Listening>>,
}

/// What the connection tasks share with the controlling handles.
#[derive(Debug)]
struct State {
    bank: Mutex<Bank>,
    exceptions: Mutex<Vec<InjectedException>>,
    silent: AtomicBool,
    delay_nanos: AtomicU64,
    /// The largest register read answered; larger ones get "illegal data value", as some
    /// meters do. 0 for the protocol's own limit.
    max_read_registers: AtomicU16,
    requests: AtomicU64,
    connections: AtomicU64,
    read_log: Mutex<VecDeque<(Area, u16, u16)>>,
    read_hook: HookSlot,
}

/// The [`ReadHook`] in force, if any.
#[derive(Default)]
struct HookSlot(Mutex<Option<ReadHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = lock(&self.0).is_some();
        f.debug_tuple("HookSlot").field(&set).finish()
    }
}

/// Runs on every register or bit read the device is about to answer, with the bank locked:
/// `(bank, area, start, count)`. It may change the bank; the answer carries the changed values.
pub type ReadHook = Arc<protocol::ReadHookFn>;

/// A running listener and a way to learn when all of its connections are gone.
#[derive(Debug)]
struct Listening {
    accept_task: JoinHandle<()>,
    /// Yields `None` once every [`Connection`] (each holding a sender) has been dropped.
    connections_closed: mpsc::Receiver<()>,
}

impl ModbusSim {
    /// Starts listening on `bind` (use port 0 for a free port; see [`ModbusSim::local_addr`]).
    /// All four areas start at zero.
    pub async fn start(bind: SocketAddr) -> io::Result<ModbusSim> {
        let listener = bind_listener(bind)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new());
        let listening = spawn_listener(listener, Arc::clone(&state));
        tracing::debug!(%addr, "simulated Modbus PLC listening");
        Ok(ModbusSim {
            inner: Arc::new(Inner {
                state,
                addr,
                listening: tokio::sync::Mutex::new(Some(listening)),
            }),
        })
    }

    /// The address the device listens on, the same across [`ModbusSim::restart`].
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Stores registers in [`Area::InputRegister`] or [`Area::HoldingRegister`] from `start` on.
    /// Values past address 65535 are dropped; a bit area stores nothing (see [`Bank`]).
    pub fn set_registers(&self, area: Area, start: u16, values: &[u16]) {
        self.update(|bank| bank.set_registers(area, start, values));
    }

    /// Registers `start..start + count`, cut short at address 65535; empty for a bit area.
    pub fn registers(&self, area: Area, start: u16, count: u16) -> Vec<u16> {
        self.update(|bank| bank.registers(area, start, count).to_vec())
    }

    /// Stores bits in [`Area::Coil`] or [`Area::DiscreteInput`] from `start` on. Values past
    /// address 65535 are dropped; a register area stores nothing (see [`Bank`]).
    pub fn set_bits(&self, area: Area, start: u16, values: &[bool]) {
        self.update(|bank| bank.set_bits(area, start, values));
    }

    /// Bits `start..start + count`, cut short at address 65535; empty for a register area.
    pub fn bits(&self, area: Area, start: u16, count: u16) -> Vec<bool> {
        self.update(|bank| bank.bits(area, start, count).to_vec())
    }

    /// Runs `f` on the bank under the lock every request takes, so a request sees either none or
    /// all of its changes (both halves of a 32-bit value, say). Keep `f` short: requests wait.
    pub fn update<R>(&self, f: impl FnOnce(&mut Bank) -> R) -> R {
        f(&mut self.inner.state.bank())
    }

    /// While silent, requests are read and dropped without an answer and connections stay open,
    /// like a hung PLC. Dropped requests are never answered later, even after silence ends.
    pub fn set_silent(&self, silent: bool) {
        tracing::debug!(silent, "simulated Modbus PLC silence changed");
        self.inner.state.silent.store(silent, Ordering::SeqCst);
    }

    /// From now on, every read or write touching `range` of `area` is answered `code` (once the
    /// request has passed the protocol's own checks). When ranges overlap, the first added wins.
    pub fn add_exception(&self, area: Area, range: Range<u32>, code: ExceptionCode) {
        tracing::debug!(%area, ?range, ?code, "simulated Modbus PLC exception added");
        lock(&self.inner.state.exceptions).push(InjectedException { area, range, code });
    }

    /// Removes every exception added with [`ModbusSim::add_exception`].
    pub fn clear_exceptions(&self) {
        lock(&self.inner.state.exceptions).clear();
    }

    /// Refuses register reads of more than `max` registers with "illegal data value", like a
    /// meter that cannot serve the protocol's 125 (0 lifts the limit).
    pub fn set_max_read_registers(&self, max: u16) {
        self.inner
            .state
            .max_read_registers
            .store(max, Ordering::SeqCst);
    }

    /// A device with no listener of its own, for serving on a serial bus
    /// ([`crate::RtuBusSim`]). Its [`ModbusSim::local_addr`] is the unspecified address.
    pub fn detached() -> ModbusSim {
        ModbusSim {
            inner: Arc::new(Inner {
                state: Arc::new(State::new()),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                listening: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The service answering this device's requests, for another transport.
    pub(crate) fn service(&self) -> SimService {
        SimService {
            state: Arc::clone(&self.inner.state),
        }
    }

    /// Runs `hook` on every valid read before it is answered, from now on (`None` removes it):
    /// a device whose values change each time they are read, for example a counter that
    /// records each value it serves.
    pub fn set_read_hook(&self, hook: Option<ReadHook>) {
        *lock(&self.inner.state.read_hook.0) = hook;
    }

    /// Delays every answer by `d` (zero for none). The connection reads its next request only
    /// after answering, as a single-threaded PLC would.
    pub fn set_response_delay(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.state.delay_nanos.store(nanos, Ordering::SeqCst);
    }

    /// Powers the device off: closes the listener, so connecting is refused, and closes every
    /// open connection, so clients see end-of-file or a reset. Returns once the sockets are
    /// closed. The bank, faults and counters are kept. Stopping a stopped device does nothing.
    pub async fn stop(&self) {
        let mut listening = self.inner.listening.lock().await;
        if let Some(running) = listening.take() {
            shut_down(running).await;
            tracing::debug!(addr = %self.inner.addr, "simulated Modbus PLC stopped");
        }
    }

    /// Powers the device back on at the same address (a running device is stopped first), with
    /// its bank, faults and counters as they were. Fails if the port was taken meanwhile.
    pub async fn restart(&self) -> io::Result<()> {
        let mut listening = self.inner.listening.lock().await;
        if let Some(running) = listening.take() {
            shut_down(running).await;
        }
        let listener = bind_listener(self.inner.addr)?;
        *listening = Some(spawn_listener(listener, Arc::clone(&self.inner.state)));
        tracing::debug!(addr = %self.inner.addr, "simulated Modbus PLC restarted");
        Ok(())
    }

    /// Requests answered, with data or an exception, of every kind. Requests dropped while
    /// silent, or cut off by [`ModbusSim::stop`], are not counted.
    pub fn request_count(&self) -> u64 {
        self.inner.state.requests.load(Ordering::SeqCst)
    }

    /// The last [`READ_LOG_CAPACITY`] read requests (function codes 0x01 to 0x04) as
    /// `(area, start, count)`, oldest first, including those refused with an exception.
    pub fn read_requests(&self) -> Vec<(Area, u16, u16)> {
        lock(&self.inner.state.read_log).iter().copied().collect()
    }

    /// Forgets the reads logged so far, to count those of one phase of a test.
    pub fn clear_read_requests(&self) {
        lock(&self.inner.state.read_log).clear();
    }

    /// Connections accepted since [`ModbusSim::start`], across restarts.
    pub fn connection_count(&self) -> u64 {
        self.inner.state.connections.load(Ordering::SeqCst)
    }

    /// Calls `f(bank, tick)` every `period` (at least 1 ms) under the bank lock, with `tick`
    /// counting calls from 0; the first call is immediate. The schedule does not drift; ticks
    /// missed because the runtime was busy are skipped, not made up in a burst.
    ///
    /// The program runs while the device is stopped too (the plant goes on while the PLC is off)
    /// and ends when the last [`ModbusSim`] clone is dropped or the handle is aborted.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn_program(
        &self,
        period: Duration,
        mut f: impl FnMut(&mut Bank, u64) + Send + 'static,
    ) -> JoinHandle<()> {
        let device: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period.max(MIN_PROGRAM_PERIOD));
            interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
            let mut tick: u64 = 0;
            loop {
                interval.tick().await;
                let Some(inner) = device.upgrade() else {
                    tracing::debug!("simulated Modbus PLC dropped; program ends");
                    break;
                };
                f(&mut inner.state.bank(), tick);
                drop(inner);
                tick = tick.wrapping_add(1);
            }
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Aborting the accept task cancels its connection tasks, which close their sockets.
        if let Some(running) = self.listening.get_mut().take() {
            running.accept_task.abort();
        }
    }
}

impl State {
    fn new() -> State {
        State {
            bank: Mutex::new(Bank::new()),
            exceptions: Mutex::new(Vec::new()),
            silent: AtomicBool::new(false),
            delay_nanos: AtomicU64::new(0),
            max_read_registers: AtomicU16::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            read_log: Mutex::new(VecDeque::new()),
            read_hook: HookSlot::default(),
        }
    }

    fn bank(&self) -> MutexGuard<'_, Bank> {
        lock(&self.bank)
    }

    fn is_silent(&self) -> bool {
        self.silent.load(Ordering::SeqCst)
    }

    fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_nanos.load(Ordering::SeqCst))
    }

    /// Answers one request against the bank, and counts and logs it.
    fn answer(&self, request: &Request<'_>) -> Result<Response, ExceptionCode> {
        if let Some(read) = protocol::read_target(request) {
            let mut log = lock(&self.read_log);
            if log.len() >= READ_LOG_CAPACITY {
                log.pop_front();
            }
            log.push_back(read);
            drop(log);
            let max = self.max_read_registers.load(Ordering::SeqCst);
            let (area, _, count) = read;
            if max != 0 && !area.is_bits() && count > max {
                self.requests.fetch_add(1, Ordering::SeqCst);
                return Err(ExceptionCode::IllegalDataValue);
            }
        }
        // Lock order: hook, exceptions, then bank (nothing takes them the other way round).
        let hook = lock(&self.read_hook.0).clone();
        let exceptions = lock(&self.exceptions);
        let result = protocol::answer(&mut self.bank(), &exceptions, request, hook.as_deref());
        drop(exceptions);
        self.requests.fetch_add(1, Ordering::SeqCst);
        result
    }
}

/// Locks `mutex` even if a panicking program poisoned it: the bank holds plain values, each write
/// of which is complete, so it is always fit to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A listening socket with `SO_REUSEADDR`, so a restart can take the port back while the
/// connections closed by the stop linger in TIME_WAIT.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn spawn_listener(listener: TcpListener, state: Arc<State>) -> Listening {
    let (alive, connections_closed) = mpsc::channel(1);
    let accept_task = tokio::spawn(accept_loop(listener, state, alive));
    Listening {
        accept_task,
        connections_closed,
    }
}

async fn shut_down(running: Listening) {
    let Listening {
        accept_task,
        mut connections_closed,
    } = running;
    accept_task.abort();
    // The task ends with a cancellation error, which is what was asked for.
    let _ = accept_task.await;
    if tokio::time::timeout(STOP_DEADLINE, connections_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("simulated Modbus PLC: connections still open {STOP_DEADLINE:?} after stop");
    }
}

/// Accepts connections until aborted. tokio-modbus runs each connection as its own task and
/// cancels them all when `serve` ends, so aborting this task closes every connection.
async fn accept_loop(listener: TcpListener, state: Arc<State>, alive: mpsc::Sender<()>) {
    let server = Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let state = Arc::clone(&state);
        let alive = alive.clone();
        async move {
            state.connections.fetch_add(1, Ordering::SeqCst);
            tracing::debug!(%peer, "simulated Modbus PLC accepted a connection");
            let service = SimService {
                state: Arc::clone(&state),
            };
            io::Result::Ok(Some((
                service,
                Connection {
                    stream,
                    _alive: alive,
                },
            )))
        }
    };
    let on_process_error = |err: io::Error| {
        tracing::debug!(%err, "simulated Modbus PLC connection ended with an error");
    };
    loop {
        // `serve` only returns when accepting fails; it has then dropped its connections.
        if let Err(err) = server.serve(&on_connected, on_process_error).await {
            tracing::warn!(%err, "simulated Modbus PLC could not accept a connection; retrying");
        }
        tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
    }
}

/// Answers the requests of one connection.
#[derive(Debug)]
pub(crate) struct SimService {
    state: Arc<State>,
}

pub(crate) type Answer = Result<Option<Response>, ExceptionCode>;

impl Service for SimService {
    type Request = Request<'static>;
    // `None` sends nothing back: how silence is simulated without holding requests in memory.
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            if state.is_silent() {
                tracing::debug!(?request, "simulated Modbus PLC is silent; request dropped");
                return Ok(None);
            }
            let delay = state.delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                if state.is_silent() {
                    tracing::debug!(
                        ?request,
                        "simulated Modbus PLC fell silent; request dropped"
                    );
                    return Ok(None);
                }
            }
            let result = state.answer(&request);
            match &result {
                Ok(_) => {
                    tracing::debug!(function = %request.function_code(), "simulated Modbus PLC answered")
                }
                Err(code) => {
                    tracing::debug!(function = %request.function_code(), %code, "simulated Modbus PLC refused")
                }
            }
            result.map(Some)
        })
    }
}

/// A client's TCP stream, plus a token whose drop tells [`ModbusSim::stop`] the socket is closed.
/// Fields drop in order: the stream is closed before the token goes.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    _alive: mpsc::Sender<()>,
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_read_log_keeps_only_the_most_recent_reads() {
        let state = State::new();
        let total = READ_LOG_CAPACITY + 5;
        for i in 0..total {
            let start = u16::try_from(i % 60_000).expect("below 60000");
            let _ = state.answer(&Request::ReadHoldingRegisters(start, 1));
        }
        let log = lock(&state.read_log);
        assert_eq!(log.len(), READ_LOG_CAPACITY);
        assert_eq!(log.front(), Some(&(Area::HoldingRegister, 5, 1)));
        assert_eq!(
            log.back(),
            Some(&(
                Area::HoldingRegister,
                u16::try_from((total - 1) % 60_000).expect("small"),
                1
            ))
        );
        assert_eq!(
            state.requests.load(Ordering::SeqCst),
            u64::try_from(total).expect("small")
        );
    }

    #[test]
    fn writes_are_counted_but_not_logged_as_reads() {
        let state = State::new();
        let _ = state.answer(&Request::WriteSingleRegister(1, 2));
        let _ = state.answer(&Request::ReportServerId);
        assert!(lock(&state.read_log).is_empty());
        assert_eq!(state.requests.load(Ordering::SeqCst), 2);
        assert_eq!(state.bank().register(Area::HoldingRegister, 1), 2);
    }
}
