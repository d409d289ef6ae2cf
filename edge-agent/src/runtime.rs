//! Builds the running agent from a config: the store and its group-commit writer, one poller
//! task per device, one publisher per northbound (UNS JSON or Sparkplug B); and stops them in the order that loses
//! nothing: pollers first, then the writer commits what it holds, then publishers drain.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edge_config::{Batching, Config, Device, Format, Protocol};
use edge_modbus::codec::Scaling;
use edge_modbus::plan::{PlanLimits, ReadPlan};
use edge_modbus::poller::{DeviceCounters, DevicePoller, DeviceSpec, TagSpec};
use edge_modbus::report::ReportRule;
use edge_modbus::write::DeviceHandle;
use edge_model::{Batch, DeviceId, TagName};
use edge_store::{Store, StoreOptions};
use mes_bridge::{Catalog, UnsEncoder};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::publisher::{GatewayInfo, Publisher, PublisherStats};
use crate::sparkplug::{self, SparkplugPublisher};

/// Batches waiting for the store writer; pollers wait when it is full (back-pressure from the
/// disk, never from the broker).
const BATCH_QUEUE: usize = 4096;
/// How often the status snapshot is written for `edge-agent buffer stats`.
const STATUS_EVERY: Duration = Duration::from_secs(2);

/// The store's directory inside the data directory.
pub fn store_dir(cfg: &Config) -> PathBuf {
    cfg.gateway.data_dir.join("store")
}

/// The status snapshot's path inside the data directory.
pub fn status_path(cfg: &Config) -> PathBuf {
    cfg.gateway.data_dir.join("status.json")
}

pub fn store_options(cfg: &Config) -> StoreOptions {
    StoreOptions {
        max_disk_bytes: cfg.store.max_disk_bytes,
        cache_capacity_bytes: cfg.store.cache_capacity_bytes,
    }
}

pub fn northbound_names(cfg: &Config) -> Vec<String> {
    cfg.northbounds.iter().map(|n| n.name.clone()).collect()
}

/// The poller's view of a configured device.
pub fn device_spec(dev: &Device) -> DeviceSpec {
    let Protocol::ModbusTcp {
        host,
        port,
        unit_id,
    } = &dev.protocol;
    DeviceSpec {
        name: DeviceId(dev.name.clone()),
        host: host.clone(),
        port: *port,
        unit_id: *unit_id,
        timeout: dev.timeout,
        backoff_min: dev.backoff_min,
        backoff_max: dev.backoff_max,
        limits: PlanLimits {
            max_registers: dev.max_registers,
            max_bits: dev.max_bits,
            max_gap_registers: dev.max_gap_registers,
            max_gap_bits: dev.max_gap_bits,
        },
        tags: dev
            .tags
            .iter()
            .map(|t| TagSpec {
                name: TagName(t.name.clone()),
                address: t.address,
                data_type: t.data_type,
                byte_order: t.byte_order,
                scaling: Scaling {
                    scale: t.scale,
                    offset: t.offset,
                },
                report: ReportRule {
                    deadband: t.deadband,
                    heartbeat: t.heartbeat,
                },
                interval: t.poll_interval,
                writable: t.writable,
            })
            .collect(),
    }
}

/// The read plan of a configured device.
pub fn device_plan(dev: &Device) -> anyhow::Result<ReadPlan> {
    edge_modbus::poller::plan_for(&device_spec(dev))
        .with_context(|| format!("device `{}`: cannot plan its reads", dev.name))
}

fn catalog(cfg: &Config) -> Catalog {
    let mut c = Catalog::new();
    for d in &cfg.devices {
        for t in &d.tags {
            if let Some(u) = &t.unit {
                c.set_unit(&d.name, &t.name, u);
            }
        }
    }
    c
}

/// A running agent.
#[derive(Debug)]
pub struct Running {
    pub store: Store,
    pub devices: Vec<(String, Arc<DeviceCounters>)>,
    pub publishers: Vec<(String, Arc<PublisherStats>)>,
    /// Where commands send writes, one handle per device.
    pub handles: Vec<DeviceHandle>,
    poll_stop: watch::Sender<bool>,
    publish_stop: watch::Sender<bool>,
    pollers: Vec<JoinHandle<()>>,
    writer: JoinHandle<Result<(), edge_store::StoreError>>,
    publisher_tasks: Vec<JoinHandle<()>>,
    status_task: JoinHandle<()>,
}

/// Opens the store and starts every task of the agent.
pub async fn start(cfg: &Config) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.gateway.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            cfg.gateway.data_dir.display()
        )
    })?;
    let (store, recovery) =
        Store::open(&store_dir(cfg), store_options(cfg), &northbound_names(cfg))?;
    if let Some(q) = &recovery.quarantined {
        error!(moved_to = %q.display(), "the store was unreadable and has been moved aside; starting with an empty store");
    }
    info!(
        records = recovery.records,
        next_id = recovery.next_id,
        corrupt_removed = recovery.corrupt_records_removed,
        "store open"
    );

    let (tx, rx) = mpsc::channel::<Batch>(BATCH_QUEUE);
    let writer = edge_store::spawn_writer(store.clone(), rx, cfg.store.commit_interval);

    let (poll_stop, poll_rx) = watch::channel(false);
    let mut pollers = Vec::new();
    let mut devices = Vec::new();
    let mut handles = Vec::new();
    for dev in &cfg.devices {
        let poller = DevicePoller::new(device_spec(dev))
            .with_context(|| format!("device `{}`: cannot plan its reads", dev.name))?;
        info!(device = %dev.name, tags = dev.tags.len(), requests_per_scan = poller.plan().request_count(), "device configured");
        devices.push((dev.name.clone(), poller.counters()));
        handles.push(poller.handle());
        pollers.push(tokio::spawn(poller.run(tx.clone(), poll_rx.clone())));
    }
    drop(tx);

    let (publish_stop, publish_rx) = watch::channel(false);
    let gateway = GatewayInfo {
        id: cfg.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms: edge_model::now_ms(),
    };
    let cat = catalog(cfg);
    let mut publishers = Vec::new();
    let mut publisher_tasks = Vec::new();
    for nb in &cfg.northbounds {
        if let Format::SparkplugB(settings) = &nb.format {
            let p = SparkplugPublisher::new(
                nb.clone(),
                settings.clone(),
                store.clone(),
                sparkplug::device_defs(cfg),
                handles.clone(),
                &cfg.gateway.data_dir,
            );
            publishers.push((nb.name.clone(), p.stats()));
            publisher_tasks.push(tokio::spawn(
                p.run(publish_rx.clone(), Duration::from_secs(5)),
            ));
            continue;
        }
        let batching = match nb.batching {
            Batching::PerTag => mes_bridge::Batching::PerTag,
            Batching::PerDevice => mes_bridge::Batching::PerDevice,
        };
        let encoder = UnsEncoder::new(&nb.topic_root, batching, &cat);
        let p = Publisher::new(nb.clone(), store.clone(), encoder, gateway.clone());
        publishers.push((nb.name.clone(), p.stats()));
        publisher_tasks.push(tokio::spawn(
            p.run(publish_rx.clone(), Duration::from_secs(5)),
        ));
    }

    let status_task = tokio::spawn(write_status_loop(
        status_path(cfg),
        store.clone(),
        devices.clone(),
        publishers.clone(),
    ));

    Ok(Running {
        store,
        devices,
        publishers,
        handles,
        poll_stop,
        publish_stop,
        pollers,
        writer,
        publisher_tasks,
        status_task,
    })
}

impl Running {
    /// Stops polling, commits what was read, lets publishers drain (bounded), flushes.
    pub async fn stop(self) {
        let _ = self.poll_stop.send(true);
        for p in self.pollers {
            let _ = p.await;
        }
        match self.writer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "the store writer failed while stopping"),
            Err(e) => error!(error = %e, "the store writer task failed"),
        }
        let _ = self.publish_stop.send(true);
        for p in self.publisher_tasks {
            let _ = p.await;
        }
        self.status_task.abort();
        if let Err(e) = self.store.flush().await {
            warn!(error = %e, "final store flush failed");
        }
        info!("stopped");
    }

    /// A point-in-time view of the whole agent.
    pub fn snapshot(&self) -> StatusSnapshot {
        snapshot(&self.store, &self.devices, &self.publishers)
    }
}

/// What `buffer stats` and the demo's status line show.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StatusSnapshot {
    pub written_ms: u64,
    pub pid: u32,
    pub store: StoreSnapshot,
    pub devices: Vec<DeviceSnapshot>,
    pub northbounds: Vec<NorthboundSnapshot>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct StoreSnapshot {
    pub records: u64,
    pub samples: u64,
    pub next_id: u64,
    pub disk_bytes: u64,
    pub logical_bytes: u64,
    pub oldest_read_ts_ms: Option<u64>,
    pub dropped_records: u64,
    pub dropped_samples: u64,
    pub committed_samples: u64,
    pub committed_bytes: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceSnapshot {
    pub name: String,
    pub connected: bool,
    pub reads_ok: u64,
    pub exceptions: u64,
    pub transport_errors: u64,
    pub samples: u64,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct NorthboundSnapshot {
    pub name: String,
    pub connected: bool,
    pub cursor: u64,
    pub pending_records: u64,
    pub oldest_pending_read_ts_ms: Option<u64>,
    pub published: u64,
    pub acked: u64,
    pub resent: u64,
    pub inflight: u64,
    pub last_error: Option<String>,
}

pub fn snapshot(
    store: &Store,
    devices: &[(String, Arc<DeviceCounters>)],
    publishers: &[(String, Arc<PublisherStats>)],
) -> StatusSnapshot {
    let s = store.stats();
    StatusSnapshot {
        written_ms: edge_model::now_ms(),
        pid: std::process::id(),
        store: StoreSnapshot {
            records: s.records,
            samples: s.samples,
            next_id: s.next_id,
            disk_bytes: s.disk_bytes,
            logical_bytes: s.logical_bytes,
            oldest_read_ts_ms: s.oldest_read_ts_ms,
            dropped_records: s.dropped_records,
            dropped_samples: s.dropped_samples,
            committed_samples: s.committed_samples,
            committed_bytes: s.committed_bytes,
        },
        devices: devices
            .iter()
            .map(|(name, c)| DeviceSnapshot {
                name: name.clone(),
                connected: c.connected.load(Ordering::Relaxed),
                reads_ok: c.reads_ok.load(Ordering::Relaxed),
                exceptions: c.exceptions.load(Ordering::Relaxed),
                transport_errors: c.transport_errors.load(Ordering::Relaxed),
                samples: c.samples.load(Ordering::Relaxed),
            })
            .collect(),
        northbounds: s
            .northbounds
            .iter()
            .map(|nb| {
                let p = publishers
                    .iter()
                    .find(|(n, _)| *n == nb.name)
                    .map(|(_, p)| p);
                NorthboundSnapshot {
                    name: nb.name.clone(),
                    connected: p.is_some_and(|p| p.connected.load(Ordering::Relaxed)),
                    cursor: nb.cursor,
                    pending_records: nb.pending_records,
                    oldest_pending_read_ts_ms: nb.oldest_pending_read_ts_ms,
                    published: p.map_or(0, |p| p.published.load(Ordering::Relaxed)),
                    acked: p.map_or(0, |p| p.acked.load(Ordering::Relaxed)),
                    resent: p.map_or(0, |p| p.resent.load(Ordering::Relaxed)),
                    inflight: p.map_or(0, |p| p.inflight.load(Ordering::Relaxed)),
                    last_error: p.and_then(|p| {
                        p.last_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .clone()
                    }),
                }
            })
            .collect(),
    }
}

async fn write_status_loop(
    path: PathBuf,
    store: Store,
    devices: Vec<(String, Arc<DeviceCounters>)>,
    publishers: Vec<(String, Arc<PublisherStats>)>,
) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let snap = snapshot(&store, &devices, &publishers);
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec_pretty(&snap)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            warn!(path = %path.display(), error = %e, "cannot write the status snapshot");
        }
    }
}
