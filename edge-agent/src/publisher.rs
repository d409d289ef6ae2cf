//! One publisher per northbound: reads committed records from the store in order, publishes
//! them at QoS 1, matches every PUBACK to its record, and moves the northbound's cursor only
//! over an unbroken run of acknowledged records. A connection loss throws away the MQTT
//! client's state and resends everything after the cursor from the store, so the broker losing
//! its session (or the agent being killed) loses nothing; duplicates carry the same `seq`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_config::Northbound;
use edge_store::{RecordId, Store};
use mes_bridge::{Message, UnsEncoder};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing,
    QoS, Transport,
};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

pub use crate::northbound::TransportError as PublisherError;
use crate::northbound::{stopped, transport, Backoff, StoreReader};

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
}

/// What an `Outgoing::Publish` event stands for, in the order publishes were requested.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Record(RecordId),
    Status,
}

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
}

impl Publisher {
    pub fn new(nb: Northbound, store: Store, encoder: UnsEncoder, gateway: GatewayInfo) -> Self {
        Publisher {
            nb,
            store,
            encoder,
            gateway,
            stats: Arc::new(PublisherStats::default()),
            sent_below: 0,
        }
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
        loop {
            if *shutdown.borrow() {
                return;
            }
            let started = Instant::now();
            let outcome = self.session(transport.clone(), &mut shutdown, drain).await;
            self.stats.connected.store(false, Ordering::Relaxed);
            self.stats.inflight.store(0, Ordering::Relaxed);
            match outcome {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost(reason) => {
                    let wait = backoff.after(started.elapsed());
                    warn!(northbound = %self.nb.name, url = %self.nb.url, reason = %reason, retry_in = ?wait,
                        "broker connection lost; samples stay in the store until it is back");
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
        o.set_clean_session(false);
        o.set_keep_alive(self.nb.keep_alive);
        o.set_inflight(self.nb.max_inflight);
        o.set_request_channel_capacity(self.nb.max_inflight as usize + 16);
        o.set_max_packet_size(1 << 20, 1 << 20);
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
        eventloop
            .network_options
            .set_connection_timeout(self.nb.connect_timeout.as_secs().max(1));
        let mut w = Window::new(self.store.cursor(&self.nb.name), self.sent_below);
        let end = self
            .connection(&client, &mut eventloop, &mut w, shutdown, drain)
            .await;
        // Whatever this connection was handed is a resend when sent again.
        self.sent_below = self.sent_below.max(w.handed_below);
        end
    }

    async fn connection(
        &mut self,
        client: &AsyncClient,
        eventloop: &mut EventLoop,
        w: &mut Window,
        shutdown: &mut watch::Receiver<bool>,
        drain: Duration,
    ) -> SessionEnd {
        let mut head = self.store.watch();
        let mut connected = false;
        // Records below this were stored before the connection came up: a backlog.
        let mut replay_below = self.store.next_id();

        loop {
            if connected {
                if let Err(reason) = self.fill(client, w, replay_below) {
                    return SessionEnd::Lost(reason);
                }
            }
            tokio::select! {
                biased;
                _ = stopped(shutdown) => {
                    self.drain(client, eventloop, w, connected, drain).await;
                    return SessionEnd::Shutdown;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            return SessionEnd::Lost(format!("broker refused the connection: {:?}", ack.code));
                        }
                        connected = true;
                        replay_below = self.store.next_id();
                        self.stats.connected.store(true, Ordering::Relaxed);
                        self.stats.ever_connected.store(true, Ordering::Relaxed);
                        self.stats.connects.fetch_add(1, Ordering::Relaxed);
                        let backlog = replay_below.saturating_sub(w.reader.position());
                        info!(northbound = %self.nb.name, url = %self.nb.url, session_present = ack.session_present,
                            backlog_records = backlog, "connected to broker");
                        let online = self.encoder.status_online(&self.gateway.id, &self.gateway.version, self.gateway.started_ms);
                        if client.try_publish(online.topic, QoS::AtLeastOnce, true, online.payload).is_ok() {
                            w.sent.push_back(Sent::Status);
                        }
                    }
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
                    Err(e) => return SessionEnd::Lost(e.to_string()),
                },
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
            let mut out = Vec::with_capacity(self.encoder.message_count(&batch));
            self.encoder.encode(&batch, id < replay_below, &mut out);
            // A record with nothing to say counts as delivered once those before it are.
            w.handed_below = id + 1;
            w.records.push_back(InflightRecord {
                id,
                unacked: out.len(),
                unsent: out.into(),
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

    /// Moves the cursor over the unbroken run of fully acknowledged records at the front.
    fn advance(&mut self, w: &mut Window) {
        let mut next = None;
        while let Some(front) = w.records.front() {
            if front.unacked > 0 || !front.unsent.is_empty() {
                break;
            }
            next = Some(front.id + 1);
            w.records.pop_front();
            self.stats.records_acked.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(next) = next {
            if let Err(e) = self.store.ack(&self.nb.name, next) {
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
    ) {
        if !connected {
            return;
        }
        let deadline = tokio::time::Instant::now() + limit;
        let offline = self.encoder.status_offline(&self.gateway.id);
        let mut status_sent = false;
        loop {
            if w.inflight_msgs == 0 && !status_sent {
                if client
                    .try_publish(
                        offline.topic.clone(),
                        QoS::AtLeastOnce,
                        true,
                        offline.payload.clone(),
                    )
                    .is_ok()
                {
                    w.sent.push_back(Sent::Status);
                }
                let _ = client.try_disconnect();
                status_sent = true;
            }
            match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Err(_) => {
                    warn!(northbound = %self.nb.name, inflight = w.inflight_msgs,
                        "stop deadline reached with messages unacknowledged; they are sent again at the next start");
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

enum SessionEnd {
    Shutdown,
    Lost(String),
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
        }
    }

    /// True when the window is full, so new records are not worth waking up for.
    fn is_full(&self, max: u16) -> bool {
        self.inflight_msgs >= max as usize
    }
}
