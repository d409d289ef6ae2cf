//! edge-agent: polls PLCs, commits every reading to a durable store, and publishes it over MQTT.
//! The binary (`main.rs`) is a thin command line over these modules.

pub mod check;
pub mod demo;
pub mod opcua_cli;
pub mod publisher;
pub mod runtime;

/// Exit code for a configuration the agent cannot use (sysexits EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// Installs the TLS crypto provider once per process (rustls with ring; no C toolchain needed
/// for cross builds).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
