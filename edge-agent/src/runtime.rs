//! Builds the running agent from a config: the store and its group-commit writer, one poller
//! task per device, one publisher per northbound (UNS JSON with the MES rules of the
//! configured machines, or Sparkplug B), the command task; and stops them in the order that
//! loses nothing: pollers first, then the writer commits what it holds, then publishers drain.
//! A reload swaps device pollers while the store, the writer and the publishers keep running.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use edge_config::{Batching, Config, Device, Format, Protocol, SerialParity};
use edge_driver::{DeviceCounters, ReportRule, Scaling, WriteHandle};
use edge_modbus::bus::{spawn_serial_bus, BusClient, Parity, SerialSettings};
use edge_modbus::learn::{LimitStore, LIMITS_FILE};
use edge_modbus::link::Transport;
use edge_modbus::plan::{PlanLimits, ReadPlan};
use edge_modbus::poller::{DevicePoller, DeviceSpec, TagSpec};
use edge_model::{Batch, DeviceId, TagName, Value};
use edge_opcua::pki::Pki;
use edge_opcua::{OpcUaDevice, PkiSettings};
use edge_store::{Store, StoreOptions};
use mes_bridge::{Catalog, MesBridge, UnsEncoder};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::board;
use crate::mes;
use crate::publisher::{EncoderSlot, GatewayInfo, Publisher, PublisherStats};
use crate::reload::{self, NeedsRestart, ReloadPlan};
use crate::sparkplug::{self, SparkplugPublisher};

/// Batches waiting for the store writer; pollers wait when it is full (back-pressure from the
/// disk, never from the broker).
const BATCH_QUEUE: usize = 4096;
/// How often the status snapshot is written for `edge-agent buffer stats`.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How long the publishers may drain once polling has stopped.
pub const PUBLISH_DRAIN: Duration = Duration::from_secs(5);
/// How long the writer may take to commit what it holds when stopping.
const WRITER_LIMIT: Duration = Duration::from_secs(8);
/// The longest a whole stop takes: pollers, writer, drain, command, flush, with margin. The
/// systemd unit's `TimeoutStopSec=` is above it.
pub const STOP_LIMIT: Duration = Duration::from_secs(25);

/// The devices being polled now with their counters; replaced on reload, read by the status
/// snapshot and the metrics endpoint.
pub type DeviceList = Arc<RwLock<Vec<(String, Arc<DeviceCounters>)>>>;

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

/// The poller's view of a configured device, reached through `transport`.
pub fn device_spec(dev: &Device, transport: Transport) -> DeviceSpec {
    let (host, port) = match &dev.protocol {
        Protocol::ModbusTcp { host, port, .. } | Protocol::ModbusRtuTcp { host, port, .. } => {
            (host.clone(), *port)
        }
        // Serial slaves are reached through their bus; OPC UA devices never get here.
        Protocol::ModbusRtu { .. } | Protocol::OpcUa(_) => (String::new(), 0),
    };
    DeviceSpec {
        name: DeviceId(dev.name.clone()),
        transport,
        learned_limits: None,
        host,
        port,
        unit_id: dev.protocol.unit_id(),
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

/// The read plan of a configured device.
pub fn device_plan(dev: &Device) -> anyhow::Result<ReadPlan> {
    // The plan depends on the tags and limits only, not on the transport.
    edge_modbus::poller::plan_for(&device_spec(dev, Transport::Tcp))
        .with_context(|| format!("device `{}`: cannot plan its reads", dev.name))
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

pub fn catalog(cfg: &Config) -> Catalog {
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

/// One device's poller task.
#[derive(Debug)]
struct PollerTask {
    name: String,
    /// The longest one read can take: how long stopping it may wait for the read in flight.
    timeout: Duration,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running agent.
#[derive(Debug)]
pub struct Running {
    pub store: Store,
    pub devices: DeviceList,
    pub publishers: Vec<(String, Arc<PublisherStats>)>,
    /// Where commands send writes, one handle per Modbus device.
    pub handles: Vec<WriteHandle>,
    /// Where writes to OPC UA variables go, one handle per OPC UA device.
    pub opcua_handles: Vec<WriteHandle>,
    /// The config being run (the last one applied).
    cfg: Config,
    /// The writer's queue; pollers started by a reload get a clone.
    batches: mpsc::Sender<Batch>,
    publish_stop: watch::Sender<bool>,
    pollers: Vec<PollerTask>,
    writer: JoinHandle<Result<(), edge_store::StoreError>>,
    publisher_tasks: Vec<JoinHandle<()>>,
    status_task: JoinHandle<()>,
    /// Carries out MES commands; ends once the publishers are gone.
    command_task: JoinHandle<()>,
    command_targets: watch::Sender<Option<mes::CommandTargets>>,
    encoder_slots: Vec<EncoderSlot>,
    /// Serial buses, learned block sizes, and the tasks that are not device pollers.
    links: Links,
    /// Feeds the status LED, when the board has board I/O.
    health_task: Option<JoinHandle<()>>,
}

/// What the device pollers share: one owner task per serial bus, the learned block sizes,
/// and the board I/O task; stopped after the pollers.
#[derive(Debug)]
struct Links {
    buses: Vec<(String, BusClient)>,
    learned: Arc<LimitStore>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Links {
    /// How a device is reached; a serial bus is started the first time a device uses it.
    fn transport(&mut self, cfg: &Config, dev: &Device) -> anyhow::Result<Transport> {
        Ok(match &dev.protocol {
            // OPC UA devices have their own driver and never ask for a Modbus transport.
            Protocol::ModbusTcp { .. } | Protocol::OpcUa(_) => Transport::Tcp,
            Protocol::ModbusRtuTcp { .. } => Transport::RtuOverTcp,
            Protocol::ModbusRtu { serial, .. } => {
                if let Some((_, bus)) = self.buses.iter().find(|(n, _)| n == serial) {
                    Transport::Serial(bus.clone())
                } else {
                    let port = cfg
                        .board
                        .serial
                        .iter()
                        .find(|p| &p.name == serial)
                        .with_context(|| {
                            format!("device `{}`: no serial port `{serial}`", dev.name)
                        })?;
                    let (bus, task) =
                        spawn_serial_bus(serial_settings(port), self.stop.subscribe());
                    info!(port = %port.name, path = %port.path, baud = port.baud, "serial bus configured");
                    self.buses.push((serial.clone(), bus.clone()));
                    self.tasks.push(task);
                    Transport::Serial(bus)
                }
            }
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let mut t = t;
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
    }
}

/// Whether the parts the watchdog vouches for are working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Every device poller task is running.
    pub scheduler: bool,
    /// The store writer is running and keeping up (its queue is not full).
    pub store: bool,
    /// What is wrong, for the log and `/live`.
    pub problems: Vec<String>,
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.scheduler && self.store
    }
}

fn spawn_poller(
    cfg: &Config,
    dev: &Device,
    tx: &mpsc::Sender<Batch>,
    links: &mut Links,
) -> anyhow::Result<(PollerTask, Arc<DeviceCounters>, DeviceWriter)> {
    let (stop, stop_rx) = watch::channel(false);
    let (task, counters, writer) = if let Some(spec) = opcua_device_spec(cfg, dev) {
        let device = OpcUaDevice::new(spec);
        let (subscribed, polled) = match &dev.protocol {
            Protocol::OpcUa(ua) => ua.split(),
            _ => (0, 0),
        };
        info!(device = %dev.name, endpoint = %device.spec().endpoint, subscribed, polled, "OPC UA device configured");
        let counters = device.counters();
        let writer = DeviceWriter::OpcUa(device.handle());
        (
            tokio::spawn(device.run(tx.clone(), stop_rx)),
            counters,
            writer,
        )
    } else {
        let mut spec = device_spec(dev, links.transport(cfg, dev)?);
        spec.learned_limits = Some(links.learned.clone());
        let poller = DevicePoller::new(spec)
            .with_context(|| format!("device `{}`: cannot plan its reads", dev.name))?;
        info!(device = %dev.name, tags = dev.tags.len(), requests_per_scan = poller.plan().request_count(), "device configured");
        let counters = poller.counters();
        let writer = DeviceWriter::Modbus(poller.handle());
        (
            tokio::spawn(poller.run(tx.clone(), stop_rx)),
            counters,
            writer,
        )
    };
    Ok((
        PollerTask {
            name: dev.name.clone(),
            timeout: dev.timeout,
            stop,
            task,
        },
        counters,
        writer,
    ))
}

/// Stops one poller: it finishes the read in flight and hands its last batch to the writer
/// queue, so nothing it read is lost; a poller stuck beyond its limit is aborted.
async fn stop_poller(p: PollerTask) {
    let _ = p.stop.send(true);
    let limit = p.timeout * 2 + Duration::from_secs(1);
    let mut task = p.task;
    if tokio::time::timeout(limit, &mut task).await.is_err() {
        warn!(device = %p.name, limit = ?limit, "the device poller did not stop in time; aborted");
        task.abort();
    }
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
        error!(moved_to = %q.display(), salvaged_records = recovery.salvaged_records,
            "the store was unreadable and has been moved aside; what could be read was salvaged into a fresh store");
    }
    let lost_at_open: u64 = recovery.losses.iter().map(|l| l.samples).sum();
    if lost_at_open > 0 {
        error!(ranges = recovery.losses.len(), samples = lost_at_open,
            "committed samples were lost in the store at this start; see `buffer stats` for the ranges");
    }
    info!(
        records = recovery.records,
        next_id = recovery.next_id,
        corrupt_removed = recovery.corrupt_records_removed,
        "store open"
    );

    let (tx, rx) = mpsc::channel::<Batch>(BATCH_QUEUE);
    let writer = edge_store::spawn_writer(store.clone(), rx, cfg.store.commit_interval);

    let mut pollers = Vec::new();
    let mut devices = Vec::new();
    let mut handles = Vec::new();
    let (links_stop, _) = watch::channel(false);
    let mut links = Links {
        buses: Vec::new(),
        learned: Arc::new(LimitStore::open(&limits_path(cfg))),
        stop: links_stop,
        tasks: Vec::new(),
    };
    let mut opcua_handles = Vec::new();
    ensure_opcua_certificate(cfg).await?;
    for dev in &cfg.devices {
        let (task, counters, writer) = spawn_poller(cfg, dev, &tx, &mut links)?;
        devices.push((dev.name.clone(), counters));
        match writer {
            DeviceWriter::Modbus(h) => handles.push(h),
            DeviceWriter::OpcUa(h) => opcua_handles.push(h),
        }
        pollers.push(task);
    }
    let devices: DeviceList = Arc::new(RwLock::new(devices));
    // Board inputs go to the store like a device's readings, so they stop with the pollers.
    let (health_tx, health_rx) = watch::channel(board::Health::default());
    let board_running =
        match board::spawn_board(&cfg.board, health_rx, tx.clone(), links.stop.subscribe()) {
            Some(task) => {
                links.tasks.push(task);
                true
            }
            None => false,
        };

    let (publish_stop, publish_rx) = watch::channel(false);
    let gateway = GatewayInfo {
        id: cfg.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms: edge_model::now_ms(),
    };
    let cat = catalog(cfg);
    let machines = mes::machine_specs(cfg);
    for m in &machines {
        info!(machine = %m.name, device = %m.device, "machine configured: MES events on {{root}}/{}/_mes/...", m.name);
    }
    let (commands, command_task, command_targets) =
        mes::spawn_reloadable_commands(mes::command_catalog(cfg), handles.clone());
    let mut publishers = Vec::new();
    let mut publisher_tasks = Vec::new();
    let mut encoder_slots = Vec::new();
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
        let slot: EncoderSlot = Arc::new(Mutex::new(None));
        encoder_slots.push(slot.clone());
        let mut p = Publisher::new(nb.clone(), store.clone(), encoder, gateway.clone())
            .with_commands(commands.clone())
            .with_encoder_updates(slot);
        if !machines.is_empty() {
            p = p.with_mes(MesBridge::new(&nb.topic_root, machines.clone()));
        }
        publishers.push((nb.name.clone(), p.stats()));
        publisher_tasks.push(tokio::spawn(p.run(publish_rx.clone(), PUBLISH_DRAIN)));
    }

    drop(commands);
    let health_task = board_running.then(|| {
        tokio::spawn(health_loop(
            health_tx,
            store.clone(),
            devices.clone(),
            publishers.clone(),
        ))
    });

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
        cfg: cfg.clone(),
        batches: tx,
        publish_stop,
        pollers,
        writer,
        publisher_tasks,
        status_task,
        command_task,
        command_targets,
        encoder_slots,
        links,
        health_task,
    })
}

/// How often the status LED's view of the gateway is refreshed.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Keeps the board's view of the gateway's health current for the status LED.
async fn health_loop(
    tx: watch::Sender<board::Health>,
    store: Store,
    devices: DeviceList,
    publishers: Vec<(String, Arc<PublisherStats>)>,
) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tick.tick().await;
        let next = store.next_id();
        let backlog = publishers
            .iter()
            .map(|(name, _)| next.saturating_sub(store.cursor(name)))
            .max()
            .unwrap_or(0);
        let devices = devices.read().unwrap_or_else(|e| e.into_inner()).clone();
        let h = board::Health {
            devices_total: devices.len(),
            devices_connected: devices
                .iter()
                .filter(|(_, c)| c.connected.load(Ordering::Relaxed))
                .count(),
            northbounds_total: publishers.len(),
            northbounds_connected: publishers
                .iter()
                .filter(|(_, p)| p.connected.load(Ordering::Relaxed))
                .count(),
            backlog,
            store_failed: false,
        };
        if tx.send(h).is_err() {
            break;
        }
    }
}

/// The learned block sizes' file inside the data directory.
pub fn limits_path(cfg: &Config) -> PathBuf {
    cfg.gateway.data_dir.join(LIMITS_FILE)
}

/// The bus owner's view of a configured serial port.
pub fn serial_settings(port: &edge_config::SerialPort) -> SerialSettings {
    SerialSettings {
        path: port.path.clone(),
        baud: port.baud,
        parity: match port.parity {
            SerialParity::None => Parity::None,
            SerialParity::Even => Parity::Even,
            SerialParity::Odd => Parity::Odd,
        },
        data_bits: port.data_bits,
        stop_bits: port.stop_bits,
    }
}

impl Running {
    /// The config being run.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Whether polling and the store are working, for the watchdog and `/live`.
    pub fn health(&self) -> Health {
        let mut problems = Vec::new();
        for p in &self.pollers {
            if p.task.is_finished() {
                problems.push(format!("the poller of device `{}` has ended", p.name));
            }
        }
        let scheduler = problems.is_empty();
        let mut store = true;
        if self.writer.is_finished() {
            problems.push("the store writer has ended".to_owned());
            store = false;
        } else if self.batches.capacity() == 0 {
            problems
                .push("the store writer's queue is full: the disk is not keeping up".to_owned());
            store = false;
        }
        Health {
            scheduler,
            store,
            problems,
        }
    }

    /// Applies a valid new config: device pollers are stopped, started or replaced; nothing
    /// else is touched, so the store keeps every record and each northbound its cursor. A
    /// config that changes anything but devices is refused with the sections named, and the
    /// running config stays. Every new device is planned before any poller is stopped.
    pub async fn reload(&mut self, new: Config) -> Result<ReloadPlan, ReloadError> {
        let plan = reload::plan(&self.cfg, &new)?;
        if plan.is_empty() {
            self.cfg = new;
            return Ok(plan);
        }
        for d in plan.added.iter().chain(&plan.changed) {
            device_plan(d).map_err(ReloadError::Start)?;
        }
        let going: Vec<&str> = plan
            .removed
            .iter()
            .map(String::as_str)
            .chain(plan.changed.iter().map(|d| d.name.as_str()))
            .collect();
        let (stopping, kept): (Vec<PollerTask>, Vec<PollerTask>) =
            std::mem::take(&mut self.pollers)
                .into_iter()
                .partition(|p| going.contains(&p.name.as_str()));
        self.pollers = kept;
        // A changed device's old poller hands over its last batch before the new one reads,
        // so its samples stay in order in the writer's queue.
        for p in stopping {
            info!(device = %p.name, "stopping the device's poller (reload)");
            stop_poller(p).await;
        }
        let mut counters_by_name: Vec<(String, Arc<DeviceCounters>)> = self
            .devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(n, _)| !going.contains(&n.as_str()))
            .cloned()
            .collect();
        self.handles.retain(|h| !going.contains(&h.name.as_str()));
        self.opcua_handles
            .retain(|h| !going.contains(&h.name.as_str()));
        for d in plan.added.iter().chain(&plan.changed) {
            let (task, counters, writer) = spawn_poller(&new, d, &self.batches, &mut self.links)
                .map_err(ReloadError::Start)?;
            self.pollers.push(task);
            counters_by_name.push((d.name.clone(), counters));
            match writer {
                DeviceWriter::Modbus(h) => self.handles.push(h),
                DeviceWriter::OpcUa(h) => self.opcua_handles.push(h),
            }
        }
        // Config order, so status and metrics list devices as the file does.
        let order = |name: &str| new.devices.iter().position(|d| d.name == name);
        counters_by_name.sort_by_key(|(n, _)| order(n));
        self.pollers.sort_by_key(|p| order(&p.name));
        *self.devices.write().unwrap_or_else(|e| e.into_inner()) = counters_by_name;

        let _ = self.command_targets.send(Some(mes::CommandTargets {
            catalog: mes::command_catalog(&new),
            handles: self.handles.clone(),
        }));
        let cat = catalog(&new);
        for (nb, slot) in new.northbounds.iter().zip(&self.encoder_slots) {
            let batching = match nb.batching {
                Batching::PerTag => mes_bridge::Batching::PerTag,
                Batching::PerDevice => mes_bridge::Batching::PerDevice,
            };
            *slot.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(UnsEncoder::new(&nb.topic_root, batching, &cat));
        }
        self.cfg = new;
        Ok(plan)
    }

    /// Stops polling, commits what was read, lets publishers drain, flushes; every step has
    /// a limit, so the whole stop stays within [`STOP_LIMIT`].
    pub async fn stop(self) {
        for p in self.pollers {
            stop_poller(p).await;
        }
        // Buses and board inputs after the pollers that use them, before the writer closes.
        self.links.stop().await;
        drop(self.batches);
        let mut writer = self.writer;
        match tokio::time::timeout(WRITER_LIMIT, &mut writer).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => error!(error = %e, "the store writer failed while stopping"),
            Ok(Err(e)) => error!(error = %e, "the store writer task failed"),
            Err(_) => {
                error!(limit = ?WRITER_LIMIT, "the store writer did not finish in time; samples read in the last moments may be lost");
                writer.abort();
            }
        }
        let _ = self.publish_stop.send(true);
        for p in self.publisher_tasks {
            let mut p = p;
            // The publisher ends its drain window itself; the margin covers its goodbye.
            if tokio::time::timeout(PUBLISH_DRAIN + Duration::from_secs(3), &mut p)
                .await
                .is_err()
            {
                warn!("a publisher did not stop in time; aborted (its unacknowledged records stay in the store)");
                p.abort();
            }
        }
        // With the publishers gone no command can arrive; one being carried out finishes
        // within its write limit.
        let mut command_task = self.command_task;
        if tokio::time::timeout(mes::WRITE_LIMIT * 2, &mut command_task)
            .await
            .is_err()
        {
            command_task.abort();
        }
        self.status_task.abort();
        if let Some(t) = self.health_task {
            t.abort();
        }
        match tokio::time::timeout(Duration::from_secs(3), self.store.flush()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "final store flush failed"),
            Err(_) => warn!("final store flush did not finish in time"),
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
        let devices = self
            .devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        snapshot(&self.store, &devices, &self.publishers)
    }
}

/// Why a reload was not applied. The running config stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    NeedsRestart(#[from] NeedsRestart),
    #[error("{0:#}")]
    Start(anyhow::Error),
}

/// The write handle of a device of either protocol, for commands.
#[derive(Debug, Clone)]
pub enum DeviceWriter {
    Modbus(WriteHandle),
    OpcUa(WriteHandle),
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
    /// The store's loss ledger: every sample it lost, per device as seq ranges, oldest first.
    #[serde(default)]
    pub losses: Vec<LossSnapshot>,
}

/// One range of the loss ledger: seqs `first_seq..=last_seq` of `device`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LossSnapshot {
    pub device: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub samples: u64,
    /// "evicted", "corrupted" or "rolled-back".
    pub reason: String,
    pub at_ms: u64,
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
    /// Lifetime lost samples per reason (as in the loss ledger, including folded ranges).
    #[serde(default)]
    pub lost_evicted_samples: u64,
    #[serde(default)]
    pub lost_corrupted_samples: u64,
    #[serde(default)]
    pub lost_rolled_back_samples: u64,
    /// Old ranges folded out of the bounded ledger (their samples stay counted above).
    #[serde(default)]
    pub folded_loss_ranges: u64,
    #[serde(default)]
    pub corrupt_records: u64,
    #[serde(default)]
    pub quarantines: u64,
    #[serde(default)]
    pub salvages: u64,
    #[serde(default)]
    pub salvaged_records: u64,
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
            lost_evicted_samples: s.lost.evicted,
            lost_corrupted_samples: s.lost.corrupted,
            lost_rolled_back_samples: s.lost.rolled_back,
            folded_loss_ranges: s.lost.folded_ranges,
            corrupt_records: s.corrupt_records,
            quarantines: s.quarantines,
            salvages: s.salvages,
            salvaged_records: s.salvaged_records,
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
        losses: store
            .losses()
            .into_iter()
            .map(|l| LossSnapshot {
                device: l.device,
                first_seq: l.first_seq,
                last_seq: l.last_seq,
                samples: l.samples,
                reason: l.reason.as_str().to_owned(),
                at_ms: l.at_ms,
            })
            .collect(),
    }
}

async fn write_status_loop(
    path: PathBuf,
    store: Store,
    devices: DeviceList,
    publishers: Vec<(String, Arc<PublisherStats>)>,
) {
    let mut tick = tokio::time::interval(STATUS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let current = devices.read().unwrap_or_else(|e| e.into_inner()).clone();
        let snap = snapshot(&store, &current, &publishers);
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
