//! Modbus southbound: addresses, the read planner, register codecs, and the clients: Modbus
//! TCP, RTU over TCP, and RTU slaves on a serial bus shared through its owner task.

pub mod address;
pub mod bus;
pub mod codec;
pub mod learn;
pub mod link;
pub mod plan;
pub mod poller;
pub mod report;
pub mod rtu;
pub mod write;

pub use address::{Address, AddressError, Area, ByteOrder, ByteOrderError};
