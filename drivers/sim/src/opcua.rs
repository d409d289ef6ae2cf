//! A simulated OPC UA server on a real socket (async-opcua's server): a small plant with a
//! packaging line whose filler has a State, GoodCount, ScrapCount, Temperature and WorkOrder
//! that change over time, writable Setpoint and Speed, and any number of extra variables for
//! load. It offers security None and Basic256Sha256 / Aes128 / Aes256 with Sign and
//! SignAndEncrypt, anonymous and user-name logins, and can be stopped and started again on the
//! same port with the same certificate, as a real server restarts.
//!
//! Node ids are `ns=<plant namespace>;s=Filler.Temperature` and so on; [`OpcUaSim::node_id`]
//! gives the exact text for a path. A test can add variables whose every Read is answered by
//! its own hook ([`OpcUaSimOptions::hooked`]), to know exactly what each Read served.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::nodes::VariableBuilder;
use opcua::server::address_space::AddressSpace;
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{simple_node_manager, SimpleNodeManager};
use opcua::server::{ServerBuilder, ServerEndpoint, ServerHandle, ServerUserToken};
use opcua::types::{
    DataTypeId, DataValue, DateTime, ExtensionObject, MessageSecurityMode, NodeId, Range,
    StatusCode, VariableTypeId, Variant,
};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// The namespace URI of the plant's nodes.
pub const NAMESPACE_URI: &str = "urn:edge-agent:sim:plant";
/// The simulated server's application URI (in its certificate).
pub const APPLICATION_URI: &str = "urn:edge-agent:sim:server";
/// The user name the simulator accepts besides anonymous (with [`OpcUaSimOptions::password`]).
pub const USER: &str = "operator";

/// How long [`OpcUaSim::stop`] waits for the server to close its connections.
const STOP_DEADLINE: Duration = Duration::from_secs(5);
/// The user token id of the password login in the server's config.
const USER_TOKEN_ID: &str = "operator";
const ANONYMOUS: &str = "ANONYMOUS";

/// The filler's variables: browse name (also the last part of the node id), data type, writable.
const FILLER: [(&str, DataTypeId, bool); 8] = [
    ("State", DataTypeId::Int32, false),
    ("GoodCount", DataTypeId::UInt32, false),
    ("ScrapCount", DataTypeId::UInt32, false),
    ("Temperature", DataTypeId::Double, false),
    ("WorkOrder", DataTypeId::String, false),
    ("Running", DataTypeId::Boolean, false),
    ("Setpoint", DataTypeId::Double, true),
    ("Speed", DataTypeId::Float, true),
];

/// Makes the value a Read of a hooked variable serves. Each call serves one value: it is called
/// each time a Read names the variable's Value (and at each sample of a monitored item on it,
/// should a client subscribe). Missing timestamps are set to now. It runs on the server's task
/// with the address space locked for reading: it must be quick and must not call back into the
/// simulator.
pub type ReadHook = Arc<dyn Fn() -> DataValue + Send + Sync>;

/// A variable in the `Plant` folder, node id `ns=<plant namespace>;s=<name>`, whose value is
/// made by its hook at each Read instead of being stored. The hook lives as long as the
/// simulator and answers again after a restart.
#[derive(Clone)]
pub struct HookedVariable {
    /// Browse name and the string of its node id.
    pub name: String,
    /// The variable's DataType attribute; the hook should serve values of this type.
    pub data_type: DataTypeId,
    pub hook: ReadHook,
}

impl std::fmt::Debug for HookedVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedVariable")
            .field("name", &self.name)
            .field("data_type", &self.data_type)
            .finish_non_exhaustive()
    }
}

/// How the simulator starts.
#[derive(Debug, Clone)]
pub struct OpcUaSimOptions {
    /// Where the server keeps its certificate (made on first start) and the client
    /// certificates it has seen (all trusted).
    pub pki_dir: PathBuf,
    /// Extra Double variables `Load.V0000`, `Load.V0001`, … that change every tick.
    pub extra_variables: usize,
    /// How often the plant's values change.
    pub tick: Duration,
    /// The password of user [`USER`]; `None` offers anonymous logins only.
    pub password: Option<String>,
    /// The server's MaxNodesPerRead (0: its default).
    pub max_nodes_per_read: usize,
    /// Variables answered by hooks, under the `Plant` folder.
    pub hooked: Vec<HookedVariable>,
}

impl OpcUaSimOptions {
    pub fn new(pki_dir: impl Into<PathBuf>) -> Self {
        OpcUaSimOptions {
            pki_dir: pki_dir.into(),
            extra_variables: 0,
            tick: Duration::from_millis(100),
            password: None,
            max_nodes_per_read: 0,
            hooked: Vec::new(),
        }
    }
}

/// A simulated OPC UA server. Cloning is cheap; every clone controls the same server.
#[derive(Clone, Debug)]
pub struct OpcUaSim {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: SocketAddr,
    options: OpcUaSimOptions,
    /// Ticks run so far; the plant carries on from here after a restart.
    tick: AtomicU64,
    /// Values written by clients, kept across restarts as a PLC keeps its retained memory.
    retained: Mutex<Vec<(String, Variant)>>,
    running: tokio::sync::Mutex<Option<Running>>,
}

struct Running {
    handle: ServerHandle,
    manager: Arc<SimpleNodeManager>,
    namespace: u16,
    server: JoinHandle<()>,
    program: JoinHandle<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl OpcUaSim {
    /// Starts serving on `bind` (port 0 for a free port; see [`OpcUaSim::endpoint_url`]).
    pub async fn start(bind: SocketAddr, options: OpcUaSimOptions) -> io::Result<OpcUaSim> {
        let listener = listen(bind)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            addr,
            options,
            tick: AtomicU64::new(0),
            retained: Mutex::new(initial_retained()),
            running: tokio::sync::Mutex::new(None),
        });
        let running = serve(&inner, listener)?;
        *inner.running.lock().await = Some(running);
        tracing::debug!(%addr, "simulated OPC UA server listening");
        Ok(OpcUaSim { inner })
    }

    /// `opc.tcp://127.0.0.1:<port>/`
    pub fn endpoint_url(&self) -> String {
        format!("opc.tcp://{}/", self.inner.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The server's certificate (DER), once it has started once.
    pub fn certificate_path(&self) -> PathBuf {
        self.inner.options.pki_dir.join("own/cert.der")
    }

    /// The node id text of a plant path, as in `node_id("Filler.Temperature")` →
    /// `ns=2;s=Filler.Temperature`.
    pub async fn node_id(&self, path: &str) -> Option<String> {
        let running = self.inner.running.lock().await;
        running
            .as_ref()
            .map(|r| NodeId::new(r.namespace, path).to_string())
    }

    /// The current value of a plant variable (`"Filler.Setpoint"`), while the server runs.
    pub async fn value(&self, path: &str) -> Option<Variant> {
        let running = self.inner.running.lock().await;
        let r = running.as_ref()?;
        let node = NodeId::new(r.namespace, path);
        read_value(&r.manager, &node)
    }

    /// Sets a plant variable, with the given status and a source timestamp of now; the
    /// program keeps moving the filler's other values.
    pub async fn set(&self, path: &str, value: Variant, status: StatusCode) -> bool {
        self.set_at(path, value, status, DateTime::now()).await
    }

    /// Sets a plant variable with the given status and source timestamp.
    pub async fn set_at(
        &self,
        path: &str,
        value: Variant,
        status: StatusCode,
        at: DateTime,
    ) -> bool {
        let running = self.inner.running.lock().await;
        let Some(r) = running.as_ref() else {
            return false;
        };
        let node = NodeId::new(r.namespace, path);
        let dv = DataValue::new_at_status(value, at, status);
        r.manager
            .set_value(r.handle.subscriptions(), &node, None, dv)
            .is_ok()
    }

    /// Whether the server is serving.
    pub async fn is_running(&self) -> bool {
        self.inner.running.lock().await.is_some()
    }

    /// Stops the server as a shutdown would: sessions end, connections close, the port closes.
    /// Written values are kept for [`OpcUaSim::restart`].
    pub async fn stop(&self) {
        let mut running = self.inner.running.lock().await;
        let Some(r) = running.take() else { return };
        let kept: Vec<(String, Variant)> = FILLER
            .iter()
            .filter(|(_, _, writable)| *writable)
            .filter_map(|(name, _, _)| {
                let path = format!("Filler.{name}");
                read_value(&r.manager, &NodeId::new(r.namespace, path.as_str())).map(|v| (path, v))
            })
            .collect();
        *self
            .inner
            .retained
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = kept;
        r.program.abort();
        r.handle.cancel();
        let mut server = r.server;
        if tokio::time::timeout(STOP_DEADLINE, &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }

    /// Starts the server again on the same port with the same certificate; the plant carries
    /// on where it stopped.
    pub async fn restart(&self) -> io::Result<()> {
        let mut running = self.inner.running.lock().await;
        if running.is_some() {
            return Ok(());
        }
        let listener = listen(self.inner.addr)?;
        *running = Some(serve(&self.inner, listener)?);
        Ok(())
    }
}

fn initial_retained() -> Vec<(String, Variant)> {
    vec![
        ("Filler.Setpoint".to_owned(), Variant::Double(22.0)),
        ("Filler.Speed".to_owned(), Variant::Float(120.0)),
    ]
}

fn listen(bind: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = match bind {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // A restart binds the port the old server just closed.
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    socket.listen(128)
}

fn read_value(manager: &SimpleNodeManager, node: &NodeId) -> Option<Variant> {
    let space = manager.address_space().read();
    match space.find(node)? {
        opcua::nodes::NodeType::Variable(v) => {
            v.value(
                opcua::types::TimestampsToReturn::Neither,
                &Default::default(),
                &opcua::types::DataEncoding::Binary,
                0.0,
            )
            .value
        }
        _ => None,
    }
}

fn serve(inner: &Arc<Inner>, listener: tokio::net::TcpListener) -> io::Result<Running> {
    let o = &inner.options;
    let port = inner.addr.port();
    let url = format!("opc.tcp://{}:{port}/", inner.addr.ip());
    let mut users: Vec<&str> = vec![ANONYMOUS];
    if o.password.is_some() {
        users.push(USER_TOKEN_ID);
    }
    let mut builder = ServerBuilder::new()
        .application_name("edge-agent simulated plant")
        .application_uri(APPLICATION_URI)
        .product_uri("urn:edge-agent:sim")
        .create_sample_keypair(true)
        .pki_dir(o.pki_dir.clone())
        .trust_client_certs(true)
        .host(inner.addr.ip().to_string())
        .port(port)
        .discovery_urls(vec![url])
        .max_session_timeout_ms(60_000)
        .with_node_manager(simple_node_manager(
            NamespaceMetadata {
                namespace_uri: NAMESPACE_URI.to_owned(),
                ..Default::default()
            },
            "plant",
        ));
    let security = [
        ("none", SecurityPolicy::None, MessageSecurityMode::None),
        (
            "basic256sha256_sign",
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::Sign,
        ),
        (
            "basic256sha256_sign_encrypt",
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
        ),
        (
            "aes128_sign",
            SecurityPolicy::Aes128Sha256RsaOaep,
            MessageSecurityMode::Sign,
        ),
        (
            "aes128_sign_encrypt",
            SecurityPolicy::Aes128Sha256RsaOaep,
            MessageSecurityMode::SignAndEncrypt,
        ),
        (
            "aes256_sign",
            SecurityPolicy::Aes256Sha256RsaPss,
            MessageSecurityMode::Sign,
        ),
        (
            "aes256_sign_encrypt",
            SecurityPolicy::Aes256Sha256RsaPss,
            MessageSecurityMode::SignAndEncrypt,
        ),
    ];
    for (id, policy, mode) in security {
        builder = builder.add_endpoint(id, ServerEndpoint::from(("/", policy, mode, &users[..])));
    }
    if let Some(password) = &o.password {
        builder = builder.add_user_token(
            USER_TOKEN_ID,
            ServerUserToken::user_pass(USER, password.as_str()),
        );
    }
    if o.max_nodes_per_read > 0 {
        builder.limits_mut().operational.max_nodes_per_read = o.max_nodes_per_read;
    }
    let (server, handle) = builder.build().map_err(io::Error::other)?;
    let manager = handle
        .node_managers()
        .get_of_type::<SimpleNodeManager>()
        .ok_or_else(|| io::Error::other("the plant's node manager is missing"))?;
    let namespace = handle
        .get_namespace_index(NAMESPACE_URI)
        .ok_or_else(|| io::Error::other("the plant's namespace is not registered"))?;
    {
        let mut space = manager.address_space().write();
        build_plant(&mut space, namespace, o.extra_variables);
        for v in &o.hooked {
            add_hooked(&mut space, namespace, v);
        }
    }
    for v in &o.hooked {
        let hook = Arc::clone(&v.hook);
        manager.inner().add_read_callback(
            NodeId::new(namespace, v.name.as_str()),
            move |_, _, _| {
                let mut dv = hook();
                let now = DateTime::now();
                dv.source_timestamp.get_or_insert(now);
                dv.server_timestamp.get_or_insert(now);
                Ok(dv)
            },
        );
    }
    let retained = inner
        .retained
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    for (path, value) in retained {
        let node = NodeId::new(namespace, path.as_str());
        let _ = manager.set_value(
            handle.subscriptions(),
            &node,
            None,
            DataValue::new_now(value),
        );
    }
    let server_task = tokio::spawn(async move {
        if let Err(e) = server.run_with(listener).await {
            tracing::warn!(error = %e, "simulated OPC UA server stopped");
        }
    });
    let program = spawn_program(inner.clone(), handle.clone(), manager.clone(), namespace);
    Ok(Running {
        handle,
        manager,
        namespace,
        server: server_task,
        program,
    })
}

fn build_plant(space: &mut AddressSpace, ns: u16, extra: usize) {
    let objects = NodeId::objects_folder_id();
    let plant = NodeId::new(ns, "Plant");
    let line = NodeId::new(ns, "Line1");
    let filler = NodeId::new(ns, "Filler");
    space.add_folder(&plant, "Plant", "Plant", &objects);
    space.add_folder(&line, "Line1", "Line 1", &plant);
    space.add_folder(&filler, "Filler", "Filler", &line);
    for (name, data_type, writable) in FILLER {
        let id = NodeId::new(ns, format!("Filler.{name}"));
        let initial = match data_type {
            DataTypeId::Int32 => Variant::Int32(0),
            DataTypeId::UInt32 => Variant::UInt32(0),
            DataTypeId::Double => Variant::Double(0.0),
            DataTypeId::Float => Variant::Float(0.0),
            DataTypeId::Boolean => Variant::Boolean(false),
            _ => Variant::from(""),
        };
        let mut b = VariableBuilder::new(&id, name, name)
            .data_type(data_type)
            .value(initial)
            .organized_by(&filler);
        if writable {
            b = b.writable();
        }
        b.insert(space);
    }
    // The temperature's engineering range, so a percent deadband can be asked for.
    let temperature = NodeId::new(ns, "Filler.Temperature");
    VariableBuilder::new(
        &NodeId::new(ns, "Filler.Temperature.EURange"),
        "EURange",
        "EURange",
    )
    .data_type(DataTypeId::Range)
    .value(Variant::from(ExtensionObject::from_message(Range {
        low: 0.0,
        high: 100.0,
    })))
    .has_type_definition(VariableTypeId::PropertyType)
    .property_of(&temperature)
    .insert(space);
    if extra > 0 {
        let load = NodeId::new(ns, "Load");
        space.add_folder(&load, "Load", "Load", &plant);
        for i in 0..extra {
            let name = format!("V{i:04}");
            let id = NodeId::new(ns, format!("Load.{name}"));
            VariableBuilder::new(&id, name.as_str(), name.as_str())
                .data_type(DataTypeId::Double)
                .value(0.0f64)
                .organized_by(&load)
                .insert(space);
        }
    }
}

fn add_hooked(space: &mut AddressSpace, ns: u16, v: &HookedVariable) {
    let id = NodeId::new(ns, v.name.as_str());
    VariableBuilder::new(&id, v.name.as_str(), v.name.as_str())
        .data_type(v.data_type)
        .value(Variant::Empty)
        .organized_by(NodeId::new(ns, "Plant"))
        .insert(space);
}

/// The filler's values at a tick (100 ms ticks by default): counters that count, a
/// temperature that drifts, a work order every 300 ticks, a state that is mostly running.
pub fn filler_values(tick: u64) -> [(&'static str, Variant); 6] {
    let t = tick as f64 / 10.0;
    let phase = tick % 300;
    let state = if phase < 20 {
        2
    } else if (1200..1260).contains(&(tick % 1800)) {
        3
    } else {
        1
    };
    [
        ("Filler.State", Variant::Int32(state)),
        ("Filler.GoodCount", Variant::UInt32((tick / 7) as u32)),
        ("Filler.ScrapCount", Variant::UInt32((tick / 97) as u32)),
        (
            "Filler.Temperature",
            Variant::Double(21.5 + 2.0 * (t / 40.0).sin() + 0.05 * (t * 3.1).sin()),
        ),
        (
            "Filler.WorkOrder",
            Variant::from(format!("WO-2026-{:04}", 1 + tick / 300)),
        ),
        ("Filler.Running", Variant::Boolean(state == 1)),
    ]
}

fn spawn_program(
    inner: Arc<Inner>,
    handle: ServerHandle,
    manager: Arc<SimpleNodeManager>,
    ns: u16,
) -> JoinHandle<()> {
    let period = inner.options.tick.max(Duration::from_millis(1));
    let extra = inner.options.extra_variables;
    let filler_ids: Vec<NodeId> = filler_values(0)
        .iter()
        .map(|(path, _)| NodeId::new(ns, *path))
        .collect();
    let load_ids: Vec<NodeId> = (0..extra)
        .map(|i| NodeId::new(ns, format!("Load.V{i:04}")))
        .collect();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            let tick = inner.tick.fetch_add(1, Ordering::Relaxed);
            let now = DateTime::now();
            let values = filler_values(tick);
            let filler = filler_ids
                .iter()
                .zip(values)
                .map(|(id, (_, v))| (id, None, DataValue::new_at(v, now)));
            let load = load_ids.iter().enumerate().map(|(i, id)| {
                let v = (tick as f64 / 10.0 + i as f64).sin() * 100.0;
                (id, None, DataValue::new_at(v, now))
            });
            let _ = manager.set_values(handle.subscriptions(), filler.chain(load));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filler_counts_and_changes_work_orders() {
        let at = |tick| filler_values(tick);
        assert!(matches!(at(0)[1].1, Variant::UInt32(0)));
        assert!(matches!(at(700)[1].1, Variant::UInt32(100)));
        assert_eq!(at(0)[4].1, Variant::from("WO-2026-0001"));
        assert_eq!(at(300)[4].1, Variant::from("WO-2026-0002"));
        assert_eq!(at(10)[0].1, Variant::Int32(2), "idle at an order change");
        assert_eq!(at(100)[0].1, Variant::Int32(1), "running");
        assert_eq!(at(1230)[0].1, Variant::Int32(3), "down now and then");
    }
}
