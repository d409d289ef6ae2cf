//! The Sparkplug B publisher of one `format = "sparkplug-b"` northbound: the gateway as an edge
//! node on a clean MQTT session whose will is NDEATH with a persisted `bdSeq`; births before any
//! data; stored records replayed as historical DDATA after a reconnect, then live DDATA with
//! DDEATH/DBIRTH around a lost PLC; NCMD rebirth and validated DCMD writes; the primary host's
//! STATE honoured.
//!
//! Sparkplug data is QoS 0, so a PUBACK cannot release a record. After the data of some records
//! the publisher sends a QoS 1 message on the northbound's delivery topic; the broker handles a
//! connection's packets in order, so its PUBACK proves every earlier message was read, and only
//! then does the cursor move. A connection lost before the proof sends the records again,
//! marked historical.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_config::{Config, Northbound, SparkplugSettings};
use edge_driver::{Backoff, WriteHandle};
use edge_model::now_ms;
use edge_store::{RecordId, Store};
use mes_bridge::gate::{admit, Arrival};
use mes_bridge::sparkplug::decode_payload;
use mes_bridge::sparkplug::{
    Command, DeviceDef, EdgeNode, HostChange, MetricDef, PrimaryHost, TagWrite,
};
use mes_bridge::Message;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, Incoming, LastWill, MqttOptions,
    Outgoing, QoS, SubscribeFilter, SubscribeReasonCode, Transport,
};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, error, info, warn};

use crate::daemon::clock::ClockStatus;
use crate::northbound::acks::CursorWriter;
use crate::northbound::link::Link;
use crate::northbound::safety::{clip, CommandEntry, CommandStats, Outcome};
use crate::northbound::uns::PublisherStats;
use crate::northbound::walk::BrokerWalk;
use crate::northbound::{
    certificate_problem, reconnect_wait, set_credentials, stopped, transport, CertificateReport,
    NorthboundError, SessionEnd, StoreReader, READ_CHUNK,
};

/// How long a DCMD write may wait for the device's answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// DCMDs being written at once; beyond it a command is refused, never queued without bound.
const MAX_WRITES: usize = 64;
/// How long the node waits for the broker to take NDEATH and the DISCONNECT after it.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest MQTT packet: births of thousands of metrics are large.
const MAX_PACKET: usize = 16 << 20;

/// The Sparkplug devices and metrics of a config: every device and every tag.
pub fn device_defs(cfg: &Config) -> Vec<DeviceDef> {
    cfg.devices
        .iter()
        .map(|d| DeviceDef {
            name: d.name.clone(),
            metrics: d
                .tags
                .iter()
                .map(|t| MetricDef {
                    name: t.name.clone(),
                    data_type: t.data_type(),
                    scale: t.scale,
                    offset: t.offset,
                    unit: t.unit.clone(),
                    writable: t.writable,
                })
                .collect(),
        })
        .collect()
}

/// The last bdSeq used, kept in a small file so that a restart continues from it.
#[derive(Debug)]
pub struct BdSeqFile {
    path: PathBuf,
}

impl BdSeqFile {
    /// The file of a northbound inside the data directory.
    pub fn new(data_dir: &Path, northbound: &str) -> BdSeqFile {
        BdSeqFile {
            path: data_dir
                .join("sparkplug")
                .join(format!("{northbound}.bdseq")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bdSeq stored last, if there is a readable one.
    pub fn load(&self) -> Option<u8> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the stored Sparkplug bdSeq; starting from 0");
                return None;
            }
        };
        match text.trim().parse::<u8>() {
            Ok(b) => Some(b),
            Err(_) => {
                warn!(path = %self.path.display(), content = %text.trim(),
                    "the stored Sparkplug bdSeq is not a number from 0 to 255; starting from 0");
                None
            }
        }
    }

    /// Stores `bd_seq` durably: a new file written and synced, renamed over the old one, and
    /// the directory synced, so a power cut leaves the old or the new value, never neither.
    pub fn store(&self, bd_seq: u8) -> std::io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = self.path.with_extension("bdseq.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{bd_seq}")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// A QoS 1 publish awaiting its PUBACK.
#[derive(Debug, Clone, Copy)]
enum Proof {
    /// The delivery marker after the messages of the records below `covers_below`.
    Marker { covers_below: RecordId, msgs: usize },
    /// NDEATH before an intentional disconnect.
    Death,
}

/// The state of one MQTT connection.
#[derive(Debug)]
struct Session {
    connected: bool,
    /// Births were sent on this connection (and not ended by NDEATH).
    born: bool,
    reader: StoreReader,
    /// Records below this were stored before the births: sent as historical.
    replay_below: RecordId,
    /// Deaths of devices dead at birth time wait for the end of the replay.
    deaths_pending: bool,
    /// A rebirth asked for while the window was full.
    rebirth_pending: bool,
    /// QoS 1 publishes handed to the client, in order, until the client names their packet id.
    qos1_sent: VecDeque<Proof>,
    by_pkid: HashMap<u16, Proof>,
    /// Markers published and not acknowledged yet, with the messages each one proves.
    markers_inflight: usize,
    /// Messages handed to the client and not yet proven read.
    unproven_msgs: usize,
    /// Of those, messages after the last marker.
    unmarked_msgs: usize,
    /// Records below this were handed over (their messages, if any, sent).
    handed_below: RecordId,
    /// Records below this are covered by a marker already published.
    marked_below: RecordId,
    /// Records below this were sent on an earlier connection (resends).
    resend_below: RecordId,
    /// The broker answered CONNECT (the bdSeq of this connection is used up).
    connack: bool,
    unknown_reported: bool,
    death_acked: bool,
}

impl Session {
    fn new(cursor: RecordId, resend_below: RecordId, read_ahead_bytes: usize) -> Session {
        Session {
            connected: false,
            born: false,
            reader: StoreReader::new(cursor, read_ahead_bytes),
            replay_below: cursor,
            deaths_pending: false,
            rebirth_pending: false,
            qos1_sent: VecDeque::new(),
            by_pkid: HashMap::new(),
            markers_inflight: 0,
            unproven_msgs: 0,
            unmarked_msgs: 0,
            handed_below: cursor,
            marked_below: cursor,
            resend_below,
            connack: false,
            unknown_reported: false,
            death_acked: false,
        }
    }
}

/// The publisher of one Sparkplug B northbound.
#[derive(Debug)]
pub struct SparkplugPublisher {
    nb: Northbound,
    settings: SparkplugSettings,
    store: Store,
    node: EdgeNode,
    handles: HashMap<String, WriteHandle>,
    stats: Arc<PublisherStats>,
    /// Commands counted by outcome; the clock that judges their age; when the current
    /// connection was acknowledged.
    command_stats: Arc<CommandStats>,
    clock: ClockStatus,
    connected_ms: u64,
    /// Delivery markers published (QoS 1 proofs), for benchmarks and metrics.
    markers: Arc<AtomicU64>,
    bd_file: BdSeqFile,
    last_bd: Option<u8>,
    host: Option<PrimaryHost>,
    /// Every record below this has been folded into the node's latest values.
    folded_below: RecordId,
    /// Records below this were handed to an earlier connection.
    sent_below: RecordId,
    /// Records below this are proven delivered (the cursor, ahead of its write to the store).
    delivered_below: RecordId,
    /// Writes cursor moves to the store (while `run` runs).
    acks: Option<CursorWriter>,
    writes: Arc<Semaphore>,
    /// Messages published at once: at least the window, plus births and their deaths.
    channel_capacity: usize,
    mark_every: usize,
    /// `url`, then the other servers of `urls` (the Sparkplug server set), and the one in use.
    walk: BrokerWalk,
}

impl SparkplugPublisher {
    /// A publisher for `nb` (whose format is Sparkplug B with `settings`), announcing
    /// `devices` and writing DCMDs through `handles`. The bdSeq file lives in `data_dir`.
    pub fn new(
        nb: Northbound,
        settings: SparkplugSettings,
        store: Store,
        devices: Vec<DeviceDef>,
        handles: Vec<WriteHandle>,
        data_dir: &Path,
    ) -> SparkplugPublisher {
        let device_count = devices.len();
        let node = EdgeNode::new(&settings.group_id, &settings.edge_node_id, devices);
        let bd_file = BdSeqFile::new(data_dir, &nb.name);
        let last_bd = bd_file.load();
        let host = settings.primary_host_id.as_deref().map(PrimaryHost::new);
        let cursor = store.cursor(&nb.name);
        let max = usize::from(nb.max_inflight);
        SparkplugPublisher {
            walk: BrokerWalk::new(&nb),
            handles: handles.into_iter().map(|h| (h.name.clone(), h)).collect(),
            stats: Arc::new(PublisherStats::default()),
            command_stats: Arc::new(CommandStats::default()),
            clock: ClockStatus::fixed(true),
            connected_ms: 0,
            markers: Arc::new(AtomicU64::new(0)),
            folded_below: cursor,
            sent_below: 0,
            delivered_below: cursor,
            acks: None,
            writes: Arc::new(Semaphore::new(MAX_WRITES)),
            channel_capacity: max + 2 * device_count + 64,
            mark_every: (max / 4).max(1),
            nb,
            settings,
            store,
            node,
            bd_file,
            last_bd,
            host,
        }
    }

    /// Counts commands into `stats` and judges their age by `clock`.
    pub fn with_command_safety(mut self, stats: Arc<CommandStats>, clock: ClockStatus) -> Self {
        self.command_stats = stats;
        self.clock = clock;
        self
    }

    pub fn stats(&self) -> Arc<PublisherStats> {
        self.stats.clone()
    }

    /// How many delivery markers were published so far.
    pub fn delivery_markers(&self) -> Arc<AtomicU64> {
        self.markers.clone()
    }

    /// The edge node (its topics and aliases).
    pub fn node(&self) -> &EdgeNode {
        &self.node
    }

    /// Runs until `shutdown` turns true; then waits up to `drain` for the broker to prove it
    /// read what was sent, publishes NDEATH and disconnects.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, drain: Duration) {
        self.acks = Some(CursorWriter::start(
            self.store.clone(),
            self.nb.name.clone(),
        ));
        self.sessions(&mut shutdown, drain).await;
        if let Some(acks) = self.acks.take() {
            acks.finish().await;
        }
    }

    async fn sessions(&mut self, shutdown: &mut watch::Receiver<bool>, drain: Duration) {
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
                self.set_error(e.to_string());
                stopped(shutdown).await;
                return;
            }
        };
        info!(northbound = %self.nb.name, group = %self.settings.group_id, edge_node = %self.settings.edge_node_id,
            metrics = self.node.metric_count(), devices = self.node.device_count(),
            primary_host = ?self.settings.primary_host_id, servers = self.walk.all().len(),
            "Sparkplug B edge node configured");
        let mut backoff = Backoff::new(self.nb.reconnect_min, self.nb.reconnect_max);
        let mut certificates = CertificateReport::default();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let connects = self.stats.connects.load(Ordering::Relaxed);
            let server = self.broker().clone();
            *self.stats.broker.lock().unwrap_or_else(|p| p.into_inner()) = server.to_string();
            let transport = transports
                .get(self.walk.index())
                .cloned()
                .unwrap_or(Transport::Tcp);
            let outcome = self.session(transport, shutdown, drain).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            self.stats.inflight.store(0, Ordering::Relaxed);
            let reason = match outcome {
                SessionEnd::Shutdown => return,
                // Only UNS northbounds return to a preferred broker.
                SessionEnd::BackToPreferred => continue,
                SessionEnd::Lost(reason) => reason,
            };
            // The server set is walked in order: the next server at once (the primary host's
            // STATE offline here, or Next Server, or a lost connection), the backoff only
            // after every server failed in a row.
            let came_up = self.stats.connects.load(Ordering::Relaxed) > connects;
            let wait = if self.walk.lost(came_up) {
                reconnect_wait(&mut backoff, started.elapsed())
            } else {
                self.nb.reconnect_min
            };
            if self.walk.several() {
                // The host's STATE on the next server is its own.
                if let Some(host) = self.host.as_mut() {
                    host.forget();
                }
            }
            if let NorthboundError::Certificate(problem) = &reason {
                if self.stats.connects.load(Ordering::Relaxed) > connects {
                    certificates.clear();
                }
                certificates.report(&self.nb.name, &server, self.nb.tls.as_ref(), problem, wait);
                self.set_error(problem.clone());
            } else {
                warn!(northbound = %self.nb.name, url = %server, reason = %reason, next = %self.broker(), retry_in = ?wait,
                    "Sparkplug session ended; samples stay in the store until they are proven delivered");
                self.set_error(format!("{server}: {reason}"));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(shutdown) => return,
            }
        }
    }

    /// The server in use.
    fn broker(&self) -> &edge_config::BrokerUrl {
        self.walk.current()
    }

    fn set_error(&self, e: String) {
        *self
            .stats
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    fn options(&self, transport: Transport) -> MqttOptions {
        let server = self.broker();
        let mut o = MqttOptions::new(&self.nb.client_id, &server.host, server.port);
        // Sparkplug requires a clean session: everything unacknowledged is resent from the
        // store, marked historical.
        o.set_clean_session(true);
        o.set_keep_alive(self.nb.keep_alive);
        o.set_inflight(self.nb.max_inflight.max(2));
        o.set_request_channel_capacity(self.channel_capacity);
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_transport(transport);
        let death = self.node.death(now_ms());
        o.set_last_will(LastWill::new(
            death.topic,
            death.payload,
            QoS::AtLeastOnce,
            false,
        ));
        set_credentials(&mut o, &self.nb);
        o
    }

    /// One MQTT connection, from CONNECT to its loss or to shutdown.
    async fn session(
        &mut self,
        transport: Transport,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
    ) -> SessionEnd {
        // The backlog stored while disconnected is read now, before connecting, so that the
        // births can carry the latest values without keeping the connection waiting.
        if let Err(e) = self.catch_up().await {
            return SessionEnd::Lost(e);
        }
        let bd = EdgeNode::next_bd_seq(self.last_bd);
        if let Err(e) = self.bd_file.store(bd) {
            error!(northbound = %self.nb.name, path = %self.bd_file.path().display(), error = %e,
                "cannot store the Sparkplug bdSeq; after a restart it may repeat");
        }
        self.node.set_bd_seq(bd);
        let (client, mut eventloop) =
            AsyncClient::new(self.options(transport), self.channel_capacity);
        eventloop
            .network_options
            .set_connection_timeout(self.nb.connect_timeout.as_secs().max(1));
        // The delivery marker is a small packet that the window waits on: Nagle's algorithm
        // would hold it until the broker's delayed ACK (tens of milliseconds) and stall the
        // window every round.
        eventloop.network_options.set_tcp_nodelay(true);
        let mut link = Link::start(eventloop);
        let cursor = self.delivered_below.max(self.store.cursor(&self.nb.name));
        let mut s = Session::new(cursor, self.sent_below, self.nb.max_inflight_bytes);
        let end = self
            .connection(&client, &mut link, &mut s, shutdown, drain)
            .await;
        // A connection the broker never answered left no will behind: its bdSeq is free.
        if s.connack {
            self.last_bd = Some(bd);
        }
        self.sent_below = self.sent_below.max(s.handed_below);
        end
    }

    async fn connection(
        &mut self,
        client: &AsyncClient,
        link: &mut Link,
        s: &mut Session,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
    ) -> SessionEnd {
        let mut head = self.store.watch();
        loop {
            if s.born {
                if let Err(reason) = self.fill(client, s) {
                    return SessionEnd::Lost(reason);
                }
            }
            let full = s.unproven_msgs >= usize::from(self.nb.max_inflight);
            tokio::select! {
                biased;
                _ = stopped(shutdown) => {
                    self.drain(client, link, s, drain).await;
                    return SessionEnd::Shutdown;
                }
                event = link.next() => {
                    let event = match event {
                        Some(Ok(event)) => event,
                        None => return SessionEnd::Lost(NorthboundError::LinkClosed),
                        Some(Err(e)) => {
                            if matches!(e, ConnectionError::ConnectionRefused(_)) {
                                s.connack = true;
                            }
                            if let Some(problem) = certificate_problem(&e, self.nb.tls.as_ref()) {
                                return SessionEnd::Lost(NorthboundError::Certificate(problem));
                            }
                            return SessionEnd::Lost(NorthboundError::from(e));
                        }
                    };
                    if let Some(end) = self.on_event(client, link, s, event).await {
                        return end;
                    }
                }
                changed = head.changed(), if s.born && !full => {
                    if changed.is_err() {
                        // The store is gone: the agent is stopping.
                        return SessionEnd::Shutdown;
                    }
                }
            }
        }
    }

    async fn on_event(
        &mut self,
        client: &AsyncClient,
        link: &mut Link,
        s: &mut Session,
        event: Event,
    ) -> Option<SessionEnd> {
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                s.connack = true;
                if ack.code != ConnectReturnCode::Success {
                    return Some(SessionEnd::Lost(NorthboundError::Refused(
                        crate::northbound::mqtt::connect_refusal_v4(ack.code).to_owned(),
                    )));
                }
                s.connected = true;
                self.connected_ms = now_ms();
                self.stats.connected.store(true, Ordering::Relaxed);
                self.stats.ever_connected.store(true, Ordering::Relaxed);
                self.stats.connects.fetch_add(1, Ordering::Relaxed);
                info!(northbound = %self.nb.name, url = %self.broker(), bd_seq = self.node.bd_seq(),
                    backlog_records = self.store.next_id().saturating_sub(s.reader.position()),
                    "connected to broker as a Sparkplug edge node");
                // Subscribed before any birth; the broker handles them in this order.
                let mut filters = vec![
                    SubscribeFilter::new(self.node.ncmd_topic().to_owned(), QoS::AtLeastOnce),
                    SubscribeFilter::new(self.node.dcmd_filter(), QoS::AtLeastOnce),
                ];
                if let Some(host) = &self.host {
                    filters.push(SubscribeFilter::new(
                        host.topic().to_owned(),
                        QoS::AtLeastOnce,
                    ));
                }
                if let Err(e) = client.try_subscribe_many(filters) {
                    return Some(SessionEnd::Lost(NorthboundError::Subscribe(Box::new(e))));
                }
                match &self.host {
                    Some(host) => {
                        info!(northbound = %self.nb.name, host = %host.topic(),
                            "waiting for the primary host to be online before the births");
                    }
                    None => {
                        if let Err(e) = self.birth(client, s) {
                            return Some(SessionEnd::Lost(e));
                        }
                    }
                }
            }
            Event::Incoming(Incoming::SubAck(ack)) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    error!(northbound = %self.nb.name, codes = ?ack.return_codes,
                        "the broker refused a subscription (NCMD, DCMD or STATE); check its ACL");
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Some(proof) = s.qos1_sent.pop_front() {
                    s.by_pkid.insert(pkid, proof);
                }
            }
            Event::Incoming(Incoming::PubAck(ack)) => match s.by_pkid.remove(&ack.pkid) {
                Some(Proof::Marker { covers_below, msgs }) => self.on_proof(s, covers_below, msgs),
                Some(Proof::Death) => s.death_acked = true,
                None => {}
            },
            Event::Incoming(Incoming::Publish(p)) => {
                return self
                    .on_message(client, link, s, &p.topic, &p.payload, p.retain)
                    .await;
            }
            // Every QoS 0 publish is one of these: not worth a log line each.
            Event::Outgoing(Outgoing::Publish(_)) => {}
            other => debug!(northbound = %self.nb.name, event = ?other, "mqtt event"),
        }
        None
    }

    /// Folds every stored record not folded yet into the node's latest values, yielding
    /// between chunks so that a large backlog does not hold up other tasks.
    async fn catch_up(&mut self) -> Result<(), NorthboundError> {
        while self.fold_chunk()? {
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Folds the next chunk of records not folded yet; false once there are none left.
    fn fold_chunk(&mut self) -> Result<bool, NorthboundError> {
        let head = self.store.next_id();
        if self.folded_below >= head {
            return Ok(false);
        }
        let records = self
            .store
            .read(&self.nb.name, self.folded_below, READ_CHUNK * 16)?;
        let Some(&(last, _)) = records.last() else {
            self.folded_below = head;
            return Ok(false);
        };
        for (_, batch) in &records {
            self.node.fold(batch);
        }
        self.folded_below = last + 1;
        Ok(true)
    }

    /// NBIRTH and every DBIRTH; the records stored until now are the backlog, replayed after.
    fn birth(&mut self, client: &AsyncClient, s: &mut Session) -> Result<(), NorthboundError> {
        // What arrived since the catch-up before CONNECT (a few records at most).
        while self.fold_chunk()? {}
        s.replay_below = self.folded_below.max(s.reader.position());
        let births = self.node.births(now_ms());
        self.publish_all(client, s, births, None)?;
        s.born = true;
        s.rebirth_pending = false;
        s.deaths_pending = s.reader.position() < s.replay_below;
        if !s.deaths_pending {
            let deaths = self.node.deaths(now_ms());
            self.publish_all(client, s, deaths, None)?;
        }
        info!(northbound = %self.nb.name, bd_seq = self.node.bd_seq(), devices = self.node.device_count(),
            metrics = self.node.metric_count(),
            backlog_records = s.replay_below.saturating_sub(s.reader.position()),
            "Sparkplug births published");
        Ok(())
    }

    /// Hands Sparkplug messages to the client (QoS 0) in order, counting them as unproven.
    fn publish_all(
        &self,
        client: &AsyncClient,
        s: &mut Session,
        msgs: Vec<Message>,
        record: Option<RecordId>,
    ) -> Result<(), NorthboundError> {
        for m in msgs {
            if m.topic.contains("/DDEATH/") {
                info!(northbound = %self.nb.name, topic = %m.topic, "device declared dead (DDEATH)");
            } else if m.topic.contains("/DBIRTH/") && record.is_some() {
                info!(northbound = %self.nb.name, topic = %m.topic, "device back (DBIRTH)");
            }
            client.try_publish(m.topic, QoS::AtMostOnce, m.retain, m.payload)?;
            s.unproven_msgs += 1;
            s.unmarked_msgs += 1;
            self.stats.published.fetch_add(1, Ordering::Relaxed);
            if record.is_some_and(|id| id < s.resend_below) {
                self.stats.resent.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Hands records to the client while the window has room, then publishes a marker after
    /// them.
    fn fill(&mut self, client: &AsyncClient, s: &mut Session) -> Result<(), NorthboundError> {
        let max = usize::from(self.nb.max_inflight);
        if s.rebirth_pending && s.unproven_msgs < max {
            self.rebirth(client, s)?;
        }
        let mut out = Vec::new();
        while s.unproven_msgs < max {
            self.end_of_replay(client, s)?;
            let Some((id, batch)) = s.reader.next(&self.store, &self.nb.name)? else {
                break;
            };
            let now = now_ms();
            let unknown = if id < s.replay_below {
                self.node.historical(&batch, now, &mut out)
            } else {
                self.folded_below = self.folded_below.max(id + 1);
                self.node.live(&batch, now, &mut out)
            };
            if unknown > 0 && !s.unknown_reported {
                warn!(northbound = %self.nb.name, device = %batch.device, samples = unknown,
                    "stored samples of a device or tag no longer configured are not published");
                s.unknown_reported = true;
            }
            self.publish_all(client, s, std::mem::take(&mut out), Some(id))?;
            s.handed_below = id + 1;
            if s.unmarked_msgs >= self.mark_every {
                self.mark(client, s)?;
            }
        }
        self.end_of_replay(client, s)?;
        if s.handed_below > s.marked_below || s.unmarked_msgs > 0 {
            self.mark(client, s)?;
        }
        self.stats
            .inflight
            .store(s.unproven_msgs as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Once the backlog is replayed, the devices that were dead at birth time are declared so.
    fn end_of_replay(
        &mut self,
        client: &AsyncClient,
        s: &mut Session,
    ) -> Result<(), NorthboundError> {
        if s.deaths_pending && s.reader.position() >= s.replay_below {
            s.deaths_pending = false;
            let deaths = self.node.deaths(now_ms());
            self.publish_all(client, s, deaths, None)?;
        }
        Ok(())
    }

    /// The QoS 1 publish whose PUBACK proves the broker read everything before it.
    fn mark(&mut self, client: &AsyncClient, s: &mut Session) -> Result<(), NorthboundError> {
        let proof = Proof::Marker {
            covers_below: s.handed_below,
            msgs: s.unmarked_msgs,
        };
        client.try_publish(
            self.settings.delivery_topic.clone(),
            QoS::AtLeastOnce,
            false,
            s.handed_below.to_string().into_bytes(),
        )?;
        s.qos1_sent.push_back(proof);
        s.markers_inflight += 1;
        self.markers.fetch_add(1, Ordering::Relaxed);
        s.marked_below = s.handed_below;
        s.unmarked_msgs = 0;
        Ok(())
    }

    fn on_proof(&mut self, s: &mut Session, covers_below: RecordId, msgs: usize) {
        s.markers_inflight = s.markers_inflight.saturating_sub(1);
        s.unproven_msgs = s.unproven_msgs.saturating_sub(msgs);
        self.stats.acked.fetch_add(msgs as u64, Ordering::Relaxed);
        self.stats
            .last_ack_ms
            .store(edge_model::now_ms(), Ordering::Relaxed);
        if covers_below > self.delivered_below {
            self.stats
                .records_acked
                .fetch_add(covers_below - self.delivered_below, Ordering::Relaxed);
            self.delivered_below = covers_below;
            if let Some(acks) = &self.acks {
                acks.record(covers_below, None);
            }
        }
        self.stats
            .inflight
            .store(s.unproven_msgs as u64, Ordering::Relaxed);
    }

    fn rebirth(&mut self, client: &AsyncClient, s: &mut Session) -> Result<(), NorthboundError> {
        s.rebirth_pending = false;
        let births = self.node.births(now_ms());
        self.publish_all(client, s, births, None)?;
        if !s.deaths_pending {
            let deaths = self.node.deaths(now_ms());
            self.publish_all(client, s, deaths, None)?;
        }
        info!(northbound = %self.nb.name, bd_seq = self.node.bd_seq(), "rebirth published on request");
        Ok(())
    }

    /// A message on a subscribed topic: a node or device command, or the primary host's STATE.
    async fn on_message(
        &mut self,
        client: &AsyncClient,
        link: &mut Link,
        s: &mut Session,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Option<SessionEnd> {
        if let Some(host) = self.host.as_mut() {
            if topic == host.topic() {
                return match host.observe(topic, payload) {
                    Ok(HostChange::Online) if s.connected && !s.born => {
                        info!(northbound = %self.nb.name, host = %topic, "primary host online");
                        self.birth(client, s).err().map(SessionEnd::Lost)
                    }
                    Ok(HostChange::Offline) if s.born => {
                        warn!(northbound = %self.nb.name, host = %topic,
                            "primary host offline: NDEATH, disconnect, and wait for it on a new connection (the next server of the list, if there is one)");
                        self.goodbye(client, link, s, GOODBYE_TIMEOUT).await;
                        Some(SessionEnd::Lost(NorthboundError::PrimaryHostOffline))
                    }
                    Ok(HostChange::Offline) if !s.born && self.walk.several() => {
                        info!(northbound = %self.nb.name, host = %topic, url = %self.broker(),
                            "the primary host is offline on this server: trying the next one");
                        let _ = client.try_disconnect();
                        Some(SessionEnd::Lost(NorthboundError::PrimaryHostOffline))
                    }
                    Ok(change) => {
                        debug!(northbound = %self.nb.name, host = %topic, ?change, "primary host STATE");
                        None
                    }
                    Err(e) => {
                        warn!(northbound = %self.nb.name, host = %topic, error = %e, "STATE message ignored");
                        None
                    }
                };
            }
        }
        // Command safety, before anything of the command is looked at: retained, expired or
        // queued NCMD/DCMD are refused (the payload timestamp is the command's time).
        let kind = if topic == self.node.ncmd_topic() {
            "ncmd"
        } else {
            "dcmd"
        };
        let arrival = Arrival {
            retained,
            received_ms: now_ms(),
            connected_ms: self.connected_ms,
            clock_synchronised: self.clock.is_synchronised(),
            expires_ms: None,
        };
        let sent = decode_payload(payload).ok().and_then(|p| p.timestamp);
        if let Err(r) = admit(&self.nb.commands, &arrival, sent) {
            self.command_stats
                .count(&self.nb.name, kind, Outcome::refused(&r));
            self.command_stats.note(command_entry(
                &self.nb.name,
                topic,
                kind,
                String::new(),
                Outcome::refused(&r),
                &r.to_string(),
            ));
            warn!(northbound = %self.nb.name, topic, reason = r.reason(), "command refused: {r}");
            return None;
        }
        match self.node.decode_command(topic, payload) {
            Ok(Command::Rebirth { ignored }) => {
                if !ignored.is_empty() {
                    warn!(northbound = %self.nb.name, metrics = ?ignored, "NCMD metrics ignored");
                }
                if s.born {
                    info!(northbound = %self.nb.name, "rebirth requested (NCMD)");
                    s.rebirth_pending = true;
                    let full = s.unproven_msgs >= usize::from(self.nb.max_inflight);
                    if !full {
                        if let Err(e) = self.rebirth(client, s) {
                            return Some(SessionEnd::Lost(e));
                        }
                    }
                }
            }
            Ok(Command::Write { device, writes }) => self.write(topic, &device, writes),
            Ok(Command::NextServer) if self.walk.several() => {
                info!(northbound = %self.nb.name, from = %self.broker(),
                    "Node Control/Next Server: NDEATH, disconnect, and the next server of the list");
                self.command_stats
                    .count(&self.nb.name, kind, Outcome::Written);
                self.command_stats.note(command_entry(
                    &self.nb.name,
                    topic,
                    kind,
                    "Node Control/Next Server".to_owned(),
                    Outcome::Written,
                    "moving to the next server",
                ));
                self.goodbye(client, link, s, GOODBYE_TIMEOUT).await;
                return Some(SessionEnd::Lost(NorthboundError::NextServer));
            }
            Ok(Command::NextServer) => {
                self.command_stats
                    .count(&self.nb.name, kind, Outcome::Rejected);
                warn!(northbound = %self.nb.name, topic,
                    "Node Control/Next Server refused: this edge node has one MQTT server (give urls = [...])");
            }
            Err(e) => {
                self.command_stats
                    .count(&self.nb.name, kind, Outcome::Rejected);
                self.command_stats.note(command_entry(
                    &self.nb.name,
                    topic,
                    kind,
                    String::new(),
                    Outcome::Rejected,
                    &e.to_string(),
                ));
                warn!(northbound = %self.nb.name, topic, error = %e, "command refused; nothing was written")
            }
        }
        None
    }

    /// Checks every write of a DCMD against its tag (type, range, writable) and, if all pass,
    /// writes them in order on the device's connection, off the MQTT task.
    fn write(&self, topic: &str, device: &str, writes: Vec<TagWrite>) {
        let stats = self.command_stats.clone();
        let northbound = self.nb.name.clone();
        let values = writes
            .iter()
            .map(|w| format!("{}={}", w.tag, w.value))
            .collect::<Vec<_>>()
            .join(", ");
        let topic = topic.to_owned();
        let note = move |stats: &CommandStats, outcome: Outcome, answer: &str| {
            stats.note(command_entry(
                &northbound,
                &topic,
                "dcmd",
                values.clone(),
                outcome,
                answer,
            ));
        };
        let northbound = self.nb.name.clone();
        let Some(handle) = self.handles.get(device).cloned() else {
            stats.count(&northbound, "dcmd", Outcome::Rejected);
            note(&stats, Outcome::Rejected, "no write path for this device");
            warn!(northbound = %self.nb.name, device, "DCMD for a device without a write path; nothing was written");
            return;
        };
        for w in &writes {
            if let Err(e) = handle.check(&w.tag, &w.value) {
                stats.count(&northbound, "dcmd", Outcome::Rejected);
                note(&stats, Outcome::Rejected, &format!("{}: {e}", w.tag));
                warn!(northbound = %self.nb.name, device, tag = %w.tag, value = %w.value, error = %e,
                    "DCMD refused; nothing was written");
                return;
            }
        }
        let Ok(permit) = self.writes.clone().try_acquire_owned() else {
            stats.count(&northbound, "dcmd", Outcome::Failed);
            note(&stats, Outcome::Failed, "too many DCMD writes in progress");
            warn!(northbound = %self.nb.name, device, "too many DCMD writes in progress; this one was refused and nothing was written");
            return;
        };
        let device = device.to_owned();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut outcome = Outcome::Written;
            let mut answer = "written".to_owned();
            for w in writes {
                match handle.write(&w.tag, &w.value, WRITE_TIMEOUT).await {
                    Ok(()) => {
                        info!(northbound = %northbound, device = %device, tag = %w.tag, value = %w.value, "DCMD written")
                    }
                    Err(e) => {
                        warn!(northbound = %northbound, device = %device, tag = %w.tag, value = %w.value, error = %e,
                            "DCMD write failed; the rest of the command is not written");
                        answer = format!("{}: {e}", w.tag);
                        outcome = Outcome::Failed;
                        break;
                    }
                }
            }
            if outcome == Outcome::Written {
                stats.observe_write(started.elapsed());
            }
            stats.count(&northbound, "dcmd", outcome);
            note(&stats, outcome, &answer);
            drop(permit);
        });
    }

    /// NDEATH, then DISCONNECT: what ends a Sparkplug session on purpose (MQTT 3.1.1 drops
    /// the will on a clean DISCONNECT, so NDEATH is published explicitly).
    async fn goodbye(
        &mut self,
        client: &AsyncClient,
        link: &mut Link,
        s: &mut Session,
        limit: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + limit;
        let death = self.node.death(now_ms());
        if client
            .try_publish(death.topic, QoS::AtLeastOnce, false, death.payload)
            .is_ok()
        {
            s.qos1_sent.push_back(Proof::Death);
        }
        s.born = false;
        let mut disconnecting = false;
        loop {
            if s.death_acked && !disconnecting {
                let _ = client.try_disconnect();
                disconnecting = true;
            }
            match tokio::time::timeout_at(deadline, link.next()).await {
                Err(_) => {
                    warn!(northbound = %self.nb.name, "the broker did not take NDEATH in time; its will says the same");
                    return;
                }
                Ok(None | Some(Err(_))) | Ok(Some(Ok(Event::Outgoing(Outgoing::Disconnect)))) => {
                    return
                }
                Ok(Some(Ok(Event::Outgoing(Outgoing::Publish(pkid))))) if pkid != 0 => {
                    if let Some(proof) = s.qos1_sent.pop_front() {
                        s.by_pkid.insert(pkid, proof);
                    }
                }
                Ok(Some(Ok(Event::Incoming(Incoming::PubAck(ack))))) => {
                    match s.by_pkid.remove(&ack.pkid) {
                        Some(Proof::Marker { covers_below, msgs }) => {
                            self.on_proof(s, covers_below, msgs)
                        }
                        Some(Proof::Death) => s.death_acked = true,
                        None => {}
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Clean stop: a last marker, the proofs awaited (bounded), then NDEATH and DISCONNECT.
    async fn drain(
        &mut self,
        client: &AsyncClient,
        link: &mut Link,
        s: &mut Session,
        limit: Duration,
    ) {
        if !s.connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        if s.born && (s.handed_below > s.marked_below || s.unmarked_msgs > 0) {
            let _ = self.mark(client, s);
        }
        while s.markers_inflight > 0 {
            match tokio::time::timeout_at(deadline, link.next()).await {
                Err(_) => {
                    warn!(northbound = %self.nb.name, unproven = s.unproven_msgs,
                        "stop deadline reached before the broker proved every message read; they are sent again at the next start");
                    break;
                }
                Ok(None | Some(Err(_))) => return,
                Ok(Some(Ok(Event::Outgoing(Outgoing::Publish(pkid))))) if pkid != 0 => {
                    if let Some(proof) = s.qos1_sent.pop_front() {
                        s.by_pkid.insert(pkid, proof);
                    }
                }
                Ok(Some(Ok(Event::Incoming(Incoming::PubAck(ack))))) => {
                    if let Some(Proof::Marker { covers_below, msgs }) = s.by_pkid.remove(&ack.pkid)
                    {
                        self.on_proof(s, covers_below, msgs);
                    }
                }
                Ok(Some(Ok(_))) => {}
            }
        }
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(500));
        self.goodbye(client, link, s, left.min(GOODBYE_TIMEOUT))
            .await;
    }
}

/// The console's log line of a Sparkplug command (DCMD and NCMD carry no answer: the log
/// says what became of it).
fn command_entry(
    northbound: &str,
    topic: &str,
    kind: &str,
    value: String,
    outcome: Outcome,
    answer: &str,
) -> CommandEntry {
    CommandEntry {
        at_ms: now_ms(),
        northbound: northbound.to_owned(),
        source: topic.to_owned(),
        kind: kind.to_owned(),
        target: topic
            .rsplit('/')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("/"),
        value: clip(&value),
        outcome: outcome.name().to_owned(),
        answer: clip(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bdseq_file_keeps_the_last_value_across_instances() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = BdSeqFile::new(dir.path(), "scada");
        assert_eq!(f.load(), None);
        f.store(41).expect("stored");
        assert_eq!(BdSeqFile::new(dir.path(), "scada").load(), Some(41));
        f.store(255).expect("stored");
        assert_eq!(f.load(), Some(255));
        assert_eq!(BdSeqFile::new(dir.path(), "other").load(), None);
    }

    #[test]
    fn an_unreadable_bdseq_file_starts_over_at_zero() {
        let dir = tempfile::tempdir().expect("temp dir");
        let f = BdSeqFile::new(dir.path(), "scada");
        std::fs::create_dir_all(f.path().parent().expect("parent")).expect("dir");
        std::fs::write(f.path(), "300\n").expect("write");
        assert_eq!(f.load(), None);
        assert_eq!(EdgeNode::next_bd_seq(f.load()), 0);
        std::fs::write(f.path(), "garbage").expect("write");
        assert_eq!(f.load(), None);
    }
}
