//! The chaos run's PLCs: simulated Modbus devices whose holding registers 0–1 hold a u32
//! counter (high word first) that advances on every read it answers, so each answer serves a
//! value no other answer served, and each served value is written down with its time.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use edge_sim::{Area, ModbusSim};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::ledger::Served;

/// The register the counter starts at.
pub const COUNTER_REGISTER: u16 = 0;

/// How a chaos PLC is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ModbusTcp,
    /// RTU frames over TCP, as behind a serial device server.
    RtuOverTcp,
}

/// One chaos PLC.
#[derive(Debug)]
pub struct CounterPlc {
    pub name: String,
    pub kind: Kind,
    sim: ModbusSim,
    addr: SocketAddr,
    served: Arc<Mutex<Vec<Served>>>,
    rtu_task: Option<JoinHandle<()>>,
}

impl CounterPlc {
    pub async fn start(name: &str, kind: Kind, epoch: Instant) -> std::io::Result<CounterPlc> {
        let served = Arc::new(Mutex::new(Vec::new()));
        let (sim, addr, rtu_task) = match kind {
            Kind::ModbusTcp => {
                let sim = ModbusSim::start("127.0.0.1:0".parse().expect("loopback")).await?;
                let addr = sim.local_addr();
                (sim, addr, None)
            }
            Kind::RtuOverTcp => {
                let sim = ModbusSim::detached();
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                let task = tokio::spawn({
                    let sim = sim.clone();
                    async move {
                        if let Err(e) = edge_sim::serve_rtu_over_tcp(listener, vec![(1, sim)]).await
                        {
                            tracing::error!(error = %e, "the RTU device server stopped");
                        }
                    }
                });
                (sim, addr, Some(task))
            }
        };
        let log = Arc::clone(&served);
        sim.set_read_hook(Some(Arc::new(move |bank, area, start, count| {
            let span = u32::from(start)..u32::from(start) + u32::from(count);
            let first = u32::from(COUNTER_REGISTER);
            let covers = area == Area::HoldingRegister
                && span.contains(&first)
                && span.contains(&(first + 1));
            if !covers {
                return;
            }
            let words = bank.registers(Area::HoldingRegister, COUNTER_REGISTER, 2);
            let value = ((u32::from(words[0]) << 16) | u32::from(words[1])).wrapping_add(1);
            bank.set_registers(
                Area::HoldingRegister,
                COUNTER_REGISTER,
                &[(value >> 16) as u16, value as u16],
            );
            let at_ms = epoch.elapsed().as_millis() as u64;
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Served { value, at_ms });
        })));
        Ok(CounterPlc {
            name: name.to_owned(),
            kind,
            sim,
            addr,
            served,
            rtu_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The simulated device itself, for tasks that change it later.
    pub fn handle(&self) -> ModbusSim {
        self.sim.clone()
    }

    /// Stops answering (every request is dropped, as by a PLC in a fault state).
    pub fn set_silent(&self, silent: bool) {
        self.sim.set_silent(silent);
    }

    pub fn served(&self) -> Vec<Served> {
        self.served
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for CounterPlc {
    fn drop(&mut self) {
        if let Some(task) = self.rtu_task.take() {
            task.abort();
        }
    }
}
