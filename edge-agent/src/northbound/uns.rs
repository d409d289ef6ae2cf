//! One publisher per UNS northbound. It puts together pieces that each do one job:
//!
//! - a [`StoreReader`] reads committed records in order from the northbound's cursor, with a
//!   read-ahead bounded in bytes;
//! - the [`RecordEncoder`] turns each record into its telemetry and, with machines, its MES
//!   events (`mes_bridge::rules`: they travel in the record's window, and each cursor move
//!   stores the bridge's checkpoint with it, so a restart from the cursor derives the same
//!   events again);
//! - the [`Window`] holds the records being delivered, bounded in messages and bytes, matches
//!   every PUBACK to its message and says when the cursor may move (only over an unbroken run
//!   of acknowledged records); after a lost connection it sends again, on a fresh MQTT client,
//!   everything not acknowledged, so the broker losing its session loses nothing (duplicates
//!   carry the same `seq`);
//! - the [`Link`] runs the MQTT connection's I/O in a task of its own, so nothing the
//!   publisher does can cancel a write half done;
//! - the [`CursorWriter`] writes cursor moves to the store from a task of its own;
//! - the [`CommandIntake`] subscribes to the command topics at every connect, hands incoming
//!   commands to the command task through a bounded queue without ever waiting, and publishes
//!   the answers on the same connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_config::{BrokerUrl, MqttVersion, Northbound};
use edge_driver::Backoff;
use edge_store::{RecordId, Store};
use mes_bridge::command::{
    command_filters, request_id_of, Answer, MAX_COMMAND_BYTES, RESPONSE_LEVEL,
};
use mes_bridge::gate::Arrival;
use mes_bridge::{Catalog, MesBridge, UnsEncoder};
use rumqttc::Transport;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::daemon::clock::ClockStatus;
use crate::northbound::acks::CursorWriter;
use crate::northbound::commands::{CommandRequest, Reply, ReplyTo};
pub use crate::northbound::encode::EncoderSlot;
use crate::northbound::encode::{Encoded, RecordEncoder};
use crate::northbound::link;
use crate::northbound::mqtt::{self, Client, Connect, Event, Events, Granted, Isa95, Received};
use crate::northbound::pace::{Cap, Pacer};
use crate::northbound::walk::BrokerWalk;
use crate::northbound::window::{Budget, Window};
pub use crate::northbound::TransportError as PublisherError;
use crate::northbound::{
    reconnect_wait, stopped, transport, CertificateReport, NorthboundError, SessionEnd, StoreReader,
};

/// Answers to commands waiting for room in the MQTT client; beyond it the oldest is dropped
/// (it is remembered by the command task: a retry with the same request id gets it again).
const PENDING_ANSWERS: usize = 256;
/// Incoming MQTT packets larger than this end an MQTT 3.1.1 connection (rumqttc's limit; MQTT
/// 3.1.1 cannot tell a broker to drop them; MQTT 5 tells the broker, which drops them).
/// Anything up to it is read and, when larger than a command may be (`MAX_COMMAND_BYTES`),
/// dropped with an answer, the session untouched: a stray message of a few megabytes on a
/// command topic does not disturb publishing.
const MAX_INCOMING_PACKET: usize = 8 << 20;

/// Live counters of one publisher, for status lines, health and metrics.
#[derive(Debug, Default)]
pub struct PublisherStats {
    pub connected: AtomicBool,
    /// Connected at least once since start (readiness).
    pub ever_connected: AtomicBool,
    pub connects: AtomicU64,
    /// Telemetry messages handed to the MQTT client.
    pub published: AtomicU64,
    /// Telemetry messages acknowledged by the broker.
    pub acked: AtomicU64,
    /// Messages sent again after a connection loss.
    pub resent: AtomicU64,
    /// Messages awaiting PUBACK now.
    pub inflight: AtomicU64,
    /// Payload bytes the window holds now (read, not yet acknowledged).
    pub window_bytes: AtomicU64,
    /// Records fully acknowledged (the cursor moved over them).
    pub records_acked: AtomicU64,
    /// MES event messages derived from records; they are sent with the records' telemetry
    /// and counted in `published`.
    pub mes_events: AtomicU64,
    /// Messages received on the command topics.
    pub commands: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// When the broker last acknowledged a message (epoch ms, 0: never).
    pub last_ack_ms: AtomicU64,
    /// The broker of the current (or last) connection, as its URL.
    pub broker: Mutex<String>,
}

impl PublisherStats {
    pub fn set_error(&self, e: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// The broker in use, as its URL (empty before the first attempt).
    pub fn broker(&self) -> String {
        self.broker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Tries the preferred broker every so often while a fallback broker is in use: a full MQTT
/// connection (TLS and credentials as the northbound's, a clean session under the client id
/// with `-probe` appended, so the real session is not disturbed), CONNECT to CONNACK, then
/// DISCONNECT. A port that merely accepts TCP (a broker starting, or hung) is not "back".
#[derive(Debug)]
struct PreferredProbe {
    back: tokio::sync::oneshot::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

/// How long one probe may take, CONNECT to CONNACK.
const PROBE_LIMIT: Duration = Duration::from_secs(3);

impl PreferredProbe {
    fn start(probe: ProbeSpec, every: Duration) -> PreferredProbe {
        let (tx, back) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if broker_answers(&probe).await {
                    let _ = tx.send(());
                    return;
                }
            }
        });
        PreferredProbe { back, task }
    }

    /// Resolves once the preferred broker accepted a connection; never without a probe.
    async fn back(probe: &mut Option<PreferredProbe>) {
        match probe {
            Some(p) => {
                if (&mut p.back).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }
}

impl Drop for PreferredProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a probe of the preferred broker connects with: the northbound's settings (protocol,
/// TLS, credentials) under the client id with `-probe` appended.
struct ProbeSpec {
    nb: Northbound,
    transport: Transport,
}

impl std::fmt::Debug for ProbeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeSpec")
            .field("url", &self.nb.url)
            .finish()
    }
}

/// Whether the preferred broker accepts an MQTT connection within [`PROBE_LIMIT`].
async fn broker_answers(probe: &ProbeSpec) -> bool {
    let mut nb = probe.nb.clone();
    nb.client_id = format!("{}-probe", nb.client_id);
    nb.keep_alive = Duration::from_secs(5);
    let (client, mut events) = mqtt::open(Connect {
        nb: &nb,
        broker: &probe.nb.url,
        transport: probe.transport.clone(),
        clean: true,
        ids: 4,
        max_incoming: 1 << 16,
        will: None,
    });
    let connack = async {
        loop {
            match events.next().await {
                Some(Ok(Event::Connected(_))) => return true,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return false,
            }
        }
    };
    let ok = tokio::time::timeout(PROBE_LIMIT, connack)
        .await
        .unwrap_or(false);
    if ok {
        client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), events.next()).await;
    }
    ok
}

/// What the gateway says about itself on the status topic.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    pub id: String,
    pub version: String,
    pub started_ms: u64,
    /// The ISA-95 levels of the gateway, carried by MQTT 5 data messages.
    pub isa95: Isa95,
}

/// The publisher of one northbound.
#[derive(Debug)]
pub struct Publisher {
    nb: Northbound,
    store: Store,
    encoder: RecordEncoder,
    gateway: GatewayInfo,
    stats: Arc<PublisherStats>,
    window: Window,
    reader: StoreReader,
    /// The window starts at the cursor (and the MES bridge at its checkpoint) at the first
    /// connection; later connections continue the same window.
    resumed: bool,
    /// The MES checkpoint as of the window's cursor, stored with each cursor move.
    acked_checkpoint: Option<Vec<u8>>,
    /// The store's end when this publisher started: what an earlier run left behind.
    start_next_id: RecordId,
    /// No connection attempt has failed yet: the broker has not been away since start.
    never_failed: bool,
    /// Where incoming commands go and where their answers come from, when commands are taken.
    intake: Option<CommandIntake>,
    /// The next connection starts a clean session: the broker kept sending a message this
    /// client cannot read, and only a new session makes it drop it.
    clean_next: bool,
    /// `url`, then the fallbacks of `urls`, and the one in use.
    walk: BrokerWalk,
    /// The replay's pace, and a backlog record read and encoded that waits for it.
    pacer: Pacer,
    held: Option<(RecordId, Encoded)>,
    paced_until: Option<std::time::Instant>,
    /// MQTT 5: the largest packet the broker of this connection takes.
    max_packet: Option<u32>,
}

impl Publisher {
    pub fn new(nb: Northbound, store: Store, encoder: UnsEncoder, gateway: GatewayInfo) -> Self {
        let protocol = nb.protocol;
        let start_next_id = store.next_id();
        let budget = Budget {
            messages: usize::from(nb.max_inflight),
            bytes: nb.max_inflight_bytes,
        };
        let pacer = Pacer::new(Cap {
            records_per_s: nb.replay_records_per_s,
            bytes_per_s: nb.replay_bytes_per_s,
        });
        Publisher {
            walk: BrokerWalk::new(&nb),
            pacer,
            held: None,
            paced_until: None,
            max_packet: None,
            start_next_id,
            never_failed: true,
            window: Window::new(0, budget),
            reader: StoreReader::new(0, nb.max_inflight_bytes),
            resumed: false,
            acked_checkpoint: None,
            nb,
            store,
            encoder: RecordEncoder::new(match protocol {
                MqttVersion::V5 => encoder.with_keys(),
                MqttVersion::V311 => encoder,
            }),
            gateway,
            stats: Arc::new(PublisherStats::default()),
            intake: None,
            clean_next: false,
        }
    }

    /// Takes a replacement encoder from `updates` whenever a reload puts one there.
    pub fn with_encoder_updates(mut self, updates: EncoderSlot) -> Self {
        self.encoder.set_updates(updates);
        self
    }

    /// Derives MES events from the published records with `bridge`.
    pub fn with_mes(mut self, bridge: MesBridge) -> Self {
        self.encoder.set_mes(bridge);
        self
    }

    /// Subscribes to the command topics and hands incoming commands to `commands`, judging
    /// their age by `clock`.
    pub fn with_commands(
        mut self,
        commands: mpsc::Sender<CommandRequest>,
        clock: ClockStatus,
    ) -> Self {
        self.intake = Some(CommandIntake::new(
            &self.nb,
            commands,
            clock,
            self.stats.clone(),
        ));
        self
    }

    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` turns true; then waits up to `drain` for in-flight PUBACKs,
    /// publishes the offline status, disconnects and writes the last cursor move.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let acks = CursorWriter::start(self.store.clone(), self.nb.name.clone());
        self.sessions(&mut shutdown, drain, &acks).await;
        acks.finish().await;
    }

    async fn sessions(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
        acks: &CursorWriter,
    ) {
        let transports: Result<Vec<Transport>, _> = self
            .walk
            .all()
            .iter()
            .map(|b| transport(b, self.nb.tls.as_ref()))
            .collect();
        let transports = match transports {
            Ok(t) => t,
            Err(e) => {
                error!(northbound = %self.nb.name, error = %e, "cannot set up TLS; this northbound stays offline");
                self.stats.set_error(e.to_string());
                stopped(shutdown).await;
                return;
            }
        };
        let mut backoff = Backoff::new(self.nb.reconnect_min, self.nb.reconnect_max);
        // One warning per outage; the retries after it are logged at debug level.
        let mut outage_reported = false;
        let mut certificates = CertificateReport::default();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let connects = self.stats.connects.load(Ordering::Relaxed);
            let transport = transports
                .get(self.walk.index())
                .cloned()
                .unwrap_or(Transport::Tcp);
            *self.stats.broker.lock().unwrap_or_else(|p| p.into_inner()) =
                self.broker().to_string();
            let outcome = self.session(transport, shutdown, drain, acks).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            self.stats.inflight.store(0, Ordering::Relaxed);
            let reason = match outcome {
                SessionEnd::Shutdown => return,
                SessionEnd::BackToPreferred => {
                    info!(northbound = %self.nb.name, from = %self.broker(), to = %self.nb.url,
                        "the preferred broker is back: moving to it (unacknowledged messages go again, in order)");
                    self.walk.to_preferred();
                    continue;
                }
                SessionEnd::Lost(reason) => reason,
            };
            self.never_failed = false;
            let lost = self.broker().clone();
            let came_up = self.stats.connects.load(Ordering::Relaxed) > connects;
            let wait = if self.walk.lost(came_up) {
                reconnect_wait(&mut backoff, started.elapsed())
            } else {
                self.nb.reconnect_min
            };
            if let NorthboundError::Certificate(problem) = &reason {
                certificates.report(&self.nb.name, &lost, self.nb.tls.as_ref(), problem, wait);
                // A broker that was reachable: the next plain failure is a new outage.
                outage_reported = false;
            } else {
                if self.stats.connects.load(Ordering::Relaxed) > connects {
                    outage_reported = false;
                    certificates.clear();
                }
                if self.walk.several() {
                    warn!(northbound = %self.nb.name, url = %lost, reason = %reason, next = %self.broker(), retry_in = ?wait,
                        "broker lost or refused; trying the next broker of the list (samples stay in the store)");
                } else if outage_reported {
                    debug!(northbound = %self.nb.name, reason = %reason, retry_in = ?wait, "broker still unreachable");
                } else {
                    warn!(northbound = %self.nb.name, url = %lost, reason = %reason, retry_in = ?wait,
                        "broker unreachable; samples stay in the store until it is back");
                    outage_reported = true;
                }
            }
            self.stats.set_error(format!("{lost}: {reason}"));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(shutdown) => return,
            }
        }
    }

    /// What a probe of the preferred broker connects with (see [`PreferredProbe`]).
    fn probe_spec(&self) -> ProbeSpec {
        ProbeSpec {
            nb: self.nb.clone(),
            transport: transport(&self.nb.url, self.nb.tls.as_ref()).unwrap_or(Transport::Tcp),
        }
    }

    /// The broker in use.
    fn broker(&self) -> &BrokerUrl {
        self.walk.current()
    }

    /// Opens a connection to the broker in use.
    fn open(&self, transport: Transport) -> (Client, Events) {
        // A persistent session keeps our subscriptions across reconnects; our own outgoing
        // messages are resent from the window, not from the session.
        // Untimed commands are only safe on a session the broker does not keep: nothing can be
        // queued for the gateway while it is away.
        let clean = self.clean_next || self.nb.commands.allow_untimed;
        mqtt::open(Connect {
            nb: &self.nb,
            broker: self.broker(),
            transport,
            clean,
            // The window bounds what awaits a PUBACK; the client gets packet ids to spare.
            ids: link::packet_ids(self.nb.max_inflight, PENDING_ANSWERS + 2),
            max_incoming: MAX_INCOMING_PACKET,
            will: Some(self.encoder.uns().status_offline(&self.gateway.id)),
        })
    }

    /// One MQTT connection, from CONNECT to its loss or to shutdown.
    async fn session(
        &mut self,
        transport: Transport,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
        acks: &CursorWriter,
    ) -> SessionEnd {
        let (client, mut link) = self.open(transport);
        self.clean_next = false;
        if !self.resumed {
            let (cursor, checkpoint) = self.resume();
            let budget = Budget {
                messages: usize::from(self.nb.max_inflight),
                bytes: self.nb.max_inflight_bytes,
            };
            self.window = Window::new(cursor, budget);
            self.reader = StoreReader::new(cursor, self.nb.max_inflight_bytes);
            self.acked_checkpoint = checkpoint;
            self.resumed = true;
        }
        // Taken out for the connection, so that waiting on it borrows nothing of `self`.
        let mut answers = self.intake.as_mut().and_then(|i| i.answers_rx.take());
        let end = self
            .connection(&client, &mut link, &mut answers, shutdown, drain, acks)
            .await;
        if let Some(intake) = self.intake.as_mut() {
            intake.answers_rx = answers;
        }
        // Whatever this connection did not get acknowledged goes again on the next one.
        self.window.rewind();
        end
    }

    /// Where publishing resumes: the northbound's cursor, with the MES bridge restored to its
    /// checkpoint at that cursor (and that checkpoint, to be stored again with the next
    /// cursor move).
    fn resume(&mut self) -> (RecordId, Option<Vec<u8>>) {
        let name = self.nb.name.clone();
        let Some(bridge) = self.encoder.mes_mut() else {
            return (self.store.cursor(&name), None);
        };
        let (cursor, checkpoint) = match self.store.resume_point(&name) {
            Ok(point) => point,
            Err(e) => {
                error!(northbound = %name, error = %e,
                    "cannot read the MES checkpoint; counters start from their next readings");
                bridge.reset();
                return (self.store.cursor(&name), Some(bridge.checkpoint()));
            }
        };
        match checkpoint {
            None => bridge.reset(),
            Some(cp) => {
                if cp.at != cursor {
                    warn!(northbound = %name, checkpoint_at = cp.at, cursor,
                        "records after the MES checkpoint were evicted or purged before they were published: their events are lost, counters catch up at their next readings");
                }
                if let Err(e) = bridge.restore(&cp.bytes) {
                    error!(northbound = %name, error = %e,
                        "cannot use the MES checkpoint; counters start from their next readings");
                    bridge.reset();
                }
            }
        }
        (cursor, Some(bridge.checkpoint()))
    }

    async fn connection(
        &mut self,
        client: &Client,
        link: &mut Events,
        answers: &mut Option<mpsc::Receiver<Reply>>,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
        acks: &CursorWriter,
    ) -> SessionEnd {
        let mut head = self.store.watch();
        let mut connected = false;
        // Records below this are a backlog (set when the connection comes up).
        let mut replay_below = 0;
        // On a fallback broker: told when the preferred one accepts connections again.
        let mut preferred_back = match (self.walk.index(), self.nb.return_to_preferred) {
            (0, _) | (_, None) => None,
            (_, Some(every)) => Some(PreferredProbe::start(self.probe_spec(), every)),
        };

        loop {
            if connected {
                if let Err(reason) = self.fill(client, replay_below, acks) {
                    return SessionEnd::Lost(reason);
                }
                if let Some(intake) = self.intake.as_mut() {
                    intake.flush_answers(client, &mut self.window);
                }
            }
            let wants_records = connected && self.window.wants_record();
            let paced = self.paced_until.filter(|_| connected);
            tokio::select! {
                biased;
                _ = stopped(shutdown) => {
                    self.drain(client, link, connected, drain, replay_below, acks).await;
                    return SessionEnd::Shutdown;
                }
                // Before the connection's events, which never run dry under load: an answer
                // waits for nothing but the client.
                answer = next_answer(answers) => {
                    if let (Some(answer), Some(intake)) = (answer, self.intake.as_mut()) {
                        intake.queue_answer(answer);
                    }
                }
                event = link.next() => match event {
                    None => return SessionEnd::Lost(NorthboundError::LinkClosed),
                    Some(Ok(Event::Connected(granted))) => {
                        connected = true;
                        replay_below = self.connected(client, &granted);
                    }
                    Some(Ok(event)) => {
                        if let Err(reason) = self.on_event(event, acks) {
                            client.try_disconnect();
                            return SessionEnd::Lost(reason);
                        }
                    }
                    Some(Err(e)) => return SessionEnd::Lost(self.connection_lost(e)),
                },
                changed = head.changed(), if wants_records => {
                    if changed.is_err() {
                        // The store is gone: the agent is stopping.
                        return SessionEnd::Shutdown;
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(paced.unwrap_or_else(std::time::Instant::now))), if paced.is_some() => {
                    self.paced_until = None;
                }
                _ = PreferredProbe::back(&mut preferred_back), if connected => {
                    // A clean DISCONNECT: no last will (an offline status) on the way out.
                    client.try_disconnect();
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Some(Ok(_)) = link.next().await {}
                    })
                    .await;
                    return SessionEnd::BackToPreferred;
                }
            }
        }
    }

    /// The broker accepted the connection: the online status, the command subscriptions.
    /// Returns the id below which records are the backlog.
    fn connected(&mut self, client: &Client, granted: &Granted) -> RecordId {
        let session_present = granted.session_present;
        self.granted(granted);
        if let Some(intake) = self.intake.as_mut() {
            intake.connected_ms = edge_model::now_ms();
        }
        // A backlog is what was stored while the broker was away. On a start that connects at
        // the first try, that is only what the previous run left; the readings of the last few
        // milliseconds are live.
        let replay_below = if self.never_failed && self.stats.connects.load(Ordering::Relaxed) == 0
        {
            self.start_next_id
        } else {
            self.store.next_id()
        };
        self.stats.connected.store(true, Ordering::Relaxed);
        self.stats.ever_connected.store(true, Ordering::Relaxed);
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let backlog = replay_below.saturating_sub(self.window.cursor());
        info!(northbound = %self.nb.name, url = %self.broker(), session_present,
            backlog_records = backlog, "connected to broker");
        let online = self.encoder.uns().status_online(
            &self.gateway.id,
            &self.gateway.version,
            self.gateway.started_ms,
        );
        if client.try_publish(&online, None) {
            self.window.handed_other();
        }
        if let Some(intake) = &self.intake {
            intake.subscribe(client);
        }
        replay_below
    }

    /// What the broker granted at CONNACK: MQTT 5 limits bound the window and the messages,
    /// and are logged in words.
    fn granted(&mut self, g: &Granted) {
        self.window.limit_inflight(g.receive_max.map(usize::from));
        self.max_packet = g.max_packet;
        if self.nb.protocol == MqttVersion::V5 {
            let words = |v: Option<String>| v.unwrap_or_else(|| "not limited".to_owned());
            info!(northbound = %self.nb.name, url = %self.broker(),
                receive_maximum = %words(g.receive_max.map(|r| format!("{r} messages"))),
                maximum_packet_size = %words(g.max_packet.map(|m| format!("{m} bytes"))),
                session_expiry = %g.session_expiry_s.map_or_else(
                    || format!("{} s as asked", self.nb.session_expiry.as_secs()),
                    |s| format!("{s} s, set by the broker")),
                keep_alive = %g.keep_alive_s.map_or_else(
                    || format!("{} s as asked", self.nb.keep_alive.as_secs()),
                    |s| format!("{s} s, set by the broker")),
                "MQTT 5 limits of the broker");
            if g.receive_max
                .is_some_and(|r| usize::from(r) < usize::from(self.nb.max_inflight))
            {
                info!(northbound = %self.nb.name, max_inflight = self.nb.max_inflight, receive_maximum = g.receive_max,
                    "the broker takes fewer messages awaiting PUBACK than max_inflight: the window keeps to the broker's receive maximum");
            }
        }
    }

    /// Every event but the CONNACK; an error ends the connection.
    fn on_event(&mut self, event: Event, acks: &CursorWriter) -> Result<(), NorthboundError> {
        match event {
            Event::Received(p) => {
                if let Some(intake) = self.intake.as_mut() {
                    intake.route(p);
                }
            }
            Event::Sent(pkid) => self.window.on_outgoing(pkid),
            Event::Acked { pkid, refused } => {
                if let Some(why) = refused {
                    // Not acknowledged: the message stays in the window and goes again on the
                    // next connection; the store keeps it until the broker takes it.
                    let topic = self.window.topic_of(pkid).unwrap_or_default();
                    error!(northbound = %self.nb.name, url = %self.broker(), topic = %topic, reason = %why,
                        "the broker did not take a message; it is sent again after reconnecting, nothing is dropped");
                    return Err(NorthboundError::MessageRefused { topic, why });
                }
                if self.window.on_puback(pkid) {
                    self.stats.acked.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .last_ack_ms
                        .store(edge_model::now_ms(), Ordering::Relaxed);
                    self.release(acks);
                }
            }
            Event::Subscribed { refused } => {
                for why in refused {
                    warn!(northbound = %self.nb.name, url = %self.broker(), reason = %why,
                        "the broker refused a command subscription; commands on it are not received");
                }
            }
            other => debug!(northbound = %self.nb.name, event = ?other, "mqtt event"),
        }
        Ok(())
    }

    /// Why the connection ended, and what to do about a message too large to read.
    fn connection_lost(&mut self, e: mqtt::LinkError) -> NorthboundError {
        if e.too_large() && self.intake.is_some() {
            // With a persistent session the broker would send it again at every reconnect.
            warn!(northbound = %self.nb.name, limit_bytes = MAX_INCOMING_PACKET,
                "the broker sent a message larger than the agent reads (a command over the size limit?); reconnecting with a clean session so that the broker drops it");
            self.clean_next = true;
        }
        e.into_error(self.nb.tls.as_ref())
    }

    /// Hands messages to the client while the window allows, reading and encoding further
    /// records from the store when it wants more.
    fn fill(
        &mut self,
        client: &Client,
        replay_below: RecordId,
        acks: &CursorWriter,
    ) -> Result<(), NorthboundError> {
        loop {
            while let Some(m) = self.window.next() {
                let properties = match self.nb.protocol {
                    MqttVersion::V5 => mqtt::user_properties(&m.keys, &self.gateway.isa95),
                    MqttVersion::V311 => Vec::new(),
                };
                if let Some(max) = self.max_packet {
                    let bytes = mqtt::publish_size(&m.topic, m.payload.len(), &properties);
                    if bytes > max as usize {
                        return Err(NorthboundError::TooLargeForBroker {
                            topic: m.topic,
                            bytes,
                            max,
                        });
                    }
                }
                // The request queue has room for every packet id; a full one only means the
                // I/O task is behind, and the message goes at the next event.
                match client.publish_now(&m, properties) {
                    None => break,
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(())) => {}
                }
                self.window.handed();
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                if m.resend {
                    self.stats.resent.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !self.window.wants_record() {
                break;
            }
            let (id, encoded) = match self.held.take() {
                Some(held) => held,
                None => {
                    let Some((id, batch)) = self.reader.next(&self.store, &self.nb.name)? else {
                        break;
                    };
                    let encoded = self.encoder.encode(&batch, id < replay_below);
                    drop(batch);
                    self.stats
                        .mes_events
                        .fetch_add(encoded.mes_events as u64, Ordering::Relaxed);
                    (id, encoded)
                }
            };
            if id < replay_below && self.pacer.is_capped() {
                let bytes = encoded.messages.iter().map(|m| m.payload.len()).sum();
                if let Err(at) = self.pacer.admit(std::time::Instant::now(), bytes) {
                    // Held, encoded, until the pace allows it: nothing after it goes first.
                    self.held = Some((id, encoded));
                    self.paced_until = Some(at);
                    break;
                }
            }
            self.window.push(id, encoded.messages, encoded.checkpoint);
            // A record with nothing to say counts as delivered once those before it are.
            self.release(acks);
        }
        self.stats
            .inflight
            .store(self.window.inflight() as u64, Ordering::Relaxed);
        self.stats
            .window_bytes
            .store(self.window.held_bytes() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Moves the cursor over the records the window released, with the MES checkpoint as of
    /// the new cursor.
    fn release(&mut self, acks: &CursorWriter) {
        let Some(r) = self.window.release() else {
            return;
        };
        self.stats
            .records_acked
            .fetch_add(r.records, Ordering::Relaxed);
        if r.checkpoint.is_some() {
            self.acked_checkpoint = r.checkpoint;
        }
        let checkpoint = if self.encoder.has_mes() {
            self.acked_checkpoint.clone()
        } else {
            None
        };
        acks.record(r.cursor, checkpoint);
    }

    /// Clean stop: let in-flight messages be acknowledged (bounded), publish the offline
    /// status, disconnect.
    async fn drain(
        &mut self,
        client: &Client,
        link: &mut Events,
        connected: bool,
        limit: Duration,
        replay_below: RecordId,
        acks: &CursorWriter,
    ) {
        if !connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let offline = self.encoder.uns().status_offline(&self.gateway.id);
        let mut status_sent = false;
        loop {
            // Keep publishing what the store holds (the pollers have stopped and the writer
            // has committed their last batches) while the deadline allows.
            if !status_sent && self.fill(client, replay_below, acks).is_err() {
                return;
            }
            let caught_up =
                self.window.is_empty() && self.reader.position() >= self.store.next_id();
            if self.window.inflight() == 0 && caught_up && !status_sent {
                if client.try_publish(&offline, None) {
                    self.window.handed_other();
                }
                client.try_disconnect();
                status_sent = true;
            }
            match tokio::time::timeout_at(deadline, link.next()).await {
                Err(_) => {
                    warn!(northbound = %self.nb.name, inflight = self.window.inflight(),
                        "stop deadline reached with records not yet acknowledged; they are sent at the next start");
                    return;
                }
                Ok(None | Some(Err(_))) => return,
                Ok(Some(Ok(Event::Disconnected))) => return,
                Ok(Some(Ok(event @ (Event::Sent(_) | Event::Acked { .. })))) => {
                    if self.on_event(event, acks).is_err() {
                        return;
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// The command side of a northbound's connection.
#[derive(Debug)]
struct CommandIntake {
    northbound: String,
    policy: mes_bridge::gate::CommandPolicy,
    root: String,
    commands: mpsc::Sender<CommandRequest>,
    /// Whether the gateway's clock can judge a command's age.
    clock: ClockStatus,
    /// When the current connection was acknowledged (the gateway's clock): commands sent
    /// before it waited in the broker's session.
    connected_ms: u64,
    /// Answers from the command task for this northbound.
    answers_tx: mpsc::Sender<Reply>,
    /// `None` while a connection has it.
    answers_rx: Option<mpsc::Receiver<Reply>>,
    /// Answers not yet accepted by the MQTT client.
    pending: VecDeque<Reply>,
    stats: Arc<PublisherStats>,
}

impl CommandIntake {
    fn new(
        nb: &Northbound,
        commands: mpsc::Sender<CommandRequest>,
        clock: ClockStatus,
        stats: Arc<PublisherStats>,
    ) -> CommandIntake {
        let (answers_tx, answers_rx) = mpsc::channel(PENDING_ANSWERS);
        CommandIntake {
            northbound: nb.name.clone(),
            policy: nb.commands,
            root: nb.topic_root.clone(),
            commands,
            clock,
            connected_ms: 0,
            answers_tx,
            answers_rx: Some(answers_rx),
            pending: VecDeque::new(),
            stats,
        }
    }

    /// Subscribes to the command topics (again at every connect: the broker may have lost
    /// the session).
    fn subscribe(&self, client: &Client) {
        if let Err(e) = client.subscribe(command_filters(&self.root)) {
            warn!(northbound = %self.northbound, error = %e,
                "cannot subscribe to the command topics; commands are not taken until the next connect");
        }
    }

    /// Hands a message from a command topic to the command task, never waiting: a full
    /// queue is answered `failed` at once.
    fn route(&mut self, p: Received) {
        if p.topic.ends_with(RESPONSE_LEVEL) {
            return;
        }
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let len = p.payload.len();
        let keep = len.min(MAX_COMMAND_BYTES + 1);
        let received_ms = edge_model::now_ms();
        let reply_to = ReplyTo::of(&p, &self.northbound);
        let request = CommandRequest {
            northbound: self.northbound.clone(),
            policy: self.policy,
            arrival: Arrival {
                retained: p.retain,
                received_ms,
                connected_ms: self.connected_ms,
                clock_synchronised: self.clock.is_synchronised(),
                expires_ms: p
                    .expiry_s
                    .map(|s| received_ms.saturating_add(u64::from(s) * 1000)),
            },
            root: self.root.clone(),
            topic: p.topic,
            payload: p.payload.get(..keep).unwrap_or_default().to_vec(),
            len,
            reply: self.answers_tx.clone(),
            reply_to,
        };
        match self.commands.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request)) => {
                let id = request_id_of(&request.payload);
                let answer = match &id {
                    Some(id) => Answer::failed(
                        id,
                        "the gateway is busy with other commands; nothing was written, try again",
                    ),
                    None => Answer::rejected(
                        None,
                        "the gateway is busy with other commands; nothing was written",
                    ),
                };
                warn!(northbound = %self.northbound, topic = %request.topic, "command queue full; command refused");
                self.queue_answer(Reply::to(&request, answer.message(&request.topic)));
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn queue_answer(&mut self, answer: Reply) {
        if self.pending.len() >= PENDING_ANSWERS {
            if let Some(dropped) = self.pending.pop_front() {
                warn!(northbound = %self.northbound, topic = %dropped.message.topic,
                    "too many command answers waiting for the broker; dropped the oldest");
            }
        }
        self.pending.push_back(answer);
    }

    /// Publishes waiting answers (QoS 1) while the MQTT client takes them.
    fn flush_answers(&mut self, client: &Client, window: &mut Window) {
        while let Some(answer) = self.pending.front() {
            if !client.try_publish(&answer.message, answer.correlation.clone()) {
                break;
            }
            window.handed_other();
            self.pending.pop_front();
        }
    }
}

/// The next answer from the command task; never resolves without one.
async fn next_answer(answers: &mut Option<mpsc::Receiver<Reply>>) -> Option<Reply> {
    match answers {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The units of every tag of a config, published with its values.
pub fn catalog(cfg: &edge_config::Config) -> Catalog {
    let mut c = Catalog::new();
    for d in &cfg.devices {
        for t in &d.tags {
            if let Some(u) = &t.unit {
                c.set_unit(&d.name, &t.name, u);
            }
        }
    }
    c
}
