//! The running gateway: the devices and their drivers, the store and its writer, the status
//! snapshot, reload, the systemd service around it, and the board's own I/O.

pub mod board;
pub mod clock;
pub mod devices;
pub mod notify;
pub mod permissions;
pub mod reload;
pub mod runtime;
pub mod service;
pub mod status;
