//! The console's overview: the gateway, each northbound, each device and each machine at
//! one moment, with the rates between two moments (samples and bytes per second, requests per
//! second) and what follows from them: replay progress after an outage, and the **outage
//! runway**, how long the store's disk quota would hold an outage at the current rate.
//!
//! The runway is `(quota - disk in use) / disk growth per second`, where the growth is the
//! bytes committed per second scaled by the store's disk-to-logical ratio (what sled really
//! writes per committed byte). `None` while nothing comes in.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use edge_config::{Config, Format, ModbusLink, Protocol};
use edge_modbus::learn::BlockKind;
use serde_json::{json, Value as Json};

use super::console::Console;
use super::AdminState;

/// Counters of the last moment, for rates.
#[derive(Debug, Clone)]
struct Moment {
    at: Instant,
    committed_samples: u64,
    committed_bytes: u64,
    /// Requests answered or refused, per device.
    requests: HashMap<String, u64>,
}

/// A connected northbound whose oldest unacknowledged record is this old is replaying a
/// backlog (live data is acknowledged well within it).
const REPLAY_AGE_MS: u64 = 5_000;

/// A northbound's replay of a backlog.
#[derive(Debug, Clone, Copy, Default)]
struct Replay {
    /// The largest backlog seen since the replay began; 0 when not replaying.
    total: u64,
}

impl Replay {
    /// Follows one moment of the northbound: `(total, done)` records while it replays.
    /// Replaying is being connected with a backlog older than what is normally in flight
    /// ([`REPLAY_AGE_MS`]); the progress counts from the backlog when that began (or grew to).
    fn step(&mut self, connected: bool, pending: u64, age_ms: Option<u64>) -> Option<(u64, u64)> {
        let behind = connected && pending > 0 && age_ms.is_some_and(|a| a >= REPLAY_AGE_MS);
        self.total = if behind { self.total.max(pending) } else { 0 };
        behind.then(|| (self.total, self.total - pending))
    }
}

/// Rates and replays between calls. Rates are taken over at least half a second, so that a
/// page and the event stream asking at once do not make them noise.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<Moment>,
    samples_per_s: f64,
    bytes_per_s: f64,
    requests_per_s: HashMap<String, f64>,
    replays: HashMap<String, Replay>,
    runway_s: Option<f64>,
}

impl Sampler {
    pub fn runway_s(&self) -> Option<f64> {
        self.runway_s
    }

    pub fn overview(&mut self, state: &AdminState, console: &Console, cfg: &Config) -> Json {
        let now_ms = edge_model::now_ms();
        let store = state.store.stats();
        let devices = state
            .devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = Instant::now();
        let requests: HashMap<String, u64> = devices
            .iter()
            .map(|(n, c)| {
                let r = c.reads_ok.load(Ordering::Relaxed) + c.exceptions.load(Ordering::Relaxed);
                (n.clone(), r)
            })
            .collect();
        let take = self
            .last
            .as_ref()
            .is_none_or(|l| now.duration_since(l.at).as_secs_f64() >= 0.5);
        if take {
            if let Some(l) = &self.last {
                let dt = now.duration_since(l.at).as_secs_f64().max(1e-3);
                self.samples_per_s =
                    store.committed_samples.saturating_sub(l.committed_samples) as f64 / dt;
                self.bytes_per_s =
                    store.committed_bytes.saturating_sub(l.committed_bytes) as f64 / dt;
                self.requests_per_s = requests
                    .iter()
                    .map(|(n, r)| {
                        let before = l.requests.get(n).copied().unwrap_or(*r);
                        (n.clone(), r.saturating_sub(before) as f64 / dt)
                    })
                    .collect();
            }
            self.last = Some(Moment {
                at: now,
                committed_samples: store.committed_samples,
                committed_bytes: store.committed_bytes,
                requests,
            });
        }
        let quota = cfg.store.max_disk_bytes;
        let ratio = if store.logical_bytes > 0 {
            (store.disk_bytes as f64 / store.logical_bytes as f64).max(1.0)
        } else {
            1.0
        };
        let growth = self.bytes_per_s * ratio;
        self.runway_s =
            (growth > 0.0).then(|| quota.saturating_sub(store.disk_bytes) as f64 / growth);

        let mut northbounds = Vec::new();
        for nb in &cfg.northbounds {
            let stats = state
                .publishers
                .iter()
                .find(|(n, _)| *n == nb.name)
                .map(|(_, p)| p);
            let backlog = store.northbounds.iter().find(|s| s.name == nb.name);
            let pending = backlog.map_or(0, |b| b.pending_records);
            let connected = stats.is_some_and(|p| p.connected.load(Ordering::Relaxed));
            let age_ms = backlog
                .and_then(|b| b.oldest_pending_read_ts_ms)
                .map(|t| now_ms.saturating_sub(t));
            let replay = self.replays.entry(nb.name.clone()).or_default();
            let progress = replay.step(connected, pending, age_ms);
            let replaying = progress.is_some();
            let last_ack = stats.map_or(0, |p| p.last_ack_ms.load(Ordering::Relaxed));
            northbounds.push(json!({
                "name": nb.name,
                "format": match nb.format { Format::UnsJson => "uns", Format::SparkplugB(_) => "sparkplug-b" },
                "url": stats.map(|p| p.broker()).filter(|b| !b.is_empty()).unwrap_or_else(|| nb.url.to_string()),
                "connected": connected,
                "last_error": stats.and_then(|p| p.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()),
                "last_puback_age_ms": (last_ack > 0).then(|| now_ms.saturating_sub(last_ack)),
                "backlog_records": pending,
                "backlog_age_ms": age_ms,
                "replaying": replaying,
                "replay_total_records": progress.map_or(0, |(total, _)| total),
                "replay_done_records": progress.map_or(0, |(_, done)| done),
                "evicted_samples": store.lost.evicted,
                "runway_s": self.runway_s,
                "published": stats.map_or(0, |p| p.published.load(Ordering::Relaxed)),
                "acked": stats.map_or(0, |p| p.acked.load(Ordering::Relaxed)),
            }));
        }

        let mut device_rows = Vec::new();
        for d in &cfg.devices {
            let counters = devices.iter().find(|(n, _)| *n == d.name).map(|(_, c)| c);
            let (protocol, address) = match &d.protocol {
                Protocol::Modbus(m) => match &m.link {
                    ModbusLink::Tcp { host, port } => {
                        ("modbus-tcp", format!("{host}:{port} unit {}", m.unit_id))
                    }
                    ModbusLink::RtuOverTcp { host, port } => (
                        "modbus-rtu-tcp",
                        format!("{host}:{port} unit {}", m.unit_id),
                    ),
                    ModbusLink::Rtu { serial } => {
                        ("modbus-rtu", format!("{serial} unit {}", m.unit_id))
                    }
                },
                Protocol::OpcUa(ua) => ("opcua", ua.endpoint.clone()),
            };
            let block = console
                .learned()
                .and_then(|l| l.get(&d.name, BlockKind::Registers));
            let latency = counters.map_or(0, |c| c.last_latency_us.load(Ordering::Relaxed));
            let last_error = counters.and_then(|c| c.last_error());
            device_rows.push(json!({
                "name": d.name,
                "protocol": protocol,
                "address": address,
                "connected": counters.is_some_and(|c| c.connected.load(Ordering::Relaxed)),
                "last_error": last_error.as_ref().map(|(e, _)| e),
                "last_error_ms": last_error.as_ref().map(|(_, at)| at),
                "scan_ms": (latency > 0).then(|| latency as f64 / 1000.0),
                "requests_per_s": self.requests_per_s.get(&d.name).copied().unwrap_or(0.0),
                "block_size": block,
                "samples": counters.map_or(0, |c| c.samples.load(Ordering::Relaxed)),
                "tags": d.tags.len(),
            }));
        }

        let machines: Vec<Json> = console
            .feed
            .machines()
            .into_iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "device": m.device,
                    "state": m.state.as_ref().map(|s| s.state.as_str()),
                    "reason": m.state.as_ref().and_then(|s| s.reason.clone()),
                    "reason_code": m.state.as_ref().map(|s| s.reason_code),
                    "work_order": m.order.as_ref().map(|o| o.id.clone()),
                    "product": m.order.as_ref().and_then(|o| o.product.clone()).or(m.product),
                    "good": m.order.as_ref().map_or(0, |o| o.good),
                    "scrap": m.order.as_ref().map_or(0, |o| o.scrap),
                })
            })
            .collect();

        let ready = state.readiness();
        json!({
            "gateway": {
                "id": cfg.gateway.id,
                "version": state.version,
                "started_ms": state.started_ms,
                "now_ms": now_ms,
                "uptime_s": now_ms.saturating_sub(state.started_ms) as f64 / 1000.0,
                "ready": ready.is_ok(),
                "not_ready": ready.err().unwrap_or_default(),
                "config_path": console.config_path.display().to_string(),
            },
            "store": {
                "disk_bytes": store.disk_bytes,
                "max_disk_bytes": quota,
                "records": store.records,
                "write_bytes_per_s": growth,
                "samples_per_s": self.samples_per_s,
            },
            "northbounds": northbounds,
            "devices": device_rows,
            "machines": machines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_a_connected_backlog_older_than_the_flight_and_counts_from_its_start() {
        let mut r = Replay::default();
        assert_eq!(
            r.step(true, 4, Some(300)),
            None,
            "records in flight are no replay"
        );
        assert_eq!(
            r.step(false, 900, Some(60_000)),
            None,
            "disconnected: buffering"
        );
        assert_eq!(
            r.step(true, 1000, Some(61_000)),
            Some((1000, 0)),
            "back: replaying"
        );
        assert_eq!(r.step(true, 400, Some(30_000)), Some((1000, 600)));
        assert_eq!(
            r.step(true, 1200, Some(31_000)),
            Some((1200, 0)),
            "the backlog grew"
        );
        assert_eq!(r.step(true, 3, Some(200)), None, "caught up");
        assert_eq!(r.total, 0);
    }
}
