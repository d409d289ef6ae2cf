//! One task per OPC UA server: connects a session, creates its subscriptions (one per
//! publishing interval) and runs the polled tags' Read schedule, turns data values into samples
//! (status code → quality, source timestamp kept) and hands them to the core as batches. When
//! the session is lost (server restart, network cut, failed keep-alives) every tag turns `bad`
//! (once per outage), and a fresh session with fresh subscriptions is built after a backoff
//! with jitter. The backoff starts over only once the server delivers data again: a server
//! that opens sessions but never delivers is one outage, not a reconnect storm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_driver::{
    next_tick, DeviceCounters, Reconnect, ReportRule, ReportState, Retry, Scaling, WriteError,
    WriteHandle, WriteRequest, WriteTag,
};
use edge_model::{now_ms, Batch, Quality, Sample, Value};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, StatusCode,
    TimestampsToReturn, Variant, WriteValue,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout};
use tracing::{debug, error, info, warn};

use crate::convert::{epoch_ms, quality_of, tag_value, write_variant, VarType};
use crate::session::{
    connect, resolve, status_text, value_of, ConnectError, Connection, LinkEvent, Notification,
    NotificationSink, MAX_NOTIFICATIONS_PER_PUBLISH, NOTIFICATION_QUEUE,
};
use crate::spec::{Deadband, DeviceSpec, TagMode, TagSpec};

/// Tags read together on one schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct PollGroup {
    pub interval: Duration,
    /// Indexes into the device's tags.
    pub tags: Vec<usize>,
}

/// Tags monitored by one subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionGroup {
    pub publishing_interval: Duration,
    pub tags: Vec<usize>,
}

/// The polled tags grouped by interval, fastest first.
pub fn poll_groups(spec: &DeviceSpec) -> Vec<PollGroup> {
    let mut groups: Vec<PollGroup> = Vec::new();
    for (i, t) in spec.tags.iter().enumerate() {
        if let TagMode::Polling { interval, .. } = t.mode {
            match groups.iter_mut().find(|g| g.interval == interval) {
                Some(g) => g.tags.push(i),
                None => groups.push(PollGroup {
                    interval,
                    tags: vec![i],
                }),
            }
        }
    }
    groups.sort_by_key(|g| g.interval);
    groups
}

/// The subscribed tags grouped by publishing interval, fastest first.
pub fn subscription_groups(spec: &DeviceSpec) -> Vec<SubscriptionGroup> {
    let mut groups: Vec<SubscriptionGroup> = Vec::new();
    for (i, t) in spec.tags.iter().enumerate() {
        if let TagMode::Subscription {
            publishing_interval,
            ..
        } = t.mode
        {
            match groups
                .iter_mut()
                .find(|g| g.publishing_interval == publishing_interval)
            {
                Some(g) => g.tags.push(i),
                None => groups.push(SubscriptionGroup {
                    publishing_interval,
                    tags: vec![i],
                }),
            }
        }
    }
    groups.sort_by_key(|g| g.publishing_interval);
    groups
}

/// Keep-alive and lifetime counts for a publishing interval: a keep-alive about every five
/// seconds (at least every publish), and a lifetime of six keep-alives, so the server keeps
/// the subscription through a short outage but drops it when the gateway is gone.
pub fn subscription_counts(publishing_interval: Duration) -> (u32, u32) {
    let ms = publishing_interval.as_millis().max(1);
    let keep_alive = (5000u128.div_ceil(ms)).clamp(1, 1000) as u32;
    (keep_alive * 6, keep_alive)
}

/// The DataChangeFilter of a subscribed tag: report value and status changes, within the
/// deadband when there is one.
pub fn data_change_filter(deadband: Deadband) -> DataChangeFilter {
    let (deadband_type, deadband_value) = match deadband {
        Deadband::None => (DeadbandType::None, 0.0),
        Deadband::Absolute(v) => (DeadbandType::Absolute, v),
        Deadband::Percent(v) => (DeadbandType::Percent, v),
    };
    DataChangeFilter {
        trigger: DataChangeTrigger::StatusValue,
        deadband_type: deadband_type as u32,
        deadband_value,
    }
}

/// Numeric values of a tag are stored as `raw * scale + offset`.
fn scaling(tag: &TagSpec) -> Scaling {
    Scaling {
        scale: tag.scale,
        offset: tag.offset,
    }
}

/// What commands' values for a tag are checked against before they reach the task. The
/// variable's data type is known only on the session, so the task converts and checks then.
fn write_tag(tag: &TagSpec) -> WriteTag {
    WriteTag {
        name: tag.name.clone(),
        writable: tag.writable,
        data_type: None,
        scaling: scaling(tag),
    }
}

/// What the task keeps per tag across sessions.
#[derive(Debug, Default)]
struct TagState {
    report: ReportState,
    /// Why the tag is bad when the reason is the tag's own (unknown node, conversion); logged
    /// once when it turns bad.
    error: Option<String>,
}

/// What the task knows about a tag in the current session.
#[derive(Debug, Clone, Default)]
struct SessionTag {
    node: Option<NodeId>,
    /// The variable's data type, for writes.
    var_type: Option<VarType>,
    /// Why writes are impossible in this session, when they are.
    write_problem: Option<String>,
}

/// How a Read the server refused for its size is reported inside the task.
const TOO_MANY: &str = "the server refuses a Read of this many nodes (BadTooManyOperations)";

/// Why a connected session ended.
enum End {
    Shutdown,
    Lost(String),
}

/// An OPC UA device task, ready to run.
#[derive(Debug)]
pub struct OpcUaDevice {
    spec: Arc<DeviceSpec>,
    counters: Arc<DeviceCounters>,
    dropped: Arc<AtomicU64>,
    writes: mpsc::Receiver<WriteRequest>,
    handle: WriteHandle,
}

impl OpcUaDevice {
    pub fn new(spec: DeviceSpec) -> OpcUaDevice {
        let (handle, writes) = WriteHandle::channel(
            spec.name.0.clone(),
            spec.tags.iter().map(write_tag).collect(),
        );
        OpcUaDevice {
            spec: Arc::new(spec),
            counters: Arc::new(DeviceCounters::default()),
            dropped: Arc::new(AtomicU64::new(0)),
            writes,
            handle,
        }
    }

    /// Where commands send writes for this device.
    pub fn handle(&self) -> WriteHandle {
        self.handle.clone()
    }

    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// Publish responses dropped because the task fell behind (the store could not keep up).
    pub fn dropped_notifications(&self) -> Arc<AtomicU64> {
        self.dropped.clone()
    }

    pub fn spec(&self) -> &DeviceSpec {
        &self.spec
    }

    /// Runs until `shutdown` turns true or the batch channel closes.
    pub async fn run(self, tx: mpsc::Sender<Batch>, mut shutdown: watch::Receiver<bool>) {
        let OpcUaDevice {
            spec,
            counters,
            dropped,
            mut writes,
            handle,
        } = self;
        // Only the handles given out keep the write channel open.
        drop(handle);
        let mut task = Task {
            spec: &spec,
            counters: &counters,
            dropped: &dropped,
            tx: &tx,
            states: (0..spec.tags.len()).map(|_| TagState::default()).collect(),
            polls: poll_groups(&spec),
            subscriptions: subscription_groups(&spec),
            read_limit: 1,
            reconnect: Reconnect::new(spec.backoff_min, spec.backoff_max),
        };
        if spec.pki.trust_on_first_use {
            warn!(device = %spec.name, endpoint = %spec.endpoint,
                "trust_on_first_use is on: an unknown server certificate is trusted without checking; turn it off once the server's certificate is in the trusted list");
        }
        let mut retry_at = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            match wait_offline(retry_at, &mut shutdown, &mut writes).await {
                Offline::Due => {}
                Offline::Shutdown => break,
                Offline::Write(req) => {
                    let _ = req.reply.send(Err(WriteError::Offline));
                    continue;
                }
            }
            let attempt = tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                r = connect(&spec) => r,
            };
            let conn = match attempt {
                Ok(conn) => conn,
                Err(e) => {
                    counters.transport_errors.fetch_add(1, Ordering::Relaxed);
                    counters.set_error(e.to_string());
                    let retry = task.reconnect.failed();
                    task.report_connect_failure(&e, retry);
                    if !task.all_bad().await {
                        break;
                    }
                    retry_at = Instant::now() + retry.wait;
                    continue;
                }
            };
            counters.connects.fetch_add(1, Ordering::Relaxed);
            let end = task.connected(conn, &mut shutdown, &mut writes).await;
            counters.connected.store(false, Ordering::Relaxed);
            match end {
                End::Shutdown => break,
                End::Lost(why) => {
                    counters.transport_errors.fetch_add(1, Ordering::Relaxed);
                    counters.set_error(why.to_string());
                    // After data the first reconnect comes quickly (most losses are a server
                    // restart); a session that delivered nothing continues the outage.
                    let retry = task.reconnect.failed();
                    if retry.starts_outage {
                        warn!(device = %spec.name, endpoint = %spec.endpoint, reason = %why,
                            "OPC UA session lost; its tags are bad until the server answers again");
                    } else {
                        debug!(device = %spec.name, reason = %why, retry_in = ?retry.wait,
                            "the session ended before the server delivered data; reconnecting later");
                    }
                    if !task.all_bad().await {
                        break;
                    }
                    retry_at = Instant::now() + retry.wait;
                }
            }
        }
        counters.connected.store(false, Ordering::Relaxed);
        debug!(device = %spec.name, "OPC UA device task stopped");
    }
}

enum Offline {
    Due,
    Shutdown,
    Write(WriteRequest),
}

/// Sleeps until `at` while disconnected, answering writes at once.
async fn wait_offline(
    at: Instant,
    shutdown: &mut watch::Receiver<bool>,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Offline {
    tokio::select! {
        biased;
        r = shutdown.changed() => {
            if r.is_err() || *shutdown.borrow() { Offline::Shutdown } else { Offline::Due }
        }
        Some(req) = writes.recv() => Offline::Write(req),
        _ = sleep_until(at.into()) => {
            if *shutdown.borrow() { Offline::Shutdown } else { Offline::Due }
        }
    }
}

struct Task<'a> {
    spec: &'a DeviceSpec,
    counters: &'a DeviceCounters,
    dropped: &'a Arc<AtomicU64>,
    tx: &'a mpsc::Sender<Batch>,
    states: Vec<TagState>,
    polls: Vec<PollGroup>,
    subscriptions: Vec<SubscriptionGroup>,
    /// Nodes per Read in the current session (see `read_all`).
    read_limit: usize,
    /// The backoff and the outage, which only data from the server ends.
    reconnect: Reconnect,
}

impl Task<'_> {
    fn report_connect_failure(&self, e: &ConnectError, retry: Retry) {
        let spec = self.spec;
        let (reported, retry_in) = (!retry.starts_outage, retry.wait);
        match e {
            ConnectError::Untrusted { path, thumbprint } if !reported => {
                let config = spec
                    .pki
                    .config_path
                    .as_ref()
                    .map(|p| format!(" -c {}", p.display()))
                    .unwrap_or_default();
                error!(device = %spec.name, endpoint = %spec.endpoint, certificate = %path.display(),
                    "the server's certificate is not trusted, so the gateway refuses to connect; it was saved to {}. If this is the right server, trust it with: edge-agent opcua trust{config} accept {thumbprint}",
                    path.display());
            }
            _ if !reported => {
                warn!(device = %spec.name, endpoint = %spec.endpoint, error = %e,
                    "cannot establish an OPC UA session; its tags are bad until it can");
            }
            _ => debug!(device = %spec.name, error = %e, retry_in = ?retry_in, "reconnect failed"),
        }
    }

    /// The server delivered data (a Read of tags answered, a data notification): the backoff
    /// starts over and an outage ends.
    fn answered(&mut self) {
        self.counters.connected.store(true, Ordering::Relaxed);
        if self.reconnect.answered() {
            info!(device = %self.spec.name, endpoint = %self.spec.endpoint,
                "the server delivers data again");
        }
    }

    /// Sends a batch; false when the core has gone (the agent is stopping).
    async fn send(&self, batch: Batch) -> bool {
        if batch.is_empty() {
            return true;
        }
        let n = batch.len() as u64;
        if self.tx.send(batch).await.is_err() {
            return false;
        }
        self.counters.samples.fetch_add(n, Ordering::Relaxed);
        true
    }

    /// Bad samples for every tag whose last report was not already bad.
    async fn all_bad(&mut self) -> bool {
        let mut batch = Batch::new(self.spec.name.clone());
        let now = now_ms();
        for i in 0..self.spec.tags.len() {
            self.offer(i, None, Quality::Bad, now, None, &mut batch);
        }
        self.send(batch).await
    }

    fn rule(&self, i: usize) -> ReportRule {
        match self.spec.tags.get(i).map(|t| &t.mode) {
            Some(TagMode::Polling {
                deadband,
                heartbeat,
                ..
            }) => ReportRule {
                deadband: *deadband,
                heartbeat: *heartbeat,
            },
            // The server filters subscribed values: every notification is news.
            _ => ReportRule {
                deadband: None,
                heartbeat: None,
            },
        }
    }

    fn offer(
        &mut self,
        i: usize,
        value: Option<Value>,
        quality: Quality,
        read_ts: u64,
        source_ts: Option<u64>,
        batch: &mut Batch,
    ) {
        let rule = self.rule(i);
        let (Some(tag), Some(state)) = (self.spec.tags.get(i), self.states.get_mut(i)) else {
            return;
        };
        if state.report.offer(&rule, &value, quality, Instant::now()) {
            batch.samples.push(Sample {
                tag: tag.name.clone(),
                value,
                quality,
                read_ts_ms: read_ts,
                source_ts_ms: source_ts,
                seq: 0,
            });
        }
    }

    /// Marks a tag bad for a reason of its own, logging the reason once per bad episode.
    fn tag_error(&mut self, i: usize, why: String, batch: &mut Batch) {
        if let (Some(tag), Some(state)) = (self.spec.tags.get(i), self.states.get_mut(i)) {
            if state.error.as_deref() != Some(why.as_str()) {
                warn!(device = %self.spec.name, tag = %tag.name, node = %tag.node, error = %why,
                    "the tag is bad");
                state.error = Some(why);
            }
        }
        self.offer(i, None, Quality::Bad, now_ms(), None, batch);
    }

    /// One data value of tag `i`, from a Read or a notification.
    fn data_value(&mut self, i: usize, dv: &DataValue, read_ts: u64, batch: &mut Batch) {
        let Some(tag) = self.spec.tags.get(i) else {
            return;
        };
        let status = dv.status();
        let quality = quality_of(status);
        let source_ts = dv.source_timestamp.as_ref().and_then(epoch_ms);
        if quality == Quality::Bad {
            let why = format!("the server reports {}", status_text(status));
            self.tag_error(i, why, batch);
            return;
        }
        let converted = match &dv.value {
            Some(v) => tag_value(v, tag.data_type, scaling(tag)),
            None => Err("the server sent no value".to_owned()),
        };
        match converted {
            Ok(value) => {
                if let Some(state) = self.states.get_mut(i) {
                    if state.error.take().is_some() {
                        info!(device = %self.spec.name, tag = %tag.name, "the tag reads again");
                    }
                }
                self.offer(i, Some(value), quality, read_ts, source_ts, batch);
            }
            Err(why) => self.tag_error(i, why, batch),
        }
    }

    /// Runs one established session until it is lost or the agent stops.
    async fn connected(
        &mut self,
        mut conn: Connection,
        shutdown: &mut watch::Receiver<bool>,
        writes: &mut mpsc::Receiver<WriteRequest>,
    ) -> End {
        let spec = self.spec;
        let limit = spec.request_timeout;
        let (note_tx, mut notes) = mpsc::channel(NOTIFICATION_QUEUE);
        self.read_limit = conn.limits.nodes_per_read.max(1);
        let mut tags = vec![SessionTag::default(); spec.tags.len()];
        let mut batch = Batch::new(spec.name.clone());
        for (i, t) in spec.tags.iter().enumerate() {
            match resolve(&t.node, &conn.namespaces) {
                Ok(node) => tags[i].node = Some(node),
                Err(why) => self.tag_error(i, why, &mut batch),
            }
        }
        if let Err(why) = self.read_write_types(&conn, &mut tags).await {
            return End::Lost(why);
        }
        for group in self.subscriptions.clone() {
            if let Err(why) = self
                .subscribe(&conn, &group, &tags, note_tx.clone(), &mut batch)
                .await
            {
                return End::Lost(why);
            }
        }
        drop(note_tx);
        // No report state is reset here: a session starts only after every tag was reported
        // bad, so each tag's first good value is a quality change and is always stored.
        // `connected` waits for data, unless there is none to wait for.
        if spec.tags.is_empty() {
            self.counters.connected.store(true, Ordering::Relaxed);
        }
        let subscribed: usize = self.subscriptions.iter().map(|g| g.tags.len()).sum();
        // A server that opens sessions but never delivers logs its first one only.
        if !self.reconnect.opened() {
            debug!(device = %spec.name, endpoint = %spec.endpoint, "another OPC UA session opened; the server has delivered no data since the outage began");
        } else {
            info!(device = %spec.name, endpoint = %spec.endpoint, security = %format!("{}/{}", spec.security_policy, spec.security_mode),
                subscriptions = self.subscriptions.len(), subscribed, polled = spec.tags.len() - subscribed,
                max_nodes_per_read = conn.limits.nodes_per_read, "OPC UA session established");
        }
        if !self
            .send(std::mem::replace(&mut batch, Batch::new(spec.name.clone())))
            .await
        {
            return End::Shutdown;
        }

        let now = Instant::now();
        let mut next_due: Vec<Instant> = vec![now; self.polls.len()];
        let mut dropped_seen = self.dropped.load(Ordering::Relaxed);
        let mut notes_open = true;
        loop {
            let (gi, due) = next_due
                .iter()
                .enumerate()
                .min_by_key(|(_, d)| **d)
                .map(|(i, d)| (i, *d))
                .unwrap_or((usize::MAX, Instant::now() + Duration::from_secs(3600)));
            tokio::select! {
                biased;
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        conn.close(limit).await;
                        return End::Shutdown;
                    }
                }
                event = conn.events.recv() => {
                    let why = match event {
                        Some(LinkEvent::Lost(code)) => status_text(code),
                        Some(LinkEvent::Connected) => continue,
                        None => "the session's event loop ended".to_owned(),
                    };
                    return End::Lost(why);
                }
                Some(req) = writes.recv() => {
                    let result = self.write(&conn, &tags, &req).await;
                    let lost = result.as_ref().is_err_and(WriteError::loses_connection);
                    match &result {
                        Ok(()) => info!(device = %spec.name, tag = %spec.tags[req.tag].name, value = %req.value, "write done"),
                        Err(e) => warn!(device = %spec.name, tag = %spec.tags[req.tag].name, error = %e, "write failed"),
                    }
                    let _ = req.reply.send(result);
                    if lost {
                        return End::Lost("a write got no answer".to_owned());
                    }
                }
                note = notes.recv(), if notes_open => {
                    match note {
                        Some(Notification::Data(values)) => {
                            self.counters.reads_ok.fetch_add(1, Ordering::Relaxed);
                            self.answered();
                            let read_ts = now_ms();
                            for (handle, dv) in &values {
                                if let Some(i) = (*handle as usize).checked_sub(1) {
                                    if spec.tags.get(i).is_some_and(|t| t.mode.is_subscription()) {
                                        self.data_value(i, dv, read_ts, &mut batch);
                                    }
                                }
                            }
                        }
                        Some(Notification::Status(code)) => {
                            if code.is_bad() {
                                return End::Lost(format!("the server ended a subscription: {}", status_text(code)));
                            }
                        }
                        None => {
                            if !self.subscriptions.is_empty() {
                                return End::Lost("the subscriptions stopped".to_owned());
                            }
                            // No subscriptions: nothing will ever arrive here.
                            notes_open = false;
                        }
                    }
                    let dropped = self.dropped.load(Ordering::Relaxed);
                    if dropped > dropped_seen {
                        error!(device = %spec.name, dropped = dropped - dropped_seen,
                            "subscription notifications were dropped because the store fell behind");
                        dropped_seen = dropped;
                    }
                }
                _ = sleep_until(due.into()), if gi != usize::MAX => {
                    let group = self.polls[gi].clone();
                    if let Err(why) = self.poll(&conn, &group, &tags, &mut batch).await {
                        // What was read before the failure is kept.
                        let partial = std::mem::replace(&mut batch, Batch::new(spec.name.clone()));
                        let _ = self.send(partial).await;
                        return End::Lost(why);
                    }
                    self.counters.scans.fetch_add(1, Ordering::Relaxed);
                    next_due[gi] = next_tick(next_due[gi], group.interval, Instant::now());
                }
            }
            if !batch.is_empty()
                && !self
                    .send(std::mem::replace(&mut batch, Batch::new(spec.name.clone())))
                    .await
            {
                conn.close(limit).await;
                return End::Shutdown;
            }
        }
    }

    /// Reads the DataType attribute of every writable tag, so writes can be given exactly the
    /// variable's type.
    async fn read_write_types(
        &mut self,
        conn: &Connection,
        tags: &mut [SessionTag],
    ) -> Result<(), String> {
        let wanted: Vec<usize> = self
            .spec
            .tags
            .iter()
            .enumerate()
            .filter(|(i, t)| t.writable && tags[*i].node.is_some())
            .map(|(i, _)| i)
            .collect();
        let nodes: Vec<_> = wanted
            .iter()
            .filter_map(|&i| tags[i].node.clone())
            .map(|node| {
                let mut r = value_of(node);
                r.attribute_id = AttributeId::DataType as u32;
                r
            })
            .collect();
        let values = self.read_all(conn, nodes).await?;
        for (&i, dv) in wanted.iter().zip(values.iter()) {
            let tag = &mut tags[i];
            match &dv.value {
                Some(Variant::NodeId(dt)) if dv.status().is_good() => {
                    match VarType::of_data_type(dt) {
                        Some(t) => tag.var_type = Some(t),
                        None => {
                            tag.write_problem = Some(format!(
                                "the variable's data type {} cannot be written from a command",
                                crate::convert::data_type_name(dt)
                            ))
                        }
                    }
                }
                _ => {
                    tag.write_problem = Some(format!(
                        "the variable's data type cannot be read: {}",
                        status_text(dv.status())
                    ))
                }
            }
        }
        Ok(())
    }

    /// A Read within the request timeout; a service-level failure ends the session.
    async fn read(
        &self,
        conn: &Connection,
        nodes: &[opcua::types::ReadValueId],
    ) -> Result<Vec<DataValue>, String> {
        let started = Instant::now();
        let result = timeout(
            self.spec.request_timeout,
            conn.session.read(nodes, TimestampsToReturn::Both, 0.0),
        )
        .await;
        self.counters
            .last_latency_us
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Err(_) => Err(format!(
                "a Read got no answer within {:?}",
                self.spec.request_timeout
            )),
            Ok(Err(e)) if e.status() == StatusCode::BadTooManyOperations => {
                Err(TOO_MANY.to_owned())
            }
            Ok(Err(e)) => Err(format!("a Read failed: {e}")),
            Ok(Ok(values)) if values.len() != nodes.len() => Err(format!(
                "the server answered {} values to a Read of {}",
                values.len(),
                nodes.len()
            )),
            Ok(Ok(values)) => {
                self.counters.reads_ok.fetch_add(1, Ordering::Relaxed);
                Ok(values)
            }
        }
    }

    /// One poll group, in as many Reads as the server's MaxNodesPerRead needs.
    async fn poll(
        &mut self,
        conn: &Connection,
        group: &PollGroup,
        tags: &[SessionTag],
        batch: &mut Batch,
    ) -> Result<(), String> {
        let live: Vec<usize> = group
            .tags
            .iter()
            .copied()
            .filter(|&i| tags[i].node.is_some())
            .collect();
        let nodes: Vec<_> = live
            .iter()
            .filter_map(|&i| tags[i].node.clone())
            .map(value_of)
            .collect();
        if nodes.is_empty() {
            return Ok(());
        }
        let read_ts = now_ms();
        let values = self.read_all(conn, nodes).await?;
        self.answered();
        for (&i, dv) in live.iter().zip(values.iter()) {
            if dv.status().is_bad() {
                self.counters.exceptions.fetch_add(1, Ordering::Relaxed);
            }
            self.data_value(i, dv, read_ts, batch);
        }
        Ok(())
    }

    /// Reads `nodes` in as few Reads as the server takes: the session's limit (the server's
    /// MaxNodesPerRead and the device's cap) to start with, halved whenever the server still
    /// answers BadTooManyOperations (servers do not always publish what they enforce).
    async fn read_all(
        &mut self,
        conn: &Connection,
        nodes: Vec<opcua::types::ReadValueId>,
    ) -> Result<Vec<DataValue>, String> {
        let mut out = Vec::with_capacity(nodes.len());
        let mut rest = &nodes[..];
        // Bounded: each round reads some nodes or halves the limit, which stops at 1.
        for _ in 0..nodes.len() + 64 {
            if rest.is_empty() {
                return Ok(out);
            }
            let n = self.read_limit.clamp(1, rest.len());
            match self.read(conn, &rest[..n]).await {
                Ok(values) => {
                    out.extend(values);
                    rest = &rest[n..];
                }
                Err(e) if e == TOO_MANY && n > 1 => {
                    self.read_limit = n / 2;
                    warn!(device = %self.spec.name, refused = n, limit = self.read_limit,
                        "the server refuses Reads of this many nodes (BadTooManyOperations); reading fewer at a time");
                }
                Err(e) => return Err(e),
            }
        }
        if rest.is_empty() {
            Ok(out)
        } else {
            Err("the server would not answer a Read of any size".to_owned())
        }
    }

    /// Creates a subscription group's subscription and monitored items, in calls within the
    /// server's MaxMonitoredItemsPerCall. A server that holds fewer items per subscription than
    /// the group has (BadTooManyMonitoredItems) gets more subscriptions with the same
    /// publishing interval. A tag the server refuses turns bad with the reason; the others are
    /// monitored.
    async fn subscribe(
        &mut self,
        conn: &Connection,
        group: &SubscriptionGroup,
        tags: &[SessionTag],
        sink: mpsc::Sender<Notification>,
        batch: &mut Batch,
    ) -> Result<(), String> {
        let mut pending: std::collections::VecDeque<usize> = group
            .tags
            .iter()
            .copied()
            .filter(|&i| tags[i].node.is_some())
            .collect();
        let mut chunk_size = conn.limits.items_per_call.max(1);
        let mut id = self.create_subscription(conn, group, sink.clone()).await?;
        let mut in_subscription = 0usize;
        // Bounded: every round monitors or refuses tags, opens a subscription, or halves the
        // chunk; none of these can repeat without end.
        let max_rounds = 4 * group.tags.len() + 64;
        for _ in 0..max_rounds {
            if pending.is_empty() {
                return Ok(());
            }
            let chunk: Vec<usize> = pending.iter().take(chunk_size).copied().collect();
            let items: Vec<MonitoredItemCreateRequest> =
                chunk.iter().filter_map(|&i| self.item(i, tags)).collect();
            let answer = timeout(
                self.spec.request_timeout,
                conn.session
                    .create_monitored_items(id, TimestampsToReturn::Both, items),
            )
            .await
            .map_err(|_| "CreateMonitoredItems got no answer".to_owned())?;
            let results = match answer {
                Ok(r) => r,
                Err(e) if e.status() == StatusCode::BadTooManyMonitoredItems => {
                    if in_subscription > 0 {
                        id = self.create_subscription(conn, group, sink.clone()).await?;
                        in_subscription = 0;
                    } else if chunk_size > 1 {
                        chunk_size /= 2;
                    } else {
                        for i in pending.drain(..) {
                            self.tag_error(
                                i,
                                "the server refused to monitor it: it takes no more monitored items".to_owned(),
                                batch,
                            );
                        }
                    }
                    continue;
                }
                Err(e) => return Err(format!("CreateMonitoredItems failed: {e}")),
            };
            let mut overflow = Vec::new();
            for (&i, created) in chunk.iter().zip(results.iter()) {
                pending.pop_front();
                let status = created.result.status_code;
                if status == StatusCode::BadTooManyMonitoredItems {
                    overflow.push(i);
                } else if status.is_bad() {
                    let hint = refusal_hint(status);
                    self.tag_error(
                        i,
                        format!(
                            "the server refused to monitor it: {}{hint}",
                            status_text(status)
                        ),
                        batch,
                    );
                } else {
                    in_subscription += 1;
                }
            }
            if !overflow.is_empty() {
                for i in overflow.into_iter().rev() {
                    pending.push_front(i);
                }
                id = self.create_subscription(conn, group, sink.clone()).await?;
                in_subscription = 0;
            }
        }
        for i in pending.drain(..) {
            self.tag_error(
                i,
                "the server would not take it in any subscription".to_owned(),
                batch,
            );
        }
        Ok(())
    }

    async fn create_subscription(
        &self,
        conn: &Connection,
        group: &SubscriptionGroup,
        sink: mpsc::Sender<Notification>,
    ) -> Result<u32, String> {
        let (lifetime, keep_alive) = subscription_counts(group.publishing_interval);
        let callback = NotificationSink {
            tx: sink,
            dropped: self.dropped.clone(),
        };
        let created = timeout(
            self.spec.request_timeout,
            conn.session.create_subscription(
                group.publishing_interval,
                lifetime,
                keep_alive,
                MAX_NOTIFICATIONS_PER_PUBLISH,
                0,
                true,
                callback,
            ),
        )
        .await;
        match created {
            Err(_) => Err("CreateSubscription got no answer".to_owned()),
            Ok(Err(e)) => Err(format!("CreateSubscription failed: {e}")),
            Ok(Ok(id)) => Ok(id),
        }
    }

    /// The monitored item of subscribed tag `i`.
    fn item(&self, i: usize, tags: &[SessionTag]) -> Option<MonitoredItemCreateRequest> {
        let node = tags.get(i)?.node.clone()?;
        let TagMode::Subscription {
            sampling_interval,
            queue_size,
            deadband,
            ..
        } = self.spec.tags.get(i)?.mode
        else {
            return None;
        };
        let filter = match deadband {
            Deadband::None => ExtensionObject::null(),
            d => ExtensionObject::from_message(data_change_filter(d)),
        };
        Some(MonitoredItemCreateRequest {
            item_to_monitor: value_of(node),
            monitoring_mode: MonitoringMode::Reporting,
            requested_parameters: MonitoringParameters {
                // Handle = tag index + 1 (0 would ask the library for one).
                client_handle: (i + 1) as u32,
                sampling_interval: sampling_interval.as_secs_f64() * 1000.0,
                filter,
                queue_size,
                discard_oldest: true,
            },
        })
    }

    /// Executes one write on the session.
    async fn write(
        &self,
        conn: &Connection,
        tags: &[SessionTag],
        req: &WriteRequest,
    ) -> Result<(), WriteError> {
        let (Some(spec), Some(session_tag)) = (self.spec.tags.get(req.tag), tags.get(req.tag))
        else {
            return Err(WriteError::UnknownTag(format!("#{}", req.tag)));
        };
        let name = &spec.name;
        let Some(node) = session_tag.node.clone() else {
            return Err(WriteError::BadValue(format!(
                "tag `{name}`: its node id cannot be used on this server"
            )));
        };
        let Some(var_type) = session_tag.var_type else {
            let why = session_tag
                .write_problem
                .clone()
                .unwrap_or_else(|| "the variable's data type is unknown".to_owned());
            return Err(WriteError::BadValue(format!("tag `{name}`: {why}")));
        };
        let variant = write_variant(var_type, &req.value, scaling(spec))
            .map_err(|e| WriteError::BadValue(format!("tag `{name}`: {e}")))?;
        let value = WriteValue {
            node_id: node,
            attribute_id: AttributeId::Value as u32,
            index_range: Default::default(),
            value: DataValue::value_only(variant),
        };
        let limit = self.spec.request_timeout;
        match timeout(limit, conn.session.write(&[value])).await {
            Err(_) => Err(WriteError::Timeout(limit)),
            Ok(Err(e)) => Err(WriteError::Transport(e.to_string())),
            Ok(Ok(results)) => match results.first() {
                Some(s) if s.is_good() => Ok(()),
                Some(s) => Err(WriteError::Refused(status_text(*s))),
                None => Err(WriteError::Refused(status_text(
                    StatusCode::BadUnexpectedError,
                ))),
            },
        }
    }
}

/// What to do about a monitored item the server refused.
fn refusal_hint(status: StatusCode) -> &'static str {
    if status == StatusCode::BadNodeIdUnknown || status == StatusCode::BadNodeIdInvalid {
        "; check the node id with `edge-agent opcua browse`"
    } else if status == StatusCode::BadFilterNotAllowed
        || status == StatusCode::BadMonitoredItemFilterUnsupported
        || status == StatusCode::BadMonitoredItemFilterInvalid
    {
        "; the variable does not support this deadband (a percent deadband needs an EURange)"
    } else if status == StatusCode::BadAttributeIdInvalid {
        "; the node is not a variable"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Identity, PkiSettings, SecurityMode, SecurityPolicy, TagSpec};
    use edge_model::{DeviceId, TagName};

    fn tag(name: &str, mode: TagMode) -> TagSpec {
        TagSpec {
            name: TagName(name.into()),
            node: format!("ns=2;s={name}").parse().expect("node id"),
            data_type: None,
            scale: 1.0,
            offset: 0.0,
            mode,
            writable: false,
        }
    }

    fn sub(ms: u64) -> TagMode {
        TagMode::Subscription {
            publishing_interval: Duration::from_millis(ms),
            sampling_interval: Duration::from_millis(ms),
            queue_size: 10,
            deadband: Deadband::None,
        }
    }

    fn poll(ms: u64) -> TagMode {
        TagMode::Polling {
            interval: Duration::from_millis(ms),
            deadband: None,
            heartbeat: None,
        }
    }

    fn spec(tags: Vec<TagSpec>) -> DeviceSpec {
        DeviceSpec {
            name: DeviceId("line".into()),
            endpoint: "opc.tcp://127.0.0.1:4840".into(),
            security_policy: SecurityPolicy::None,
            security_mode: SecurityMode::None,
            identity: Identity::Anonymous,
            session_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            max_nodes_per_read: 0,
            pki: PkiSettings {
                dir: "/tmp/pki".into(),
                application_uri: "urn:edge-agent:gw".into(),
                application_name: "edge-agent gw".into(),
                trust_on_first_use: false,
                config_path: None,
            },
            tags,
        }
    }

    #[test]
    fn tags_split_into_subscriptions_and_poll_groups_by_interval() {
        let s = spec(vec![
            tag("a", sub(1000)),
            tag("b", poll(500)),
            tag("c", sub(100)),
            tag("d", poll(500)),
            tag("e", sub(1000)),
            tag("f", poll(2000)),
        ]);
        assert_eq!(
            subscription_groups(&s),
            vec![
                SubscriptionGroup {
                    publishing_interval: Duration::from_millis(100),
                    tags: vec![2]
                },
                SubscriptionGroup {
                    publishing_interval: Duration::from_millis(1000),
                    tags: vec![0, 4]
                },
            ]
        );
        assert_eq!(
            poll_groups(&s),
            vec![
                PollGroup {
                    interval: Duration::from_millis(500),
                    tags: vec![1, 3]
                },
                PollGroup {
                    interval: Duration::from_millis(2000),
                    tags: vec![5]
                },
            ]
        );
    }

    #[test]
    fn keep_alives_come_about_every_five_seconds_and_lifetime_is_six_of_them() {
        assert_eq!(subscription_counts(Duration::from_millis(100)), (300, 50));
        assert_eq!(subscription_counts(Duration::from_millis(1000)), (30, 5));
        assert_eq!(subscription_counts(Duration::from_secs(60)), (6, 1));
        assert_eq!(subscription_counts(Duration::from_millis(1)), (6000, 1000));
    }

    #[test]
    fn deadbands_become_data_change_filters() {
        let f = data_change_filter(Deadband::Percent(2.5));
        assert_eq!(f.deadband_type, DeadbandType::Percent as u32);
        assert_eq!(f.deadband_value, 2.5);
        assert_eq!(f.trigger, DataChangeTrigger::StatusValue);
        let f = data_change_filter(Deadband::Absolute(0.1));
        assert_eq!(f.deadband_type, DeadbandType::Absolute as u32);
    }
}
