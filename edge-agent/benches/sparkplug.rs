//! The Sparkplug B benchmark: tag values per second through the sled store, the Sparkplug
//! publisher (QoS 0 data proven read by QoS 1 delivery markers) and a real Mosquitto to a
//! subscriber that decodes every DDATA; and how long the births of N metrics take, to encode
//! and from CONNECT to the last DBIRTH at a subscriber. Prints a table and writes the same
//! figures to `target/bench-sparkplug.json`.
//!
//! ```text
//! cargo bench -p edge-agent --bench sparkplug               # everything, about a minute
//! cargo bench -p edge-agent --bench sparkplug -- --quick    # shorter runs
//! cargo bench -p edge-agent --bench sparkplug -- births     # only this scenario
//! ```
//!
//! Everything runs on 127.0.0.1 with ports chosen by the kernel; Mosquitto must be installed
//! (`scripts/test.sh` installs it). Every run is bounded and stops by itself.

// The integration tests' harness (Mosquitto launcher, temporary directories); the benchmark
// uses only part of it.
#[allow(unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use edge_agent::daemon::runtime;
use edge_agent::northbound::sparkplug::SparkplugPublisher;
use edge_config::{Format, SystemSecrets};
use edge_model::{Batch, DataType, DeviceId, Quality, Sample, TagName, Value};
use edge_store::Store;
use mes_bridge::sparkplug::{decode_payload, DeviceDef, EdgeNode, MetricDef};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::support::{Mosquitto, TestDir};

const USAGE: &str =
    "usage: cargo bench -p edge-agent --bench sparkplug -- [--quick] [throughput] [births]";
const GROUP: &str = "bench";
const NODE: &str = "gw-bench";
const BATCH_QUEUE: usize = 4096;
const MAX_PACKET: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last proof, how long the subscriber may stay silent before the run ends.
const SUBSCRIBER_IDLE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
struct ThroughputParams {
    devices: usize,
    /// Samples per stored record: one DDATA each.
    tags: usize,
    values: u64,
    max_inflight: u16,
    timeout: Duration,
}

#[derive(Debug, Serialize)]
struct ThroughputOutcome {
    devices: usize,
    tags_per_record: usize,
    max_inflight: u16,
    values: u64,
    records: u64,
    /// Generation start to the last record committed durably.
    stored_values_per_s: f64,
    /// Generation start to the cursor moving over the last record (broker proved it read).
    proven_values_per_s: Option<f64>,
    /// Generation start to the last DDATA at the subscriber.
    delivered_values_per_s: f64,
    delivered_messages_per_s: f64,
    values_delivered: u64,
    values_missing: u64,
    markers_per_1000_messages: f64,
}

#[derive(Debug, Serialize)]
struct BirthsOutcome {
    metrics: usize,
    devices: usize,
    /// `EdgeNode::births` alone: NBIRTH and every DBIRTH encoded.
    encode_ms: f64,
    birth_bytes: usize,
    /// Publisher started (CONNECT) to the last DBIRTH decoded at the subscriber.
    connect_to_last_dbirth_ms: f64,
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut throughput = false;
    let mut births = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "throughput" => throughput = true,
            "births" => births = true,
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            other => {
                eprintln!("unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(64);
            }
        }
    }
    if !throughput && !births {
        throughput = true;
        births = true;
    }
    edge_agent::init_tls();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(quick, throughput, births)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(quick: bool, throughput: bool, births: bool) -> anyhow::Result<()> {
    let scale = if quick { 10 } else { 1 };
    let mut report = serde_json::Map::new();
    if throughput {
        println!(
            "Sparkplug throughput: store → Sparkplug publisher → Mosquitto → decoding subscriber"
        );
        println!(
            "{:>7} {:>5} {:>9} {:>10} {:>12} {:>12} {:>12} {:>11} {:>8} {:>9}",
            "devices",
            "tags",
            "inflight",
            "values",
            "stored/s",
            "proven/s",
            "delivered/s",
            "msgs/s",
            "missing",
            "mark/1k"
        );
        let mut outcomes = Vec::new();
        for p in [
            ThroughputParams {
                devices: 10,
                tags: 100,
                values: 2_000_000 / scale,
                max_inflight: 256,
                timeout: Duration::from_secs(120),
            },
            ThroughputParams {
                devices: 10,
                tags: 100,
                values: 2_000_000 / scale,
                max_inflight: 1024,
                timeout: Duration::from_secs(120),
            },
            ThroughputParams {
                devices: 10,
                tags: 10,
                values: 500_000 / scale,
                max_inflight: 256,
                timeout: Duration::from_secs(120),
            },
            ThroughputParams {
                devices: 10,
                tags: 1,
                values: 100_000 / scale,
                max_inflight: 256,
                timeout: Duration::from_secs(120),
            },
            ThroughputParams {
                devices: 10,
                tags: 1,
                values: 100_000 / scale,
                max_inflight: 4096,
                timeout: Duration::from_secs(120),
            },
        ] {
            let o = throughput_run(p).await?;
            println!(
                "{:>7} {:>5} {:>9} {:>10} {:>12.0} {:>12} {:>12.0} {:>11.0} {:>8} {:>9.1}",
                o.devices,
                o.tags_per_record,
                o.max_inflight,
                o.values,
                o.stored_values_per_s,
                o.proven_values_per_s
                    .map_or("-".to_owned(), |v| format!("{v:.0}")),
                o.delivered_values_per_s,
                o.delivered_messages_per_s,
                o.values_missing,
                o.markers_per_1000_messages
            );
            outcomes.push(o);
        }
        report.insert("throughput".into(), serde_json::to_value(&outcomes)?);
    }
    if births {
        println!(
            "\nSparkplug births: NBIRTH + one DBIRTH per device, every metric with its properties"
        );
        println!(
            "{:>8} {:>8} {:>11} {:>12} {:>24}",
            "metrics", "devices", "encode ms", "bytes", "CONNECT→last DBIRTH ms"
        );
        let mut outcomes = Vec::new();
        for (metrics, devices) in [(1_000, 10), (10_000, 10), (50_000, 50)] {
            let o = births_run(metrics / scale.min(5) as usize, devices).await?;
            println!(
                "{:>8} {:>8} {:>11.1} {:>12} {:>24.1}",
                o.metrics, o.devices, o.encode_ms, o.birth_bytes, o.connect_to_last_dbirth_ms
            );
            outcomes.push(o);
        }
        report.insert("births".into(), serde_json::to_value(&outcomes)?);
    }
    let path = target_dir().join("bench-sparkplug.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nfigures written to {}", path.display());
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

fn defs(devices: usize, tags: usize) -> Vec<DeviceDef> {
    (0..devices)
        .map(|d| DeviceDef {
            name: format!("dev{d}"),
            metrics: (0..tags)
                .map(|t| {
                    let mut m = MetricDef::new(&format!("t{t:05}"), DataType::F64);
                    m.unit = Some("degC".into());
                    m
                })
                .collect(),
        })
        .collect()
}

/// A Sparkplug northbound with the product's defaults, from a board config.
fn northbound(
    dir: &TestDir,
    port: u16,
    max_inflight: u16,
) -> anyhow::Result<(edge_config::Config, edge_config::Northbound)> {
    let toml = format!(
        r#"[gateway]
id = "{NODE}"
data_dir = "{}"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "scada"
url = "mqtt://127.0.0.1:{port}"
format = "sparkplug-b"
group_id = "{GROUP}"
max_inflight = {max_inflight}

[[device]]
name = "dev0"
protocol = "modbus-tcp"
host = "127.0.0.1"
  [[device.tag]]
  name = "t0"
  address = "hr:0"
  type = "f64"
"#,
        dir.data_dir().display()
    );
    let cfg = edge_config::parse(&toml, &dir.join("agent.toml"), &SystemSecrets)
        .map_err(|e| anyhow::anyhow!("the benchmark's board config is invalid: {e}"))?;
    let nb = cfg
        .northbounds
        .first()
        .cloned()
        .context("the benchmark's board config has no northbound")?;
    Ok((cfg, nb))
}

/// What the decoding subscriber has seen.
#[derive(Debug)]
struct Counts {
    base: Instant,
    ddata: AtomicU64,
    values: AtomicU64,
    dbirths: AtomicU64,
    last_ns: AtomicU64,
}

impl Counts {
    fn last_at(&self) -> Option<Instant> {
        match self.last_ns.load(Ordering::Acquire) {
            0 => None,
            ns => Some(self.base + Duration::from_nanos(ns)),
        }
    }
}

/// A subscriber on its own thread that decodes every Sparkplug message of the group.
struct Subscriber {
    counts: Arc<Counts>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16) -> anyhow::Result<Subscriber> {
        let counts = Arc::new(Counts {
            base: Instant::now(),
            ddata: AtomicU64::new(0),
            values: AtomicU64::new(0),
            dbirths: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let c = counts.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sub".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let mut o = MqttOptions::new("bench-sparkplug-sub", "127.0.0.1", port);
                    o.set_keep_alive(Duration::from_secs(30));
                    o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
                    let (client, mut el) = AsyncClient::new(o, 16);
                    let mut stop_rx = stop_rx;
                    let mut ready = Some(ready_tx);
                    loop {
                        let ev = tokio::select! {
                            _ = &mut stop_rx => break,
                            ev = el.poll() => ev,
                        };
                        match ev {
                            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                                let _ = client
                                    .try_subscribe(format!("spBv1.0/{GROUP}/#"), QoS::AtMostOnce);
                            }
                            Ok(Event::Incoming(Packet::SubAck(_))) => {
                                if let Some(r) = ready.take() {
                                    let _ = r.send(());
                                }
                            }
                            Ok(Event::Incoming(Packet::Publish(p))) => {
                                let Ok(payload) = decode_payload(&p.payload) else {
                                    continue;
                                };
                                if p.topic.contains("/DDATA/") {
                                    c.values
                                        .fetch_add(payload.metrics.len() as u64, Ordering::Relaxed);
                                    c.ddata.fetch_add(1, Ordering::Relaxed);
                                } else if p.topic.contains("/DBIRTH/") {
                                    c.dbirths.fetch_add(1, Ordering::Relaxed);
                                }
                                let ns = (c.base.elapsed().as_nanos() as u64).max(1);
                                c.last_ns.store(ns, Ordering::Release);
                            }
                            Ok(_) => {}
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                });
            })?;
        ready_rx
            .recv_timeout(CONNECT_TIMEOUT)
            .context("the subscriber did not subscribe in time")?;
        Ok(Subscriber {
            counts,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= deadline {
            bail!("{what} did not happen within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

async fn throughput_run(p: ThroughputParams) -> anyhow::Result<ThroughputOutcome> {
    let broker = Mosquitto::start().context("starting Mosquitto")?;
    let dir = TestDir::new();
    let (cfg, nb) = northbound(&dir, broker.port(), p.max_inflight)?;
    let Format::SparkplugB(settings) = nb.format.clone() else {
        bail!("the benchmark's northbound is not Sparkplug");
    };
    let (store, _) = Store::open(
        &runtime::store_dir(&cfg),
        runtime::store_options(&cfg),
        &runtime::northbound_names(&cfg),
    )?;
    let mut sub = Subscriber::start(broker.port())?;
    let publisher = SparkplugPublisher::new(
        nb,
        settings,
        store.clone(),
        defs(p.devices, p.tags),
        Vec::new(),
        &cfg.gateway.data_dir,
    );
    let stats = publisher.stats();
    let markers = publisher.delivery_markers();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(publisher.run(stop_rx, Duration::from_secs(5)));
    let counts = sub.counts.clone();
    wait_until("the births", CONNECT_TIMEOUT, || {
        counts.dbirths.load(Ordering::Relaxed) >= p.devices as u64
    })
    .await?;

    let records = p.values.div_ceil(p.tags as u64);
    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<Batch>(BATCH_QUEUE);
    let writer = edge_store::spawn_writer(store.clone(), rx, cfg.store.commit_interval);
    let generator = tokio::spawn(generate(tx, p));
    let stored_at = match tokio::time::timeout(p.timeout, writer).await {
        Ok(Ok(Ok(()))) => Instant::now(),
        Ok(Ok(Err(e))) => bail!("the store writer failed: {e}"),
        Ok(Err(e)) => bail!("the store writer task failed: {e}"),
        Err(_) => bail!(
            "the store did not take {} values within {:?}",
            p.values,
            p.timeout
        ),
    };
    generator.await.context("the generator failed")?;

    let deadline = t0 + p.timeout;
    let mut proven_at = None;
    loop {
        let now = Instant::now();
        if proven_at.is_none() && stats.records_acked.load(Ordering::Relaxed) >= records {
            proven_at = Some(now);
        }
        let delivered = counts.values.load(Ordering::Relaxed);
        let quiet = counts
            .last_at()
            .is_some_and(|l| now.duration_since(l) >= SUBSCRIBER_IDLE);
        if (delivered >= p.values && proven_at.is_some())
            || (proven_at.is_some() && quiet)
            || now >= deadline
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    sub.stop();

    let delivered = counts.values.load(Ordering::Relaxed);
    let ddata = counts.ddata.load(Ordering::Relaxed);
    let last = counts.last_at().unwrap_or_else(Instant::now);
    let secs = |at: Instant| at.duration_since(t0).as_secs_f64().max(1e-9);
    let published = stats.published.load(Ordering::Relaxed).max(1);
    let markers = markers.load(Ordering::Relaxed) as f64;
    Ok(ThroughputOutcome {
        devices: p.devices,
        tags_per_record: p.tags,
        max_inflight: p.max_inflight,
        values: p.values,
        records,
        stored_values_per_s: p.values as f64 / secs(stored_at),
        proven_values_per_s: proven_at.map(|at| p.values as f64 / secs(at)),
        delivered_values_per_s: delivered as f64 / secs(last),
        delivered_messages_per_s: ddata as f64 / secs(last),
        values_delivered: delivered,
        values_missing: p.values.saturating_sub(delivered),
        markers_per_1000_messages: 1000.0 * markers / published as f64,
    })
}

async fn generate(tx: mpsc::Sender<Batch>, p: ThroughputParams) {
    let tags: Vec<TagName> = (0..p.tags).map(|t| TagName(format!("t{t:05}"))).collect();
    let devices: Vec<DeviceId> = (0..p.devices)
        .map(|d| DeviceId(format!("dev{d}")))
        .collect();
    let mut sent = 0u64;
    let mut n = 0usize;
    while sent < p.values {
        let ts = edge_model::now_ms();
        let len = (p.values - sent).min(p.tags as u64) as usize;
        let samples = tags[..len]
            .iter()
            .enumerate()
            .map(|(k, tag)| Sample {
                tag: tag.clone(),
                value: Some(Value::F64(((sent + k as u64) % 100_000) as f64 * 0.25)),
                quality: Quality::Good,
                read_ts_ms: ts,
                source_ts_ms: None,
                seq: 0,
            })
            .collect();
        let batch = Batch {
            device: devices[n % devices.len()].clone(),
            samples,
        };
        if tx.send(batch).await.is_err() {
            return;
        }
        sent += len as u64;
        n += 1;
    }
}

async fn births_run(metrics: usize, devices: usize) -> anyhow::Result<BirthsOutcome> {
    let tags = metrics / devices;
    // Encoding alone, with a value for every metric.
    let mut node = EdgeNode::new(GROUP, NODE, defs(devices, tags));
    for d in 0..devices {
        node.fold(&Batch {
            device: DeviceId(format!("dev{d}")),
            samples: (0..tags)
                .map(|t| Sample::good(TagName(format!("t{t:05}")), Value::F64(t as f64), 1))
                .collect(),
        });
    }
    let started = Instant::now();
    let births = node.births(edge_model::now_ms());
    let encode_ms = started.elapsed().as_secs_f64() * 1000.0;
    let birth_bytes = births.iter().map(|m| m.payload.len()).sum();

    // End to end: a publisher connects and births; the subscriber decodes the last DBIRTH.
    let broker = Mosquitto::start().context("starting Mosquitto")?;
    let dir = TestDir::new();
    let (cfg, nb) = northbound(&dir, broker.port(), 256)?;
    let Format::SparkplugB(settings) = nb.format.clone() else {
        bail!("the benchmark's northbound is not Sparkplug");
    };
    let (store, _) = Store::open(
        &runtime::store_dir(&cfg),
        runtime::store_options(&cfg),
        &runtime::northbound_names(&cfg),
    )?;
    let mut sub = Subscriber::start(broker.port())?;
    let publisher = SparkplugPublisher::new(
        nb,
        settings,
        store,
        defs(devices, tags),
        Vec::new(),
        &cfg.gateway.data_dir,
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(publisher.run(stop_rx, Duration::from_secs(5)));
    let counts = sub.counts.clone();
    wait_until("the last DBIRTH", Duration::from_secs(60), || {
        counts.dbirths.load(Ordering::Relaxed) >= devices as u64
    })
    .await?;
    let last = counts.last_at().unwrap_or_else(Instant::now);
    let connect_to_last_dbirth_ms = last.saturating_duration_since(started).as_secs_f64() * 1000.0;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    sub.stop();
    Ok(BirthsOutcome {
        metrics: devices * tags,
        devices,
        encode_ms,
        birth_bytes,
        connect_to_last_dbirth_ms,
    })
}
