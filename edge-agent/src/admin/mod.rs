//! The admin endpoint: `/live` (the process and its watchdog checks are fine), `/ready` (the
//! store is open, the config applied and every northbound connected) and `/metrics` (the
//! Prometheus text format). A deliberately small HTTP/1.1 server: GET (and HEAD) only, one
//! request per connection, `Connection: close`.
//!
//! It must keep answering `/live` while idle or slow clients hold sockets open (slowloris):
//! load balancers and monitoring probes read a silent endpoint as a dead gateway. (systemd's
//! watchdog is fed by the main loop in `daemon::service`, not through this endpoint.) So:
//!
//! - Every connection is accepted at once; none is left in the kernel's backlog while
//!   others hold the places. Each is a small task with its own deadlines.
//! - The request head (at most 8 KiB, else 431) must be complete within 2 s of the accept;
//!   a socket that stays silent or trickles its request is closed at that deadline.
//! - A client has 3 s to take its answer once it is written.
//! - At most 512 connections are open at once. At the cap, a new connection takes the place
//!   of the oldest one still waiting for its head (a real client sends its request right
//!   after connecting, so a flood of idle sockets cannot lock it out); only when all 512 are
//!   being answered is the new one closed at once, with a 503.
//! - At most 4 `/metrics` requests are answered at once, from gathering to the last byte
//!   written (the one large body; gathering reads the store, on the blocking pool). One that
//!   finds no slot within 1 s, or whose numbers take over 2 s to gather, gets a 503.
//!   `/live` and `/ready` take no slot: they never wait behind a scrape.
//!
//! Nothing queues without bound and every wait has a deadline: a connection lives at most
//! 2 + 1 + 2 + 3 = 8 s. Connections closed without their answer are counted by reason in
//! `edge_agent_admin_connections_dropped_total` (`idle`, `evicted`, `full`, `bad_request`,
//! `busy`, `write_timeout`), next to `edge_agent_admin_connections_open` and
//! `edge_agent_admin_connections_accepted_total`.
//!
//! - `admission`: the bounded table of open connections and who makes room (pure).
//! - `head`: the request head as it arrives, and its request line (pure).
//! - `server`: the listener and one task per connection.
//! - `metrics`: the numbers gathered at one moment and their text exposition (pure).
//! - `http`: one request as read (headers, query, body) and the answer's head (pure).
//! - `auth`: passwords, sessions, Basic, and the cross-site checks.
//! - `console`: the page and its JSON API; `overview` and `live` the numbers and the tag
//!   values it shows.
//!
//! With `[admin]` the console is served beside the probes: its page and assets, the API,
//! and one event stream per open page (at most [`server::MAX_STREAMS`] at once, each sending
//! the overview every second, each write within the write deadline). Requests may carry a
//! body of at most 1 MiB (a config being applied), read within the head's deadline plus
//! [`server::BODY_LIMIT`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use edge_store::Store;

use crate::daemon::devices::DeviceList;
use crate::daemon::runtime::Health;
use crate::northbound::safety::CommandStats;
use crate::northbound::uns::PublisherStats;

mod admission;
pub mod auth;
pub mod console;
mod head;
pub mod http;
pub mod live;
mod metrics;
mod overview;
mod server;

pub use admission::DropReason;
pub use head::parse_request_line;
pub use metrics::{
    escape_label, parse_statm, render, ConnectionMetrics, DeviceMetrics, Memory, MetricsInput,
    NorthboundMetrics,
};
pub use server::{AdminServer, ConnectionCounters, BODY_LIMIT, MAX_STREAMS};

/// What the endpoint reports on, shared with the agent's main loop.
#[derive(Debug)]
pub struct AdminState {
    pub store: Store,
    pub devices: DeviceList,
    pub publishers: Vec<(String, Arc<PublisherStats>)>,
    /// Commands by northbound, kind and outcome.
    pub commands: Arc<CommandStats>,
    /// The last health check of the main loop.
    pub health: Mutex<Health>,
    /// The config has been applied (set once the agent runs).
    pub config_applied: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub version: &'static str,
    /// The endpoint's own connections (kept by the server).
    pub connections: ConnectionCounters,
    /// When the agent started (epoch ms).
    pub started_ms: u64,
    /// The console and its API, with the endpoint's authentication (`None`: probes only,
    /// open, as in the unit tests of the server).
    pub console: Option<Arc<console::Console>>,
}

impl AdminState {
    pub fn new(
        store: Store,
        devices: DeviceList,
        publishers: Vec<(String, Arc<PublisherStats>)>,
        commands: Arc<CommandStats>,
    ) -> AdminState {
        AdminState {
            store,
            devices,
            publishers,
            commands,
            health: Mutex::new(Health {
                scheduler: true,
                store: true,
                problems: Vec::new(),
            }),
            config_applied: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            version: env!("CARGO_PKG_VERSION"),
            connections: ConnectionCounters::default(),
            started_ms: edge_model::now_ms(),
            console: None,
        }
    }

    /// With the console (and the authentication of `[admin]`).
    pub fn with_console(mut self, console: Arc<console::Console>) -> AdminState {
        self.console = Some(console);
        self
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
            connections: self.connections.snapshot(),
        };
        let mut text = render(&input);
        text.push_str(&self.commands.render());
        text.push_str("# HELP edge_agent_northbound_broker The broker each northbound is connected to, or tries (1).\n# TYPE edge_agent_northbound_broker gauge\n");
        for (name, p) in &self.publishers {
            let broker = p.broker();
            if !broker.is_empty() {
                text.push_str(&format!(
                    "edge_agent_northbound_broker{{northbound=\"{}\",url=\"{}\"}} 1\n",
                    escape_label(name),
                    escape_label(&broker)
                ));
            }
        }
        if let Some(c) = &self.console {
            text.push_str(&console::runway_metric(c));
        }
        text
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
