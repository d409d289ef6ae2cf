//! One task per Modbus device: connects (TCP, RTU over TCP, or a slave on a serial bus), runs
//! the read plan on a schedule that does not drift, decodes the answers into samples and hands
//! them to the core as batches. A device that stops answering turns its tags `bad` (once per
//! outage) and is retried with exponential backoff and jitter, which starts over only when the
//! device answers again, not when a connect succeeds: a PLC whose TCP stack accepts while its
//! program hangs is one outage, not a reconnect storm. Since every device has its own task, a
//! dead PLC never slows the others. A device that refuses merged reads gets its block size
//! learned.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_driver::{
    next_tick, DeviceCounters, Reconnect, ReportRule, ReportState, Scaling, WriteError,
    WriteHandle, WriteRequest,
};
use edge_model::{now_ms, Batch, DataType, DeviceId, Quality, Sample, TagName, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;
use tokio_modbus::ExceptionCode;
use tracing::{debug, info, warn};

use crate::address::{Address, Area, ByteOrder};
use crate::codec::decode_registers;
use crate::learn::{BlockKind, BlockLearner, LimitStore};
use crate::link::{Link, Transport};
use crate::plan::{plan, PlanError, PlanLimits, PlanTag, ReadPlan, ReadRequest};
use crate::rtu::{Op, Reply};
use crate::write::{prepare_write, WriteOp};

/// Everything the poller needs to know about one tag.
#[derive(Debug, Clone)]
pub struct TagSpec {
    pub name: TagName,
    pub address: Address,
    pub data_type: DataType,
    pub byte_order: ByteOrder,
    pub scaling: Scaling,
    pub report: ReportRule,
    pub interval: Duration,
    /// Commands may write this tag (only coils and holding registers can be).
    pub writable: bool,
}

/// Everything the poller needs to know about one device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub name: DeviceId,
    /// How the device is reached; `host` and `port` apply to the TCP transports.
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    pub unit_id: u8,
    /// Bound on every connect and every request.
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub limits: PlanLimits,
    pub tags: Vec<TagSpec>,
    /// Where learned block sizes are kept; `None` learns for this run only.
    pub learned_limits: Option<Arc<LimitStore>>,
}

/// A Modbus failure, split by cause: an exception is the device refusing a request (a
/// configuration matter, the connection is fine); everything else means reconnect.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the device answered with Modbus exception {0:?} (0x{code:02X})", code = u8::from(*.0))]
    Exception(ExceptionCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A timeout before the device answered anything on this connection: a PLC whose TCP
    /// stack still accepts while its program hangs, or a device server with a silent slave.
    #[error("the device accepted the connection but did not answer within {0:?}")]
    Unanswered(Duration),
    #[error("the device closed the connection without answering")]
    Closed,
    #[error("the connection failed: {0}")]
    Transport(String),
    #[error("the device answered {got} values for a request of {want}")]
    ShortResponse { want: u16, got: usize },
    #[error("the device's answer does not fit the request: {0}")]
    BadAnswer(String),
}

impl ReadError {
    fn drops_connection(&self) -> bool {
        !matches!(self, ReadError::Exception(_))
    }
}

enum Data {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

/// A device task, ready to run.
#[derive(Debug)]
pub struct DevicePoller {
    spec: DeviceSpec,
    plan: ReadPlan,
    counters: Arc<DeviceCounters>,
    writes: mpsc::Receiver<WriteRequest>,
    handle: WriteHandle,
}

impl DevicePoller {
    pub fn new(mut spec: DeviceSpec) -> Result<DevicePoller, PlanError> {
        // Limits learned on an earlier run apply from the first read on.
        if let Some(store) = &spec.learned_limits {
            let learned = |kind| store.get(&spec.name.0, kind).filter(|l| *l >= 1);
            if let Some(l) = learned(BlockKind::Registers) {
                spec.limits.max_registers = spec.limits.max_registers.min(l);
            }
            if let Some(l) = learned(BlockKind::Bits) {
                spec.limits.max_bits = spec.limits.max_bits.min(l);
            }
            spec.limits.max_gap_registers = spec
                .limits
                .max_gap_registers
                .min(spec.limits.max_registers - 1);
            spec.limits.max_gap_bits = spec.limits.max_gap_bits.min(spec.limits.max_bits - 1);
        }
        let plan = plan_for(&spec)?;
        let (handle, writes) = WriteHandle::channel(
            spec.name.0.clone(),
            spec.tags.iter().map(TagSpec::write_tag).collect(),
        );
        Ok(DevicePoller {
            spec,
            plan,
            counters: Arc::new(DeviceCounters::default()),
            writes,
            handle,
        })
    }

    /// Where commands send writes for this device.
    pub fn handle(&self) -> WriteHandle {
        self.handle.clone()
    }

    pub fn plan(&self) -> &ReadPlan {
        &self.plan
    }

    pub fn counters(&self) -> Arc<DeviceCounters> {
        self.counters.clone()
    }

    /// Polls until `shutdown` turns true or the batch channel closes.
    pub async fn run(self, tx: mpsc::Sender<Batch>, mut shutdown: watch::Receiver<bool>) {
        let DevicePoller {
            mut spec,
            mut plan,
            counters,
            mut writes,
            handle,
        } = self;
        let mut learners = Learners::new(&spec);
        // Only the handles given out keep the write channel open.
        drop(handle);
        // Kept across reconnects: a tag is reported bad once per outage, and its first good
        // reading after it is a quality change, always reported.
        let mut states: Vec<ReportState> = vec![ReportState::default(); spec.tags.len()];
        let mut failing: Vec<Vec<bool>> = plan
            .groups
            .iter()
            .map(|g| vec![false; g.requests.len()])
            .collect();
        let mut conn: Option<Link> = None;
        let mut link = LinkState::new(&spec);
        let mut retry_at = Instant::now();
        let mut next_due: Vec<Instant> = vec![Instant::now(); plan.groups.len()];

        loop {
            if *shutdown.borrow() {
                break;
            }
            if conn.is_none() {
                match wait(retry_at, &mut shutdown, &mut writes).await {
                    Wake::Due => {}
                    Wake::Shutdown => break,
                    Wake::Write(req) => {
                        // Not queued for later: a command must learn now that it failed.
                        let _ = req.reply.send(Err(WriteError::Offline));
                        continue;
                    }
                }
                match connect(&spec, &plan).await {
                    Ok((ctx, probed)) => {
                        counters.connects.fetch_add(1, Ordering::Relaxed);
                        link.opened(&spec, &counters, plan.groups.is_empty());
                        conn = Some(ctx);
                        let now = Instant::now();
                        next_due.iter_mut().for_each(|d| *d = now);
                        if let (Some((data, read_ts)), Some(req)) = (probed, probe_request(&plan)) {
                            counters.reads_ok.fetch_add(1, Ordering::Relaxed);
                            link.answered(&spec, &counters);
                            let mut batch = Batch::new(spec.name.clone());
                            decode_request(&spec, req, &data, read_ts, &mut states, &mut batch);
                            if !send(&tx, batch, &counters).await {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        counters.set_error(e.to_string());
                        retry_at = Instant::now() + link.unreachable(&spec, &e);
                        let batch = all_bad(&spec, &mut states);
                        if !send(&tx, batch, &counters).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let (gi, due) = next_due
                .iter()
                .enumerate()
                .min_by_key(|(_, d)| **d)
                .map(|(i, d)| (i, *d))
                // Nothing to poll: only writes and shutdown wake the task.
                .unwrap_or((usize::MAX, Instant::now() + Duration::from_secs(3600)));
            let Some(ctx) = conn.as_mut() else { continue };
            match wait(due, &mut shutdown, &mut writes).await {
                Wake::Due => {}
                Wake::Shutdown => break,
                Wake::Write(req) => {
                    let Some(tag) = spec.tags.get(req.tag) else {
                        let _ = req
                            .reply
                            .send(Err(WriteError::UnknownTag(format!("#{}", req.tag))));
                        continue;
                    };
                    let result = match prepare_write(tag, &req.value) {
                        Ok(op) => execute_write(ctx, &op, spec.timeout).await,
                        Err(e) => Err(e),
                    };
                    match &result {
                        Ok(()) => {
                            info!(device = %spec.name, tag = %tag.name, value = %req.value, "write done")
                        }
                        Err(e) => {
                            warn!(device = %spec.name, tag = %tag.name, value = %req.value, error = %e, "write failed")
                        }
                    }
                    let lost = match &result {
                        Ok(()) | Err(WriteError::Refused(_)) => {
                            link.answered(&spec, &counters);
                            None
                        }
                        Err(e) if e.loses_connection() => Some(e.to_string()),
                        Err(_) => None,
                    };
                    let _ = req.reply.send(result);
                    if let Some(why) = lost {
                        counters.transport_errors.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                        retry_at = Instant::now() + link.lost(&spec, &counters, &why);
                        let bad = all_bad(&spec, &mut states);
                        if !send(&tx, bad, &counters).await {
                            break;
                        }
                    }
                    continue;
                }
            }
            let Some(group) = plan.groups.get(gi) else {
                continue;
            };
            let mut batch = Batch::new(spec.name.clone());
            let mut lost: Option<ReadError> = None;
            let mut replan = false;
            for (ri, req) in group.requests.iter().enumerate() {
                let read_ts = now_ms();
                let started = Instant::now();
                let result = read(ctx, req, spec.timeout).await;
                let latency_us = started.elapsed().as_micros() as u64;
                counters
                    .last_latency_us
                    .store(latency_us, Ordering::Relaxed);
                counters.read_latency.observe(latency_us);
                match result {
                    Ok(data) => {
                        counters.reads_ok.fetch_add(1, Ordering::Relaxed);
                        link.answered(&spec, &counters);
                        learners.accepted(&spec, req);
                        if failing[gi][ri] {
                            info!(device = %spec.name, request = %req.describe(), "request answered again");
                            failing[gi][ri] = false;
                        }
                        decode_request(&spec, req, &data, read_ts, &mut states, &mut batch);
                    }
                    Err(e) => {
                        if let ReadError::Exception(code) = &e {
                            counters.exceptions.fetch_add(1, Ordering::Relaxed);
                            // A refusal is an answer: the device is there.
                            link.answered(&spec, &counters);
                            if learners.refused(&spec, req, *code) {
                                replan = true;
                                break;
                            }
                            if !failing[gi][ri] {
                                warn!(device = %spec.name, request = %req.describe(), exception = ?code,
                                    tags = %tag_names(&spec, req),
                                    "the device refused a read with a Modbus exception; these tags are bad");
                                failing[gi][ri] = true;
                            }
                        }
                        if e.drops_connection() {
                            lost = Some(link.in_words(e));
                            break;
                        }
                        for item in &req.items {
                            push_if_reported(
                                &spec,
                                item.id,
                                None,
                                Quality::Bad,
                                read_ts,
                                &mut states,
                                &mut batch,
                            );
                        }
                    }
                }
            }
            if let Some(e) = lost {
                counters.transport_errors.fetch_add(1, Ordering::Relaxed);
                conn = None;
                retry_at = Instant::now() + link.lost(&spec, &counters, &e.to_string());
                let bad = all_bad(&spec, &mut states);
                batch.samples.extend(bad.samples);
            } else {
                counters.scans.fetch_add(1, Ordering::Relaxed);
            }
            if !send(&tx, batch, &counters).await {
                break;
            }
            next_due[gi] = next_tick(next_due[gi], group.interval, Instant::now());
            if replan || learners.take_changed() {
                learners.apply(&mut spec.limits);
                match plan_for(&spec) {
                    Ok(p) => {
                        plan = p;
                        failing = plan
                            .groups
                            .iter()
                            .map(|g| vec![false; g.requests.len()])
                            .collect();
                        // The refused group is read again at once with the smaller blocks.
                        let now = Instant::now();
                        next_due = vec![now; plan.groups.len()];
                    }
                    Err(e) => {
                        warn!(device = %spec.name, error = %e, "cannot plan with the learned limit; learning stops");
                        learners.stop();
                    }
                }
            }
        }
        counters.connected.store(false, Ordering::Relaxed);
        if let Some(ctx) = conn {
            ctx.close(spec.timeout).await;
        }
        debug!(device = %spec.name, "poller stopped");
    }
}

/// The read plan for a device's tags.
pub fn plan_for(spec: &DeviceSpec) -> Result<ReadPlan, PlanError> {
    let tags: Vec<PlanTag> = spec
        .tags
        .iter()
        .enumerate()
        .map(|(id, t)| PlanTag {
            id,
            address: t.address,
            data_type: t.data_type,
            interval: t.interval,
        })
        .collect();
    plan(&tags, &spec.limits)
}

/// What ended a wait of the device task.
enum Wake {
    Due,
    Shutdown,
    Write(WriteRequest),
}

/// Sleeps until `at`, unless shutdown is asked for or a write arrives first.
async fn wait(
    at: Instant,
    shutdown: &mut watch::Receiver<bool>,
    writes: &mut mpsc::Receiver<WriteRequest>,
) -> Wake {
    tokio::select! {
        biased;
        r = shutdown.changed() => {
            if r.is_err() || *shutdown.borrow() { Wake::Shutdown } else { Wake::Due }
        }
        Some(req) = writes.recv() => Wake::Write(req),
        _ = sleep_until(at.into()) => {
            if *shutdown.borrow() { Wake::Shutdown } else { Wake::Due }
        }
    }
}

/// Carries out one write on the link, bounded by `limit` per request.
async fn execute_write(link: &mut Link, op: &WriteOp, limit: Duration) -> Result<(), WriteError> {
    fn to_write_error(e: ReadError) -> WriteError {
        match e {
            ReadError::Exception(code) => WriteError::Refused(exception_text(code)),
            ReadError::Timeout(d) | ReadError::Unanswered(d) => WriteError::Timeout(d),
            other => WriteError::Transport(other.to_string()),
        }
    }
    let ops = match op {
        WriteOp::Coil { address, on } => Op::WriteCoil {
            address: *address,
            on: *on,
        },
        WriteOp::Registers { address, words } if words.len() == 1 => Op::WriteRegister {
            address: *address,
            value: words[0],
        },
        WriteOp::Registers { address, words } => Op::WriteRegisters {
            address: *address,
            words: words.clone(),
        },
        WriteOp::RegisterBit { address, bit, on } => {
            let read = Op::Read {
                area: Area::HoldingRegister,
                start: *address,
                count: 1,
            };
            let word = match link.call(&read, limit).await.map_err(to_write_error)? {
                Reply::Registers(r) if !r.is_empty() => r[0],
                _ => {
                    return Err(WriteError::Transport(
                        "empty answer to a one-register read".into(),
                    ))
                }
            };
            Op::WriteRegister {
                address: *address,
                value: crate::codec::set_bit(word, *bit, *on),
            }
        }
    };
    link.call(&ops, limit)
        .await
        .map(|_| ())
        .map_err(to_write_error)
}

/// A Modbus exception as the text a refused write carries: `Modbus exception
/// IllegalDataAddress (0x02)`.
fn exception_text(code: ExceptionCode) -> String {
    format!("Modbus exception {code:?} (0x{:02X})", u8::from(code))
}

/// What the device task knows about its link: whether the device answered on the current
/// connection (a connect alone proves nothing), and the reconnect backoff and outage, which
/// only an answer ends.
struct LinkState {
    reconnect: Reconnect,
    answered: bool,
}

impl LinkState {
    fn new(spec: &DeviceSpec) -> LinkState {
        LinkState {
            reconnect: Reconnect::new(spec.backoff_min, spec.backoff_max),
            answered: false,
        }
    }

    /// A connection opened: not an answer yet, so the outage and its backoff go on (a hung
    /// PLC's many accepted connections log one info line).
    fn opened(&mut self, spec: &DeviceSpec, counters: &DeviceCounters, nothing_to_read: bool) {
        self.answered = false;
        if self.reconnect.opened() {
            info!(device = %spec.name, transport = spec.transport.as_str(), host = %spec.host, port = spec.port, "connected");
        } else {
            debug!(device = %spec.name, "connected again; the device has not answered since the outage began");
        }
        // A device without reads has nothing more to prove.
        if nothing_to_read {
            counters.connected.store(true, Ordering::Relaxed);
        }
    }

    /// The device answered a request (with data or a refusal).
    fn answered(&mut self, spec: &DeviceSpec, counters: &DeviceCounters) {
        if !self.answered {
            self.answered = true;
            counters.connected.store(true, Ordering::Relaxed);
        }
        if self.reconnect.answered() {
            info!(device = %spec.name, transport = spec.transport.as_str(), host = %spec.host, port = spec.port,
                "the device answers again");
        }
    }

    /// A failed read in words: a timeout before anything was answered on this connection is
    /// a device that accepted the connection and does not answer.
    fn in_words(&self, e: ReadError) -> ReadError {
        match e {
            ReadError::Timeout(d) if !self.answered => ReadError::Unanswered(d),
            e => e,
        }
    }

    /// The connection could not be opened: how long to wait before the next attempt.
    fn unreachable(&mut self, spec: &DeviceSpec, e: &ReadError) -> Duration {
        let retry = self.reconnect.failed();
        if retry.starts_outage {
            warn!(device = %spec.name, host = %spec.host, port = spec.port, error = %e,
                "cannot reach the device; its tags are bad until it answers again");
        } else {
            debug!(device = %spec.name, error = %e, retry_in = ?retry.wait, "reconnect failed");
        }
        retry.wait
    }

    /// The connection was dropped because of `why`: how long to wait before the next attempt.
    fn lost(&mut self, spec: &DeviceSpec, counters: &DeviceCounters, why: &str) -> Duration {
        counters.connected.store(false, Ordering::Relaxed);
        counters.set_error(why);
        self.answered = false;
        let retry = self.reconnect.failed();
        if retry.starts_outage {
            warn!(device = %spec.name, host = %spec.host, port = spec.port, error = %why,
                "connection lost; its tags are bad until the device answers again");
        } else {
            debug!(device = %spec.name, error = %why, retry_in = ?retry.wait,
                "the device still does not answer; reconnecting later");
        }
        retry.wait
    }
}

async fn send(tx: &mpsc::Sender<Batch>, batch: Batch, counters: &DeviceCounters) -> bool {
    if batch.is_empty() {
        return true;
    }
    let n = batch.len() as u64;
    match tx.send(batch).await {
        Ok(()) => {
            counters.samples.fetch_add(n, Ordering::Relaxed);
            true
        }
        Err(_) => false,
    }
}

/// Opens the device's link. Where opening proves nothing (a serial slave, an RTU device
/// behind a device server), the first read of the plan must be answered too, so a slave that
/// stops answering is retried with backoff instead of polled at full rate. The values that
/// read brought are returned with their read time: they are samples like any other.
async fn connect(
    spec: &DeviceSpec,
    plan: &ReadPlan,
) -> Result<(Link, Option<(Data, u64)>), ReadError> {
    let mut link = Link::open(
        &spec.transport,
        &spec.host,
        spec.port,
        spec.unit_id,
        spec.timeout,
    )
    .await?;
    let mut probed = None;
    if link.needs_probe() {
        if let Some(req) = probe_request(plan) {
            let read_ts = now_ms();
            match read(&mut link, req, spec.timeout).await {
                Ok(data) => probed = Some((data, read_ts)),
                // A refused read is answered: the device is there.
                Err(ReadError::Exception(_)) => {}
                // Something accepted the connection (a device server): the slave is silent.
                Err(ReadError::Timeout(d)) if !matches!(spec.transport, Transport::Serial(_)) => {
                    return Err(ReadError::Unanswered(d))
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok((link, probed))
}

/// The read that proves a device answers: the first of the plan.
fn probe_request(plan: &ReadPlan) -> Option<&ReadRequest> {
    plan.groups.iter().flat_map(|g| g.requests.first()).next()
}

async fn read(link: &mut Link, req: &ReadRequest, limit: Duration) -> Result<Data, ReadError> {
    let op = Op::Read {
        area: req.area,
        start: req.start,
        count: req.count,
    };
    let data = match link.call(&op, limit).await? {
        Reply::Registers(r) => Data::Registers(r),
        Reply::Bits(b) => Data::Bits(b),
        Reply::Written => return Err(ReadError::BadAnswer("no data in the answer".into())),
    };
    let got = match &data {
        Data::Registers(r) => r.len(),
        Data::Bits(b) => b.len(),
    };
    if got < req.count as usize {
        return Err(ReadError::ShortResponse {
            want: req.count,
            got,
        });
    }
    Ok(data)
}

/// The block-size learners of one device, one for registers and one for bits.
struct Learners {
    registers: BlockLearner,
    bits: BlockLearner,
    store: Option<Arc<LimitStore>>,
    changed: bool,
    stopped: bool,
}

impl Learners {
    fn new(spec: &DeviceSpec) -> Learners {
        let floor = |bits: bool| {
            spec.tags
                .iter()
                .filter(|t| t.address.area.is_bits() == bits)
                .map(|t| {
                    if bits {
                        1
                    } else {
                        crate::codec::register_count(t.data_type).max(1)
                    }
                })
                .max()
                .unwrap_or(1)
        };
        let make = |kind, configured: u16, floor: u16| match spec
            .learned_limits
            .as_ref()
            .and_then(|s| s.get(&spec.name.0, kind))
        {
            Some(l) if l < configured => BlockLearner::learned(l, floor),
            _ => BlockLearner::new(configured, floor),
        };
        let registers = make(
            BlockKind::Registers,
            spec.limits.max_registers,
            floor(false),
        );
        let bits = make(BlockKind::Bits, spec.limits.max_bits, floor(true));
        let changed =
            registers.limit() != spec.limits.max_registers || bits.limit() != spec.limits.max_bits;
        if changed {
            info!(device = %spec.name, max_registers = registers.limit(), max_bits = bits.limit(),
                "using the block sizes learned before");
        }
        Learners {
            registers,
            bits,
            store: spec.learned_limits.clone(),
            changed,
            stopped: false,
        }
    }

    fn kind(&mut self, area: Area) -> (&mut BlockLearner, BlockKind) {
        if area.is_bits() {
            (&mut self.bits, BlockKind::Bits)
        } else {
            (&mut self.registers, BlockKind::Registers)
        }
    }

    /// Returns true when the refusal was taken as "too large" and the plan must change.
    fn refused(&mut self, spec: &DeviceSpec, req: &ReadRequest, code: ExceptionCode) -> bool {
        if self.stopped
            || !matches!(
                code,
                ExceptionCode::IllegalDataAddress | ExceptionCode::IllegalDataValue
            )
        {
            return false;
        }
        let (learner, kind) = self.kind(req.area);
        match learner.refused(req.count) {
            Some(limit) => {
                info!(device = %spec.name, request = %req.describe(), exception = ?code,
                    next_limit = limit, kind = ?kind, "a merged read was refused; trying smaller blocks");
                self.changed = true;
                true
            }
            None => false,
        }
    }

    fn accepted(&mut self, spec: &DeviceSpec, req: &ReadRequest) {
        if self.stopped {
            return;
        }
        let (learner, kind) = self.kind(req.area);
        let was_settled = learner.settled();
        if learner.accepted(req.count).is_some() {
            self.changed = true;
            return;
        }
        let (learner, _) = self.kind(req.area);
        if !was_settled && learner.settled() {
            let limit = learner.limit();
            info!(device = %spec.name, kind = ?kind, limit,
                "learned the device's largest accepted read");
            if let Some(store) = &self.store {
                if let Err(e) = store.set(&spec.name.0, kind, limit) {
                    warn!(device = %spec.name, error = %e, "cannot save the learned block size");
                }
            }
        }
    }

    fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn apply(&mut self, limits: &mut PlanLimits) {
        self.changed = false;
        limits.max_registers = self.registers.limit();
        limits.max_bits = self.bits.limit();
        // A gap must stay smaller than its block.
        limits.max_gap_registers = limits.max_gap_registers.min(limits.max_registers - 1);
        limits.max_gap_bits = limits.max_gap_bits.min(limits.max_bits - 1);
    }

    fn stop(&mut self) {
        self.stopped = true;
    }
}

fn decode_request(
    spec: &DeviceSpec,
    req: &ReadRequest,
    data: &Data,
    read_ts: u64,
    states: &mut [ReportState],
    batch: &mut Batch,
) {
    for item in &req.items {
        let Some(tag) = spec.tags.get(item.id) else {
            continue;
        };
        let range = item.offset as usize..(item.offset as usize + item.len as usize);
        let decoded = match data {
            Data::Bits(bits) => bits
                .get(range)
                .and_then(|b| b.first().copied())
                .map(Value::Bool)
                .ok_or_else(|| "response too short".to_owned()),
            Data::Registers(regs) => match regs.get(range) {
                Some(slice) => {
                    decode_registers(tag.data_type, tag.byte_order, tag.address.bit, slice)
                        .map(|v| tag.scaling.apply(v))
                        .map_err(|e| e.to_string())
                }
                None => Err("response too short".to_owned()),
            },
        };
        match decoded {
            Ok(value) => push_if_reported(
                spec,
                item.id,
                Some(value),
                Quality::Good,
                read_ts,
                states,
                batch,
            ),
            Err(e) => {
                // Logged when the tag turns bad, not at every poll while it stays bad.
                if states.get(item.id).and_then(ReportState::last_quality) != Some(Quality::Bad) {
                    warn!(device = %spec.name, tag = %tag.name, address = %tag.address, error = %e,
                        "the device's data does not decode as the configured type; the tag is bad");
                }
                push_if_reported(spec, item.id, None, Quality::Bad, read_ts, states, batch);
            }
        }
    }
}

fn push_if_reported(
    spec: &DeviceSpec,
    id: usize,
    value: Option<Value>,
    quality: Quality,
    read_ts: u64,
    states: &mut [ReportState],
    batch: &mut Batch,
) {
    let (Some(tag), Some(state)) = (spec.tags.get(id), states.get_mut(id)) else {
        return;
    };
    if state.offer(&tag.report, &value, quality, Instant::now()) {
        batch.samples.push(Sample {
            tag: tag.name.clone(),
            value,
            quality,
            read_ts_ms: read_ts,
            source_ts_ms: None,
            seq: 0,
        });
    }
}

/// Bad samples for every tag whose last report was not already bad.
fn all_bad(spec: &DeviceSpec, states: &mut [ReportState]) -> Batch {
    let mut batch = Batch::new(spec.name.clone());
    let now = now_ms();
    for id in 0..spec.tags.len() {
        push_if_reported(spec, id, None, Quality::Bad, now, states, &mut batch);
    }
    batch
}

fn tag_names(spec: &DeviceSpec, req: &ReadRequest) -> String {
    req.items
        .iter()
        .filter_map(|i| spec.tags.get(i.id))
        .map(|t| t.name.0.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DeviceSpec {
        DeviceSpec {
            name: DeviceId("press".into()),
            transport: Transport::Tcp,
            host: "127.0.0.1".into(),
            port: 502,
            unit_id: 1,
            timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            limits: PlanLimits::default(),
            tags: Vec::new(),
            learned_limits: None,
        }
    }

    #[test]
    fn a_timeout_before_the_first_answer_on_a_connection_reads_as_a_device_that_does_not_answer() {
        let (spec, counters) = (spec(), DeviceCounters::default());
        let mut link = LinkState::new(&spec);
        link.opened(&spec, &counters, false);
        let e = link.in_words(ReadError::Timeout(Duration::from_secs(1)));
        assert_eq!(
            e.to_string(),
            "the device accepted the connection but did not answer within 1s"
        );
        assert!(!counters.connected.load(Ordering::Relaxed));
        // Once it answered, a timeout is a timeout.
        link.answered(&spec, &counters);
        assert!(counters.connected.load(Ordering::Relaxed));
        let e = link.in_words(ReadError::Timeout(Duration::from_secs(1)));
        assert_eq!(e.to_string(), "no answer within 1s");
    }

    #[test]
    fn a_connection_that_opens_but_never_answers_does_not_start_the_backoff_over() {
        let (spec, counters) = (spec(), DeviceCounters::default());
        let mut link = LinkState::new(&spec);
        let mut steps = Vec::new();
        for _ in 0..5 {
            link.opened(&spec, &counters, false);
            steps.push(link.reconnect.step());
            link.lost(&spec, &counters, "no answer");
        }
        assert_eq!(steps, [50, 100, 200, 400, 400].map(Duration::from_millis));
        link.opened(&spec, &counters, false);
        link.answered(&spec, &counters);
        assert_eq!(link.reconnect.step(), Duration::from_millis(50));
    }
}
