//! One publisher per northbound: reads committed records from the store in order, publishes
//! them at QoS 1, matches every PUBACK to its record, and moves the northbound's cursor only
//! over an unbroken run of acknowledged records. A connection loss throws away the MQTT
//! client's state and resends everything after the cursor from the store, so the broker losing
//! its session (or the agent being killed) loses nothing; duplicates carry the same `seq`.
//!
//! With machines configured, the MES bridge derives events from each record as it is
//! published; they travel in the record's window, and each cursor move stores the bridge's
//! checkpoint with it, so a restart from the cursor derives the same events again (see
//! `mes_bridge::rules`). The publisher also owns the command side of the connection: it
//! subscribes to the command topics at every connect, hands incoming commands to the command
//! task through a bounded queue without ever blocking the event loop, and publishes the
//! answers on the same connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_config::Northbound;
use edge_driver::Backoff;
use edge_store::{RecordId, Store};
use mes_bridge::command::{
    command_filters, request_id_of, Answer, MAX_COMMAND_BYTES, RESPONSE_LEVEL,
};
use mes_bridge::{Catalog, MesBridge, Message, UnsEncoder};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, LastWill,
    MqttOptions, Outgoing, QoS, StateError, SubscribeFilter, Transport,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::daemon::clock::ClockStatus;
use crate::northbound::commands::CommandRequest;
pub use crate::northbound::TransportError as PublisherError;
use crate::northbound::{
    certificate_problem, reconnect_wait, stopped, transport, CertificateReport, StoreReader,
};
use mes_bridge::gate::Arrival;

/// Answers to commands waiting for room in the MQTT client; beyond it the oldest is dropped
/// (it is remembered by the command task: a retry with the same request id gets it again).
const PENDING_ANSWERS: usize = 256;
/// Incoming MQTT packets larger than this end the connection (rumqttc's limit; MQTT 3.1.1
/// cannot tell a broker to drop them). Anything up to it is read and, when larger than a
/// command may be (`MAX_COMMAND_BYTES`), dropped with an answer, the session untouched: a
/// stray message of a few megabytes on a command topic does not disturb publishing.
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
    /// Records fully acknowledged (the cursor moved over them).
    pub records_acked: AtomicU64,
    /// MES event messages derived from records (again for records resent after a
    /// reconnect); they are sent with the records' telemetry and counted in `published`.
    pub mes_events: AtomicU64,
    /// Messages received on the command topics.
    pub commands: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// What the gateway says about itself on the status topic.
#[derive(Debug, Clone)]
pub struct GatewayInfo {
    pub id: String,
    pub version: String,
    pub started_ms: u64,
}

/// A record on the wire: how many of its messages still await a PUBACK.
#[derive(Debug)]
struct InflightRecord {
    id: RecordId,
    /// Messages not yet handed to the client, in order.
    unsent: VecDeque<Message>,
    unacked: usize,
    /// The MES bridge's checkpoint after this record, when the record concerned a machine.
    checkpoint: Option<Vec<u8>>,
}

/// What an `Outgoing::Publish` event stands for, in the order publishes were requested.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Record(RecordId),
    /// The gateway status, or the answer to a command: acknowledged, never resent.
    Other,
}

/// Where a config reload leaves a publisher's next encoder; the publisher takes it before
/// encoding its next record, so records are never encoded half with the old units.
pub type EncoderSlot = Arc<Mutex<Option<UnsEncoder>>>;

/// The publisher of one northbound.
#[derive(Debug)]
pub struct Publisher {
    nb: Northbound,
    store: Store,
    encoder: UnsEncoder,
    gateway: GatewayInfo,
    stats: Arc<PublisherStats>,
    /// Records below this were handed to an earlier connection: sending them again is a resend.
    sent_below: RecordId,
    /// The store's end when this publisher started: what an earlier run left behind.
    start_next_id: RecordId,
    /// No connection attempt has failed yet: the broker has not been away since start.
    never_failed: bool,
    /// The MES rules, when machines are configured.
    mes: Option<MesBridge>,
    /// Where incoming commands go, when commands are taken.
    commands: Option<mpsc::Sender<CommandRequest>>,
    /// Whether the gateway's clock can judge a command's age.
    clock: ClockStatus,
    /// When the current connection was acknowledged (the gateway's clock): commands sent
    /// before it waited in the broker's session.
    connected_ms: u64,
    /// Answers from the command task for this northbound.
    answers_tx: Option<mpsc::Sender<Message>>,
    answers_rx: Option<mpsc::Receiver<Message>>,
    /// Answers not yet accepted by the MQTT client.
    pending_answers: VecDeque<Message>,
    /// The next connection starts a clean session: the broker kept sending a message this
    /// client cannot read, and only a new session makes it drop it.
    clean_next: bool,
    /// A new encoder from a config reload (devices or units changed), taken before the next
    /// record is encoded.
    encoder_updates: Option<EncoderSlot>,
}

impl Publisher {
    pub fn new(nb: Northbound, store: Store, encoder: UnsEncoder, gateway: GatewayInfo) -> Self {
        let start_next_id = store.next_id();
        Publisher {
            start_next_id,
            never_failed: true,
            nb,
            store,
            encoder,
            gateway,
            stats: Arc::new(PublisherStats::default()),
            sent_below: 0,
            mes: None,
            commands: None,
            clock: ClockStatus::fixed(true),
            connected_ms: 0,
            answers_tx: None,
            answers_rx: None,
            pending_answers: VecDeque::new(),
            clean_next: false,
            encoder_updates: None,
        }
    }

    /// Takes a replacement encoder from `updates` whenever a reload puts one there.
    pub fn with_encoder_updates(mut self, updates: EncoderSlot) -> Self {
        self.encoder_updates = Some(updates);
        self
    }

    /// Derives MES events from the published records with `bridge`.
    pub fn with_mes(mut self, bridge: MesBridge) -> Self {
        self.mes = Some(bridge);
        self
    }

    /// Subscribes to the command topics and hands incoming commands to `commands`, judging
    /// their age by `clock`.
    pub fn with_commands(
        mut self,
        commands: mpsc::Sender<CommandRequest>,
        clock: ClockStatus,
    ) -> Self {
        let (tx, rx) = mpsc::channel(PENDING_ANSWERS);
        self.commands = Some(commands);
        self.clock = clock;
        self.answers_tx = Some(tx);
        self.answers_rx = Some(rx);
        self
    }

    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` turns true; then waits up to `drain` for in-flight PUBACKs,
    /// publishes the offline status and disconnects.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        let transport = match transport(&self.nb.url, self.nb.tls.as_ref()) {
            Ok(t) => t,
            Err(e) => {
                error!(northbound = %self.nb.name, error = %e, "cannot set up TLS; this northbound stays offline");
                *self
                    .stats
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                stopped(&mut shutdown).await;
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
            let outcome = self.session(transport.clone(), &mut shutdown, drain).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            self.stats.inflight.store(0, Ordering::Relaxed);
            match outcome {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost(reason) => {
                    self.never_failed = false;
                    let wait = reconnect_wait(&mut backoff, started.elapsed());
                    if self.stats.connects.load(Ordering::Relaxed) > connects {
                        outage_reported = false;
                        certificates.clear();
                    }
                    if outage_reported {
                        debug!(northbound = %self.nb.name, reason = %reason, retry_in = ?wait, "broker still unreachable");
                    } else {
                        warn!(northbound = %self.nb.name, url = %self.nb.url, reason = %reason, retry_in = ?wait,
                            "broker unreachable; samples stay in the store until it is back");
                        outage_reported = true;
                    }
                    *self
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                }
                SessionEnd::Certificate(reason) => {
                    self.never_failed = false;
                    let wait = reconnect_wait(&mut backoff, started.elapsed());
                    certificates.report(
                        &self.nb.name,
                        &self.nb.url,
                        self.nb.tls.as_ref(),
                        &reason,
                        wait,
                    );
                    // A broker that was reachable: the next plain failure is a new outage.
                    outage_reported = false;
                    *self
                        .stats
                        .last_error
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(reason);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut shutdown) => return,
                    }
                }
            }
        }
    }

    fn options(&self, transport: Transport) -> MqttOptions {
        let mut o = MqttOptions::new(&self.nb.client_id, &self.nb.url.host, self.nb.url.port);
        // A persistent session keeps our subscriptions across reconnects; our own outgoing
        // messages are resent from the store, not from the session.
        // Untimed commands are only safe on a session the broker does not keep: nothing can be
        // queued for the gateway while it is away.
        o.set_clean_session(self.clean_next || self.nb.commands.allow_untimed);
        o.set_keep_alive(self.nb.keep_alive);
        o.set_inflight(self.nb.max_inflight);
        o.set_request_channel_capacity(self.nb.max_inflight as usize + 16);
        o.set_max_packet_size(MAX_INCOMING_PACKET, 1 << 20);
        o.set_transport(transport);
        let offline = self.encoder.status_offline(&self.gateway.id);
        o.set_last_will(LastWill::new(
            offline.topic,
            offline.payload,
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(c) = &self.nb.credentials {
            let password = c.password.as_ref().map(|p| p.expose()).unwrap_or("");
            o.set_credentials(c.username.clone(), password);
        }
        o
    }

    /// One MQTT connection, from CONNECT to its loss or to shutdown.
    async fn session(
        &mut self,
        transport: Transport,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
    ) -> SessionEnd {
        let (client, mut eventloop) =
            AsyncClient::new(self.options(transport), self.nb.max_inflight as usize + 16);
        self.clean_next = false;
        eventloop
            .network_options
            .set_connection_timeout(self.nb.connect_timeout.as_secs().max(1));
        let (cursor, checkpoint) = self.resume();
        let mut w = Window::new(cursor, self.sent_below);
        w.acked_checkpoint = checkpoint;
        let mut answers = self.answers_rx.take();
        let end = self
            .connection(
                &client,
                &mut eventloop,
                &mut w,
                &mut answers,
                shutdown,
                drain,
            )
            .await;
        self.answers_rx = answers;
        // Whatever this connection was handed is a resend when sent again.
        self.sent_below = self.sent_below.max(w.handed_below);
        end
    }

    /// Where publishing resumes: the northbound's cursor, with the MES bridge restored to its
    /// checkpoint at that cursor (and that checkpoint, to be stored again with the next
    /// cursor move).
    fn resume(&mut self) -> (RecordId, Option<Vec<u8>>) {
        let name = self.nb.name.clone();
        let Some(bridge) = self.mes.as_mut() else {
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
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        w: &mut Window,
        answers: &mut Option<mpsc::Receiver<Message>>,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
    ) -> SessionEnd {
        let mut head = self.store.watch();
        let mut connected = false;
        // Records below this are a backlog (set when the connection comes up).
        let mut replay_below = 0;

        loop {
            if connected {
                if let Err(reason) = self.fill(client, w, replay_below) {
                    return SessionEnd::Lost(reason);
                }
                self.flush_answers(client, w);
            }
            tokio::select! {
                biased;
                _ = stopped(shutdown) => {
                    self.drain(client, eventloop, w, connected, drain, replay_below).await;
                    return SessionEnd::Shutdown;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            return SessionEnd::Lost(format!("broker refused the connection: {:?}", ack.code));
                        }
                        connected = true;
                        self.connected_ms = edge_model::now_ms();
                        // A backlog is what was stored while the broker was away. On a start
                        // that connects at the first try, that is only what the previous run
                        // left; the readings of the last few milliseconds are live.
                        replay_below = if self.never_failed && self.stats.connects.load(Ordering::Relaxed) == 0 {
                            self.start_next_id
                        } else {
                            self.store.next_id()
                        };
                        self.stats.connected.store(true, Ordering::Relaxed);
                        self.stats.ever_connected.store(true, Ordering::Relaxed);
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        let backlog = replay_below.saturating_sub(w.reader.position());
                        info!(northbound = %self.nb.name, url = %self.nb.url, session_present = ack.session_present,
                            backlog_records = backlog, "connected to broker");
                        let online = self.encoder.status_online(&self.gateway.id, &self.gateway.version, self.gateway.started_ms);
                        if client.try_publish(online.topic, QoS::AtLeastOnce, true, online.payload).is_ok() {
                            w.sent.push_back(Sent::Other);
                        }
                        self.subscribe_commands(client);
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => self.route_command(p),
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(Sent::Record(id)) = w.sent.pop_front() {
                            w.by_pkid.insert(pkid, id);
                        }
                    }
                    Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                        if let Some(id) = w.by_pkid.remove(&ack.pkid) {
                            self.on_ack(w, id);
                        }
                    }
                    Ok(other) => debug!(northbound = %self.nb.name, event = ?other, "mqtt event"),
                    Err(e) => {
                        if too_large(&e) && self.commands.is_some() {
                            // With a persistent session the broker would send it again at
                            // every reconnect.
                            warn!(northbound = %self.nb.name, limit_bytes = MAX_INCOMING_PACKET,
                                "the broker sent a message larger than the agent reads (a command over the size limit?); reconnecting with a clean session so that the broker drops it");
                            self.clean_next = true;
                        }
                        if let Some(problem) = certificate_problem(&e, self.nb.tls.as_ref()) {
                            return SessionEnd::Certificate(problem);
                        }
                        return SessionEnd::Lost(e.to_string());
                    }
                },
                answer = next_answer(answers) => {
                    if let Some(answer) = answer {
                        self.queue_answer(answer);
                    }
                }
                changed = head.changed(), if connected && !w.is_full(self.nb.max_inflight) => {
                    if changed.is_err() {
                        // The store is gone: the agent is stopping.
                        return SessionEnd::Shutdown;
                    }
                }
            }
        }
    }

    /// Hands messages to the client while the window has room: first what is left of the
    /// record at the front, then further records from the store.
    fn fill(
        &mut self,
        client: &AsyncClient,
        w: &mut Window,
        replay_below: RecordId,
    ) -> Result<(), String> {
        let max = self.nb.max_inflight as usize;
        loop {
            // Continue the record whose messages did not all fit. Records are taken from the
            // store only once the previous one is fully handed over, so only the newest record
            // can have messages left.
            if let Some(rec) = w.records.back_mut().filter(|r| !r.unsent.is_empty()) {
                while w.inflight_msgs < max {
                    let Some(m) = rec.unsent.pop_front() else {
                        break;
                    };
                    client
                        .try_publish(m.topic, QoS::AtLeastOnce, m.retain, m.payload)
                        .map_err(|e| format!("MQTT client refused a publish: {e}"))?;
                    w.sent.push_back(Sent::Record(rec.id));
                    w.inflight_msgs += 1;
                    self.stats.published.fetch_add(1, Ordering::Relaxed);
                    if rec.id < w.resend_below {
                        self.stats.resent.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !rec.unsent.is_empty() {
                    break;
                }
            }
            if w.inflight_msgs >= max {
                break;
            }
            let Some((id, batch)) = w
                .reader
                .next(&self.store, &self.nb.name)
                .map_err(|e| format!("cannot read the store: {e}"))?
            else {
                break;
            };
            if let Some(encoder) = self
                .encoder_updates
                .as_ref()
                .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take())
            {
                self.encoder = encoder;
            }
            let mut out = Vec::with_capacity(self.encoder.message_count(&batch));
            self.encoder.encode(&batch, id < replay_below, &mut out);
            let mut checkpoint = None;
            if let Some(bridge) = self.mes.as_mut() {
                let telemetry = out.len();
                if bridge.encode(&batch, id < replay_below, &mut out) {
                    checkpoint = Some(bridge.checkpoint());
                }
                self.stats
                    .mes_events
                    .fetch_add((out.len() - telemetry) as u64, Ordering::Relaxed);
            }
            // A record with nothing to say counts as delivered once those before it are.
            w.handed_below = id + 1;
            w.records.push_back(InflightRecord {
                id,
                unacked: out.len(),
                unsent: out.into(),
                checkpoint,
            });
            self.advance(w);
        }
        self.stats
            .inflight
            .store(w.inflight_msgs as u64, Ordering::Relaxed);
        Ok(())
    }

    fn on_ack(&mut self, w: &mut Window, id: RecordId) {
        w.inflight_msgs = w.inflight_msgs.saturating_sub(1);
        self.stats.acked.fetch_add(1, Ordering::Relaxed);
        // Records are in id order: find the acknowledged one by bisection.
        if let Ok(i) = w.records.binary_search_by_key(&id, |r| r.id) {
            if let Some(rec) = w.records.get_mut(i) {
                rec.unacked = rec.unacked.saturating_sub(1);
            }
        }
        self.advance(w);
    }

    /// Moves the cursor over the unbroken run of fully acknowledged records at the front, and
    /// stores the MES checkpoint as of the new cursor with it.
    fn advance(&mut self, w: &mut Window) {
        let mut next = None;
        while let Some(front) = w.records.front() {
            if front.unacked > 0 || !front.unsent.is_empty() {
                break;
            }
            next = Some(front.id + 1);
            if let Some(done) = w.records.pop_front() {
                if done.checkpoint.is_some() {
                    w.acked_checkpoint = done.checkpoint;
                }
            }
            self.stats.records_acked.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(next) = next {
            let result = match &w.acked_checkpoint {
                Some(cp) if self.mes.is_some() => {
                    self.store.ack_with_checkpoint(&self.nb.name, next, cp)
                }
                _ => self.store.ack(&self.nb.name, next),
            };
            if let Err(e) = result {
                // The records stay and will be sent again after a restart: duplicates, not loss.
                error!(northbound = %self.nb.name, error = %e, "cannot record the delivery cursor");
            }
        }
    }

    /// Clean stop: let in-flight messages be acknowledged (bounded), publish the offline
    /// status, disconnect.
    async fn drain(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        w: &mut Window,
        connected: bool,
        limit: Duration,
        replay_below: RecordId,
    ) {
        if !connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let offline = self.encoder.status_offline(&self.gateway.id);
        let mut status_sent = false;
        loop {
            // Keep publishing what the store holds (the pollers have stopped and the writer
            // has committed their last batches) while the deadline allows.
            if !status_sent && self.fill(client, w, replay_below).is_err() {
                return;
            }
            let caught_up = w.records.is_empty() && w.reader.position() >= self.store.next_id();
            if w.inflight_msgs == 0 && caught_up && !status_sent {
                if client
                    .try_publish(
                        offline.topic.clone(),
                        QoS::AtLeastOnce,
                        true,
                        offline.payload.clone(),
                    )
                    .is_ok()
                {
                    w.sent.push_back(Sent::Other);
                }
                let _ = client.try_disconnect();
                status_sent = true;
            }
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Err(_) => {
                    warn!(northbound = %self.nb.name, inflight = w.inflight_msgs,
                        "stop deadline reached with records not yet acknowledged; they are sent at the next start");
                    return;
                }
                Ok(Err(_)) => return,
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => return,
                Ok(Ok(Event::Outgoing(Outgoing::Publish(pkid)))) => {
                    if let Some(Sent::Record(id)) = w.sent.pop_front() {
                        w.by_pkid.insert(pkid, id);
                    }
                }
                Ok(Ok(Event::Incoming(Incoming::PubAck(ack)))) => {
                    if let Some(id) = w.by_pkid.remove(&ack.pkid) {
                        self.on_ack(w, id);
                    }
                }
                Ok(Ok(_)) => {}
            }
        }
    }
}

impl Publisher {
    /// Subscribes to the command topics (again at every connect: the broker may have lost
    /// the session).
    fn subscribe_commands(&self, client: &AsyncClient) {
        if self.commands.is_none() {
            return;
        }
        let filters = command_filters(&self.nb.topic_root)
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
        if let Err(e) = client.try_subscribe_many(filters) {
            warn!(northbound = %self.nb.name, error = %e,
                "cannot subscribe to the command topics; commands are not taken until the next connect");
        }
    }

    /// Hands a message from a command topic to the command task, never waiting: a full
    /// queue is answered `failed` at once.
    fn route_command(&mut self, p: rumqttc::Publish) {
        let Some(commands) = &self.commands else {
            return;
        };
        if p.topic.ends_with(RESPONSE_LEVEL) {
            return;
        }
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let Some(reply) = self.answers_tx.clone() else {
            return;
        };
        let len = p.payload.len();
        let keep = len.min(MAX_COMMAND_BYTES + 1);
        let request = CommandRequest {
            northbound: self.nb.name.clone(),
            policy: self.nb.commands,
            arrival: Arrival {
                retained: p.retain,
                received_ms: edge_model::now_ms(),
                connected_ms: self.connected_ms,
                clock_synchronised: self.clock.is_synchronised(),
            },
            root: self.nb.topic_root.clone(),
            topic: p.topic,
            payload: p.payload.get(..keep).unwrap_or_default().to_vec(),
            len,
            reply,
        };
        match commands.try_send(request) {
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
                warn!(northbound = %self.nb.name, topic = %request.topic, "command queue full; command refused");
                self.queue_answer(answer.message(&request.topic));
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn queue_answer(&mut self, answer: Message) {
        if self.pending_answers.len() >= PENDING_ANSWERS {
            if let Some(dropped) = self.pending_answers.pop_front() {
                warn!(northbound = %self.nb.name, topic = %dropped.topic,
                    "too many command answers waiting for the broker; dropped the oldest");
            }
        }
        self.pending_answers.push_back(answer);
    }

    /// Publishes waiting answers (QoS 1) while the MQTT client takes them.
    fn flush_answers(&mut self, client: &AsyncClient, w: &mut Window) {
        while let Some(answer) = self.pending_answers.front() {
            if client
                .try_publish(
                    answer.topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    answer.payload.clone(),
                )
                .is_err()
            {
                break;
            }
            w.sent.push_back(Sent::Other);
            self.pending_answers.pop_front();
        }
    }
}

/// The next answer from the command task; never resolves without one.
async fn next_answer(answers: &mut Option<mpsc::Receiver<Message>>) -> Option<Message> {
    match answers {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The broker sent a packet over the incoming size limit.
fn too_large(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

enum SessionEnd {
    Shutdown,
    Lost(String),
    /// A certificate problem (logged as an error, not as an outage).
    Certificate(String),
}

/// The in-flight window of one connection.
#[derive(Debug)]
struct Window {
    records: VecDeque<InflightRecord>,
    sent: VecDeque<Sent>,
    by_pkid: HashMap<u16, RecordId>,
    inflight_msgs: usize,
    /// Reads the records after the cursor.
    reader: StoreReader,
    /// Records below this were sent on an earlier connection (resends).
    resend_below: RecordId,
    /// Records below this were handed to this connection's client.
    handed_below: RecordId,
    /// The MES checkpoint as of the acknowledged records (stored with each cursor move).
    acked_checkpoint: Option<Vec<u8>>,
}

impl Window {
    fn new(cursor: RecordId, resend_below: RecordId) -> Window {
        Window {
            records: VecDeque::new(),
            sent: VecDeque::new(),
            by_pkid: HashMap::new(),
            inflight_msgs: 0,
            reader: StoreReader::new(cursor),
            resend_below,
            handed_below: cursor,
            acked_checkpoint: None,
        }
    }

    /// True when the window is full, so new records are not worth waking up for.
    fn is_full(&self, max: u16) -> bool {
        self.inflight_msgs >= max as usize
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
