//! The commands a technician runs at the line, each printing text meant to be read: `check`
//! and `buffer stats`, `buffer export` and `purge`, the Modbus probe, OPC UA browse and trust,
//! and the demo.

pub mod buffer;
pub mod check;
pub mod demo;
pub mod opcua;
pub mod probe;
