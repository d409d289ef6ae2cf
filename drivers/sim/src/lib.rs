//! Simulated PLCs that speak the real protocols over real sockets, for integration tests (fault
//! injection: silence, exceptions, slowness, power loss) and for `edge-agent demo` (moving values).
//!
//! [`ModbusSim`] is a Modbus TCP device built on tokio-modbus's server; [`RtuBusSim`] serves
//! several of them as the slaves of one RS-485 bus on a pseudo-terminal. Its memory is a [`Bank`]
//! of the four Modbus areas; a test sets values and faults through the handle, and a program
//! started with [`ModbusSim::spawn_program`] moves values over time.
//!
//! With the `opcua` feature, [`opcua::OpcUaSim`] is a simulated OPC UA server: a filler on a
//! packaging line with moving values, writable variables and extra variables for load.
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

mod bank;
#[cfg(feature = "opcua")]
pub mod opcua;
mod protocol;
mod rtu;
mod server;

pub use bank::{Bank, AREA_SIZE};
pub use protocol::{MAX_READ_BITS, MAX_READ_REGISTERS, MAX_WRITE_BITS, MAX_WRITE_REGISTERS};
pub use rtu::{serve_rtu_over_tcp, RtuBusSim};
pub use server::{ModbusSim, ReadHook, READ_LOG_CAPACITY};

/// Re-exported so callers name areas and exception codes without extra imports.
pub use edge_modbus::Area;
pub use tokio_modbus::ExceptionCode;
