//! Integration tests of the whole product: the real `edge-agent` binary, a real Mosquitto
//! started on a free port of 127.0.0.1, and simulated PLCs speaking Modbus TCP on real sockets.
//! One test binary, so the suite shares one build.

#[path = "../support/mod.rs"]
mod support;

mod admin_load;
mod browser;
mod buffer_tools;
mod command_safety;
mod common;
mod config_errors;
mod console;
mod delivery;
mod devices;
mod failover;
mod lifecycle;
mod logging;
mod mes;
mod mixed;
mod mqtt5;
mod opcua;
mod ops;
mod packaging;
#[allow(dead_code)]
#[path = "../chaos/src/proxy.rs"]
mod proxy;
mod rtu;
mod security;
mod sparkplug;
mod stall;
mod types;
