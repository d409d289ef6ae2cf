//! `edge-agent demo`: the whole product on one machine with nothing installed — a simulated
//! Modbus TCP PLC and a simulated OPC UA server with moving values, an embedded MQTT broker,
//! and the agent running `board-configs/demo.toml` against them, with a live status line until
//! Ctrl-C.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use edge_config::{BrokerUrl, Config, Protocol, SystemSecrets};
use edge_modbus::codec::encode_registers;
use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};
use edge_sim::opcua::{OpcUaSim, OpcUaSimOptions};
use edge_sim::{Bank, ModbusSim};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tracing::{info, warn};

use crate::runtime;

/// The demo's board config, built into the binary so `demo` works from any directory.
pub const DEMO_CONFIG: &str = include_str!("../../board-configs/demo.toml");

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Port of the embedded MQTT broker (default 1883, or a free port if 1883 is taken).
    #[arg(long)]
    pub mqtt_port: Option<u16>,
    /// Port of the simulated Modbus TCP PLC (default 5020, or a free port if taken).
    #[arg(long)]
    pub modbus_port: Option<u16>,
    /// Port of the simulated OPC UA server (default 4840, or a free port if taken).
    #[arg(long)]
    pub opcua_port: Option<u16>,
    /// Where the store lives (default: a fresh temporary directory, removed at exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Use this board config instead of the built-in demo.toml.
    #[arg(short, long)]
    pub config: Option<PathBuf>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args))
}

/// A port on 127.0.0.1: the preferred one when it is free, else any free one.
fn pick_port(preferred: u16) -> anyhow::Result<u16> {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, preferred)).is_ok() {
        return Ok(preferred);
    }
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("no free port on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

fn start_broker(port: u16) -> anyhow::Result<()> {
    let toml = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 1000
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
  [v4.1.connections]
  connection_timeout_ms = 60000
  max_payload_size = 1048576
  max_inflight_count = 1000
  dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&toml).context("embedded broker configuration")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                warn!(error = %e, "embedded broker stopped");
            }
        })
        .context("cannot start the embedded broker thread")?;
    // The broker binds in its own thread: wait (bounded) until it answers an MQTT CONNECT.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if mqtt_ping(port).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the embedded MQTT broker did not start listening on 127.0.0.1:{port}")
}

/// Connects, sends a minimal MQTT 3.1.1 CONNECT, expects a CONNACK, disconnects: proof that
/// the broker is up, without leaving a half-open connection for it to complain about.
fn mqtt_ping(port: u16) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    // CONNECT: protocol "MQTT" level 4, clean session, keep-alive 10 s, client id "edge-demo-ping".
    let mut packet = vec![0x10, 0];
    packet.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x0A]);
    let id = b"edge-demo-ping";
    packet.extend_from_slice(&[0x00, id.len() as u8]);
    packet.extend_from_slice(id);
    packet[1] = (packet.len() - 2) as u8;
    s.write_all(&packet)?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack)?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(std::io::Error::other("unexpected CONNACK"));
    }
    s.write_all(&[0xE0, 0x00])
}

/// Moving values for the simulated filler: what a technician would see on a real line.
fn filler_program(tick: u64, bank: &mut Bank) {
    let t = tick as f64 / 10.0; // ticks are 100 ms
    let put = |bank: &mut Bank, area: Area, at: u16, dt: DataType, order: ByteOrder, v: Value| {
        if let Ok(regs) = encode_registers(dt, order, &v) {
            bank.set_registers(area, at, &regs);
        }
    };
    let good = (tick / 7) as u32;
    put(
        bank,
        Area::HoldingRegister,
        0,
        DataType::U32,
        ByteOrder::Abcd,
        Value::U32(good),
    );
    put(
        bank,
        Area::HoldingRegister,
        2,
        DataType::U32,
        ByteOrder::Abcd,
        Value::U32((tick / 97) as u32),
    );
    put(
        bank,
        Area::HoldingRegister,
        4,
        DataType::F32,
        ByteOrder::Abcd,
        Value::F32((100.0 * (t / 6.0).sin()) as f32),
    );
    put(
        bank,
        Area::HoldingRegister,
        6,
        DataType::F32,
        ByteOrder::Cdab,
        Value::F32((21.5 + 2.0 * (t / 40.0).sin() + 0.05 * (t * 3.1).sin()) as f32),
    );
    put(
        bank,
        Area::HoldingRegister,
        8,
        DataType::U16,
        ByteOrder::Abcd,
        Value::U16((350.0 + 20.0 * (t / 9.0).cos()) as u16),
    );
    let order_no = 1 + tick / 300; // a new work order every 30 s
    put(
        bank,
        Area::HoldingRegister,
        10,
        DataType::String(16),
        ByteOrder::Abcd,
        Value::String(format!("WO-2026-{order_no:04}")),
    );
    // State word: 1 running most of the time, 2 idle at each order change, 3 down now and then.
    let phase = tick % 300;
    let state = if phase < 20 {
        2
    } else if (1200..1260).contains(&(tick % 1800)) {
        3
    } else {
        1
    };
    put(
        bank,
        Area::HoldingRegister,
        20,
        DataType::U16,
        ByteOrder::Abcd,
        Value::U16(state),
    );
    put(
        bank,
        Area::InputRegister,
        0,
        DataType::U64,
        ByteOrder::Dcba,
        Value::U64(1_000_000 + tick * 3),
    );
    bank.set_bits(Area::Coil, 0, &[state == 1]);
}

/// Loads the demo config and points it at the simulator, the embedded broker and the data
/// directory actually in use.
fn demo_config(
    args: &DemoArgs,
    plc: SocketAddr,
    opcua_endpoint: &str,
    mqtt_port: u16,
    data_dir: &Path,
) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => edge_config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => edge_config::parse(
            DEMO_CONFIG,
            Path::new("board-configs/demo.toml"),
            &SystemSecrets,
        )
        .map_err(|e| anyhow::anyhow!("the built-in demo config is invalid:\n{e}"))?,
    };
    cfg.gateway.data_dir = data_dir.to_owned();
    for dev in &mut cfg.devices {
        match &mut dev.protocol {
            Protocol::ModbusTcp { host, port, .. } => {
                *host = plc.ip().to_string();
                *port = plc.port();
            }
            Protocol::OpcUa(ua) => ua.endpoint = opcua_endpoint.to_owned(),
        }
    }
    for nb in &mut cfg.northbounds {
        nb.url = BrokerUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: mqtt_port,
        };
        nb.tls = None;
        nb.credentials = None;
    }
    Ok(cfg)
}

#[derive(Default)]
struct Seen {
    messages: u64,
    last: HashMap<String, String>,
    last_topic: Option<String>,
}

/// A subscriber on the embedded broker, to show that readings really arrive.
async fn watch_broker(port: u16, filter: String, seen: Arc<Mutex<Seen>>) {
    let mut opts = MqttOptions::new("edge-agent-demo-viewer", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let _ = client.try_subscribe(filter.clone(), QoS::AtMostOnce);
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                s.messages += 1;
                let text = String::from_utf8_lossy(&p.payload).into_owned();
                s.last.insert(p.topic.clone(), text);
                s.last_topic = Some(p.topic);
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn run_async(args: DemoArgs) -> anyhow::Result<()> {
    let mqtt_port = pick_port(args.mqtt_port.unwrap_or(1883))?;
    start_broker(mqtt_port)?;

    let modbus_port = pick_port(args.modbus_port.unwrap_or(5020))?;
    let sim = ModbusSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, modbus_port)))
        .await
        .context("cannot start the simulated PLC")?;
    let _program = sim.spawn_program(Duration::from_millis(100), |bank: &mut Bank, tick| {
        filler_program(tick, bank)
    });

    let (data_dir, temporary) = match &args.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("edge-agent-demo-{}", std::process::id())),
            true,
        ),
    };
    let opcua_port = pick_port(args.opcua_port.unwrap_or(4840))?;
    let ua = OpcUaSim::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, opcua_port)),
        OpcUaSimOptions::new(data_dir.join("opcua-sim-pki")),
    )
    .await
    .context("cannot start the simulated OPC UA server")?;
    let cfg = demo_config(
        &args,
        sim.local_addr(),
        &ua.endpoint_url(),
        mqtt_port,
        &data_dir,
    )?;
    let root = cfg
        .northbounds
        .first()
        .map(|n| n.topic_root.clone())
        .unwrap_or_else(|| cfg.gateway.uns.root());

    let running = runtime::start(&cfg).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let viewer = tokio::spawn(watch_broker(mqtt_port, format!("{root}/#"), seen.clone()));

    println!();
    println!("edge-agent demo is running");
    println!(
        "  simulated PLC   modbus-tcp 127.0.0.1:{}  (device `filler`)",
        sim.local_addr().port()
    );
    let ua_devices: Vec<&str> = cfg
        .devices
        .iter()
        .filter(|d| matches!(d.protocol, Protocol::OpcUa(_)))
        .map(|d| d.name.as_str())
        .collect();
    println!(
        "  simulated OPC UA {}  (device `{}`; browse it with edge-agent opcua browse {})",
        ua.endpoint_url(),
        ua_devices.join("`, `"),
        ua.endpoint_url()
    );
    println!("  MQTT broker     mqtt://127.0.0.1:{mqtt_port}  (embedded)");
    println!("  store           {}", data_dir.display());
    println!("  subscribe with  mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t '{root}/#' -v");
    println!("  check config    edge-agent check -c board-configs/demo.toml");
    println!("  Ctrl-C stops the demo");
    println!();
    info!(
        broker_port = mqtt_port,
        plc_port = sim.local_addr().port(),
        "demo started"
    );

    let started = Instant::now();
    let limit = args.duration.map(Duration::from_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        print_status(&running, &seen, started);
        if limit.is_some_and(|l| started.elapsed() >= l) {
            break;
        }
    }
    println!();
    println!("stopping…");
    viewer.abort();
    running.stop().await;
    sim.stop().await;
    ua.stop().await;
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "demo stopped: {} MQTT messages received by the demo's own subscriber",
        s.messages
    );
    if temporary {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

fn print_status(running: &runtime::Running, seen: &Mutex<Seen>, started: Instant) {
    let snap = running.snapshot();
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let nb = snap.northbounds.first();
    let last = s
        .last_topic
        .as_ref()
        .and_then(|t| s.last.get(t).map(|p| (t, p)))
        .map(|(t, p)| {
            let short = t.rsplit('/').take(2).collect::<Vec<_>>();
            let value = serde_json::from_str::<serde_json::Value>(p)
                .ok()
                .and_then(|v| v.get("value").map(|v| v.to_string()))
                .unwrap_or_default();
            format!(
                "{}/{}={}",
                short.get(1).unwrap_or(&""),
                short.first().unwrap_or(&""),
                value
            )
        })
        .unwrap_or_else(|| "-".into());
    let up = snap.devices.iter().filter(|d| d.connected).count();
    let plc = format!("{up}/{} up", snap.devices.len());
    print!(
        "\r[{:>4}s] devices {} | stored {} samples | published {} acked {} | backlog {} | received {} | last {}   ",
        started.elapsed().as_secs(),
        plc,
        snap.store.committed_samples,
        nb.map_or(0, |n| n.published),
        nb.map_or(0, |n| n.acked),
        nb.map_or(0, |n| n.pending_records),
        s.messages,
        last
    );
    let _ = std::io::stdout().flush();
}
