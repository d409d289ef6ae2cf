//! What the running agent tells about itself: the status snapshot that `buffer stats`, the
//! demo's status line and the admin endpoint read, written to the data directory every few
//! seconds, and the health the status LED shows.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use edge_driver::DeviceCounters;
use edge_store::Store;
use serde::Serialize;
use tokio::sync::watch;
use tracing::warn;

use crate::daemon::board;
use crate::daemon::devices::DeviceList;
use crate::northbound::uns::PublisherStats;

/// How often the status snapshot is written for `edge-agent buffer stats`.
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// How often the status LED's view of the gateway is refreshed.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// Keeps the board's view of the gateway's health current for the status LED.
pub(crate) async fn health_loop(
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
    /// "evicted", "corrupted", "rolled-back" or "purged".
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
    /// Removed from a northbound's backlog by `edge-agent buffer purge`.
    #[serde(default)]
    pub lost_purged_samples: u64,
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
    /// The broker in use (with a broker list, the one of the current connection).
    #[serde(default)]
    pub broker: Option<String>,
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
            lost_purged_samples: s.lost.purged,
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
                    broker: p.map(|p| p.broker()).filter(|b| !b.is_empty()),
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

pub(crate) async fn write_status_loop(
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
