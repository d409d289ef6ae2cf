//! The commands a technician runs at the line, each printing text meant to be read: `check`
//! and `buffer stats`, `buffer export` and `purge`, the Modbus probe, OPC UA browse and trust.
//! The demo is a binary of its own (`edge-demo`, in `demo/`), outside the package.

pub mod buffer;
pub mod check;
pub mod opcua;
pub mod probe;
