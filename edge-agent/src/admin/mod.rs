//! The admin endpoint: `/live` (the process and its watchdog checks are fine), `/ready` (the
//! store is open, the config applied and every northbound connected) and `/metrics` (the
//! Prometheus text format). A deliberately small HTTP/1.1 server: GET only, one request per
//! connection, bounded request size, time and concurrency.
//!
//! - `server`: the listener and one task per connection.
//! - `metrics`: the numbers gathered at one moment and their text exposition (pure).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edge_store::Store;

use crate::daemon::devices::DeviceList;
use crate::daemon::runtime::Health;
use crate::northbound::uns::PublisherStats;

mod metrics;
mod server;

pub use metrics::{
    escape_label, parse_statm, render, DeviceMetrics, Memory, MetricsInput, NorthboundMetrics,
};
pub use server::{parse_request_line, AdminServer};

/// What the endpoint reports on, shared with the agent's main loop.
#[derive(Debug)]
pub struct AdminState {
    pub store: Store,
    pub devices: DeviceList,
    pub publishers: Vec<(String, Arc<PublisherStats>)>,
    /// The last health check of the main loop.
    pub health: Mutex<Health>,
    /// The config has been applied (set once the agent runs).
    pub config_applied: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub version: &'static str,
}

impl AdminState {
    pub fn new(
        store: Store,
        devices: DeviceList,
        publishers: Vec<(String, Arc<PublisherStats>)>,
    ) -> AdminState {
        AdminState {
            store,
            devices,
            publishers,
            health: Mutex::new(Health {
                scheduler: true,
                store: true,
                problems: Vec::new(),
            }),
            config_applied: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    /// `None` when ready, else every reason it is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if !self.config_applied.load(Ordering::Relaxed) {
            why.push("the config is not applied yet".to_owned());
        }
        if !self.health.lock().unwrap_or_else(|e| e.into_inner()).store {
            why.push("the store is not working".to_owned());
        }
        for (name, p) in &self.publishers {
            if !p.ever_connected.load(Ordering::Relaxed) {
                why.push(format!("northbound `{name}` has not connected yet"));
            } else if !p.connected.load(Ordering::Relaxed) {
                why.push(format!(
                    "northbound `{name}` is disconnected (samples are buffered)"
                ));
            }
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    fn metrics(&self) -> String {
        let devices = self
            .devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let input = MetricsInput {
            version: self.version,
            devices: devices
                .iter()
                .map(|(n, c)| DeviceMetrics::read(n, c))
                .collect(),
            northbounds: self
                .publishers
                .iter()
                .map(|(n, p)| NorthboundMetrics::read(n, p))
                .collect(),
            store: self.store.stats(),
            now_ms: edge_model::now_ms(),
            memory: metrics::read_memory(),
            reloads_ok: self.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads_failed.load(Ordering::Relaxed),
            ready: self.readiness().is_ok(),
        };
        render(&input)
    }
}

/// Status, content type and body for one request.
pub fn route(state: &AdminState, method: &str, path: &str) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".to_owned());
    }
    match path {
        "/live" => {
            let health = state
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if health.is_healthy() {
                (200, TEXT, "live\n".to_owned())
            } else {
                (
                    503,
                    TEXT,
                    format!("not live: {}\n", health.problems.join("; ")),
                )
            }
        }
        "/ready" => match state.readiness() {
            Ok(()) => (200, TEXT, "ready\n".to_owned()),
            Err(why) => (503, TEXT, format!("not ready: {}\n", why.join("; "))),
        },
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            state.metrics(),
        ),
        _ => (
            404,
            TEXT,
            "not found: try /live, /ready or /metrics\n".to_owned(),
        ),
    }
}
