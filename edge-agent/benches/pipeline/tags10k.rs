//! SPEC §9 memory, disk writes and Modbus requests with 10,000 tags: the real binary polls ten
//! simulated PLCs of 1,000 tags each (u16 and f32 alternating over 1,500 holding registers,
//! every value changing between polls) once a second, and publishes per device to a real
//! Mosquitto. Its resident memory is sampled every second; bytes written to disk come from its
//! /proc io counters; requests per scan from the read plan, from the layout's lower bounds and
//! from what the simulators were actually asked.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use edge_agent::daemon::devices::device_plan;
use edge_config::SystemSecrets;
use edge_modbus::plan::MAX_READ_REGISTERS;
use edge_modbus::Area;
use edge_sim::ModbusSim;
use serde::Serialize;

use crate::common::{self, DeviceToml, TagToml};
use crate::support::Mosquitto;
use crate::window::{mb, measure, start_agent, wait_scanned};

pub const DEVICES: usize = 10;
pub const TAGS_PER_DEVICE: usize = 1000;
pub const POLL_MS: u64 = 1000;
/// The SPEC's memory ceiling.
pub const RSS_TARGET_BYTES: u64 = 20 * 1024 * 1024;
/// Each (u16, f32) pair takes three registers.
const REGISTERS_PER_PAIR: u16 = 3;
const PROGRAM_PERIOD: Duration = Duration::from_millis(250);
const READY_TIMEOUT: Duration = Duration::from_secs(40);
const AGENT_LOG: &str = "info";

#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    pub tags: usize,
    pub duration_s: f64,
    pub rss_start_mb: f64,
    pub rss_peak_mb: f64,
    pub rss_end_mb: f64,
    /// The kernel's high-water mark since the process started (start-up included).
    pub rss_hwm_mb: f64,
    /// Of the RSS at the end: anonymous memory (heap, stacks); the rest is mapped files.
    pub rss_anon_end_mb: f64,
    pub rss_samples_mb: Vec<f64>,
    pub meets_target: bool,
    pub samples_per_s: f64,
    pub delivered_values_per_s: f64,
    pub agent_cpu_pct: f64,
    pub broker_cpu_pct: f64,
    /// The benchmark process itself: the ten simulated PLCs and the subscriber.
    pub simulators_cpu_pct: f64,
    /// Other processes of the (shared) machine meanwhile.
    pub other_cpu_pct: f64,
    /// Stored record bytes per sample (the store's `committed_bytes / committed_samples`).
    pub logical_bytes_per_sample: f64,
    /// Bytes the agent had written to the block device per stored sample (/proc/<pid>/io).
    pub disk_bytes_per_sample: f64,
    pub disk_write_bytes_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    pub devices: usize,
    pub tags: usize,
    pub registers: u64,
    /// The planner's requests per scan, summed over the devices (what `check` prints).
    pub planned: usize,
    /// One read per tag.
    pub one_per_tag: usize,
    /// Sum over contiguous register areas of ceil(registers / 125).
    pub lower_bound: u64,
    /// The same, when no value may be split across two reads (the true minimum).
    pub lower_bound_unsplit: u64,
    /// Reads the simulators answered per complete scan, summed over the devices.
    pub observed_per_scan: Option<f64>,
    pub observed_scans: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub memory: Memory,
    pub requests: Requests,
}

/// The tags of one device: `u{j}` at hr:3j (u16) and `f{j}` at hr:3j+1 (f32), j < 500.
fn device_tags() -> Vec<TagToml> {
    (0..TAGS_PER_DEVICE / 2)
        .flat_map(|j| {
            let at = j as u16 * REGISTERS_PER_PAIR;
            [
                common::tag(&format!("u{j:03}"), &format!("hr:{at}"), "u16"),
                common::tag(&format!("f{j:03}"), &format!("hr:{}", at + 1), "f32"),
            ]
        })
        .collect()
}

/// Register values for tick `tick`: every tag differs from the previous tick.
fn registers_at(tick: u64) -> Vec<u16> {
    let mut regs = Vec::with_capacity(TAGS_PER_DEVICE / 2 * usize::from(REGISTERS_PER_PAIR));
    for j in 0..(TAGS_PER_DEVICE / 2) as u64 {
        let bits = (tick as f32 * 0.5 + j as f32).to_bits();
        regs.extend_from_slice(&[
            (tick.wrapping_add(j) % 65_536) as u16,
            (bits >> 16) as u16,
            bits as u16,
        ]);
    }
    regs
}

/// Runs the 10,000-tag agent for `duration` (after it has scanned every device once).
pub async fn run(duration: Duration) -> anyhow::Result<Outcome> {
    let broker = Mosquitto::start().context("starting Mosquitto")?;
    let mut sims = Vec::with_capacity(DEVICES);
    let mut programs = Vec::with_capacity(DEVICES);
    for _ in 0..DEVICES {
        let sim = ModbusSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .context("starting a simulated PLC")?;
        programs.push(sim.spawn_program(PROGRAM_PERIOD, |bank, tick| {
            bank.set_registers(Area::HoldingRegister, 0, &registers_at(tick));
        }));
        sims.push(sim);
    }
    let devices: Vec<DeviceToml> = sims
        .iter()
        .enumerate()
        .map(|(i, sim)| {
            let mut d = common::device(
                &format!("plc{i:02}"),
                sim.local_addr().port(),
                POLL_MS,
                device_tags(),
            );
            d.timeout_ms = 1000;
            d
        })
        .collect();
    let mut run = start_agent(broker.port(), &devices, AGENT_LOG).await?;
    let requests_planned = plan_requests(&run.toml, &run.config)?;
    let (agent, data_dir) = (&mut run.agent, &run.data_dir);
    wait_scanned(agent, data_dir, DEVICES, TAGS_PER_DEVICE, READY_TIMEOUT).await?;
    for sim in &sims {
        sim.clear_read_requests();
    }
    let w = measure(agent, data_dir, &[broker.pid()], run.sub.counts(), duration).await?;
    let observed = observed_requests(&sims);

    run.agent.terminate().context("stopping the agent")?;
    run.sub.stop().await;
    for p in programs {
        p.abort();
    }

    let agent_cpu_pct = w.pct(w.agent_cpu_s);
    let broker_cpu_pct = w.pct(w.watched_cpu_s[0]);
    let simulators_cpu_pct = w.pct(w.self_cpu_s);
    let peak = w.rss_peak();
    Ok(Outcome {
        memory: Memory {
            tags: DEVICES * TAGS_PER_DEVICE,
            duration_s: w.seconds,
            rss_start_mb: mb(w.rss.first().copied().unwrap_or(0)),
            rss_peak_mb: mb(peak),
            rss_end_mb: mb(w.rss.last().copied().unwrap_or(0)),
            rss_hwm_mb: mb(w.rss_hwm),
            rss_anon_end_mb: mb(w.rss_anon_end),
            rss_samples_mb: w.rss_samples_mb(),
            meets_target: peak < RSS_TARGET_BYTES && w.rss_hwm < RSS_TARGET_BYTES,
            samples_per_s: w.samples_per_s(),
            delivered_values_per_s: w.delivered_values as f64 / w.seconds,
            agent_cpu_pct,
            broker_cpu_pct,
            simulators_cpu_pct,
            other_cpu_pct: w.other_cpu_pct(),
            logical_bytes_per_sample: w.record_bytes_per_sample(),
            disk_bytes_per_sample: w.written_per_sample(),
            disk_write_bytes_per_s: w.write_bytes as f64 / w.seconds,
        },
        requests: Requests {
            observed_per_scan: observed.0,
            observed_scans: observed.1,
            ..requests_planned
        },
    })
}

/// Reads per complete scan, summed over the simulators, and the complete scans seen. A scan
/// starts with the read at register 0; reads before the first and from the last such start
/// belong to scans cut by the window.
fn observed_requests(sims: &[ModbusSim]) -> (Option<f64>, u64) {
    let mut per_scan = 0.0;
    let mut min_scans = u64::MAX;
    for sim in sims {
        let reads = sim.read_requests();
        let starts: Vec<usize> = reads
            .iter()
            .enumerate()
            .filter(|(_, r)| r.0 == Area::HoldingRegister && r.1 == 0)
            .map(|(i, _)| i)
            .collect();
        let (Some(&first), Some(&last)) = (starts.first(), starts.last()) else {
            return (None, 0);
        };
        let scans = starts.len() as u64 - 1;
        if scans == 0 {
            return (None, 0);
        }
        per_scan += (last - first) as f64 / scans as f64;
        min_scans = min_scans.min(scans);
    }
    (Some(per_scan), min_scans)
}

/// The planner's requests for the config, against one-per-tag and the layout's lower bounds.
fn plan_requests(toml: &str, path: &Path) -> anyhow::Result<Requests> {
    let cfg = edge_config::parse(toml, path, &SystemSecrets)
        .map_err(|e| anyhow::anyhow!("the 10,000-tag board config is invalid: {e:?}"))?;
    let mut r = Requests {
        devices: cfg.devices.len(),
        tags: 0,
        registers: 0,
        planned: 0,
        one_per_tag: 0,
        lower_bound: 0,
        lower_bound_unsplit: 0,
        observed_per_scan: None,
        observed_scans: 0,
    };
    for dev in &cfg.devices {
        r.planned += device_plan(dev)?.map_or(0, |p| p.request_count());
        r.tags += dev.tags.len();
        r.one_per_tag += dev.tags.len();
        let mut spans: Vec<(Area, u32, u32)> = dev
            .tags
            .iter()
            .filter_map(|t| t.modbus())
            .map(|m| {
                let start = u32::from(m.address.offset);
                let len = u32::from(edge_modbus::codec::register_count(m.data_type));
                (m.address.area, start, start + len)
            })
            .collect();
        spans.sort_unstable();
        let (regs, bound, unsplit) = lower_bounds(&spans, u32::from(MAX_READ_REGISTERS));
        r.registers += regs;
        r.lower_bound += bound;
        r.lower_bound_unsplit += unsplit;
    }
    Ok(r)
}

/// For value spans `(area, start, end)` sorted by area and start: the registers they cover,
/// the sum over contiguous areas of ceil(registers / `max`), and the fewest reads of at most
/// `max` registers that hold every value whole (greedy from the left, which is optimal for
/// intervals on a line), with no unused register read (a `max_gap` of 0).
fn lower_bounds(spans: &[(Area, u32, u32)], max: u32) -> (u64, u64, u64) {
    let (mut registers, mut bound, mut unsplit) = (0u64, 0u64, 0u64);
    let mut i = 0;
    while i < spans.len() {
        // One contiguous run: spans that touch or overlap, in one area.
        let (area, run_start, mut run_end) = spans[i];
        let mut j = i + 1;
        while j < spans.len() && spans[j].0 == area && spans[j].1 <= run_end {
            run_end = run_end.max(spans[j].2);
            j += 1;
        }
        let len = u64::from(run_end - run_start);
        registers += len;
        bound += len.div_ceil(u64::from(max));
        let mut k = i;
        while k < j {
            let read_start = spans[k].1;
            let mut read_end = spans[k].2;
            k += 1;
            while k < j && spans[k].2.max(read_end) - read_start <= max {
                read_end = read_end.max(spans[k].2);
                k += 1;
            }
            unsplit += 1;
        }
        i = j;
    }
    (registers, bound, unsplit)
}
