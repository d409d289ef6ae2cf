//! The listener: accepts every connection, gives it a short deadline for its request head,
//! and answers one GET per connection; the limits are in the module doc of `admin`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::admission::{Admission, ConnId, DropReason, Table};
use super::console::{gate, handle, Console};
use super::head::{HeadBuf, HeadState};
use super::http::{parse_head, write_response, Body, Request, Response, MAX_BODY, TEXT};
use super::metrics::ConnectionMetrics;
use super::{route, AdminState};

/// Connections open at once, waiting for their head or being answered. Far above what probes
/// and scrapers need, far below the descriptor limit (the unit sets `LimitNOFILE=65536`; a
/// shell's usual 1024 still leaves half for the rest of the agent).
pub const MAX_CONNECTIONS: usize = 512;
/// From accept to the end of the request head. A prober sends its request at once; a
/// connection silent (or trickling) for this long is dropped and costs nothing more.
pub const HEAD_LIMIT: Duration = Duration::from_secs(2);
/// To write the answer and close.
pub const WRITE_LIMIT: Duration = Duration::from_secs(3);
/// `/metrics` requests answered at once. Its body is the only large one, and gathering it
/// reads the store (disk); the probes `/live` and `/ready` take no slot, so they never wait
/// behind a scrape.
pub const METRICS_AT_ONCE: usize = 4;
/// How long a `/metrics` request waits for a slot before it is answered 503.
pub const METRICS_WAIT: Duration = Duration::from_secs(1);
/// How long gathering the metrics may take before the request is answered 503.
pub const GATHER_LIMIT: Duration = Duration::from_secs(2);
/// Event streams (open pages following the gateway) at once.
pub const MAX_STREAMS: usize = 16;
/// How often a stream sends the overview.
const STREAM_EVERY: Duration = Duration::from_secs(1);
/// For a request's body, beyond the head's deadline.
pub const BODY_LIMIT: Duration = Duration::from_secs(5);
/// After a failed accept (out of descriptors and the like), before the next one.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// The endpoint's own counters, shown by `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    accepted: AtomicU64,
    open: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl ConnectionCounters {
    fn set_open(&self, open: usize) {
        self.open.store(open as u64, Ordering::Relaxed);
    }

    fn dropped(&self, reason: DropReason) {
        if let Some(c) = self.dropped.get(reason.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn snapshot(&self) -> ConnectionMetrics {
        ConnectionMetrics {
            accepted: self.accepted.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            dropped: DropReason::ALL.map(|r| {
                (
                    r,
                    self.dropped
                        .get(r.index())
                        .map_or(0, |c| c.load(Ordering::Relaxed)),
                )
            }),
        }
    }
}

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` and serves until [`AdminServer::stop`].
    pub async fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<AdminServer> {
        let settings = state.console.as_ref().map(|c| c.settings.clone());
        let tls = match settings.as_ref().and_then(|s| s.tls.as_ref()) {
            Some(files) => Some(Tls(tls_acceptor(files)?)),
            None => None,
        };
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        match &settings {
            Some(s) if s.console => {
                info!(%addr, users = s.users.len(), edit = s.edit, "admin endpoint listening: the console at {scheme}://{addr}/, /live /ready /metrics")
            }
            _ => info!(%addr, "admin endpoint listening: /live /ready /metrics"),
        }
        if !addr.ip().is_loopback() && tls.is_none() {
            warn!(%addr, "the admin endpoint listens beyond this machine without TLS: passwords cross the network in clear; set tls_cert and tls_key");
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state, tls, stop_rx));
        Ok(AdminServer { addr, stop, task })
    }

    /// Stops accepting and closes every open connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// The certificate chain and key of `[admin] tls_cert`/`tls_key`, as a TLS acceptor.
fn tls_acceptor(files: &edge_config::ServerTls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        std::io::Error::other(format!("{what} {}: {e}", path.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| bad("cannot read the certificate", &files.cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad("cannot read the certificate", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(bad("no certificate in", &files.cert, &"(empty)"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| bad("cannot read the private key", &files.key, &e))?;
    crate::init_tls();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            bad(
                "the certificate and key do not go together:",
                &files.cert,
                &e,
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    state: Arc<AdminState>,
    /// Dropping a waiting connection's sender closes that connection.
    table: Mutex<Table<oneshot::Sender<()>>>,
    metrics_slots: Arc<Semaphore>,
    /// Open event streams.
    streams: Arc<Semaphore>,
    /// HTTPS, when `[admin]` names a certificate.
    tls: Option<Tls>,
}

/// The TLS acceptor (which has no `Debug` of its own).
#[derive(Clone)]
struct Tls(tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table<oneshot::Sender<()>>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dropped(&self, reason: DropReason) {
        self.state.connections.dropped(reason);
    }
}

/// One connection's place in the table, given back when the task ends however it ends
/// (answered, timed out, evicted, aborted at stop).
#[derive(Debug)]
struct Place {
    shared: Arc<Shared>,
    id: ConnId,
}

impl Place {
    fn head_received(&self) -> bool {
        self.shared.table().head_received(self.id)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut table = self.shared.table();
        table.closed(self.id);
        // Under the lock, so the gauge never goes back to an older count.
        self.shared.state.connections.set_open(table.open());
    }
}

/// Accepts without waiting for anything but the kernel: a connection never sits unseen in
/// the backlog while idle ones hold the places. Each gets a task bounded by its deadlines;
/// the table bounds how many there are, so the task set is bounded too.
async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    tls: Option<Tls>,
    mut stop: watch::Receiver<bool>,
) {
    let shared = Arc::new(Shared {
        state,
        table: Mutex::new(Table::new(MAX_CONNECTIONS)),
        metrics_slots: Arc::new(Semaphore::new(METRICS_AT_ONCE)),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
        tls,
    });
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => admit(&shared, &mut tasks, stream, peer),
                Err(e) => {
                    debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            },
        }
        // Reap the finished tasks, so the set holds only the open connections.
        while let Some(r) = tasks.try_join_next() {
            if let Err(e) = r {
                if e.is_panic() {
                    warn!(error = %e, "an admin connection task panicked");
                }
            }
        }
    }
    tasks.shutdown().await;
}

/// Opens `stream` in the table (making room by closing the oldest waiting connection at the
/// cap), or closes it at once when every place is being answered.
fn admit(shared: &Arc<Shared>, tasks: &mut JoinSet<()>, stream: TcpStream, peer: SocketAddr) {
    let counters = &shared.state.connections;
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let head_deadline = Instant::now() + HEAD_LIMIT;
    let (closer, closed) = oneshot::channel();
    let admission = {
        let mut table = shared.table();
        let a = table.admit(closer);
        counters.set_open(table.open());
        a
    };
    let id = match admission {
        Admission::Open(id) => id,
        Admission::Evict { id, evicted } => {
            drop(evicted);
            shared.dropped(DropReason::Evicted);
            debug!(%peer, "admin connections at the cap: the oldest idle one closed");
            id
        }
        Admission::Full => {
            shared.dropped(DropReason::Full);
            debug!(%peer, "admin connections at the cap, all being answered: closed");
            // Never waits: the answer goes out if the socket takes it now, else not at all.
            let _ = stream.try_write(FULL_ANSWER);
            return;
        }
    };
    let place = Place {
        shared: shared.clone(),
        id,
    };
    tasks.spawn(connection(place, stream, peer, head_deadline, closed));
}

const FULL_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nfull\n";

/// One connection: TLS when configured, its head by `head_deadline` (or until evicted), its
/// body, then its answer, written within [`WRITE_LIMIT`] (an event stream: each event).
async fn connection(
    place: Place,
    stream: TcpStream,
    peer: SocketAddr,
    head_deadline: Instant,
    evicted: oneshot::Receiver<()>,
) {
    let tls = place.shared.tls.clone();
    match tls {
        None => exchange(place, stream, peer, head_deadline, evicted, false).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout_at(head_deadline, acceptor.0.accept(stream));
            match handshake.await {
                Ok(Ok(s)) => exchange(place, s, peer, head_deadline, evicted, true).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "admin TLS handshake failed"),
                Err(_) => {
                    place.shared.dropped(DropReason::Idle);
                    debug!(%peer, "admin TLS handshake not done in time; closed");
                }
            }
        }
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    place: Place,
    mut stream: S,
    peer: SocketAddr,
    head_deadline: Instant,
    evicted: oneshot::Receiver<()>,
    tls: bool,
) {
    let shared = place.shared.clone();
    let read = tokio::time::timeout_at(head_deadline, read_head(&mut stream));
    let mut head = tokio::select! {
        // Counted by the connection that took the place.
        _ = evicted => return,
        r = read => match r {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "admin client gone before its request");
                return;
            }
            Err(_) => {
                shared.dropped(DropReason::Idle);
                debug!(%peer, limit = ?HEAD_LIMIT, "no complete admin request in time; closed");
                return;
            }
        },
    };
    if !place.head_received() {
        // Evicted in the instant the head arrived.
        return;
    }
    // `_slot`: a `/metrics` slot, held until the answer is written.
    let (answer, head_only, _slot) = match head.state() {
        HeadState::TooLarge => {
            shared.dropped(DropReason::BadRequest);
            (Response::text(431, "request too large\n"), false, None)
        }
        HeadState::Incomplete => return,
        HeadState::Complete => match parse_head(head.bytes()) {
            None => {
                shared.dropped(DropReason::BadRequest);
                (Response::text(400, "bad request\n"), false, None)
            }
            Some(mut req) => {
                let head_only = req.method == "HEAD";
                let rest = head.take_rest();
                match read_body(&mut stream, &mut req, rest, head_deadline + BODY_LIMIT).await {
                    Err(answer) => {
                        shared.dropped(DropReason::BadRequest);
                        (answer, false, None)
                    }
                    Ok(()) => match answer(&shared, &req).await {
                        Reply::Done(answer, slot) => (answer, head_only, slot),
                        Reply::Stream(console, permit) => {
                            events(
                                &mut stream,
                                &shared.state,
                                &console,
                                &req,
                                tls,
                                permit,
                                peer,
                            )
                            .await;
                            return;
                        }
                    },
                }
            }
        },
    };
    let write = write_response(&mut stream, &answer, head_only, tls);
    match tokio::time::timeout(WRITE_LIMIT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "admin client gone before its answer"),
        Err(_) => {
            shared.dropped(DropReason::WriteTimeout);
            debug!(%peer, limit = ?WRITE_LIMIT, "admin client did not take its answer in time; closed");
        }
    }
}

/// What a request gets: an answer (with the `/metrics` slot it holds), or the event stream.
enum Reply {
    Done(Response, Option<OwnedSemaphorePermit>),
    Stream(Arc<Console>, OwnedSemaphorePermit),
}

/// Reads the body `Content-Length` announces (at most [`MAX_BODY`]) by `deadline`.
async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    req: &mut Request,
    mut body: Vec<u8>,
    deadline: Instant,
) -> Result<(), Response> {
    let length = match req.content_length() {
        Err(v) => return Err(Response::text(400, format!("bad Content-Length `{v}`\n"))),
        Ok(None) => return Ok(()),
        Ok(Some(n)) => n,
    };
    if length > MAX_BODY {
        return Err(Response::error(
            413,
            format!("the body is over {MAX_BODY} bytes"),
        ));
    }
    let read = async {
        let mut buf = [0u8; 8192];
        while body.len() < length {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            body.extend_from_slice(buf.get(..n).unwrap_or_default());
        }
        Ok(())
    };
    match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(())) => {
            body.truncate(length);
            req.body = body;
            Ok(())
        }
        Ok(Err(_)) => Err(Response::text(400, "the body ended early\n")),
        Err(_) => Err(Response::text(408, "the body did not arrive in time\n")),
    }
}

/// Routes one request: the probes as before, the rest to the console behind its gate.
async fn answer(shared: &Shared, req: &Request) -> Reply {
    let console = shared.state.console.clone();
    let who = match &console {
        Some(c) => match gate(c, req) {
            Ok(who) => Some(who),
            Err(denied) => return Reply::Done(denied, None),
        },
        None => None,
    };
    let method = req.method.as_str();
    match (req.path.as_str(), console, who) {
        ("/metrics", _, _) => {
            let ((status, content_type, body), slot) = metrics(shared, method).await;
            Reply::Done(plain(status, content_type, body), slot)
        }
        ("/live" | "/ready", _, _) | (_, None, _) => {
            let (status, content_type, body) = route(&shared.state, method, &req.path);
            Reply::Done(plain(status, content_type, body), None)
        }
        ("/api/v1/events", Some(c), Some(_)) if method == "GET" => {
            match shared.streams.clone().try_acquire_owned() {
                Ok(permit) => Reply::Stream(c, permit),
                Err(_) => {
                    shared.dropped(DropReason::Busy);
                    Reply::Done(
                        Response::error(
                            503,
                            format!("at most {MAX_STREAMS} pages may follow the gateway at once"),
                        ),
                        None,
                    )
                }
            }
        }
        (_, Some(c), Some(who)) => Reply::Done(handle(&shared.state, &c, req, &who).await, None),
        (_, Some(_), None) => Reply::Done(Response::error(500, "no principal"), None),
    }
}

fn plain(status: u16, content_type: &'static str, body: String) -> Response {
    Response {
        status,
        content_type,
        body: Body::Owned(body.into_bytes()),
        headers: Vec::new(),
    }
}

/// The overview every [`STREAM_EVERY`] as server-sent events, until the client goes, its
/// session ends, or the endpoint stops.
async fn events<S: AsyncWrite + Unpin>(
    stream: &mut S,
    state: &Arc<AdminState>,
    console: &Console,
    req: &Request,
    tls: bool,
    _permit: OwnedSemaphorePermit,
    peer: SocketAddr,
) {
    let head = crate::admin::http::head(200, "text/event-stream", None, &[], tls);
    if !matches!(
        tokio::time::timeout(WRITE_LIMIT, stream.write_all(head.as_bytes())).await,
        Ok(Ok(()))
    ) {
        return;
    }
    let mut tick = tokio::time::interval(STREAM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        if console.auth.required() && console.auth.principal(req).is_err() {
            debug!(%peer, "event stream closed: its session ended");
            return;
        }
        let overview = crate::admin::console::overview(state, console);
        let event = format!("event: overview\ndata: {overview}\n\n");
        let write = async {
            stream.write_all(event.as_bytes()).await?;
            stream.flush().await
        };
        match tokio::time::timeout(WRITE_LIMIT, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                state.connections.dropped(DropReason::WriteTimeout);
                return;
            }
        }
    }
}

/// An answer: status, content type, body.
type Answer = (u16, &'static str, String);

/// `/metrics` in one of [`METRICS_AT_ONCE`] slots, or 503 when no slot frees up within
/// [`METRICS_WAIT`]. The numbers are gathered on the blocking pool (the store's read the
/// disk). The slot comes back with the answer and is held while it is written, so at most
/// that many large bodies exist at once; a gathering stuck on a hung disk keeps its slot,
/// so stuck threads never pile up beyond the slots.
async fn metrics(shared: &Shared, method: &str) -> (Answer, Option<OwnedSemaphorePermit>) {
    let slot = shared.metrics_slots.clone().acquire_owned();
    let Ok(Ok(slot)) = tokio::time::timeout(METRICS_WAIT, slot).await else {
        shared.dropped(DropReason::Busy);
        let busy = "busy: too many /metrics requests at once\n".to_owned();
        return ((503, TEXT, busy), None);
    };
    let state = shared.state.clone();
    let method = method.to_owned();
    let gather = tokio::task::spawn_blocking(move || (route(&state, &method, "/metrics"), slot));
    match tokio::time::timeout(GATHER_LIMIT, gather).await {
        Ok(Ok((answer, slot))) => (answer, Some(slot)),
        Ok(Err(e)) => {
            warn!(error = %e, "gathering the metrics failed");
            let body = "the metrics could not be gathered\n".to_owned();
            ((500, TEXT, body), None)
        }
        Err(_) => {
            shared.dropped(DropReason::Busy);
            warn!(limit = ?GATHER_LIMIT, "gathering the metrics takes too long (is the disk hung?)");
            let body = "busy: the metrics take too long to gather\n".to_owned();
            ((503, TEXT, body), None)
        }
    }
}

/// Reads until the head is complete or too large; `None` when the client closed first.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Option<HeadBuf>> {
    let mut head = HeadBuf::default();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if head.push(buf.get(..n).unwrap_or_default()) != HeadState::Incomplete {
            return Ok(Some(head));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::RwLock;

    use edge_store::{Store, StoreOptions};

    use super::*;
    use crate::admin::head::MAX_REQUEST;

    /// An endpoint on a free port of 127.0.0.1 over an empty store.
    async fn endpoint() -> (AdminServer, Arc<AdminState>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) =
            Store::open(&dir.path().join("store"), StoreOptions::default(), &[]).expect("store");
        let state = Arc::new(AdminState::new(
            store,
            Arc::new(RwLock::new(Vec::new())),
            Vec::new(),
            Arc::default(),
        ));
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = AdminServer::start(addr, state.clone())
            .await
            .expect("binds");
        (server, state, dir)
    }

    /// Sends `request` and reads until the endpoint closes (bounded).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let talk = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(request).await?;
            let mut out = Vec::new();
            s.read_to_end(&mut out).await?;
            std::io::Result::Ok(String::from_utf8_lossy(&out).into_owned())
        };
        tokio::time::timeout(Duration::from_secs(10), talk)
            .await
            .expect("answered in time")
            .expect("the exchange works")
    }

    fn dropped(state: &AdminState, reason: DropReason) -> u64 {
        let s = state.connections.snapshot();
        s.dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Waits (bounded) until no connection is open.
    async fn until_all_closed(state: &AdminState) -> u64 {
        for _ in 0..200 {
            if state.connections.snapshot().open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state.connections.snapshot().open
    }

    #[tokio::test]
    async fn live_is_answered_and_its_connection_counted_as_accepted_not_dropped() {
        let (server, state, _dir) = endpoint().await;
        let answer = exchange(server.addr, b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nlive\n"), "{answer}");
        assert_eq!(until_all_closed(&state).await, 0, "the place is given back");
        let s = state.connections.snapshot();
        assert_eq!(s.accepted, 1);
        assert!(s.dropped.iter().all(|(_, n)| *n == 0), "{s:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_are_answered_in_their_slot_and_show_the_endpoint_itself() {
        let (server, _state, _dir) = endpoint().await;
        let answer = exchange(server.addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.contains("edge_agent_admin_connections_accepted_total 1\n"),
            "{answer}"
        );
        assert!(
            answer.contains("edge_agent_admin_connections_open 1\n"),
            "{answer}"
        );
        let head = exchange(server.addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
        server.stop().await;
    }

    #[tokio::test]
    async fn an_oversized_head_is_answered_431_and_counted_as_a_bad_request() {
        let (server, state, _dir) = endpoint().await;
        let mut request = b"GET /live HTTP/1.1\r\nX: ".to_vec();
        request.resize(MAX_REQUEST + 100, b'a');
        let answer = exchange(server.addr, &request).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        assert_eq!(dropped(&state, DropReason::BadRequest), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_request_line_that_is_not_http_1_is_answered_400_and_counted_as_a_bad_request() {
        let (server, state, _dir) = endpoint().await;
        let answer = exchange(server.addr, b"GET /live HTTP/2\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert_eq!(dropped(&state, DropReason::BadRequest), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_client_that_closes_before_its_request_is_not_counted_as_dropped() {
        let (server, state, _dir) = endpoint().await;
        let s = TcpStream::connect(server.addr).await.expect("connects");
        drop(s);
        // A probe after it proves the first was seen and closed.
        exchange(server.addr, b"GET /live HTTP/1.1\r\n\r\n").await;
        assert_eq!(until_all_closed(&state).await, 0);
        let s = state.connections.snapshot();
        assert_eq!(s.accepted, 2);
        assert!(s.dropped.iter().all(|(_, n)| *n == 0), "{s:?}");
        server.stop().await;
    }

    #[tokio::test]
    async fn stopping_the_endpoint_closes_the_connections_still_waiting_for_their_head() {
        let (server, state, _dir) = endpoint().await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(TcpStream::connect(server.addr).await.expect("connects"));
        }
        for _ in 0..200 {
            if state.connections.snapshot().open == 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(state.connections.snapshot().open, 3);
        server.stop().await;
        for mut s in idle {
            let mut buf = [0u8; 16];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "closed: {read:?}");
        }
        assert_eq!(
            dropped(&state, DropReason::Idle),
            0,
            "closed by the stop, not by their deadline"
        );
        assert_eq!(state.connections.snapshot().open, 0);
    }

    #[test]
    fn the_counters_report_every_reason_once() {
        let c = ConnectionCounters::default();
        c.dropped(DropReason::Idle);
        c.dropped(DropReason::Idle);
        c.dropped(DropReason::Full);
        let s = c.snapshot();
        assert_eq!(s.dropped.len(), DropReason::ALL.len());
        for (reason, n) in s.dropped {
            let want = match reason {
                DropReason::Idle => 2,
                DropReason::Full => 1,
                _ => 0,
            };
            assert_eq!(n, want, "{}", reason.as_str());
        }
    }
}
