//! One task per Modbus TCP device: connects, runs the read plan on a schedule that does not
//! drift, decodes the answers into samples and hands them to the core as batches. A device that
//! stops answering turns its tags `bad` and is reconnected with exponential backoff and jitter;
//! since every device has its own task, a dead PLC never slows the others.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_model::{now_ms, Batch, DataType, DeviceId, Quality, Sample, TagName, Value};
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tracing::{debug, info, warn};

use crate::address::{Address, Area, ByteOrder};
use crate::codec::{decode_registers, Scaling};
use crate::plan::{plan, PlanError, PlanLimits, PlanTag, ReadPlan, ReadRequest};
use crate::report::{ReportRule, ReportState};
use crate::write::{DeviceHandle, WriteError, WriteOp, WriteRequest, WRITE_QUEUE};

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
    pub host: String,
    pub port: u16,
    pub unit_id: u8,
    /// Bound on every connect and every request.
    pub timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub limits: PlanLimits,
    pub tags: Vec<TagSpec>,
}

/// Counters a device task keeps for status lines, health and metrics.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Read requests answered with data.
    pub reads_ok: AtomicU64,
    /// Read requests answered with a Modbus exception.
    pub exceptions: AtomicU64,
    /// Timeouts and transport errors (each one drops the connection).
    pub transport_errors: AtomicU64,
    /// Connections established.
    pub connects: AtomicU64,
    /// Samples handed to the store.
    pub samples: AtomicU64,
    /// Scans (poll-group executions) completed while connected.
    pub scans: AtomicU64,
    /// Latency of the last read request, microseconds.
    pub last_latency_us: AtomicU64,
    /// Latency of every read request, answered or not, for `/metrics`.
    pub read_latency: LatencyHistogram,
    pub connected: AtomicBool,
}

/// Upper bounds of the read-latency buckets, microseconds: from a fast LAN PLC (about 1 ms) to
/// a read that runs into a typical timeout (1 s and above).
pub const LATENCY_BUCKETS_US: [u64; 10] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// A lock-free latency histogram with fixed buckets ([`LATENCY_BUCKETS_US`]), read by the
/// metrics endpoint while the poller writes it.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last slot holds those above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A copy of a [`LatencyHistogram`] in Prometheus' shape: cumulative counts per bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound in microseconds, observations at or below it)`, ascending.
    pub cumulative: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_us: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency_us: u64) {
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| latency_us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = LATENCY_BUCKETS_US
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        let above = self.buckets.last().map_or(0, |n| n.load(Ordering::Relaxed));
        HistogramSnapshot {
            cumulative,
            // The total from the buckets, not `count`, keeps `+Inf` consistent with the
            // bounds even when a snapshot races an observation.
            count: running + above,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

/// A Modbus failure, split by cause: an exception is the device refusing a request (a
/// configuration matter, the connection is fine); everything else means reconnect.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the device answered with Modbus exception {0:?} (0x{code:02X})", code = u8::from(*.0))]
    Exception(ExceptionCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("the device answered {got} values for a request of {want}")]
    ShortResponse { want: u16, got: usize },
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
    handle: DeviceHandle,
}

impl DevicePoller {
    pub fn new(spec: DeviceSpec) -> Result<DevicePoller, PlanError> {
        let plan = plan_for(&spec)?;
        let (tx, writes) = mpsc::channel(WRITE_QUEUE);
        let handle = DeviceHandle {
            name: spec.name.0.clone(),
            tags: spec.tags.clone().into(),
            tx,
        };
        Ok(DevicePoller {
            spec,
            plan,
            counters: Arc::new(DeviceCounters::default()),
            writes,
            handle,
        })
    }

    /// Where commands send writes for this device.
    pub fn handle(&self) -> DeviceHandle {
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
            spec,
            plan,
            counters,
            mut writes,
            handle,
        } = self;
        // Only the handles given out keep the write channel open.
        drop(handle);
        let mut states: Vec<ReportState> = vec![ReportState::default(); spec.tags.len()];
        let mut failing: Vec<Vec<bool>> = plan
            .groups
            .iter()
            .map(|g| vec![false; g.requests.len()])
            .collect();
        let mut conn: Option<Context> = None;
        let mut backoff = spec.backoff_min;
        let mut retry_at = Instant::now();
        let mut next_due: Vec<Instant> = vec![Instant::now(); plan.groups.len()];
        let mut down_reported = false;

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
                match connect(&spec).await {
                    Ok(ctx) => {
                        info!(device = %spec.name, host = %spec.host, port = spec.port, "connected");
                        counters.connects.fetch_add(1, Ordering::Relaxed);
                        counters.connected.store(true, Ordering::Relaxed);
                        conn = Some(ctx);
                        backoff = spec.backoff_min;
                        down_reported = false;
                        states.iter_mut().for_each(ReportState::reset);
                        let now = Instant::now();
                        next_due.iter_mut().for_each(|d| *d = now);
                    }
                    Err(e) => {
                        if !down_reported {
                            warn!(device = %spec.name, host = %spec.host, port = spec.port, error = %e,
                                "cannot reach the device; its tags are bad until it answers again");
                            down_reported = true;
                        } else {
                            debug!(device = %spec.name, error = %e, retry_in = ?backoff, "reconnect failed");
                        }
                        let batch = all_bad(&spec, &mut states);
                        if !send(&tx, batch, &counters).await {
                            break;
                        }
                        retry_at = Instant::now() + jitter(backoff);
                        backoff = (backoff * 2).min(spec.backoff_max);
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
                    let result = execute_write(ctx, &req.op, spec.timeout).await;
                    match &result {
                        Ok(()) => info!(device = %spec.name, op = ?req.op, "write done"),
                        Err(e) => {
                            warn!(device = %spec.name, op = ?req.op, error = %e, "write failed")
                        }
                    }
                    let lost = matches!(
                        result,
                        Err(WriteError::Timeout(_) | WriteError::Transport(_))
                    );
                    let _ = req.reply.send(result);
                    if lost {
                        counters.transport_errors.fetch_add(1, Ordering::Relaxed);
                        counters.connected.store(false, Ordering::Relaxed);
                        conn = None;
                        retry_at = Instant::now() + jitter(spec.backoff_min);
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
                        if failing[gi][ri] {
                            info!(device = %spec.name, request = %req.describe(), "request answered again");
                            failing[gi][ri] = false;
                        }
                        decode_request(&spec, req, &data, read_ts, &mut states, &mut batch);
                    }
                    Err(e) => {
                        if let ReadError::Exception(code) = &e {
                            counters.exceptions.fetch_add(1, Ordering::Relaxed);
                            if !failing[gi][ri] {
                                warn!(device = %spec.name, request = %req.describe(), exception = ?code,
                                    tags = %tag_names(&spec, req),
                                    "the device refused a read with a Modbus exception; these tags are bad");
                                failing[gi][ri] = true;
                            }
                        }
                        if e.drops_connection() {
                            lost = Some(e);
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
                counters.connected.store(false, Ordering::Relaxed);
                warn!(device = %spec.name, error = %e, "connection lost; reconnecting");
                conn = None;
                down_reported = true;
                // The first reconnect comes quickly: most losses are a PLC restart or a blip.
                retry_at = Instant::now() + jitter(spec.backoff_min);
                backoff = (spec.backoff_min * 2).min(spec.backoff_max);
                let bad = all_bad(&spec, &mut states);
                batch.samples.extend(bad.samples);
            } else {
                counters.scans.fetch_add(1, Ordering::Relaxed);
            }
            if !send(&tx, batch, &counters).await {
                break;
            }
            next_due[gi] = next_tick(next_due[gi], group.interval, Instant::now());
        }
        counters.connected.store(false, Ordering::Relaxed);
        if let Some(mut ctx) = conn {
            let _ = timeout(
                spec.timeout,
                tokio_modbus::client::Client::disconnect(&mut ctx),
            )
            .await;
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

/// The next tick of a fixed-rate schedule: `due + interval`, skipping ticks already missed,
/// so an overrun never makes the schedule drift or burst.
pub fn next_tick(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next);
    let missed = behind.as_nanos() / interval.as_nanos().max(1) + 1;
    next + interval * (missed.min(u32::MAX as u128) as u32)
}

/// Between 50 % and 100 % of `d`, so devices that failed together do not retry together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
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

/// Carries out one write on the connection, bounded by `limit` per request.
async fn execute_write(ctx: &mut Context, op: &WriteOp, limit: Duration) -> Result<(), WriteError> {
    fn flatten<T>(
        r: Result<
            Result<Result<T, ExceptionCode>, tokio_modbus::Error>,
            tokio::time::error::Elapsed,
        >,
        limit: Duration,
    ) -> Result<T, WriteError> {
        match r {
            Err(_) => Err(WriteError::Timeout(limit)),
            Ok(Err(e)) => Err(WriteError::Transport(e.to_string())),
            Ok(Ok(Err(code))) => Err(WriteError::Exception(code)),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }
    match op {
        WriteOp::Coil { address, on } => flatten(
            timeout(limit, ctx.write_single_coil(*address, *on)).await,
            limit,
        ),
        WriteOp::Registers { address, words } if words.len() == 1 => flatten(
            timeout(limit, ctx.write_single_register(*address, words[0])).await,
            limit,
        ),
        WriteOp::Registers { address, words } => flatten(
            timeout(limit, ctx.write_multiple_registers(*address, words)).await,
            limit,
        ),
        WriteOp::RegisterBit { address, bit, on } => {
            let current = flatten(
                timeout(limit, ctx.read_holding_registers(*address, 1)).await,
                limit,
            )?;
            let Some(&word) = current.first() else {
                return Err(WriteError::Transport(
                    "empty answer to a one-register read".into(),
                ));
            };
            let word = crate::codec::set_bit(word, *bit, *on);
            flatten(
                timeout(limit, ctx.write_single_register(*address, word)).await,
                limit,
            )
        }
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

async fn connect(spec: &DeviceSpec) -> Result<Context, ReadError> {
    let target = format!("{}:{}", spec.host, spec.port);
    let addr: SocketAddr = match target.parse() {
        Ok(a) => a,
        Err(_) => timeout(spec.timeout, tokio::net::lookup_host(&target))
            .await
            .map_err(|_| ReadError::Timeout(spec.timeout))?
            .map_err(|e| ReadError::Transport(format!("cannot resolve {target}: {e}")))?
            .next()
            .ok_or_else(|| ReadError::Transport(format!("{target} resolves to no address")))?,
    };
    timeout(
        spec.timeout,
        tokio_modbus::client::tcp::connect_slave(addr, Slave(spec.unit_id)),
    )
    .await
    .map_err(|_| ReadError::Timeout(spec.timeout))?
    .map_err(|e| ReadError::Transport(e.to_string()))
}

async fn read(ctx: &mut Context, req: &ReadRequest, limit: Duration) -> Result<Data, ReadError> {
    let (start, count) = (req.start, req.count);
    let result = match req.area {
        Area::HoldingRegister => timeout(limit, ctx.read_holding_registers(start, count))
            .await
            .map(|r| r.map(|r| r.map(Data::Registers))),
        Area::InputRegister => timeout(limit, ctx.read_input_registers(start, count))
            .await
            .map(|r| r.map(|r| r.map(Data::Registers))),
        Area::Coil => timeout(limit, ctx.read_coils(start, count))
            .await
            .map(|r| r.map(|r| r.map(Data::Bits))),
        Area::DiscreteInput => timeout(limit, ctx.read_discrete_inputs(start, count))
            .await
            .map(|r| r.map(|r| r.map(Data::Bits))),
    };
    let data = match result {
        Err(_) => return Err(ReadError::Timeout(limit)),
        Ok(Err(e)) => return Err(ReadError::Transport(e.to_string())),
        Ok(Ok(Err(code))) => return Err(ReadError::Exception(code)),
        Ok(Ok(Ok(data))) => data,
    };
    let got = match &data {
        Data::Registers(r) => r.len(),
        Data::Bits(b) => b.len(),
    };
    if got < count as usize {
        return Err(ReadError::ShortResponse { want: count, got });
    }
    Ok(data)
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

    #[test]
    fn a_latency_on_a_bound_counts_in_that_bucket_and_every_larger_one() {
        let h = LatencyHistogram::default();
        h.observe(1_000);
        h.observe(1_001);
        h.observe(2_000_000);
        let s = h.snapshot();
        assert_eq!(s.cumulative.first(), Some(&(1_000, 1)));
        assert_eq!(s.cumulative.get(1), Some(&(2_500, 2)));
        assert_eq!(s.cumulative.last(), Some(&(1_000_000, 2)));
        assert_eq!(s.count, 3);
        assert_eq!(s.sum_us, 2_002_001);
    }

    proptest::proptest! {
        #[test]
        fn histogram_buckets_are_cumulative_and_the_count_matches(
            samples in proptest::collection::vec(0u64..3_000_000, 0..200)
        ) {
            let h = LatencyHistogram::default();
            for &s in &samples {
                h.observe(s);
            }
            let snap = h.snapshot();
            proptest::prop_assert_eq!(snap.count, samples.len() as u64);
            proptest::prop_assert_eq!(snap.sum_us, samples.iter().sum::<u64>());
            for w in snap.cumulative.windows(2) {
                proptest::prop_assert!(w[0].1 <= w[1].1);
            }
            for &(bound, n) in &snap.cumulative {
                let expected = samples.iter().filter(|&&s| s <= bound).count() as u64;
                proptest::prop_assert_eq!(n, expected);
            }
        }
    }

    #[test]
    fn the_schedule_advances_by_exactly_one_interval_when_on_time() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        assert_eq!(next_tick(t0, i, t0 + Duration::from_millis(30)), t0 + i);
    }

    #[test]
    fn an_overrun_skips_missed_ticks_and_stays_on_the_grid() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        let next = next_tick(t0, i, t0 + Duration::from_millis(350));
        assert_eq!(next, t0 + Duration::from_millis(400));
        let exactly = next_tick(t0, i, t0 + Duration::from_millis(200));
        assert_eq!(exactly, t0 + Duration::from_millis(300));
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_backoff() {
        let d = Duration::from_millis(1000);
        for _ in 0..1000 {
            let j = jitter(d);
            assert!(j >= d / 2 && j <= d, "{j:?}");
        }
    }
}
