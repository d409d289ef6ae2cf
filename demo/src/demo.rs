//! `edge-demo`: the whole product on one machine with nothing installed — a simulated
//! Modbus TCP PLC and a simulated OPC UA server with moving values, an embedded MQTT broker,
//! and the agent running `board-configs/demo.toml` against them, with a live status line until
//! Ctrl-C.

use std::collections::HashMap;
use std::io::{IsTerminal, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use edge_config::{AdminSettings, BrokerUrl, Config, Modbus, ModbusLink, Protocol, SystemSecrets};
use edge_modbus::codec::{decode_registers, encode_registers};
use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};
use edge_sim::opcua::{OpcUaSim, OpcUaSimOptions};
use edge_sim::{Bank, ModbusSim};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tracing::{info, warn};

use edge_agent::admin::console::{Console, LiveFeed};
use edge_agent::admin::{AdminServer, AdminState};
use edge_agent::daemon::runtime;

/// The demo's board config, built into the binary so the demo works from any directory.
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
    /// Port of the technician's console on 127.0.0.1 (default 9900, or a free port if taken).
    #[arg(long)]
    pub console_port: Option<u16>,
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

/// The simulated filler's program, one step every 100 ms: what a technician would see on a
/// real line. It runs automatic work orders of 30 s each (a changeover, then production, with
/// a valve jam now and then), and takes a work order the MES dispatches: when `new_order`
/// (coil 1) is set it reads `next_order` (hr:30) and `target_quantity` (hr:40), clears the
/// bit, changes over and produces until the target is reached, then idles until the next
/// automatic order. Its counters count only while it runs, as a real filler's do.
#[derive(Debug)]
struct Filler {
    /// The number of the last automatic order.
    auto_no: u64,
    order: String,
    /// The tick the current order began.
    order_tick: u64,
    /// Parts to make in a dispatched order (0: an automatic order of 30 s).
    target: u32,
    /// Parts made in the current order.
    made: u32,
    /// When a dispatched order reached its target.
    done_tick: Option<u64>,
    good: u32,
    scrap: u32,
}

/// Ticks an automatic order lasts, the changeover at the start of every order, and the idle
/// time after a dispatched order reached its target.
const ORDER_TICKS: u64 = 300;
const CHANGEOVER_TICKS: u64 = 20;
const IDLE_TICKS: u64 = 100;

impl Filler {
    fn new() -> Filler {
        Filler {
            auto_no: 1,
            order: auto_order(1),
            order_tick: 0,
            target: 0,
            made: 0,
            done_tick: None,
            good: 0,
            scrap: 0,
        }
    }

    fn start(&mut self, order: String, tick: u64, target: u32) {
        self.order = order;
        self.order_tick = tick;
        self.target = target;
        self.made = 0;
        self.done_tick = None;
    }

    fn step(&mut self, tick: u64, bank: &mut Bank) {
        if bank.bit(Area::Coil, 1) {
            let order = decode_registers(
                DataType::String(16),
                ByteOrder::Abcd,
                None,
                bank.registers(Area::HoldingRegister, 30, 8),
            );
            let target = decode_registers(
                DataType::U32,
                ByteOrder::Abcd,
                None,
                bank.registers(Area::HoldingRegister, 40, 2),
            );
            if let (Ok(Value::String(order)), Ok(Value::U32(target))) = (order, target) {
                if !order.is_empty() {
                    self.start(order, tick, target);
                }
            }
            bank.set_bits(Area::Coil, 1, &[false]);
        }
        let since = tick.saturating_sub(self.order_tick);
        let next_auto = match (self.target, self.done_tick) {
            (0, _) => since >= ORDER_TICKS,
            (_, Some(done)) => tick.saturating_sub(done) >= IDLE_TICKS,
            (_, None) => false,
        };
        if next_auto {
            self.auto_no += 1;
            self.start(auto_order(self.auto_no), tick, 0);
        }
        let since = tick.saturating_sub(self.order_tick);
        let state: u16 = if since < CHANGEOVER_TICKS {
            2
        } else if self.done_tick.is_some() {
            4
        } else if (1200..1260).contains(&(tick % 1800)) {
            3
        } else {
            1
        };
        if state == 1 {
            if tick.is_multiple_of(7) {
                self.good = self.good.wrapping_add(1);
                self.made += 1;
            }
            if tick.is_multiple_of(97) {
                self.scrap = self.scrap.wrapping_add(1);
            }
            if self.target > 0 && self.made >= self.target {
                self.done_tick = Some(tick);
            }
        }

        let t = tick as f64 / 10.0;
        let put =
            |bank: &mut Bank, area: Area, at: u16, dt: DataType, order: ByteOrder, v: Value| {
                if let Ok(regs) = encode_registers(dt, order, &v) {
                    bank.set_registers(area, at, &regs);
                }
            };
        use Area::{HoldingRegister as Hr, InputRegister as Ir};
        put(
            bank,
            Hr,
            0,
            DataType::U32,
            ByteOrder::Abcd,
            Value::U32(self.good),
        );
        put(
            bank,
            Hr,
            2,
            DataType::U32,
            ByteOrder::Abcd,
            Value::U32(self.scrap),
        );
        put(
            bank,
            Hr,
            4,
            DataType::F32,
            ByteOrder::Abcd,
            Value::F32((100.0 * (t / 6.0).sin()) as f32),
        );
        put(
            bank,
            Hr,
            6,
            DataType::F32,
            ByteOrder::Cdab,
            Value::F32((21.5 + 2.0 * (t / 40.0).sin() + 0.05 * (t * 3.1).sin()) as f32),
        );
        put(
            bank,
            Hr,
            8,
            DataType::U16,
            ByteOrder::Abcd,
            Value::U16((350.0 + 20.0 * (t / 9.0).cos()) as u16),
        );
        put(
            bank,
            Hr,
            10,
            DataType::String(16),
            ByteOrder::Abcd,
            Value::String(self.order.clone()),
        );
        put(
            bank,
            Hr,
            20,
            DataType::U16,
            ByteOrder::Abcd,
            Value::U16(state),
        );
        put(
            bank,
            Ir,
            0,
            DataType::U64,
            ByteOrder::Dcba,
            Value::U64(1_000_000 + tick * 3),
        );
        bank.set_bits(Area::Coil, 0, &[state == 1]);
    }
}

fn auto_order(n: u64) -> String {
    format!("WO-2026-{n:04}")
}

/// Loads the demo config and points it at the simulator, the embedded broker and the data
/// directory actually in use.
/// The console on 127.0.0.1, editing off (the demo's config is built in memory); it shows
/// the built-in config's text, written to the data directory.
async fn start_console(
    args: &DemoArgs,
    cfg: &Config,
    running: &runtime::Running,
    feed: Arc<LiveFeed>,
    data_dir: &Path,
) -> anyhow::Result<AdminServer> {
    let port = pick_port(args.console_port.unwrap_or(9900))?;
    let text = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => DEMO_CONFIG.to_owned(),
    };
    std::fs::create_dir_all(data_dir)?;
    let shown = data_dir.join("board-config.toml");
    std::fs::write(&shown, text)?;
    let settings = AdminSettings {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        console: true,
        edit: false,
        users_file: None,
        users: Vec::new(),
        tls: None,
        open_probes: false,
        history_bytes: AdminSettings::DEFAULT_HISTORY_BYTES,
    };
    // Editing is off: nothing is ever sent on the channel.
    let (actions, _) = tokio::sync::mpsc::channel(1);
    let console = Console::new(
        cfg,
        settings.clone(),
        feed,
        shown,
        actions,
        Some(running.learned()),
    );
    let state = AdminState::new(
        running.store.clone(),
        running.devices.clone(),
        running.publishers.clone(),
        running.command_stats.clone(),
    )
    .with_console(Arc::new(console));
    let state = Arc::new(state);
    state
        .config_applied
        .store(true, std::sync::atomic::Ordering::Relaxed);
    AdminServer::start(settings.listen, state)
        .await
        .context("cannot start the console")
}

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
            Protocol::Modbus(Modbus {
                link: ModbusLink::Tcp { host, port },
                ..
            }) => {
                *host = plc.ip().to_string();
                *port = plc.port();
            }
            Protocol::OpcUa(ua) => ua.endpoint = opcua_endpoint.to_owned(),
            // The demo has no serial bus; a config given with -c keeps its own.
            Protocol::Modbus(_) => {}
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
    /// The last telemetry topic.
    last_topic: Option<String>,
    /// MES events received (`{root}/{machine}/_mes/...`, commands and answers left out).
    mes_events: u64,
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
                if p.topic.contains("/_mes/") {
                    if !p.topic.contains("/_mes/cmd/") {
                        s.mes_events += 1;
                    }
                } else if !p.topic.contains("/_") {
                    s.last_topic = Some(p.topic);
                }
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
    let mut filler = Filler::new();
    let _program = sim.spawn_program(Duration::from_millis(100), move |bank: &mut Bank, tick| {
        filler.step(tick, bank)
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

    let feed = LiveFeed::new(&cfg, AdminSettings::DEFAULT_HISTORY_BYTES);
    let running = runtime::start_observed(&cfg, Some(feed.observer())).await?;
    let console = start_console(&args, &cfg, &running, feed, &data_dir).await?;
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
    println!(
        "  console         http://{}/  (open it in a browser)",
        console.addr
    );
    println!("  MQTT broker     mqtt://127.0.0.1:{mqtt_port}  (embedded)");
    println!("  store           {}", data_dir.display());
    println!("  subscribe with  mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t '{root}/#' -v");
    if let Some(m) = cfg.machines.first() {
        println!(
            "  MES events      mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t '{root}/{}/_mes/#' -v",
            m.name
        );
        if m.dispatch.is_some() {
            println!(
                "  dispatch        mosquitto_pub -h 127.0.0.1 -p {mqtt_port} -t '{root}/{}/_mes/cmd/workorder/dispatch' -m '{{\"request_id\": \"1\", \"external_work_order_id\": \"WO-MES-1\", \"quantity\": 20}}'",
                m.name
            );
        }
    }
    println!("  check config    edge-agent check -c board-configs/demo.toml");
    println!("  Ctrl-C stops the demo");
    println!();
    info!(
        broker_port = mqtt_port,
        plc_port = sim.local_addr().port(),
        "demo started"
    );

    let machine = cfg.machines.first().map(|m| (root.clone(), m.name.clone()));
    let started = Instant::now();
    let limit = args.duration.map(Duration::from_secs);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // One line redrawn in place for a person; one plain line per second into a pipe or a log.
    let live = std::io::stdout().is_terminal();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let line = status_line(&running, &seen, started, &machine);
        if live {
            print!("\r{line}   ");
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
        if limit.is_some_and(|l| started.elapsed() >= l) {
            break;
        }
    }
    if live {
        println!();
    }
    println!("stopping…");
    viewer.abort();
    console.stop().await;
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

/// The MES view of the first machine for the status line: `filler running WO-2026-0001 good
/// 35 scrap 0`, from the retained current state and work order.
fn mes_status(s: &Seen, root: &str, machine: &str) -> String {
    let json = |kind: &str| {
        s.last
            .get(&format!("{root}/{machine}/_mes/{kind}"))
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
    };
    let state = json("state/current")
        .and_then(|v| v["state"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "-".into());
    let order = json("workorder/current")
        .map(|v| match v["external_work_order_id"].as_str() {
            Some(id) => format!(
                "{id} good {} scrap {}",
                v["good_quantity"], v["bad_quantity"]
            ),
            None => "no order".to_owned(),
        })
        .unwrap_or_else(|| "-".into());
    format!("{machine} {state} {order}")
}

fn status_line(
    running: &runtime::Running,
    seen: &Mutex<Seen>,
    started: Instant,
    machine: &Option<(String, String)>,
) -> String {
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
    let mes = match machine {
        Some((root, name)) => format!(
            " | mes {} events: {}",
            s.mes_events,
            mes_status(&s, root, name)
        ),
        None => String::new(),
    };
    format!(
        "[{:>4}s] devices {} | stored {} samples | published {} acked {} | backlog {} | received {} | last {}{}",
        started.elapsed().as_secs(),
        plc,
        snap.store.committed_samples,
        nb.map_or(0, |n| n.published),
        nb.map_or(0, |n| n.acked),
        nb.map_or(0, |n| n.pending_records),
        s.messages,
        last,
        mes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bank: &Bank, at: u16, dt: DataType, count: u16) -> Value {
        decode_registers(
            dt,
            ByteOrder::Abcd,
            None,
            bank.registers(Area::HoldingRegister, at, count),
        )
        .expect("decodes")
    }

    fn run(filler: &mut Filler, bank: &mut Bank, ticks: std::ops::Range<u64>) {
        for tick in ticks {
            filler.step(tick, bank);
        }
    }

    #[test]
    fn the_filler_changes_over_then_counts_only_while_it_runs() {
        let (mut filler, mut bank) = (Filler::new(), Bank::new());
        run(&mut filler, &mut bank, 0..CHANGEOVER_TICKS);
        assert_eq!(read(&bank, 20, DataType::U16, 1), Value::U16(2));
        assert_eq!(read(&bank, 0, DataType::U32, 2), Value::U32(0));
        run(&mut filler, &mut bank, CHANGEOVER_TICKS..200);
        assert_eq!(read(&bank, 20, DataType::U16, 1), Value::U16(1));
        assert!(bank.bit(Area::Coil, 0), "the running bit follows the state");
        assert_eq!(read(&bank, 0, DataType::U32, 2), Value::U32(26));
        assert_eq!(
            read(&bank, 10, DataType::String(16), 8),
            Value::String("WO-2026-0001".into())
        );
        run(&mut filler, &mut bank, 200..ORDER_TICKS + 1);
        assert_eq!(
            read(&bank, 10, DataType::String(16), 8),
            Value::String("WO-2026-0002".into())
        );
    }

    #[test]
    fn a_dispatched_order_is_taken_run_to_its_target_and_followed_by_idle() {
        let (mut filler, mut bank) = (Filler::new(), Bank::new());
        run(&mut filler, &mut bank, 0..50);
        let order = encode_registers(
            DataType::String(16),
            ByteOrder::Abcd,
            &Value::String("WO-MES-1".into()),
        )
        .expect("encodes");
        bank.set_registers(Area::HoldingRegister, 30, &order);
        bank.set_registers(Area::HoldingRegister, 40, &[0, 5]);
        bank.set_bits(Area::Coil, 1, &[true]);
        filler.step(50, &mut bank);
        assert!(!bank.bit(Area::Coil, 1), "the filler clears the handshake");
        assert_eq!(
            read(&bank, 10, DataType::String(16), 8),
            Value::String("WO-MES-1".into())
        );
        assert_eq!(read(&bank, 20, DataType::U16, 1), Value::U16(2));
        let before = filler.good;
        // 20 ticks of changeover, then 5 parts at one per 7 ticks.
        run(&mut filler, &mut bank, 51..120);
        assert_eq!(filler.good - before, 5, "stops at the target");
        assert_eq!(read(&bank, 20, DataType::U16, 1), Value::U16(4));
        run(&mut filler, &mut bank, 120..230);
        assert_eq!(
            read(&bank, 10, DataType::String(16), 8),
            Value::String("WO-2026-0002".into()),
            "automatic orders resume after the idle time"
        );
    }
}
