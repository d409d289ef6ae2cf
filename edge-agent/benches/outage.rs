//! SPEC §8/§9 under a long broker outage: the real binary polls simulated PLCs (10,000 tags by
//! default) and publishes per device to a real Mosquitto; after a warm-up the broker is
//! stopped for the outage while the agent keeps polling and storing, then started again. Every
//! 10 s of the outage the agent's resident memory, the store's size on disk and the pending
//! backlog are sampled; after the outage the time until a persistent subscriber has received
//! the whole backlog gives the replay rate, compared with the live rate; and every device's
//! `seq` numbers must arrive without a gap.
//!
//! ```text
//! cargo bench -p edge-agent --bench outage                   # 10-minute outage, 10,000 tags
//! OUTAGE_MINUTES=20 cargo bench -p edge-agent --bench outage
//! cargo bench -p edge-agent --bench outage -- --quick        # 1-minute outage
//! ```
//!
//! Settings (environment): `OUTAGE_MINUTES` (default 10, fractions allowed), `TAGS` (10000),
//! `DEVICES` (10), `POLL_MS` (1000), `WARMUP_S` (30), `SAMPLE_S` (10), `AFTER_S` (seconds to
//! keep sampling after the replay, 30), `MAX_DISK_MB` and `CACHE_MB` (the store's quota and
//! page cache; the product's defaults when unset), `OUTAGE_AGENT_BIN` (a wrapper to run instead of the release binary, e.g. a
//! script that execs it under a memory profiler).
//!
//! Everything runs on 127.0.0.1 with ports chosen by the kernel; Mosquitto must be installed.
//! Every wait is bounded and the run stops by itself.

// The integration tests' harness (Mosquitto launcher, agent process); only part of it is used.
#[allow(unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

// The integration tests' config writer and helpers; only part of them is used.
#[allow(dead_code)]
#[path = "../../tests/integration/common.rs"]
mod common;

// What the pipeline benchmark reads from /proc; only part of it is used.
#[allow(dead_code)]
#[path = "pipeline/sysinfo.rs"]
mod sysinfo;

#[path = "pipeline/harness.rs"]
mod harness;
// The pipeline benchmark's number formatting, status waits (and, for them, its subscriber).
#[allow(dead_code)]
#[path = "pipeline/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "pipeline/subscriber.rs"]
mod subscriber;
#[allow(dead_code)]
#[path = "pipeline/window.rs"]
mod window;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use edge_modbus::Area;
use edge_sim::ModbusSim;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};
use serde_json::Value as Json;
use tokio::sync::oneshot;

use crate::report::thousands;
use crate::support::seqcheck::{classify, TelemetryTopic};
use crate::support::{AgentProcess, Mosquitto, TestDir};

const USAGE: &str = "usage: cargo bench -p edge-agent --bench outage -- [--quick]
environment: OUTAGE_MINUTES (10) TAGS (10000) DEVICES (10) POLL_MS (1000) WARMUP_S (30)
             SAMPLE_S (10) AFTER_S (30) MAX_DISK_MB CACHE_MB (product defaults) OUTAGE_AGENT_BIN";

/// The SPEC's memory ceiling and replay target.
const RSS_TARGET_MB: f64 = 20.0;
const REPLAY_TARGET_RATIO: f64 = 10.0;
/// Each (u16, f32) pair of tags takes three holding registers.
const REGISTERS_PER_PAIR: u16 = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// During the replay and after it, memory and backlog are sampled this often.
const REPLAY_SAMPLE: Duration = Duration::from_secs(1);
/// How long the replay may take beyond the outage itself before the run gives up (a replay
/// slower than the live rate never catches up).
const REPLAY_SLACK: Duration = Duration::from_secs(120);
/// How long the subscriber may take to receive the last live samples after the agent stops.
const FINAL_WAIT: Duration = Duration::from_secs(30);
const AGENT_LOG: &str = "info";
/// Above this CPU use by other processes (percent of one core), the figures are flagged.
const OTHER_LOAD_NOTICE_PCT: f64 = 15.0;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone)]
struct Settings {
    quick: bool,
    outage: Duration,
    tags: usize,
    devices: usize,
    poll_ms: u64,
    warmup: Duration,
    sample_every: Duration,
    after: Duration,
    max_disk_mb: Option<u64>,
    cache_mb: Option<u64>,
    agent_bin: PathBuf,
}

fn env_f64(name: &str, default: f64) -> anyhow::Result<f64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .ok_or_else(|| anyhow!("{name}={v} is not a non-negative number")),
        Err(_) => Ok(default),
    }
}

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .replace('_', "")
            .parse::<u64>()
            .map_err(|_| anyhow!("{name}={v} is not a whole number")),
        Err(_) => Ok(default),
    }
}

impl Settings {
    fn from_env(quick: bool) -> anyhow::Result<Settings> {
        let minutes = env_f64("OUTAGE_MINUTES", if quick { 1.0 } else { 10.0 })?;
        let tags = usize::try_from(env_u64("TAGS", 10_000)?)?;
        let devices = usize::try_from(env_u64("DEVICES", 10)?)?;
        let poll_ms = env_u64("POLL_MS", 1000)?;
        if devices == 0 || tags < 2 * devices || !tags.is_multiple_of(2 * devices) {
            bail!("TAGS ({tags}) must be a non-zero multiple of 2 x DEVICES ({devices})");
        }
        // 125-register reads of a device's holding registers, 3 per pair of tags.
        if tags / devices / 2 * usize::from(REGISTERS_PER_PAIR) > usize::from(u16::MAX) {
            bail!("too many tags per device for one holding-register area");
        }
        if poll_ms < 10 {
            bail!("POLL_MS must be at least 10");
        }
        let secs = |name: &str, default: u64| env_u64(name, default).map(Duration::from_secs);
        let agent_bin =
            std::env::var_os("OUTAGE_AGENT_BIN").map_or_else(common::bin, PathBuf::from);
        Ok(Settings {
            quick,
            outage: Duration::from_secs_f64(minutes * 60.0),
            tags,
            devices,
            poll_ms,
            warmup: secs("WARMUP_S", if quick { 15 } else { 30 })?,
            sample_every: secs("SAMPLE_S", if quick { 5 } else { 10 })?.max(Duration::from_secs(1)),
            after: secs("AFTER_S", if quick { 10 } else { 30 })?,
            max_disk_mb: std::env::var("MAX_DISK_MB")
                .ok()
                .map(|_| env_u64("MAX_DISK_MB", 0))
                .transpose()?,
            cache_mb: std::env::var("CACHE_MB")
                .ok()
                .map(|_| env_u64("CACHE_MB", 0))
                .transpose()?,
            agent_bin,
        })
    }

    fn tags_per_device(&self) -> usize {
        self.tags / self.devices
    }

    /// The rate the PLCs produce samples at (every tag changes between polls).
    fn nominal_rate(&self) -> f64 {
        self.tags as f64 * 1000.0 / self.poll_ms as f64
    }
}

fn main() -> ExitCode {
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            // Cargo passes `--bench` to every benchmark binary.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let settings = match Settings::from_env(quick) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e:#}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    harness::run("outage", true, || async {
        if run(&settings).await? {
            Ok(())
        } else {
            bail!("the run lost samples or did not finish its replay (see above)")
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The simulated PLCs and the board config.

/// The tags of one device: `u{j}` at hr:3j (u16) and `f{j}` at hr:3j+1 (f32).
fn device_tags(per_device: usize) -> Vec<common::TagToml> {
    (0..per_device / 2)
        .flat_map(|j| {
            let at = j as u16 * REGISTERS_PER_PAIR;
            [
                common::tag(&format!("u{j:04}"), &format!("hr:{at}"), "u16"),
                common::tag(&format!("f{j:04}"), &format!("hr:{}", at + 1), "f32"),
            ]
        })
        .collect()
}

/// Register values for tick `tick`: every tag differs from the previous tick.
fn registers_at(pairs: usize, tick: u64) -> Vec<u16> {
    let mut regs = Vec::with_capacity(pairs * usize::from(REGISTERS_PER_PAIR));
    for j in 0..pairs as u64 {
        let bits = (tick as f32 * 0.5 + j as f32).to_bits();
        regs.extend_from_slice(&[
            (tick.wrapping_add(j) % 65_536) as u16,
            (bits >> 16) as u16,
            bits as u16,
        ]);
    }
    regs
}

// ---------------------------------------------------------------------------------------------
// The subscriber: a persistent session at QoS 1 that keeps only per-device ranges of seqs.

/// Per device, the seqs received as sorted, disjoint, non-adjacent inclusive ranges: in-order
/// delivery keeps this to one range, so millions of samples cost a few bytes.
#[derive(Debug, Default, Clone)]
struct SeqRanges {
    ranges: BTreeMap<u64, u64>,
    highest: Option<u64>,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
}

impl SeqRanges {
    fn insert(&mut self, seq: u64) {
        // The range starting at or before `seq`.
        if let Some((&start, &end)) = self.ranges.range(..=seq).next_back() {
            if seq <= end {
                self.duplicates += 1;
                return;
            }
            if self.highest.is_some_and(|h| h > seq) {
                self.out_of_order += 1;
            }
            self.distinct += 1;
            self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
            let merged_end = match self.ranges.get(&(seq + 1)).copied() {
                Some(next_end) => {
                    self.ranges.remove(&(seq + 1));
                    next_end
                }
                None => seq,
            };
            if end + 1 == seq {
                self.ranges.insert(start, merged_end);
            } else {
                self.ranges.insert(seq, merged_end);
            }
            return;
        }
        if self.highest.is_some_and(|h| h > seq) {
            self.out_of_order += 1;
        }
        self.distinct += 1;
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
        let end = match self.ranges.remove(&(seq + 1)) {
            Some(next_end) => next_end,
            None => seq,
        };
        self.ranges.insert(seq, end);
    }

    fn first(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    fn last(&self) -> Option<u64> {
        self.ranges.values().next_back().copied()
    }

    /// Missing ranges between the first and the last seq.
    fn gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut previous_end: Option<u64> = None;
        for (&start, &end) in &self.ranges {
            if let Some(p) = previous_end {
                gaps.push((p + 1, start - 1));
            }
            previous_end = Some(end);
        }
        gaps
    }
}

#[derive(Debug, Default)]
struct SubState {
    devices: BTreeMap<String, SeqRanges>,
    messages: u64,
    /// Messages flagged `"replay": true` by the agent.
    replay_messages: u64,
    /// Samples received, duplicates included.
    samples: u64,
    /// Different (device, seq) received.
    distinct: u64,
    /// Telemetry messages without a single `seq`.
    malformed: u64,
    last_at: Option<Instant>,
    connects: u64,
    /// Reconnections on which the broker had lost this client's session (and so what was
    /// queued for it): a fault of the harness, reported with the figures.
    sessions_lost: u64,
    /// When armed: the first message after the mark.
    first_after_mark: Option<Instant>,
    mark_armed: bool,
    /// When armed: the moment `distinct` reached the target.
    target: Option<u64>,
    target_reached_at: Option<Instant>,
}

impl SubState {
    fn record(&mut self, device: &str, payload: &[u8], at: Instant) {
        let tracker = self.devices.entry(device.to_owned()).or_default();
        let before = tracker.distinct;
        let mut n = 0u64;
        for seq in seqs(payload) {
            tracker.insert(seq);
            n += 1;
        }
        let added = tracker.distinct - before;
        if n == 0 {
            self.malformed += 1;
        }
        if memfind(payload, b"\"replay\":true").is_some() {
            self.replay_messages += 1;
        }
        self.messages += 1;
        self.samples += n;
        self.distinct += added;
        self.last_at = Some(at);
        if self.mark_armed && self.first_after_mark.is_none() {
            self.first_after_mark = Some(at);
        }
        if let Some(target) = self.target {
            if self.target_reached_at.is_none() && self.distinct >= target {
                self.target_reached_at = Some(at);
            }
        }
    }
}

/// Every `"seq":N` in a UNS payload (one per per-tag message, one per sample of a batch).
fn seqs(payload: &[u8]) -> impl Iterator<Item = u64> + '_ {
    const FIELD: &[u8] = b"\"seq\":";
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let found = memfind(&payload[at..], FIELD)?;
        let digits_from = at + found + FIELD.len();
        let mut value: u64 = 0;
        let mut end = digits_from;
        while let Some(d) = payload.get(end).filter(|b| b.is_ascii_digit()) {
            value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            end += 1;
        }
        if end == digits_from {
            return None;
        }
        at = end;
        Some(value)
    })
}

fn memfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A subscriber on its own thread and runtime (its CPU time shows under its thread name).
struct Subscriber {
    state: Arc<Mutex<SubState>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

const SUB_THREAD: &str = "outage-sub";

impl Subscriber {
    async fn start(port: u16, filter: String) -> anyhow::Result<Subscriber> {
        let state = Arc::new(Mutex::new(SubState::default()));
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let thread_state = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name(SUB_THREAD.to_owned())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("subscriber runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(subscriber_loop(
                    port,
                    filter,
                    thread_state,
                    ready_tx,
                    stop_rx,
                ));
            })
            .context("spawning the subscriber thread")?;
        let mut sub = Subscriber {
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(sub),
            Ok(Ok(Err(e))) => {
                sub.stop().await;
                Err(e)
            }
            _ => {
                sub.stop().await;
                bail!("the subscriber did not subscribe within 10 s")
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, SubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

async fn subscriber_loop(
    port: u16,
    filter: String,
    state: Arc<Mutex<SubState>>,
    ready: oneshot::Sender<anyhow::Result<()>>,
    mut stop: oneshot::Receiver<()>,
) {
    // A persistent session: the broker keeps the subscription, and queues what arrives while
    // this client reconnects after the broker's restart.
    let mut options = MqttOptions::new(
        format!("outage-sub-{}", std::process::id()),
        "127.0.0.1",
        port,
    );
    options
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(64 << 20, 64 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut ready = Some(ready);
    let mut subscribed = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = &mut stop => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let at = Instant::now();
                if let Some(TelemetryTopic::Batch { device } | TelemetryTopic::Tag { device, .. }) =
                    classify(common::ROOT, &p.topic)
                {
                    state
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .record(device, &p.payload, at);
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                {
                    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                    st.connects += 1;
                    if subscribed && !ack.session_present {
                        st.sessions_lost += 1;
                    }
                }
                // The session (and its subscription) survives reconnections; subscribe once.
                if !subscribed || !ack.session_present {
                    subscribed = true;
                    if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        if let Some(r) = ready.take() {
                            let _ = r.send(Err(anyhow!("queueing SUBSCRIBE: {e}")));
                        }
                        break;
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if let Some(r) = ready.take() {
                    let refused = ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure));
                    let _ = r.send(if refused {
                        Err(anyhow!("the broker refused the subscription to {filter}"))
                    } else {
                        Ok(())
                    });
                }
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(anyhow!("subscriber cannot connect: {e}")));
                    break;
                }
                // The broker is down: retry every 100 ms until it is back or the run ends.
                tokio::select! {
                    _ = &mut stop => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    let _ = client.try_disconnect();
}

// ---------------------------------------------------------------------------------------------
// Sampling.

/// One line of the table.
#[derive(Debug, Clone)]
struct Point {
    phase: &'static str,
    /// Seconds since the outage started (negative during the warm-up).
    t_s: f64,
    rss_mb: f64,
    hwm_mb: f64,
    anon_mb: f64,
    /// sled's own size on disk, from the agent's status snapshot.
    store_disk_mb: f64,
    /// Blocks allocated under the data directory.
    dir_mb: f64,
    pending_records: u64,
    pending_samples: u64,
    committed_samples: u64,
    delivered: u64,
    /// Bytes the agent has written to the block device since it started.
    io_written_mb: f64,
}

/// Blocks allocated under `dir`, recursively, in bytes.
fn allocated_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    // Bounded: the store directory has a handful of files and no links.
    let mut visited = 0;
    while let Some(d) = stack.pop() {
        visited += 1;
        if visited > 10_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

fn northbound_pending(status: &Json) -> u64 {
    status["northbounds"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|n| n["pending_records"].as_u64())
        .unwrap_or(0)
}

/// Waits for a status snapshot newer than the one on disk now (bounded) and returns it.
async fn fresh_status(data_dir: &Path) -> anyhow::Result<Json> {
    window::fresh_status(data_dir, None).await
}

struct Probe<'a> {
    pid: u32,
    data_dir: &'a Path,
    sub: &'a Subscriber,
    outage_start: Instant,
}

impl Probe<'_> {
    /// A point from /proc, the data directory, the latest status snapshot and the subscriber.
    fn point(&self, phase: &'static str, status: Option<&Json>) -> Point {
        let now = Instant::now();
        let t_s = if now >= self.outage_start {
            now.duration_since(self.outage_start).as_secs_f64()
        } else {
            -self.outage_start.duration_since(now).as_secs_f64()
        };
        let latest;
        let status = match status {
            Some(s) => Some(s),
            None => {
                latest = common::status(self.data_dir);
                latest.as_ref()
            }
        };
        let mb = |b: Option<u64>| b.unwrap_or(0) as f64 / MIB;
        Point {
            phase,
            t_s,
            rss_mb: mb(sysinfo::vm_rss(self.pid)),
            hwm_mb: mb(sysinfo::vm_hwm(self.pid)),
            anon_mb: mb(sysinfo::rss_anon(self.pid)),
            store_disk_mb: mb(status.and_then(|s| s["store"]["disk_bytes"].as_u64())),
            dir_mb: allocated_bytes(self.data_dir) as f64 / MIB,
            pending_records: status.map_or(0, northbound_pending),
            // One northbound: the store holds exactly the samples it has not acknowledged.
            pending_samples: status
                .and_then(|s| s["store"]["samples"].as_u64())
                .unwrap_or(0),
            committed_samples: status
                .and_then(|s| s["store"]["committed_samples"].as_u64())
                .unwrap_or(0),
            delivered: self.sub.lock().distinct,
            io_written_mb: mb(sysinfo::io_write_bytes(self.pid)),
        }
    }
}

fn print_header() {
    println!(
        "  {:<7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9} {:>11} {:>11} {:>10}",
        "phase",
        "t (s)",
        "RSS MB",
        "HWM MB",
        "anon MB",
        "store MB",
        "dir MB",
        "pend rec",
        "pend samp",
        "delivered",
        "written MB"
    );
}

fn print_point(p: &Point) {
    println!(
        "  {:<7} {:>8.0} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1} {:>9} {:>11} {:>11} {:>10.0}",
        p.phase,
        p.t_s,
        p.rss_mb,
        p.hwm_mb,
        p.anon_mb,
        p.store_disk_mb,
        p.dir_mb,
        thousands(p.pending_records as f64),
        thousands(p.pending_samples as f64),
        thousands(p.delivered as f64),
        p.io_written_mb
    );
}

/// Least-squares slope of y over x (per unit of x); `None` with fewer than two points.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// CPU seconds of the agent, the broker, this process (simulators and subscriber) and the
/// whole machine, to tell how much of the machine other people used meanwhile.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    at: Instant,
    agent: f64,
    broker: f64,
    me: f64,
    machine: f64,
}

fn cpu_now(agent: u32, broker: u32) -> Cpu {
    Cpu {
        at: Instant::now(),
        agent: sysinfo::process_cpu_seconds(agent).unwrap_or(0.0),
        broker: sysinfo::process_cpu_seconds(broker).unwrap_or(0.0),
        me: sysinfo::process_cpu_seconds(std::process::id()).unwrap_or(0.0),
        machine: sysinfo::machine_busy_seconds().unwrap_or(0.0),
    }
}

/// (agent, broker, benchmark process, others) in percent of one core between two readings.
/// The broker's figure is only right when the same broker process ran throughout.
fn cpu_between(a: Cpu, b: Cpu) -> (f64, f64, f64, f64) {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let pct = |x: f64| 100.0 * x / secs;
    let agent = pct(b.agent - a.agent);
    let broker = pct((b.broker - a.broker).max(0.0));
    let me = pct(b.me - a.me);
    let others = (pct(b.machine - a.machine) - agent - broker - me).max(0.0);
    (agent, broker, me, others)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

// ---------------------------------------------------------------------------------------------
// The run.

async fn run(s: &Settings) -> anyhow::Result<bool> {
    let started = Instant::now();
    println!(
        "edge-agent outage benchmark{}, {} | {} CPUs, {} | Linux {} | load average {}",
        if s.quick { " (--quick)" } else { "" },
        sysinfo::today_utc(),
        sysinfo::cpus(),
        sysinfo::cpu_model(),
        sysinfo::kernel(),
        loadavg()
    );
    println!(
        "{} tags on {} simulated PLCs, poll {} ms, per-device batching; warm-up {} s, outage \
         {:.1} min, samples every {} s; store quota {}, cache {}\nagent: {}",
        thousands(s.tags as f64),
        s.devices,
        s.poll_ms,
        s.warmup.as_secs(),
        s.outage.as_secs_f64() / 60.0,
        s.sample_every.as_secs(),
        s.max_disk_mb
            .map_or("default".to_owned(), |mb| format!("{mb} MB")),
        s.cache_mb
            .map_or("default".to_owned(), |mb| format!("{mb} MB")),
        s.agent_bin.display()
    );

    // A broker that saves its sessions when stopped: the subscriber's subscription and what is
    // queued for it survive the outage. No autosave: a save of a big queue would stall it.
    let mut broker = Mosquitto::start_with_config("persistence true\nautosave_interval 0\n")
        .context("starting Mosquitto")?;
    let pairs = s.tags_per_device() / 2;
    let program_period = Duration::from_millis((s.poll_ms / 4).max(5));
    let mut sims = Vec::with_capacity(s.devices);
    let mut programs = Vec::with_capacity(s.devices);
    for _ in 0..s.devices {
        let sim = ModbusSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("starting a simulated PLC")?;
        programs.push(sim.spawn_program(program_period, move |bank, tick| {
            bank.set_registers(Area::HoldingRegister, 0, &registers_at(pairs, tick));
        }));
        sims.push(sim);
    }
    let devices: Vec<common::DeviceToml> = sims
        .iter()
        .enumerate()
        .map(|(i, sim)| {
            let mut d = common::device(
                &format!("plc{i:02}"),
                sim.local_addr().port(),
                s.poll_ms,
                device_tags(s.tags_per_device()),
            );
            d.timeout_ms = 1000;
            d
        })
        .collect();
    let dir = TestDir::new();
    let data_dir = dir.data_dir();
    let mut store_extra = String::new();
    if let Some(mb) = s.max_disk_mb {
        store_extra.push_str(&format!("max_disk_mb = {mb}\n"));
    }
    if let Some(mb) = s.cache_mb {
        store_extra.push_str(&format!("cache_mb = {mb}\n"));
    }
    let config = dir.write_config(&common::config_toml(
        &data_dir,
        broker.port(),
        "per-device",
        &store_extra,
        &devices,
    ));

    let mut sub = Subscriber::start(broker.port(), format!("{}/+/_batch", common::ROOT)).await?;
    // The environment the systemd unit gives the agent.
    let mut agent = AgentProcess::spawn(
        &s.agent_bin,
        &config,
        &[("RUST_LOG", AGENT_LOG), ("MALLOC_ARENA_MAX", "2")],
    )?;
    let pid = agent.pid();

    // Ready: every device connected and scanned at least once.
    let ready_deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(st) = common::status(&data_dir) {
            let devs = st["devices"].as_array().cloned().unwrap_or_default();
            if devs.len() == s.devices
                && devs.iter().all(|d| {
                    d["connected"].as_bool() == Some(true)
                        && d["samples"].as_u64().unwrap_or(0) >= s.tags_per_device() as u64
                })
            {
                break;
            }
        }
        if !agent.is_running() || Instant::now() >= ready_deadline {
            bail!(
                "the agent did not scan every device within {READY_TIMEOUT:?}; log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut points: Vec<Point> = Vec::new();
    println!("\n== Warm-up, broker up ==");
    print_header();

    // Warm-up: the live rate, from the subscriber (delivered) and the store (committed).
    let warm_status_start = fresh_status(&data_dir).await?;
    let warm_start = Instant::now();
    let warm_delivered_start = sub.lock().distinct;
    let warm_cpu_start = cpu_now(pid, broker.pid());
    let mut probe = Probe {
        pid,
        data_dir: &data_dir,
        sub: &sub,
        outage_start: warm_start + s.warmup,
    };
    let p = probe.point("warm-up", Some(&warm_status_start));
    print_point(&p);
    points.push(p);
    while warm_start.elapsed() + s.sample_every <= s.warmup {
        tokio::time::sleep(s.sample_every).await;
        ensure_running(&mut agent)?;
        let p = probe.point("warm-up", None);
        print_point(&p);
        points.push(p);
    }
    if let Some(left) = s.warmup.checked_sub(warm_start.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let warm_status_end = fresh_status(&data_dir).await?;
    let warm_cpu_end = cpu_now(pid, broker.pid());
    let warm_window = warm_start.elapsed().as_secs_f64();
    let live_delivered_rate = (sub.lock().distinct - warm_delivered_start) as f64 / warm_window;
    let committed = |st: &Json| st["store"]["committed_samples"].as_u64().unwrap_or(0);
    let written_ms = |st: &Json| st["written_ms"].as_u64().unwrap_or(0);
    let live_committed_rate =
        committed(&warm_status_end).saturating_sub(committed(&warm_status_start)) as f64 * 1000.0
            / written_ms(&warm_status_end)
                .saturating_sub(written_ms(&warm_status_start))
                .max(1) as f64;
    let warm_cpu = cpu_between(warm_cpu_start, warm_cpu_end);

    // The outage.
    broker.stop().context("stopping the broker")?;
    let outage_start = Instant::now();
    probe.outage_start = outage_start;
    let outage_cpu_start = cpu_now(pid, broker.pid());
    let io_at_outage = sysinfo::io_write_bytes(pid).unwrap_or(0);
    println!(
        "\n== Outage: broker stopped for {:.1} min (load average {}) ==",
        s.outage.as_secs_f64() / 60.0,
        loadavg()
    );
    print_header();
    let p = probe.point("outage", None);
    print_point(&p);
    points.push(p);
    let outage_first = points.len() - 1;
    while outage_start.elapsed() + s.sample_every <= s.outage {
        tokio::time::sleep(s.sample_every).await;
        ensure_running(&mut agent)?;
        let p = probe.point("outage", None);
        print_point(&p);
        points.push(p);
    }
    if let Some(left) = s.outage.checked_sub(outage_start.elapsed()) {
        tokio::time::sleep(left).await;
    }
    // The backlog target: every sample the store had committed just before the broker returns.
    let before_restart = fresh_status(&data_dir).await?;
    let p = probe.point("outage", Some(&before_restart));
    print_point(&p);
    points.push(p);
    let outage_last = points.len() - 1;
    let outage_s = outage_start.elapsed().as_secs_f64();
    let outage_cpu_end = cpu_now(pid, broker.pid());
    let io_outage = sysinfo::io_write_bytes(pid)
        .unwrap_or(0)
        .saturating_sub(io_at_outage);
    let target = committed(&before_restart);
    let backlog_records = northbound_pending(&before_restart);
    let (delivered_before, load_before_replay) = {
        let mut st = sub.lock();
        st.target = Some(target);
        st.mark_armed = true;
        (st.distinct, loadavg())
    };
    let backlog_samples = target.saturating_sub(delivered_before);

    // The replay.
    broker.restart().context("starting the broker again")?;
    let replay_start = Instant::now();
    let replay_cpu_start = cpu_now(pid, broker.pid());
    println!(
        "\n== Replay: broker back; backlog {} samples in {} records (load average {}) ==",
        thousands(backlog_samples as f64),
        thousands(backlog_records as f64),
        load_before_replay
    );
    print_header();
    let replay_deadline = replay_start + s.outage + REPLAY_SLACK;
    let mut reached: Option<Instant> = None;
    let mut drained_at: Option<f64> = None;
    while Instant::now() < replay_deadline {
        tokio::time::sleep(REPLAY_SAMPLE).await;
        ensure_running(&mut agent)?;
        let p = probe.point("replay", None);
        // The store drained down to what one poll adds (status every 2 s: coarse).
        if drained_at.is_none() && p.pending_records <= 2 * s.devices as u64 {
            drained_at = Some(replay_start.elapsed().as_secs_f64());
        }
        print_point(&p);
        points.push(p);
        reached = sub.lock().target_reached_at;
        if reached.is_some() && drained_at.is_some() {
            break;
        }
    }
    let replay_cpu_end = cpu_now(pid, broker.pid());
    let (first_replayed, replay_messages) = {
        let st = sub.lock();
        (st.first_after_mark, st.replay_messages)
    };

    // After the replay: does memory come back down?
    if reached.is_some() && !s.after.is_zero() {
        println!(
            "\n== After the replay, broker up ({} s) ==",
            s.after.as_secs()
        );
        print_header();
        let until = Instant::now() + s.after;
        while Instant::now() + s.sample_every <= until + Duration::from_millis(100) {
            tokio::time::sleep(
                s.sample_every
                    .min(until.saturating_duration_since(Instant::now())),
            )
            .await;
            ensure_running(&mut agent)?;
            let p = probe.point("after", None);
            print_point(&p);
            points.push(p);
        }
    }
    let final_hwm_mb = sysinfo::vm_hwm(pid).unwrap_or(0) as f64 / MIB;
    let final_status = fresh_status(&data_dir).await?;

    // Stop the agent (it drains its window), then let the last messages arrive.
    agent.terminate().context("stopping the agent")?;
    let stopped_status = common::status(&data_dir).unwrap_or(final_status);
    let all_committed = committed(&stopped_status);
    let final_deadline = Instant::now() + FINAL_WAIT;
    while sub.lock().distinct < all_committed && Instant::now() < final_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sub.stop().await;
    for p in programs {
        p.abort();
    }
    drop(broker);

    // ---- Summary.
    let outage_points = &points[outage_first..=outage_last];
    let minutes = |p: &Point| p.t_s / 60.0;
    let rss_start = outage_points.first().map_or(0.0, |p| p.rss_mb);
    let rss_end = outage_points.last().map_or(0.0, |p| p.rss_mb);
    let rss_max = outage_points.iter().map(|p| p.rss_mb).fold(0.0, f64::max);
    let half = outage_s / 2.0;
    let last_half: Vec<(f64, f64)> = outage_points
        .iter()
        .filter(|p| p.t_s >= half)
        .map(|p| (minutes(p), p.rss_mb))
        .collect();
    let anon_last_half: Vec<(f64, f64)> = outage_points
        .iter()
        .filter(|p| p.t_s >= half)
        .map(|p| (minutes(p), p.anon_mb))
        .collect();
    let rss_slope = slope(&last_half);
    let anon_slope = slope(&anon_last_half);
    let whole: Vec<(f64, f64)> = outage_points
        .iter()
        .map(|p| (minutes(p), p.rss_mb))
        .collect();
    let rss_slope_whole = slope(&whole);
    let disk_slope = slope(
        &outage_points
            .iter()
            .map(|p| (minutes(p), p.store_disk_mb))
            .collect::<Vec<_>>(),
    );
    let dir_slope = slope(
        &outage_points
            .iter()
            .map(|p| (minutes(p), p.dir_mb))
            .collect::<Vec<_>>(),
    );
    let pending_per_min = slope(
        &outage_points
            .iter()
            .map(|p| (minutes(p), p.pending_samples as f64))
            .collect::<Vec<_>>(),
    );
    let replay_points: Vec<&Point> = points.iter().filter(|p| p.phase == "replay").collect();
    let replay_rss_max = replay_points.iter().map(|p| p.rss_mb).fold(0.0, f64::max);
    let after_rss = points
        .iter()
        .rev()
        .find(|p| p.phase == "after")
        .map(|p| p.rss_mb);
    let disk_end = outage_points.last().map_or(0.0, |p| p.store_disk_mb);
    let dir_end = outage_points.last().map_or(0.0, |p| p.dir_mb);
    let disk_after = points.last().map_or(0.0, |p| p.store_disk_mb);
    let stored_during_outage = outage_points
        .last()
        .map_or(0, |p| p.committed_samples)
        .saturating_sub(outage_points.first().map_or(0, |p| p.committed_samples));

    let replay_s = reached.map(|r| r.duration_since(replay_start).as_secs_f64());
    let replay_rate = replay_s.map(|t| backlog_samples as f64 / t.max(1e-9));
    let live_rate = live_delivered_rate.max(1e-9);
    let ratio = replay_rate.map(|r| r / live_rate);
    let replay_cpu = cpu_between(replay_cpu_start, replay_cpu_end);
    let outage_cpu = cpu_between(outage_cpu_start, outage_cpu_end);

    // Seq continuity per device.
    let st = sub.lock();
    let mut lost = 0u64;
    let mut lines = Vec::new();
    for (device, r) in &st.devices {
        let gaps = r.gaps();
        let missing: u64 = gaps.iter().map(|(a, b)| b - a + 1).sum();
        let starts_at_one = r.first() == Some(1);
        lost += missing
            + if starts_at_one {
                0
            } else {
                r.first().unwrap_or(1) - 1
            };
        lines.push(format!(
            "  {device}: seq {}..={} distinct {} duplicates {} out of order {} gaps {}{}",
            r.first().unwrap_or(0),
            r.last().unwrap_or(0),
            thousands(r.distinct as f64),
            r.duplicates,
            r.out_of_order,
            gaps.len(),
            if gaps.is_empty() {
                String::new()
            } else {
                format!(" (first {:?}, {missing} missing)", gaps.first())
            }
        ));
    }
    let missing_devices = s.devices.saturating_sub(st.devices.len());
    let complete = lost == 0
        && missing_devices == 0
        && st.malformed == 0
        && st.distinct >= all_committed
        && st.distinct >= target;
    let dropped = stopped_status["store"]["dropped_samples"]
        .as_u64()
        .unwrap_or(0);

    println!("\n== Sequence check (every device, seq from 1 with no gap) ==");
    for l in &lines {
        println!("{l}");
    }
    println!(
        "  received {} distinct samples ({} with duplicates) in {} messages ({} flagged replay), \
         {} malformed; the store committed {}; evicted {}: {}",
        thousands(st.distinct as f64),
        thousands(st.samples as f64),
        thousands(st.messages as f64),
        thousands(replay_messages as f64),
        st.malformed,
        thousands(all_committed as f64),
        thousands(dropped as f64),
        if complete {
            "NOTHING LOST"
        } else {
            "SAMPLES MISSING"
        }
    );
    if st.sessions_lost > 0 {
        println!(
            "  note: the broker lost the subscriber's session {} time(s): what it had queued \
             for it is missing here, not in the agent",
            st.sessions_lost
        );
    }
    drop(st);

    let f1 = |x: Option<f64>| x.map_or("n/a".to_owned(), |v| format!("{v:+.2}"));
    println!("\n== Summary ==");
    println!(
        "  live rate (warm-up)          {} samples/s delivered, {} committed (nominal {})",
        thousands(live_delivered_rate),
        thousands(live_committed_rate),
        thousands(s.nominal_rate())
    );
    println!(
        "  outage                       {:.1} min, {} samples stored ({} per minute)",
        outage_s / 60.0,
        thousands(stored_during_outage as f64),
        thousands(pending_per_min.unwrap_or(0.0))
    );
    println!(
        "  RSS during the outage        start {rss_start:.1} MB, max {rss_max:.1} MB, end \
         {rss_end:.1} MB (target < {RSS_TARGET_MB:.0} MB: {})",
        if rss_max < RSS_TARGET_MB {
            "meets"
        } else {
            "MISSES"
        }
    );
    println!(
        "  RSS slope                    {} MB/min over the last half ({} MB/min anonymous), {} \
         MB/min over the whole outage",
        f1(rss_slope),
        f1(anon_slope),
        f1(rss_slope_whole)
    );
    println!(
        "  RSS during the replay        max {replay_rss_max:.1} MB; after it {}; kernel high-water \
         mark {final_hwm_mb:.1} MB",
        after_rss.map_or("n/a".to_owned(), |r| format!("{r:.1} MB"))
    );
    println!(
        "  disk during the outage       store {:+.2} MB/min (sled's size, {disk_end:.1} MB at the \
         end), data dir {:+.2} MB/min ({dir_end:.1} MB allocated); {disk_after:.1} MB after the \
         replay",
        disk_slope.unwrap_or(0.0),
        dir_slope.unwrap_or(0.0)
    );
    println!(
        "  written to the device        {:.1} MB during the outage ({:.0} B per stored sample)",
        io_outage as f64 / MIB,
        io_outage as f64 / stored_during_outage.max(1) as f64
    );
    match (replay_s, replay_rate, ratio) {
        (Some(t), Some(rate), Some(ratio)) => println!(
            "  replay                       {} backlog samples in {t:.1} s (first message after \
             {}) = {} samples/s, {ratio:.1}x the live rate (target >= {REPLAY_TARGET_RATIO:.0}x: \
             {}); store drained to one poll after {}",
            thousands(backlog_samples as f64),
            first_replayed.map_or("n/a".to_owned(), |f| format!(
                "{:.2} s",
                f.duration_since(replay_start).as_secs_f64()
            )),
            thousands(rate),
            if ratio >= REPLAY_TARGET_RATIO {
                "meets"
            } else {
                "MISSES"
            },
            drained_at.map_or("n/a".to_owned(), |d| format!("{d:.0} s"))
        ),
        _ => println!(
            "  replay                       DID NOT FINISH within {:.0} s",
            (s.outage + REPLAY_SLACK).as_secs_f64()
        ),
    }
    println!(
        "  cpu % of one core            warm-up agent {:.0} / broker {:.0} / bench {:.0} / \
         others {:.0}; outage agent {:.0} / bench {:.0} / others {:.0}; replay agent {:.0} / \
         broker {:.0} / bench {:.0} / others {:.0}",
        warm_cpu.0,
        warm_cpu.1,
        warm_cpu.2,
        warm_cpu.3,
        outage_cpu.0,
        outage_cpu.2,
        outage_cpu.3,
        replay_cpu.0,
        replay_cpu.1,
        replay_cpu.2,
        replay_cpu.3
    );
    let disturbed: Vec<String> = [
        ("warm-up", warm_cpu.3),
        ("outage", outage_cpu.3),
        ("replay", replay_cpu.3),
    ]
    .iter()
    .filter(|(_, pct)| *pct > OTHER_LOAD_NOTICE_PCT)
    .map(|(what, pct)| format!("{what} ({pct:.0}%)"))
    .collect();
    if !disturbed.is_empty() {
        println!(
            "  note: other processes used CPU during: {} (of {}% in all)",
            disturbed.join(", "),
            100 * sysinfo::cpus()
        );
    }
    println!(
        "  load average at the end      {}\n\nbenchmark took {:.0} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    Ok(complete && reached.is_some())
}

fn ensure_running(agent: &mut AgentProcess) -> anyhow::Result<()> {
    if !agent.is_running() {
        bail!("the agent exited during the run; log:\n{}", agent.log());
    }
    Ok(())
}
