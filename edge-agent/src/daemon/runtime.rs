//! Builds the running agent from a config: the store and its group-commit writer, one poller
//! task per device, one publisher per northbound (UNS JSON with the MES rules of the
//! configured machines, or Sparkplug B), the command task; and stops them in the order that
//! loses nothing: pollers first, then the writer commits what it holds, then publishers drain.
//! A reload swaps device pollers while the store, the writer and the publishers keep running.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use edge_config::{Batching, Config, Format};
use edge_driver::{DeviceCounters, WriteHandle};
use edge_modbus::learn::LimitStore;
use edge_model::Batch;
use edge_store::{Store, StoreOptions};
use mes_bridge::{MesBridge, UnsEncoder};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::daemon::board;
use crate::daemon::clock;
use crate::daemon::devices::{
    device_plan, ensure_opcua_certificate, limits_path, spawn_poller, stop_poller, DeviceList,
    Links, PollerTask,
};
use crate::daemon::reload::{self, NeedsRestart, ReloadPlan};
use crate::daemon::status::{health_loop, snapshot, write_status_loop, StatusSnapshot};
use crate::northbound::commands;
use crate::northbound::safety::CommandStats;
use crate::northbound::sparkplug::{self, SparkplugPublisher};
use crate::northbound::uns::{catalog, EncoderSlot, GatewayInfo, Publisher, PublisherStats};

/// Batches waiting for the store writer; pollers wait when it is full (back-pressure from the
/// disk, never from the broker).
const BATCH_QUEUE: usize = 4096;
/// How long the publishers may drain once polling has stopped.
pub const PUBLISH_DRAIN: Duration = Duration::from_secs(5);
/// How long the writer may take to commit what it holds when stopping.
const WRITER_LIMIT: Duration = Duration::from_secs(8);
/// The longest a whole stop takes: pollers, writer, drain, command, flush, with margin. The
/// systemd unit's `TimeoutStopSec=` is above it.
pub const STOP_LIMIT: Duration = Duration::from_secs(25);

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

/// A running agent.
#[derive(Debug)]
pub struct Running {
    pub store: Store,
    pub devices: DeviceList,
    pub publishers: Vec<(String, Arc<PublisherStats>)>,
    /// Where commands send writes, one per device, whatever its protocol.
    pub writers: Vec<WriteHandle>,
    /// Commands by northbound, kind and outcome, for `/metrics`.
    pub command_stats: Arc<CommandStats>,
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
    command_targets: watch::Sender<Option<commands::CommandTargets>>,
    encoder_slots: Vec<EncoderSlot>,
    /// Serial buses, learned block sizes, and the tasks that are not device pollers.
    links: Links,
    /// Feeds the status LED, when the board has board I/O.
    health_task: Option<JoinHandle<()>>,
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

/// Opens the store and starts every task of the agent.
pub async fn start(cfg: &Config) -> anyhow::Result<Running> {
    start_observed(cfg, None).await
}

/// [`start`], with `observer` told of every group the store writer commits.
pub async fn start_observed(
    cfg: &Config,
    observer: Option<edge_store::CommitObserver>,
) -> anyhow::Result<Running> {
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
    let writer =
        edge_store::spawn_writer_observed(store.clone(), rx, cfg.store.commit_interval, observer);

    let mut pollers = Vec::new();
    let mut devices = Vec::new();
    let mut writers = Vec::new();
    let (links_stop, _) = watch::channel(false);
    let mut links = Links {
        buses: Vec::new(),
        learned: Arc::new(LimitStore::open(&limits_path(cfg))),
        stop: links_stop,
        tasks: Vec::new(),
    };
    ensure_opcua_certificate(cfg).await?;
    for dev in &cfg.devices {
        let (task, counters, writer) = spawn_poller(cfg, dev, &tx, &mut links)?;
        devices.push((dev.name.clone(), counters));
        writers.push(writer);
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
        isa95: crate::northbound::mqtt::Isa95::new(&cfg.gateway.uns),
    };
    let cat = catalog(cfg);
    let machines = commands::machine_specs(cfg);
    for m in &machines {
        info!(machine = %m.name, device = %m.device, "machine configured: MES events on {{root}}/{}/_mes/...", m.name);
    }
    let command_stats = Arc::new(CommandStats::default());
    let (clock, clock_task) = clock::spawn_clock_watch(links.stop.subscribe());
    links.tasks.push(clock_task);
    let command_cx = commands::CommandContext {
        store: store.clone(),
        stats: command_stats.clone(),
    };
    let (commands, command_task, command_targets) = commands::spawn_reloadable_commands(
        commands::command_catalog(cfg),
        writers.clone(),
        command_cx,
    );
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
                writers.clone(),
                &cfg.gateway.data_dir,
            )
            .with_command_safety(command_stats.clone(), clock.clone());
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
            .with_commands(commands.clone(), clock.clone())
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
        writers,
        command_stats,
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
        self.writers.retain(|w| !going.contains(&w.name.as_str()));
        for d in plan.added.iter().chain(&plan.changed) {
            let (task, counters, writer) = spawn_poller(&new, d, &self.batches, &mut self.links)
                .map_err(ReloadError::Start)?;
            self.pollers.push(task);
            counters_by_name.push((d.name.clone(), counters));
            self.writers.push(writer);
        }
        // Config order, so status and metrics list devices as the file does.
        let order = |name: &str| new.devices.iter().position(|d| d.name == name);
        counters_by_name.sort_by_key(|(n, _)| order(n));
        self.pollers.sort_by_key(|p| order(&p.name));
        *self.devices.write().unwrap_or_else(|e| e.into_inner()) = counters_by_name;

        let _ = self.command_targets.send(Some(commands::CommandTargets {
            catalog: commands::command_catalog(&new),
            handles: self.writers.clone(),
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
        if tokio::time::timeout(commands::WRITE_LIMIT * 2, &mut command_task)
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

    /// The block sizes learned from the Modbus devices.
    pub fn learned(&self) -> Arc<LimitStore> {
        self.links.learned.clone()
    }

    /// Where commands send writes for `device`, whatever its protocol.
    pub fn writer(&self, device: &str) -> Option<WriteHandle> {
        self.writers.iter().find(|w| w.name == device).cloned()
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
