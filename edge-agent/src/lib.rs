//! edge-agent: polls PLCs, commits every reading to a durable store, and publishes it over MQTT.
//! The binary (`main.rs`) is a thin command line over these modules.

pub mod admin;
pub mod board;
pub mod check;
pub mod demo;
pub mod mes;
pub mod northbound;
pub mod notify;
pub mod opcua_cli;
pub mod probe;
pub mod publisher;
pub mod reload;
pub mod runtime;
pub mod service;
pub mod sparkplug;

/// Exit code for a configuration the agent cannot use (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Installs the TLS crypto provider once per process (rustls with ring; no C toolchain needed
/// for cross builds).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
