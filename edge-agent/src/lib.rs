//! edge-agent: polls PLCs, commits every reading to a durable store, and publishes it over MQTT.
//! The binary (`main.rs`) is a thin command line over these modules, one room per job:
//!
//! - [`cli`]: what a technician runs at the line (check, buffer stats, the Modbus probe, OPC UA
//!   browse and trust; the demo is the `edge-demo` binary, in `demo/`);
//! - [`daemon`]: the running gateway (devices, the store writer, status, reload, the systemd
//!   service, board I/O);
//! - [`northbound`]: the MQTT publishers (UNS JSON with MES events, Sparkplug B) and the
//!   commands they take;
//! - [`admin`]: the health and metrics endpoint;
//! - [`logging`]: how log lines look (text, systemd priorities, JSON lines).

pub mod admin;
pub mod cli;
pub mod daemon;
pub mod logging;
pub mod northbound;

/// Exit code for a configuration the agent cannot use (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Installs the TLS crypto provider once per process (rustls with ring; no C toolchain needed
/// for cross builds).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
