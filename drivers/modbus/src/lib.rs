//! Modbus southbound: addresses, the read planner, register codecs, and the TCP client.

pub mod address;
pub mod codec;
pub mod plan;
pub mod poller;
pub mod report;
pub mod write;

pub use address::{Address, AddressError, Area, ByteOrder, ByteOrderError};
