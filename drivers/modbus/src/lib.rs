//! Modbus southbound: addresses, the read planner, register codecs, and the TCP client.

pub mod address;

pub use address::{Address, AddressError, Area, ByteOrder, ByteOrderError};
