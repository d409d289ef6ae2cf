//! A test's view of the broker: a subscriber that records every message it receives, keeps
//! reconnecting and re-subscribing while fault tests kill and restart the broker, and
//! publishes commands with a bounded wait for the broker's acknowledgement.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use rumqttc::QoS;

/// How long `start` waits for the first SUBACK.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `publish` waits for the broker to take a message (written for QoS 0, PUBACK or
/// PUBCOMP otherwise).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` lets the event loop send DISCONNECT before abandoning it.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: short, because fault tests restart the broker within seconds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const WAIT_POLL: Duration = Duration::from_millis(50);
/// Batches of thousands of samples exceed rumqttc's default 10 KiB packet limit.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// One message as the collector received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Received {
    /// The payload as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.payload).ok()
    }

    /// The payload as text (lossy), for messages and assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// Completion of one `publish`: the event loop learns the packet id when it writes the
/// PUBLISH and resolves `done` when the broker acknowledges that id.
struct PublishWaiter {
    qos: QoS,
    done: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    connected: bool,
    connects: u64,
    subacks: u64,
    refused_filters: Vec<String>,
    last_error: Option<String>,
    /// The publish whose PUBLISH has not been written yet (publishes are serialised).
    next_publish: Option<PublishWaiter>,
    /// Written publishes waiting for PUBACK / PUBCOMP, by packet id.
    awaiting_ack: HashMap<u16, oneshot::Sender<()>>,
}

/// A subscriber recording everything published on its filters.
pub struct Collector {
    client: AsyncClient,
    client_id: String,
    filters: Vec<String>,
    state: Arc<Mutex<State>>,
    /// Serialises `publish` so each PUBLISH written can be matched to its caller.
    publish_lock: tokio::sync::Mutex<()>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Collector {
    /// Connects to `127.0.0.1:port` with a clean session, subscribes QoS 1 to `topics`, and
    /// returns once the broker has confirmed the subscription. Must run inside a tokio runtime.
    pub async fn start(port: u16, client_id: &str, topics: &[&str]) -> anyhow::Result<Collector> {
        Collector::start_session(port, client_id, topics, true).await
    }

    /// Like [`Collector::start`] with a persistent session (clean session off): a broker that
    /// persists sessions queues what arrives while this collector reconnects.
    pub async fn start_persistent(
        port: u16,
        client_id: &str,
        topics: &[&str],
    ) -> anyhow::Result<Collector> {
        Collector::start_session(port, client_id, topics, false).await
    }

    async fn start_session(
        port: u16,
        client_id: &str,
        topics: &[&str],
        clean: bool,
    ) -> anyhow::Result<Collector> {
        if topics.is_empty() {
            bail!("a collector needs at least one topic filter");
        }
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_clean_session(clean)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, event_loop) = AsyncClient::new(options, 64);
        let filters: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let state = Arc::new(Mutex::new(State::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(
            client.clone(),
            event_loop,
            filters.clone(),
            Arc::clone(&state),
            stop_rx,
        ));
        let collector = Collector {
            client,
            client_id: client_id.to_owned(),
            filters,
            state,
            publish_lock: tokio::sync::Mutex::new(()),
            stop: Some(stop_tx),
            task: Some(task),
        };
        collector
            .wait_subscribed(0, SUBSCRIBE_TIMEOUT)
            .await
            .with_context(|| format!("collector {client_id} on port {port}"))?;
        Ok(collector)
    }

    /// A copy of every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Received> {
        self.lock().messages.clone()
    }

    /// The messages received so far whose payload is JSON, as `(topic, value)` in arrival
    /// order; other payloads are left out.
    pub fn json(&self) -> Vec<(String, serde_json::Value)> {
        self.lock()
            .messages
            .iter()
            .filter_map(|m| m.json().map(|v| (m.topic.clone(), v)))
            .collect()
    }

    /// How many messages were received so far.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Whether nothing was received so far.
    pub fn is_empty(&self) -> bool {
        self.lock().messages.is_empty()
    }

    /// Forgets the messages received so far (to observe one phase of a test on its own).
    pub fn clear(&self) {
        self.lock().messages.clear();
    }

    /// How many times the broker confirmed the subscription (once per successful connection).
    pub fn subscriptions(&self) -> u64 {
        self.lock().subacks
    }

    /// Whether the collector is connected to the broker right now.
    pub fn is_connected(&self) -> bool {
        self.lock().connected
    }

    /// Waits until the broker has confirmed the subscription more than `after` times: pass
    /// the value of [`Collector::subscriptions`] read before a broker restart to wait for the
    /// re-subscription.
    pub async fn wait_subscribed(&self, after: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.lock();
                if !state.refused_filters.is_empty() {
                    bail!(
                        "the broker refused the subscription to {:?}",
                        state.refused_filters
                    );
                }
                if state.subacks > after {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "no SUBACK for {:?} within {:?} (connected: {}, connections: {}, \
                         last error: {})",
                        self.filters,
                        timeout,
                        state.connected,
                        state.connects,
                        state.last_error.as_deref().unwrap_or("none"),
                    );
                }
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Polls `done` over the messages received so far every 50 ms until it returns true, or
    /// fails after `timeout` with a summary of what was received. `done` runs while the
    /// message list is locked: it must not call back into this collector.
    pub async fn wait_for<F>(&self, mut done: F, timeout: Duration) -> anyhow::Result<()>
    where
        F: FnMut(&[Received]) -> bool,
    {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let state = self.lock();
                if done(&state.messages) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "condition not met within {:?}; collector {} received:\n{}",
                        timeout,
                        self.client_id,
                        summary(&state)
                    );
                }
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Publishes and waits (bounded, 10 s) until the broker has taken the message: written to
    /// the socket for QoS 0, acknowledged for QoS 1 and 2. While the collector is disconnected
    /// it waits for the reconnection first. A publish cut off by a broker outage fails rather
    /// than being retried: with a clean session the broker has forgotten it.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        qos: QoS,
        retain: bool,
    ) -> anyhow::Result<()> {
        let _serialised = self.publish_lock.lock().await;
        let (done_tx, done_rx) = oneshot::channel();
        let outcome = tokio::time::timeout(PUBLISH_TIMEOUT, async {
            // Queued while disconnected, the request could be dropped with the old session
            // at reconnect and leave this call waiting for nothing.
            while !self.is_connected() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            self.lock().next_publish = Some(PublishWaiter { qos, done: done_tx });
            self.client
                .publish(topic, qos, retain, payload.into())
                .await
                .map_err(|e| anyhow!("the event loop is gone: {e}"))?;
            done_rx
                .await
                .map_err(|_| anyhow!("the connection dropped before the broker took it"))
        })
        .await;
        // A failed or late publish must not leave its waiter for the next caller.
        self.lock().next_publish = None;
        match outcome {
            Ok(result) => result.with_context(|| format!("publishing to {topic}")),
            Err(_) => bail!(
                "publishing to {topic}: the broker did not take it within {PUBLISH_TIMEOUT:?}"
            ),
        }
    }

    /// Disconnects cleanly and ends the event loop (bounded); the messages stay readable.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(STOP_TIMEOUT * 2, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// The state stays usable even if a test panicked while holding the lock in `wait_for`.
fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The event loop: records messages, re-subscribes after every connection (the session is
/// clean), matches acknowledgements to `publish` calls, and reconnects with backoff.
async fn run(
    client: AsyncClient,
    mut event_loop: EventLoop,
    filters: Vec<String>,
    state: Arc<Mutex<State>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let event = tokio::select! {
            _ = &mut stop => break,
            event = event_loop.poll() => event,
        };
        match event {
            Ok(event) => {
                if let Event::Incoming(Packet::ConnAck(_)) = event {
                    backoff = BACKOFF_MIN;
                }
                handle(&client, &filters, &state, event);
            }
            Err(e) => {
                disconnected(&state, &e);
                // Sleep, but leave at once when the collector is stopped.
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    // Best effort: a DISCONNECT tells the broker the session ended on purpose.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(STOP_TIMEOUT, async {
            for _ in 0..64 {
                match event_loop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    lock(&state).connected = false;
}

fn handle(client: &AsyncClient, filters: &[String], state: &Mutex<State>, event: Event) {
    match event {
        Event::Incoming(Packet::ConnAck(_)) => {
            {
                let mut state = lock(state);
                state.connected = true;
                state.connects += 1;
            }
            let subscribe = filters
                .iter()
                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
            if let Err(e) = client.try_subscribe_many(subscribe) {
                lock(state).last_error = Some(format!("queueing SUBSCRIBE: {e}"));
            }
        }
        Event::Incoming(Packet::SubAck(ack)) => {
            let mut state = lock(state);
            let refused: Vec<String> = ack
                .return_codes
                .iter()
                .zip(filters)
                .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                .map(|(_, filter)| filter.clone())
                .collect();
            if refused.is_empty() {
                state.subacks += 1;
            } else {
                state.refused_filters = refused;
            }
        }
        Event::Incoming(Packet::Publish(publish)) => {
            lock(state).messages.push(Received {
                topic: publish.topic,
                payload: publish.payload.to_vec(),
                retain: publish.retain,
                at: Instant::now(),
            });
        }
        Event::Outgoing(Outgoing::Publish(pkid)) => {
            let mut state = lock(state);
            if let Some(waiter) = state.next_publish.take() {
                if waiter.qos == QoS::AtMostOnce {
                    let _ = waiter.done.send(());
                } else {
                    state.awaiting_ack.insert(pkid, waiter.done);
                }
            }
        }
        Event::Incoming(Packet::PubAck(ack)) => complete(state, ack.pkid),
        Event::Incoming(Packet::PubComp(comp)) => complete(state, comp.pkid),
        _ => {}
    }
}

fn complete(state: &Mutex<State>, pkid: u16) {
    if let Some(done) = lock(state).awaiting_ack.remove(&pkid) {
        let _ = done.send(());
    }
}

fn disconnected(state: &Mutex<State>, error: &ConnectionError) {
    let mut state = lock(state);
    state.connected = false;
    state.last_error = Some(error.to_string());
    // Clean session: whatever was in flight is gone; dropping the senders fails those
    // publishes instead of letting them wait for their timeout.
    state.next_publish = None;
    state.awaiting_ack.clear();
}

/// What a collector received, short enough for a test failure message.
fn summary(state: &State) -> String {
    const LAST: usize = 5;
    const PAYLOAD_CHARS: usize = 200;
    let mut per_topic: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &state.messages {
        *per_topic.entry(m.topic.as_str()).or_default() += 1;
    }
    let mut out = format!(
        "  {} messages on {} topics (connected: {}, connections: {}, last error: {})\n",
        state.messages.len(),
        per_topic.len(),
        state.connected,
        state.connects,
        state.last_error.as_deref().unwrap_or("none"),
    );
    for (topic, count) in per_topic.iter().take(20) {
        out.push_str(&format!("  {count:>7} × {topic}\n"));
    }
    if per_topic.len() > 20 {
        out.push_str(&format!("  ... and {} more topics\n", per_topic.len() - 20));
    }
    let skip = state.messages.len().saturating_sub(LAST);
    for m in &state.messages[skip..] {
        let text: String = m.text().chars().take(PAYLOAD_CHARS).collect();
        out.push_str(&format!("  last: {} {}\n", m.topic, text));
    }
    out
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Collector")
            .field("client_id", &self.client_id)
            .field("filters", &self.filters)
            .field("messages", &state.messages.len())
            .field("connected", &state.connected)
            .field("connects", &state.connects)
            .finish()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
