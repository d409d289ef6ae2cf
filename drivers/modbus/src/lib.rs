//! Modbus southbound: addresses, the read planner and register codecs (pure, all the board
//! config needs), and with the `io` feature the clients: Modbus TCP, RTU over TCP, and RTU
//! slaves on a serial bus shared through its owner task, with the device task that polls them.

pub mod address;
pub mod codec;
pub mod learn;
pub mod plan;

#[cfg(feature = "io")]
pub mod bus;
#[cfg(feature = "io")]
pub mod link;
#[cfg(feature = "io")]
pub mod poller;
#[cfg(feature = "io")]
pub mod rtu;
#[cfg(feature = "io")]
pub mod write;

pub use address::{Address, AddressError, Area, ByteOrder, ByteOrderError};
