//! One measured stretch of a running agent: it waits until the agent has scanned every device,
//! then, between two fresh status snapshots, samples its resident memory every second and
//! takes its CPU time, bytes written (/proc), the samples and record bytes its store committed
//! (status snapshot), and what a counting subscriber received. Shared by the 10,000-tag
//! pipeline scenario and the Neuron scenarios.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use rumqttc::QoS;

use crate::common::{self, DeviceToml};
use crate::subscriber::{CountingSubscriber, Counts};
use crate::support::{AgentProcess, TestDir};
use crate::sysinfo;

const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The agent writes its status snapshot every 2 s.
const STATUS_WAIT: Duration = Duration::from_secs(6);

/// What the agent did during the window.
#[derive(Debug, Clone)]
pub struct Window {
    pub seconds: f64,
    /// Resident memory every second, from the window's start to its end (bytes).
    pub rss: Vec<u64>,
    /// The kernel's high-water mark since the agent started (start-up included).
    pub rss_hwm: u64,
    /// Anonymous memory (heap, stacks) at the end; the rest of the RSS is mapped files.
    pub rss_anon_end: u64,
    pub agent_cpu_s: f64,
    /// CPU seconds of each process passed as `watch`, in that order.
    pub watched_cpu_s: Vec<f64>,
    /// CPU seconds of the benchmark process itself.
    pub self_cpu_s: f64,
    /// CPU seconds the whole machine was busy, when /proc/stat could be read.
    pub machine_busy_s: Option<f64>,
    /// Bytes the agent sent to the block layer (`write_bytes` of /proc/<pid>/io).
    pub write_bytes: u64,
    /// Samples the store committed between the two status snapshots, their stored record
    /// bytes, and the milliseconds between the snapshots.
    pub samples: u64,
    pub record_bytes: u64,
    pub status_ms: u64,
    pub delivered_values: u64,
    pub delivered_messages: u64,
    /// The status snapshot at the window's end.
    pub end_status: serde_json::Value,
}

impl Window {
    /// CPU seconds over the window as a percentage of one core.
    pub fn pct(&self, cpu_s: f64) -> f64 {
        100.0 * cpu_s / self.seconds.max(1e-9)
    }

    /// Percent of one core the rest of the machine used: neither the agent, nor a watched
    /// process, nor the benchmark.
    pub fn other_cpu_pct(&self) -> f64 {
        let ours = self.agent_cpu_s + self.self_cpu_s + self.watched_cpu_s.iter().sum::<f64>();
        self.machine_busy_s
            .map_or(0.0, |busy| self.pct(busy - ours).max(0.0))
    }

    pub fn rss_peak(&self) -> u64 {
        self.rss.iter().copied().max().unwrap_or(0)
    }

    /// The RSS samples in MB, rounded to 0.01.
    pub fn rss_samples_mb(&self) -> Vec<f64> {
        self.rss
            .iter()
            .map(|&b| (mb(b) * 100.0).round() / 100.0)
            .collect()
    }

    /// Samples committed per second, by the status snapshots' own clock.
    pub fn samples_per_s(&self) -> f64 {
        self.samples as f64 * 1000.0 / self.status_ms.max(1) as f64
    }

    pub fn record_bytes_per_sample(&self) -> f64 {
        self.record_bytes as f64 / self.samples.max(1) as f64
    }

    /// Bytes the agent wrote per committed sample.
    pub fn written_per_sample(&self) -> f64 {
        self.write_bytes as f64 / self.samples.max(1) as f64
    }
}

/// Bytes to MB (MiB, as /proc counts).
pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// The real binary running a per-device batching config, with a subscriber counting its
/// batches; the directory holding config and data lives as long as this.
pub struct Started {
    pub dir: TestDir,
    pub data_dir: PathBuf,
    pub toml: String,
    pub config: PathBuf,
    pub sub: CountingSubscriber,
    pub agent: AgentProcess,
}

/// Writes a config of `devices` publishing per device to the broker on `broker_port`, starts
/// a subscriber to every device's batches, then the agent (log level `log`).
pub async fn start_agent(
    broker_port: u16,
    devices: &[DeviceToml],
    log: &str,
) -> anyhow::Result<Started> {
    start_agent_with(broker_port, devices, log, "").await
}

/// [`start_agent`], with `extra` appended to the board config (an `[admin]` table).
pub async fn start_agent_with(
    broker_port: u16,
    devices: &[DeviceToml],
    log: &str,
    extra: &str,
) -> anyhow::Result<Started> {
    let dir = TestDir::new();
    let data_dir = dir.data_dir();
    let mut toml = common::config_toml(&data_dir, broker_port, "per-device", "", devices);
    toml.push_str(extra);
    let config = dir.write_config(&toml);
    let sub = CountingSubscriber::start(
        broker_port,
        &format!("{}/+/_batch", common::ROOT),
        QoS::AtMostOnce,
    )
    .await?;
    // The environment the systemd unit gives the agent.
    let agent = AgentProcess::spawn(
        &common::bin(),
        &config,
        &[("RUST_LOG", log), ("MALLOC_ARENA_MAX", "2")],
    )?;
    Ok(Started {
        dir,
        data_dir,
        toml,
        config,
        sub,
        agent,
    })
}

/// Waits (bounded) until the agent's status shows `devices` devices, each connected and with
/// at least `samples` samples: every device scanned once.
pub async fn wait_scanned(
    agent: &mut AgentProcess,
    data_dir: &Path,
    devices: usize,
    samples: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = common::status(data_dir) {
            let devs = s["devices"].as_array().cloned().unwrap_or_default();
            let all = devs.len() == devices
                && devs.iter().all(|d| {
                    d["connected"].as_bool() == Some(true)
                        && d["samples"].as_u64().unwrap_or(0) >= samples as u64
                });
            if all {
                return Ok(());
            }
        }
        if !agent.is_running() || Instant::now() >= deadline {
            bail!(
                "the agent did not scan its {devices} devices within {timeout:?}; log:\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Measures the agent for about `duration`, starting and ending at a fresh status snapshot so
/// that samples and bytes written are counted over the same stretch of time. `watch` are other
/// processes whose CPU time is taken too (the broker, the simulators' process).
pub async fn measure(
    agent: &mut AgentProcess,
    data_dir: &Path,
    watch: &[u32],
    sub: &Counts,
    duration: Duration,
) -> anyhow::Result<Window> {
    let pid = agent.pid();
    let me = std::process::id();
    let cpu = |p: u32| sysinfo::process_cpu_seconds(p).unwrap_or(0.0);
    let start_status = fresh_status(data_dir, None).await?;
    let t0 = Instant::now();
    let io_start = sysinfo::io_write_bytes(pid);
    let cpu_start = cpu(pid);
    let watched_start: Vec<f64> = watch.iter().map(|&p| cpu(p)).collect();
    let self_start = cpu(me);
    let machine_start = sysinfo::machine_busy_seconds();
    let (values_start, messages_start) = (sub.values(), sub.messages());
    let mut rss = Vec::new();
    rss.extend(sysinfo::vm_rss(pid));
    let end_at = t0 + duration;
    while Instant::now() + SAMPLE_EVERY <= end_at + Duration::from_millis(100) {
        tokio::time::sleep(SAMPLE_EVERY).await;
        if !agent.is_running() {
            bail!("the agent exited during the run; log:\n{}", agent.log());
        }
        rss.extend(sysinfo::vm_rss(pid));
    }
    let end_status = fresh_status(data_dir, Some(&start_status)).await?;
    let seconds = t0.elapsed().as_secs_f64();
    let io_end = sysinfo::io_write_bytes(pid);
    let agent_cpu_s = cpu(pid) - cpu_start;
    let watched_cpu_s = watch
        .iter()
        .zip(&watched_start)
        .map(|(&p, start)| cpu(p) - start)
        .collect();
    let self_cpu_s = cpu(me) - self_start;
    let machine_busy_s = match (machine_start, sysinfo::machine_busy_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let (values_end, messages_end) = (sub.values(), sub.messages());
    let rss_hwm = sysinfo::vm_hwm(pid).unwrap_or(0);
    let rss_anon_end = sysinfo::rss_anon(pid).unwrap_or(0);
    rss.extend(sysinfo::vm_rss(pid));

    let store = |s: &serde_json::Value, key: &str| s["store"][key].as_u64().unwrap_or(0);
    let delta = |key: &str| store(&end_status, key).saturating_sub(store(&start_status, key));
    let written_ms = |s: &serde_json::Value| s["written_ms"].as_u64().unwrap_or(0);
    Ok(Window {
        seconds,
        rss,
        rss_hwm,
        rss_anon_end,
        agent_cpu_s,
        watched_cpu_s,
        self_cpu_s,
        machine_busy_s,
        write_bytes: match (io_start, io_end) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        },
        samples: delta("committed_samples"),
        record_bytes: delta("committed_bytes"),
        status_ms: written_ms(&end_status).saturating_sub(written_ms(&start_status)),
        delivered_values: values_end.saturating_sub(values_start),
        delivered_messages: messages_end.saturating_sub(messages_start),
        end_status,
    })
}

/// Waits for a status snapshot newer than `after` (bounded) and returns it.
pub async fn fresh_status(
    data_dir: &Path,
    after: Option<&serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let seen = match after {
        Some(s) => s["written_ms"].as_u64(),
        None => common::status(data_dir).and_then(|s| s["written_ms"].as_u64()),
    };
    let deadline = Instant::now() + STATUS_WAIT;
    loop {
        if let Some(s) = common::status(data_dir) {
            if s["written_ms"].as_u64() > seen {
                return Ok(s);
            }
        }
        if Instant::now() >= deadline {
            bail!("the agent wrote no status snapshot within {STATUS_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
