//! Simulated PLCs that speak the real protocols over real sockets, for integration tests (fault
//! injection: silence, exceptions, slowness, power loss) and for the demo, `edge-demo` (moving values).
//!
//! [`ModbusSim`] is a Modbus TCP device built on tokio-modbus's server; [`RtuBusSim`] serves
//! several of them as the slaves of one RS-485 bus on a pseudo-terminal. Its memory is a [`Bank`]
//! of the four Modbus areas; a test sets values and faults through the handle, and a program
//! started with [`ModbusSim::spawn_program`] moves values over time.
//!
//! The Modbus side is the default `modbus` feature. With the `opcua` feature,
//! [`opcua::OpcUaSim`] is a simulated OPC UA server: a filler on a packaging line with moving
//! values, writable variables and extra variables for load; the OPC UA driver's tests take it
//! without the Modbus side, so they do not depend on the Modbus driver.
//!
//! [`HangingFront`] stands in front of any of them and makes it hang like a PLC whose program
//! froze while its TCP stack still accepts connections.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use edge_sim::{Area, ModbusSim};
//! let sim = ModbusSim::start("127.0.0.1:0".parse().expect("literal address")).await?;
//! sim.set_registers(Area::HoldingRegister, 0, &[0x4148, 0x0000]);
//! let _program = sim.spawn_program(std::time::Duration::from_millis(100), |bank, tick| {
//!     bank.set_registers(Area::InputRegister, 0, &[(tick % 100) as u16]);
//! });
//! println!("a PLC listens on {}", sim.local_addr());
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "modbus")]
mod bank;
mod hang;
#[cfg(feature = "opcua")]
pub mod opcua;
#[cfg(feature = "modbus")]
mod protocol;
#[cfg(feature = "modbus")]
mod rtu;
#[cfg(feature = "modbus")]
mod server;

#[cfg(feature = "modbus")]
pub use bank::{Bank, AREA_SIZE};
pub use hang::HangingFront;
#[cfg(feature = "modbus")]
pub use protocol::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS};
#[cfg(feature = "modbus")]
pub use rtu::{serve_rtu_over_tcp, RtuBusSim};
#[cfg(feature = "modbus")]
pub use server::{ModbusSim, ReadHook, READ_LOG_CAPACITY};

/// Re-exported so callers name areas and exception codes without extra imports.
#[cfg(feature = "modbus")]
pub use edge_modbus::Area;
#[cfg(feature = "modbus")]
pub use tokio_modbus::ExceptionCode;
