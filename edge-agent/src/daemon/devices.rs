//! The devices of a config as the drivers see them: each device's translation into its
//! driver's spec (next to the driver it builds), the OPC UA PKI settings, the serial buses and
//! learned block sizes the Modbus devices share, starting and stopping one device's task, and
//! the write handle commands reach a device through, whatever its protocol.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use edge_config::{Config, Device, ModbusLink, OpcUa, Protocol, SerialParity};
use edge_driver::{DeviceCounters, ReportRule, Scaling, WriteHandle};
use edge_modbus::bus::{spawn_serial_bus, BusClient, Parity, SerialSettings};
use edge_modbus::learn::{LimitStore, LIMITS_FILE};
use edge_modbus::link::Transport;
use edge_modbus::plan::{PlanLimits, ReadPlan};
use edge_modbus::poller::{DevicePoller, DeviceSpec, TagSpec};
use edge_model::{Batch, DeviceId, TagName};
use edge_opcua::pki::Pki;
use edge_opcua::{OpcUaDevice, PkiSettings};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// The devices being polled now with their counters; replaced on reload, read by the status
/// snapshot and the metrics endpoint.
pub type DeviceList = Arc<RwLock<Vec<(String, Arc<DeviceCounters>)>>>;

/// The Modbus poller's view of a configured Modbus device, reached through `transport`;
/// `None` for an OPC UA device.
pub fn device_spec(dev: &Device, transport: Transport) -> Option<DeviceSpec> {
    let modbus = dev.protocol.modbus()?;
    let (host, port) = match &modbus.link {
        ModbusLink::Tcp { host, port } | ModbusLink::RtuOverTcp { host, port } => {
            (host.clone(), *port)
        }
        // Serial slaves are reached through their bus.
        ModbusLink::Rtu { .. } => (String::new(), 0),
    };
    Some(DeviceSpec {
        name: DeviceId(dev.name.clone()),
        transport,
        learned_limits: None,
        host,
        port,
        unit_id: modbus.unit_id,
        timeout: dev.timeout,
        backoff_min: dev.backoff_min,
        backoff_max: dev.backoff_max,
        limits: PlanLimits {
            max_registers: modbus.max_registers,
            max_bits: modbus.max_bits,
            max_gap_registers: modbus.max_gap_registers,
            max_gap_bits: modbus.max_gap_bits,
        },
        tags: dev
            .tags
            .iter()
            .filter_map(|t| {
                let m = t.modbus()?;
                Some(TagSpec {
                    name: TagName(t.name.clone()),
                    address: m.address,
                    data_type: m.data_type,
                    byte_order: m.byte_order,
                    scaling: Scaling {
                        scale: t.scale,
                        offset: t.offset,
                    },
                    report: ReportRule {
                        deadband: m.deadband,
                        heartbeat: m.heartbeat,
                    },
                    interval: m.poll_interval,
                    writable: t.writable,
                })
            })
            .collect(),
    })
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

/// The read plan of a configured Modbus device; `None` for an OPC UA device, which has no
/// read plan of its own.
pub fn device_plan(dev: &Device) -> anyhow::Result<Option<ReadPlan>> {
    // The plan depends on the tags and limits only, not on the transport.
    let Some(spec) = device_spec(dev, Transport::Tcp) else {
        return Ok(None);
    };
    edge_modbus::poller::plan_for(&spec)
        .map(Some)
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
        tags: dev
            .tags
            .iter()
            .filter_map(|t| {
                let o = t.opcua()?;
                Some(edge_opcua::TagSpec {
                    name: TagName(t.name.clone()),
                    node: o.node.clone(),
                    data_type: o.data_type,
                    scale: t.scale,
                    offset: t.offset,
                    mode: o.mode.clone(),
                    writable: t.writable,
                })
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

/// One device's poller task.
#[derive(Debug)]
pub(crate) struct PollerTask {
    pub(crate) name: String,
    /// The longest one read can take: how long stopping it may wait for the read in flight.
    pub(crate) timeout: Duration,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) task: JoinHandle<()>,
}

/// What the device pollers share: one owner task per serial bus, the learned block sizes,
/// and the board I/O task; stopped after the pollers.
#[derive(Debug)]
pub(crate) struct Links {
    pub(crate) buses: Vec<(String, BusClient)>,
    pub(crate) learned: Arc<LimitStore>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

impl Links {
    /// How a device is reached; a serial bus is started the first time a device uses it.
    pub(crate) fn transport(&mut self, cfg: &Config, dev: &Device) -> anyhow::Result<Transport> {
        let link = dev.protocol.modbus().map(|m| &m.link);
        Ok(match link {
            // OPC UA devices have their own driver and never ask for a Modbus transport.
            Some(ModbusLink::Tcp { .. }) | None => Transport::Tcp,
            Some(ModbusLink::RtuOverTcp { .. }) => Transport::RtuOverTcp,
            Some(ModbusLink::Rtu { serial }) => {
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

    pub(crate) async fn stop(self) {
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

/// Starts a device's driver task, whatever its protocol: each driver is built from its spec
/// and hands back the same three things, its task, its counters and its write handle.
pub(crate) fn spawn_poller(
    cfg: &Config,
    dev: &Device,
    tx: &mpsc::Sender<Batch>,
    links: &mut Links,
) -> anyhow::Result<(PollerTask, Arc<DeviceCounters>, WriteHandle)> {
    let (stop, stop_rx) = watch::channel(false);
    let (task, counters, writer) = match &dev.protocol {
        Protocol::OpcUa(ua) => {
            let spec = opcua_device_spec(cfg, dev)
                .with_context(|| format!("device `{}` is not an OPC UA device", dev.name))?;
            let device = OpcUaDevice::new(spec);
            let (subscribed, polled) = OpcUa::split(&dev.tags);
            info!(device = %dev.name, endpoint = %ua.endpoint, subscribed, polled, "OPC UA device configured");
            let (counters, writer) = (device.counters(), device.handle());
            (
                tokio::spawn(device.run(tx.clone(), stop_rx)),
                counters,
                writer,
            )
        }
        Protocol::Modbus(_) => {
            let mut spec = device_spec(dev, links.transport(cfg, dev)?)
                .with_context(|| format!("device `{}` is not a Modbus device", dev.name))?;
            spec.learned_limits = Some(links.learned.clone());
            let poller = DevicePoller::new(spec)
                .with_context(|| format!("device `{}`: cannot plan its reads", dev.name))?;
            info!(device = %dev.name, tags = dev.tags.len(), requests_per_scan = poller.plan().request_count(), "device configured");
            let (counters, writer) = (poller.counters(), poller.handle());
            (
                tokio::spawn(poller.run(tx.clone(), stop_rx)),
                counters,
                writer,
            )
        }
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
pub(crate) async fn stop_poller(p: PollerTask) {
    let _ = p.stop.send(true);
    let limit = p.timeout * 2 + Duration::from_secs(1);
    let mut task = p.task;
    if tokio::time::timeout(limit, &mut task).await.is_err() {
        warn!(device = %p.name, limit = ?limit, "the device poller did not stop in time; aborted");
        task.abort();
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
