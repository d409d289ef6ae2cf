//! The chaos run's PLCs, each serving a u32 counter that advances with every read it answers,
//! so each answer serves a value no other answer served, and each served value is written down
//! with its time:
//!
//! - Modbus devices (TCP, or RTU frames over TCP): holding registers 0–1, high word first,
//!   advanced by the simulator's read hook.
//! - OPC UA servers: a UInt32 variable `Counter` whose every Read is answered by a hook of the
//!   simulated server. The agent polls it (`mode = "polling"`), one node per Read, so each Read
//!   service call serves exactly one value and "served" is exact, as for Modbus. A subscription
//!   would not do: the server samples and queues on its own schedule and may coalesce or drop
//!   samples in its queue, so what it sampled is not what it sent, and the ledger would count
//!   values no client could have seen.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use edge_sim::opcua::{HookedVariable, OpcUaSim, OpcUaSimOptions};
use edge_sim::{Area, ModbusSim};
use opcua::types::{DataTypeId, DataValue, StatusCode, Variant};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::ledger::Served;

/// The register the Modbus counter starts at.
pub const COUNTER_REGISTER: u16 = 0;
/// The OPC UA counter variable's name (node id `ns=<plant namespace>;s=Counter`).
pub const COUNTER_VARIABLE: &str = "Counter";

/// How a chaos PLC is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    ModbusTcp,
    /// RTU frames over TCP, as behind a serial device server.
    RtuOverTcp,
    /// An OPC UA server, security None, anonymous.
    OpcUa,
}

#[derive(Debug)]
enum Sim {
    Modbus(ModbusSim),
    OpcUa {
        sim: OpcUaSim,
        /// The counter's node id text, as the agent's config takes it.
        node: String,
    },
}

/// One chaos PLC.
#[derive(Debug)]
pub struct CounterPlc {
    pub name: String,
    pub kind: Kind,
    sim: Sim,
    addr: SocketAddr,
    served: Arc<Mutex<Vec<Served>>>,
    /// Only OPC UA PLCs read it; a Modbus device is silenced in its simulator.
    silent: Arc<AtomicBool>,
    rtu_task: Option<JoinHandle<()>>,
}

impl CounterPlc {
    /// Starts a PLC on a free port of 127.0.0.1. An OPC UA server keeps its certificate in
    /// `dir`.
    pub async fn start(
        name: &str,
        kind: Kind,
        epoch: Instant,
        dir: &Path,
    ) -> std::io::Result<CounterPlc> {
        let served = Arc::new(Mutex::new(Vec::new()));
        let silent = Arc::new(AtomicBool::new(false));
        let mut rtu_task = None;
        let (sim, addr) = match kind {
            Kind::ModbusTcp => {
                let sim = ModbusSim::start("127.0.0.1:0".parse().expect("loopback")).await?;
                modbus_counter(&sim, Arc::clone(&served), epoch);
                let addr = sim.local_addr();
                (Sim::Modbus(sim), addr)
            }
            Kind::RtuOverTcp => {
                let sim = ModbusSim::detached();
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                rtu_task = Some(tokio::spawn({
                    let sim = sim.clone();
                    async move {
                        if let Err(e) = edge_sim::serve_rtu_over_tcp(listener, vec![(1, sim)]).await
                        {
                            tracing::error!(error = %e, "the RTU device server stopped");
                        }
                    }
                }));
                modbus_counter(&sim, Arc::clone(&served), epoch);
                (Sim::Modbus(sim), addr)
            }
            Kind::OpcUa => {
                let mut options = OpcUaSimOptions::new(dir.join(format!("{name}-pki")));
                options.hooked.push(HookedVariable {
                    name: COUNTER_VARIABLE.to_owned(),
                    data_type: DataTypeId::UInt32,
                    hook: opcua_counter(Arc::clone(&served), Arc::clone(&silent), epoch),
                });
                let sim =
                    OpcUaSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), options).await?;
                let node = sim
                    .node_id(COUNTER_VARIABLE)
                    .await
                    .ok_or_else(|| std::io::Error::other("the OPC UA server stopped at once"))?;
                let addr = sim.local_addr();
                (Sim::OpcUa { sim, node }, addr)
            }
        };
        Ok(CounterPlc {
            name: name.to_owned(),
            kind,
            sim,
            addr,
            served,
            silent,
            rtu_task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OPC UA counter's node id, for an OPC UA PLC.
    pub fn node(&self) -> Option<&str> {
        match &self.sim {
            Sim::OpcUa { node, .. } => Some(node),
            Sim::Modbus(_) => None,
        }
    }

    /// The simulated OPC UA server, to stop and restart it.
    pub fn opcua(&self) -> Option<OpcUaSim> {
        match &self.sim {
            Sim::OpcUa { sim, .. } => Some(sim.clone()),
            Sim::Modbus(_) => None,
        }
    }

    /// A handle for tasks that change the PLC later.
    pub fn handle(&self) -> PlcHandle {
        match &self.sim {
            Sim::Modbus(sim) => PlcHandle::Modbus(sim.clone()),
            Sim::OpcUa { .. } => PlcHandle::OpcUa(Arc::clone(&self.silent)),
        }
    }

    /// Stops serving values. A Modbus device drops every request, as a PLC in a fault state;
    /// an OPC UA server answers Reads of the counter with BadNoCommunication, as a server
    /// whose PLC behind it stopped answering.
    pub fn set_silent(&self, silent: bool) {
        self.handle().set_silent(silent);
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

/// Changes a PLC from another task.
#[derive(Clone, Debug)]
pub enum PlcHandle {
    Modbus(ModbusSim),
    OpcUa(Arc<AtomicBool>),
}

impl PlcHandle {
    /// See [`CounterPlc::set_silent`].
    pub fn set_silent(&self, silent: bool) {
        match self {
            PlcHandle::Modbus(sim) => sim.set_silent(silent),
            PlcHandle::OpcUa(flag) => flag.store(silent, Ordering::SeqCst),
        }
    }
}

/// Advances the Modbus counter on every read that covers both of its registers.
fn modbus_counter(sim: &ModbusSim, log: Arc<Mutex<Vec<Served>>>, epoch: Instant) {
    sim.set_read_hook(Some(Arc::new(move |bank, area, start, count| {
        let span = u32::from(start)..u32::from(start) + u32::from(count);
        let first = u32::from(COUNTER_REGISTER);
        let covers =
            area == Area::HoldingRegister && span.contains(&first) && span.contains(&(first + 1));
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
}

/// The OPC UA counter's read hook: each call serves the next value and writes it down, under
/// one lock so that values are served and written down in the same order. The count lives
/// here, not in the server, so it carries on across server restarts.
fn opcua_counter(
    log: Arc<Mutex<Vec<Served>>>,
    silent: Arc<AtomicBool>,
    epoch: Instant,
) -> edge_sim::opcua::ReadHook {
    Arc::new(move || {
        if silent.load(Ordering::SeqCst) {
            return DataValue {
                status: Some(StatusCode::BadNoCommunication),
                ..DataValue::default()
            };
        }
        let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
        let value = log.last().map_or(0, |s| s.value).wrapping_add(1);
        log.push(Served {
            value,
            at_ms: epoch.elapsed().as_millis() as u64,
        });
        DataValue::new_now(Variant::UInt32(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::client::{ClientBuilder, IdentityToken, Session};
    use opcua::types::{
        AttributeId, EndpointDescription, MessageSecurityMode, NodeId, QualifiedName, ReadValueId,
        TimestampsToReturn, UserTokenPolicy,
    };
    use std::str::FromStr;
    use std::time::Duration;

    const LIMIT: Duration = Duration::from_secs(20);

    /// A session to the PLC, its event loop, and the counter's node.
    async fn connect(
        plc: &CounterPlc,
        pki: &Path,
    ) -> (Arc<Session>, JoinHandle<StatusCode>, NodeId) {
        let mut client = ClientBuilder::new()
            .application_name("edge-chaos test")
            .application_uri("urn:edge-chaos:test")
            .pki_dir(pki)
            .create_sample_keypair(false)
            .session_retry_limit(0)
            .client()
            .expect("client config");
        let url = format!("opc.tcp://{}/", plc.addr());
        let endpoint: EndpointDescription = (
            url.as_str(),
            "None",
            MessageSecurityMode::None,
            UserTokenPolicy::anonymous(),
        )
            .into();
        let (session, event_loop) = tokio::time::timeout(
            LIMIT,
            client.connect_to_matching_endpoint(endpoint, IdentityToken::Anonymous),
        )
        .await
        .expect("the endpoints arrive in time")
        .expect("the server offers security None");
        let driver = event_loop.spawn();
        assert!(
            tokio::time::timeout(LIMIT, session.wait_for_connection())
                .await
                .expect("the session is made in time"),
            "the session is activated"
        );
        let node =
            NodeId::from_str(plc.node().expect("an OPC UA PLC has a node")).expect("node id");
        (session, driver, node)
    }

    async fn read(session: &Session, node: &NodeId) -> DataValue {
        let request = ReadValueId {
            node_id: node.clone(),
            attribute_id: AttributeId::Value as u32,
            index_range: Default::default(),
            data_encoding: QualifiedName::null(),
        };
        let mut values = tokio::time::timeout(
            LIMIT,
            session.read(&[request], TimestampsToReturn::Both, 0.0),
        )
        .await
        .expect("the Read is answered in time")
        .expect("the Read succeeds");
        assert_eq!(values.len(), 1);
        values.remove(0)
    }

    fn values(plc: &CounterPlc) -> Vec<u32> {
        plc.served().iter().map(|s| s.value).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_read_of_the_opcua_counter_serves_the_next_value_none_while_silent_and_the_count_survives_a_restart(
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let plc = CounterPlc::start("ua1", Kind::OpcUa, Instant::now(), dir.path())
            .await
            .expect("the OPC UA PLC starts");
        let (session, driver, node) = connect(&plc, &dir.path().join("client-pki")).await;
        // Connecting reads the server's own nodes, never the counter.
        assert!(values(&plc).is_empty());
        for expected in 1..=3u32 {
            let dv = read(&session, &node).await;
            assert_eq!(dv.value, Some(Variant::UInt32(expected)));
            assert!(dv.status().is_good());
            assert!(dv.source_timestamp.is_some());
        }
        assert_eq!(values(&plc), vec![1, 2, 3]);

        plc.set_silent(true);
        let dv = read(&session, &node).await;
        assert_eq!(dv.status(), StatusCode::BadNoCommunication);
        assert_eq!(dv.value, None);
        assert_eq!(values(&plc), vec![1, 2, 3], "a silent PLC serves nothing");
        plc.set_silent(false);

        let sim = plc.opcua().expect("an OPC UA PLC has a server");
        sim.stop().await;
        driver.abort();
        sim.restart()
            .await
            .expect("the server starts again on its port");
        let (session, driver, node) = connect(&plc, &dir.path().join("client-pki")).await;
        let dv = read(&session, &node).await;
        assert_eq!(dv.value, Some(Variant::UInt32(4)));
        assert_eq!(values(&plc), vec![1, 2, 3, 4]);
        let _ = tokio::time::timeout(LIMIT, session.disconnect()).await;
        driver.abort();
        sim.stop().await;
    }
}
