//! Shared pieces of the integration tests: writing board configs, starting simulated PLCs with
//! moving counters, and reading the agent's status snapshot.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_modbus::codec::encode_registers;
use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};
use edge_sim::ModbusSim;

pub const ROOT: &str = "acme/plant1/packaging/line1";

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_edge-agent"))
}

/// One `[[device.tag]]`.
#[derive(Debug, Clone)]
pub struct TagToml {
    pub name: String,
    pub address: String,
    pub data_type: String,
    /// Extra lines (`byte_order = "CDAB"`, `deadband = 0.5`, ...).
    pub extra: Vec<String>,
}

pub fn tag(name: &str, address: &str, data_type: &str) -> TagToml {
    TagToml {
        name: name.into(),
        address: address.into(),
        data_type: data_type.into(),
        extra: Vec::new(),
    }
}

/// One `[[device]]` on a simulated PLC.
#[derive(Debug, Clone)]
pub struct DeviceToml {
    pub name: String,
    pub port: u16,
    pub poll_ms: u64,
    pub timeout_ms: u64,
    pub extra: Vec<String>,
    pub tags: Vec<TagToml>,
}

pub fn device(name: &str, port: u16, poll_ms: u64, tags: Vec<TagToml>) -> DeviceToml {
    DeviceToml {
        name: name.into(),
        port,
        poll_ms,
        timeout_ms: 300,
        extra: Vec::new(),
        tags,
    }
}

/// A complete board config with one northbound on `broker_port`.
pub fn config_toml(
    data_dir: &Path,
    broker_port: u16,
    batching: &str,
    store_extra: &str,
    devices: &[DeviceToml],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"[gateway]
id = "gw-test"
data_dir = "{}"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[store]
{store_extra}

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1:{broker_port}"
client_id = "edge-gw-test-mes"
batching = "{batching}"
reconnect_min_ms = 200
reconnect_max_ms = 1000
keep_alive_s = 5
"#,
        data_dir.display()
    );
    for d in devices {
        let _ = writeln!(
            s,
            r#"[[device]]
name = "{}"
protocol = "modbus-tcp"
host = "127.0.0.1"
port = {}
poll_interval_ms = {}
timeout_ms = {}
backoff_min_ms = 100
backoff_max_ms = 1000"#,
            d.name, d.port, d.poll_ms, d.timeout_ms
        );
        for e in &d.extra {
            let _ = writeln!(s, "{e}");
        }
        for t in &d.tags {
            let _ = writeln!(
                s,
                "  [[device.tag]]\n  name = \"{}\"\n  address = \"{}\"\n  type = \"{}\"",
                t.name, t.address, t.data_type
            );
            for e in &t.extra {
                let _ = writeln!(s, "  {e}");
            }
        }
        s.push('\n');
    }
    s
}

/// A simulated PLC on a free port of 127.0.0.1.
pub async fn start_plc() -> ModbusSim {
    ModbusSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("simulated PLC starts")
}

/// Writes a typed value into the simulator's registers the way a PLC would hold it.
pub fn put(sim: &ModbusSim, area: Area, at: u16, dt: DataType, order: ByteOrder, v: &Value) {
    let regs = encode_registers(dt, order, v).expect("value encodes");
    sim.set_registers(area, at, &regs);
}

/// A PLC whose `hr:0` (u32) counts up every `period` and whose `hr:2` mirrors it as a u16:
/// every poll reads something new, so every reading becomes a sample.
pub fn counting(sim: &ModbusSim, period: Duration) -> tokio::task::JoinHandle<()> {
    sim.spawn_program(period, |bank, tick| {
        if let Ok(regs) = encode_registers(DataType::U32, ByteOrder::Abcd, &Value::U32(tick as u32))
        {
            bank.set_registers(Area::HoldingRegister, 0, &regs);
        }
        bank.set_registers(Area::HoldingRegister, 2, &[(tick % 65536) as u16]);
    })
}

pub fn counter_tags() -> Vec<TagToml> {
    vec![tag("count", "hr:0", "u32"), tag("mirror", "hr:2", "u16")]
}

/// The agent's status snapshot (`{data_dir}/status.json`), when it has written one.
pub fn status(data_dir: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(data_dir.join("status.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Waits (bounded) until the status snapshot satisfies `pred`.
pub async fn wait_status(
    data_dir: &Path,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some(s) = status(data_dir) {
            if pred(&s) {
                return s;
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}; last status: {last:#?}");
}

/// Records still waiting for the `mes` northbound.
pub fn pending(s: &serde_json::Value) -> u64 {
    s["northbounds"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "mes"))
        .and_then(|n| n["pending_records"].as_u64())
        .unwrap_or(u64::MAX)
}

/// A command payload stamped with the time it is sent (`timestamp_ms`, now), as command
/// safety requires; a payload that is not a JSON object, or already has a timestamp, is sent
/// as it is.
pub fn timed(payload: impl Into<Vec<u8>>) -> Vec<u8> {
    let payload = payload.into();
    match serde_json::from_slice::<serde_json::Value>(&payload) {
        Ok(serde_json::Value::Object(mut fields)) if !fields.contains_key("timestamp_ms") => {
            fields.insert(
                "timestamp_ms".into(),
                serde_json::Value::from(edge_model::now_ms()),
            );
            serde_json::Value::Object(fields).to_string().into_bytes()
        }
        _ => payload,
    }
}
