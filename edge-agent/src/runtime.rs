//! Builds the running agent from a config: the store and its group-commit writer, one poller
//! task per device, one publisher per northbound; and stops them in the order that loses
//! nothing: pollers first, then the writer commits what it holds, then publishers drain.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edge_config::{Batching, Config, Device, Protocol};
use edge_modbus::codec::Scaling;
use edge_modbus::plan::{PlanLimits, ReadPlan};
use edge_modbus::poller::{DeviceCounters, DevicePoller, DeviceSpec, TagSpec};
use edge_modbus::report::ReportRule;
use edge_modbus::write::DeviceHandle;
use edge_model::{Batch, DeviceId, TagName, Value};
use edge_opcua::pki::Pki;
use edge_opcua::{OpcUaDevice, OpcUaHandle, PkiSettings};
use edge_store::{Store, StoreOptions};
use mes_bridge::{Catalog, UnsEncoder};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::publisher::{GatewayInfo, Publisher, PublisherStats};

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

/// The poller's view of a configured Modbus device; `None` for a device of another protocol.
pub fn device_spec(dev: &Device) -> Option<DeviceSpec> {
    let Protocol::ModbusTcp {
        host,
        port,
        unit_id,
    } = &dev.protocol
    else {
        return None;
    };
    Some(DeviceSpec {
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
    })
}

/// The read plan of a configured Modbus device.
pub fn device_plan(dev: &Device) -> anyhow::Result<ReadPlan> {
    let spec = device_spec(dev)
        .with_context(|| format!("device `{}` is not a Modbus device", dev.name))?;
    edge_modbus::poller::plan_for(&spec)
        .with_context(|| format!("device `{}`: cannot plan its reads", dev.name))
}

/// The OPC UA PKI directory inside the data directory: the gateway's application instance
/// certificate and the trusted and rejected server certificates.
pub fn pki_dir(cfg: &Config) -> PathBuf {
    cfg.gateway.data_dir.join("pki")
}

/// The gateway's OPC UA application URI: what its certificate and its sessions carry.
pub fn application_uri(cfg: &Config) -> String {
    format!("urn:edge-agent:{}", cfg.gateway.id)
}

/// The gateway's OPC UA application name.
pub fn application_name(cfg: &Config) -> String {
    format!("edge-agent {}", cfg.gateway.id)
}

/// Where the OPC UA PKI lives and how unknown server certificates are treated.
pub fn pki_settings(cfg: &Config, trust_on_first_use: bool) -> PkiSettings {
    PkiSettings {
        dir: pki_dir(cfg),
        application_uri: application_uri(cfg),
        application_name: application_name(cfg),
        trust_on_first_use,
        config_path: Some(cfg.source.clone()),
    }
}

/// The OPC UA driver's view of a configured OPC UA device; `None` for another protocol.
pub fn opcua_device_spec(cfg: &Config, dev: &Device) -> Option<edge_opcua::DeviceSpec> {
    let Protocol::OpcUa(ua) = &dev.protocol else {
        return None;
    };
    Some(edge_opcua::DeviceSpec {
        name: DeviceId(dev.name.clone()),
        endpoint: ua.endpoint.clone(),
        security_policy: ua.security_policy,
        security_mode: ua.security_mode,
        identity: ua.identity.clone(),
        session_timeout: ua.session_timeout,
        request_timeout: dev.timeout,
        keep_alive: ua.keep_alive,
        backoff_min: dev.backoff_min,
        backoff_max: dev.backoff_max,
        max_nodes_per_read: ua.max_nodes_per_read,
        pki: pki_settings(cfg, ua.trust_on_first_use),
        tags: ua
            .tags
            .iter()
            .map(|t| edge_opcua::TagSpec {
                name: TagName(t.name.clone()),
                node: t.node.clone(),
                data_type: t.data_type,
                scale: t.scale,
                offset: t.offset,
                mode: t.mode.clone(),
                writable: t.writable,
            })
            .collect(),
    })
}

/// Makes the gateway's OPC UA application instance certificate on first start (a 2048-bit RSA
/// key: seconds on a small ARM board, so off the async threads). Without OPC UA devices
/// nothing is made.
pub async fn ensure_opcua_certificate(cfg: &Config) -> anyhow::Result<()> {
    if !cfg
        .devices
        .iter()
        .any(|d| matches!(d.protocol, Protocol::OpcUa(_)))
    {
        return Ok(());
    }
    let pki = Pki::new(pki_dir(cfg));
    let (uri, name) = (application_uri(cfg), application_name(cfg));
    let own = tokio::task::spawn_blocking(move || pki.ensure_own_certificate(&uri, &name))
        .await
        .context("the certificate task failed")?
        .context("the gateway's OPC UA certificate")?;
    if own.created {
        info!(certificate = %own.cert_path.display(), thumbprint = %own.thumbprint, application_uri = %application_uri(cfg),
            "made the gateway's OPC UA application instance certificate; servers with security must trust it");
    }
    Ok(())
}

fn catalog(cfg: &Config) -> Catalog {
    let mut c = Catalog::new();
    for d in &cfg.devices {
        for t in &d.tags {
            if let Some(u) = &t.unit {
                c.set_unit(&d.name, &t.name, u);
            }
        }
        if let Protocol::OpcUa(ua) = &d.protocol {
            for t in &ua.tags {
                if let Some(u) = &t.unit {
                    c.set_unit(&d.name, &t.name, u);
                }
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
    /// Where commands send writes, one handle per Modbus device.
    pub handles: Vec<DeviceHandle>,
    /// Where commands send writes, one handle per OPC UA device.
    pub opcua_handles: Vec<OpcUaHandle>,
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
    let mut opcua_handles = Vec::new();
    ensure_opcua_certificate(cfg).await?;
    for dev in &cfg.devices {
        if let Some(spec) = opcua_device_spec(cfg, dev) {
            let device = OpcUaDevice::new(spec);
            let (subscribed, polled) = match &dev.protocol {
                Protocol::OpcUa(ua) => ua.split(),
                Protocol::ModbusTcp { .. } => (0, 0),
            };
            info!(device = %dev.name, endpoint = %device.spec().endpoint, subscribed, polled, "OPC UA device configured");
            devices.push((dev.name.clone(), device.counters()));
            opcua_handles.push(device.handle());
            pollers.push(tokio::spawn(device.run(tx.clone(), poll_rx.clone())));
            continue;
        }
        let spec = device_spec(dev).with_context(|| {
            format!(
                "device `{}`: protocol {} is not supported",
                dev.name,
                dev.protocol.as_str()
            )
        })?;
        let poller = DevicePoller::new(spec)
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
        opcua_handles,
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

    /// Where commands send writes for `device`, whatever its protocol.
    pub fn writer(&self, device: &str) -> Option<DeviceWriter> {
        self.handles
            .iter()
            .find(|h| h.name == device)
            .map(|h| DeviceWriter::Modbus(h.clone()))
            .or_else(|| {
                self.opcua_handles
                    .iter()
                    .find(|h| h.name == device)
                    .map(|h| DeviceWriter::OpcUa(h.clone()))
            })
    }

    /// A point-in-time view of the whole agent.
    pub fn snapshot(&self) -> StatusSnapshot {
        snapshot(&self.store, &self.devices, &self.publishers)
    }
}

/// The write handle of a device of either protocol, for commands.
#[derive(Debug, Clone)]
pub enum DeviceWriter {
    Modbus(DeviceHandle),
    OpcUa(OpcUaHandle),
}

/// Why a write through a [`DeviceWriter`] was not carried out.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteFailure {
    /// True when the request was wrong and nothing was sent to the device (answer
    /// `rejected`); false when the device or the link failed (answer `failed`).
    pub rejected: bool,
    pub message: String,
}

impl std::fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl DeviceWriter {
    pub fn name(&self) -> &str {
        match self {
            DeviceWriter::Modbus(h) => &h.name,
            DeviceWriter::OpcUa(h) => &h.name,
        }
    }

    /// Validates and writes `value` to `tag`, answering within `limit`.
    pub async fn write(
        &self,
        tag: &str,
        value: &Value,
        limit: Duration,
    ) -> Result<(), WriteFailure> {
        match self {
            DeviceWriter::Modbus(h) => h.write(tag, value, limit).await.map_err(|e| WriteFailure {
                rejected: e.is_rejection(),
                message: e.to_string(),
            }),
            DeviceWriter::OpcUa(h) => h.write(tag, value, limit).await.map_err(|e| WriteFailure {
                rejected: e.is_rejection(),
                message: e.to_string(),
            }),
        }
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
