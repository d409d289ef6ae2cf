//! Device tasks on one simulated RS-485 bus over a pseudo-terminal: every slave's values arrive
//! at its rate, a silenced slave does not slow the others and comes back, a meter limited to 16
//! registers per read gets its limit learned, and noise on the line is counted and survived.
//! Also RTU over TCP and writes through the bus.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_driver::{DeviceCounters, ReportRule, Scaling};
use edge_modbus::bus::{spawn_serial_bus, BusClient, Parity, SerialSettings};
use edge_modbus::learn::{BlockKind, LimitStore, LIMITS_FILE};
use edge_modbus::link::Transport;
use edge_modbus::plan::PlanLimits;
use edge_modbus::poller::{DevicePoller, DeviceSpec, TagSpec};
use edge_modbus::{Area, ByteOrder};
use edge_model::{Batch, DataType, DeviceId, Quality, TagName, Value};
use edge_sim::{ModbusSim, RtuBusSim};
use tokio::sync::{mpsc, watch};

const POLL: Duration = Duration::from_millis(100);

fn tag(name: &str, address: &str, dt: DataType) -> TagSpec {
    TagSpec {
        name: TagName(name.into()),
        address: address.parse().expect("address"),
        data_type: dt,
        byte_order: ByteOrder::Abcd,
        scaling: Scaling::IDENTITY,
        report: ReportRule {
            deadband: None,
            heartbeat: None,
        },
        interval: POLL,
        writable: true,
    }
}

fn slave(name: &str, unit: u8, bus: &BusClient, tags: Vec<TagSpec>) -> DeviceSpec {
    DeviceSpec {
        name: DeviceId(name.into()),
        transport: Transport::Serial(bus.clone()),
        host: String::new(),
        port: 0,
        unit_id: unit,
        timeout: Duration::from_millis(150),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(1600),
        limits: PlanLimits::default(),
        tags,
        learned_limits: None,
    }
}

fn settings(path: &str) -> SerialSettings {
    SerialSettings {
        path: path.to_owned(),
        baud: 115_200,
        parity: Parity::None,
        data_bits: 8,
        stop_bits: 1,
    }
}

struct Running {
    counters: Vec<Arc<DeviceCounters>>,
    rx: mpsc::Receiver<Batch>,
    stop: watch::Sender<bool>,
}

fn run(specs: Vec<DeviceSpec>, stop: watch::Sender<bool>) -> Running {
    let (tx, rx) = mpsc::channel(4096);
    let mut counters = Vec::new();
    for spec in specs {
        let poller = DevicePoller::new(spec).expect("plan");
        counters.push(poller.counters());
        tokio::spawn(poller.run(tx.clone(), stop.subscribe()));
    }
    Running { counters, rx, stop }
}

/// Reads answered per slave over `window`.
async fn reads_over(counters: &[Arc<DeviceCounters>], window: Duration) -> Vec<u64> {
    let before: Vec<u64> = counters
        .iter()
        .map(|c| c.reads_ok.load(Ordering::Relaxed))
        .collect();
    tokio::time::sleep(window).await;
    counters
        .iter()
        .zip(before)
        .map(|(c, b)| c.reads_ok.load(Ordering::Relaxed) - b)
        .collect()
}

fn drain(rx: &mut mpsc::Receiver<Batch>) -> Vec<Batch> {
    let mut out = Vec::new();
    while let Ok(b) = rx.try_recv() {
        out.push(b);
    }
    out
}

fn three_meters() -> Vec<(u8, ModbusSim)> {
    (1..=3u8)
        .map(|u| {
            let sim = ModbusSim::detached();
            sim.set_registers(Area::HoldingRegister, 0, &[u16::from(u) * 100, 7]);
            (u, sim)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silenced_slave_is_backed_off_and_recovered_while_the_others_keep_their_rate() {
    let slaves = three_meters();
    let sims: Vec<ModbusSim> = slaves.iter().map(|(_, s)| s.clone()).collect();
    let bus_sim = RtuBusSim::start(slaves).expect("bus");
    let (stop, stop_rx) = watch::channel(false);
    let (bus, _owner) = spawn_serial_bus(settings(bus_sim.path()), stop_rx);
    let specs = (1..=3u8)
        .map(|u| {
            slave(
                &format!("meter{u}"),
                u,
                &bus,
                vec![
                    tag("power", "hr:0", DataType::U16),
                    tag("phase", "hr:1", DataType::U16),
                ],
            )
        })
        .collect();
    let mut r = run(specs, stop);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let healthy = reads_over(&r.counters, Duration::from_secs(2)).await;
    // Every slave is read at about its 10 per second.
    for (i, n) in healthy.iter().enumerate() {
        assert!(
            (14..=24).contains(n),
            "slave {} read {n} times in 2 s",
            i + 1
        );
    }
    let batches = drain(&mut r.rx);
    for u in 1..=3u16 {
        let name = format!("meter{u}");
        assert!(
            batches.iter().any(|b| b.device.0 == name
                && b.samples.iter().any(|s| s.tag.0 == "power"
                    && s.value == Some(Value::U16(u * 100))
                    && s.quality == Quality::Good)),
            "{name}'s value arrived"
        );
    }

    sims[1].set_silent(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let faulty = reads_over(&r.counters, Duration::from_secs(3)).await;
    for i in [0usize, 2] {
        let base = healthy[i] * 3 / 2;
        assert!(
            faulty[i] * 10 >= base * 7,
            "slave {} read {} times in 3 s with a dead neighbour, {} without",
            i + 1,
            faulty[i],
            base
        );
    }
    // Backed off: the dead slave is asked far less often than it would be polled.
    let asked = bus.counters().timeouts.load(Ordering::Relaxed);
    assert!(asked <= 12, "the silent slave was asked {asked} times");
    assert!(!r.counters[1].connected.load(Ordering::Relaxed));
    let bad = drain(&mut r.rx);
    assert!(bad
        .iter()
        .any(|b| b.device.0 == "meter2" && b.samples.iter().all(|s| s.quality == Quality::Bad)));

    sims[1].set_silent(false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !r.counters[1].connected.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the slave was not recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = r.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meter_limited_to_16_registers_is_learned_then_read_without_exceptions() {
    let dir = tempfile_dir("learn");
    let meter = ModbusSim::detached();
    meter.set_max_read_registers(16);
    for i in 0..40u16 {
        meter.set_registers(Area::HoldingRegister, i, &[i]);
    }
    let bus_sim = RtuBusSim::start(vec![(5, meter.clone())]).expect("bus");
    let (stop, stop_rx) = watch::channel(false);
    let (bus, _owner) = spawn_serial_bus(settings(bus_sim.path()), stop_rx);
    let store = Arc::new(LimitStore::open(&dir.join(LIMITS_FILE)));
    let tags = (0..40u16)
        .map(|i| tag(&format!("r{i}"), &format!("hr:{i}"), DataType::U16))
        .collect();
    let mut spec = slave("meter", 5, &bus, tags);
    spec.learned_limits = Some(store.clone());
    let r = run(vec![spec], stop);

    let deadline = Instant::now() + Duration::from_secs(10);
    while store.get("meter", BlockKind::Registers).is_none() {
        assert!(Instant::now() < deadline, "no limit learned");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.get("meter", BlockKind::Registers), Some(16));
    let before = r.counters[0].exceptions.load(Ordering::Relaxed);
    assert!(before > 0);
    let reads = reads_over(&r.counters, Duration::from_secs(1)).await;
    assert!(reads[0] >= 9, "{reads:?}");
    assert_eq!(r.counters[0].exceptions.load(Ordering::Relaxed), before);
    // The next start plans with the learned limit from the first read on.
    let again = LimitStore::open(&dir.join(LIMITS_FILE));
    assert_eq!(again.get("meter", BlockKind::Registers), Some(16));
    let _ = r.stop.send(true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_on_the_line_is_counted_as_crc_errors_and_every_read_still_succeeds() {
    let slaves = three_meters();
    let bus_sim = RtuBusSim::start(slaves).expect("bus");
    let (stop, stop_rx) = watch::channel(false);
    let (bus, _owner) = spawn_serial_bus(settings(bus_sim.path()), stop_rx);
    let specs = (1..=3u8)
        .map(|u| {
            slave(
                &format!("meter{u}"),
                u,
                &bus,
                vec![tag("power", "hr:0", DataType::U16)],
            )
        })
        .collect();
    let r = run(specs, stop);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bus_sim.inject_noise(20);
    let deadline = Instant::now() + Duration::from_secs(10);
    while bus_sim.noise_sent() < 20 {
        assert!(Instant::now() < deadline, "noise was not sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let crc = bus.counters().crc_errors.load(Ordering::Relaxed);
    assert!(crc >= 20, "{crc} CRC errors counted");
    let reads = reads_over(&r.counters, Duration::from_secs(1)).await;
    assert!(reads.iter().all(|n| *n >= 7), "{reads:?}");
    assert!(r
        .counters
        .iter()
        .all(|c| c.connected.load(Ordering::Relaxed)));
    let _ = r.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_the_bus_to_the_right_slave() {
    let slaves = three_meters();
    let sims: Vec<ModbusSim> = slaves.iter().map(|(_, s)| s.clone()).collect();
    let bus_sim = RtuBusSim::start(slaves).expect("bus");
    let (stop, stop_rx) = watch::channel(false);
    let (bus, _owner) = spawn_serial_bus(settings(bus_sim.path()), stop_rx);
    let poller = DevicePoller::new(slave(
        "meter3",
        3,
        &bus,
        vec![tag("setpoint", "hr:10", DataType::U32)],
    ))
    .expect("plan");
    let handle = poller.handle();
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(poller.run(tx, stop.subscribe()));
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("connected")
        .expect("running");
    handle
        .write("setpoint", &Value::U32(0x0001_0002), Duration::from_secs(2))
        .await
        .expect("written");
    assert_eq!(sims[2].registers(Area::HoldingRegister, 10, 2), vec![1, 2]);
    assert_eq!(sims[0].registers(Area::HoldingRegister, 10, 2), vec![0, 0]);
    let _ = stop.send(true);
}

#[tokio::test]
async fn an_rtu_device_behind_a_device_server_is_read_over_tcp() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sim = ModbusSim::detached();
    sim.set_registers(Area::InputRegister, 4, &[0x4148, 0x0000]);
    let server = tokio_modbus_rtu_over_tcp(listener, sim);
    let spec = behind_device_server(addr, vec![tag("temp", "ir:4", DataType::F32)]);
    let (stop, _) = watch::channel(false);
    let mut r = run(vec![spec], stop);
    let b = tokio::time::timeout(Duration::from_secs(5), r.rx.recv())
        .await
        .expect("a batch")
        .expect("running");
    assert_eq!(b.samples[0].value, Some(Value::F32(12.5)));
    let _ = r.stop.send(true);
    server.abort();
}

#[tokio::test]
async fn the_read_that_proves_an_rtu_device_answers_is_a_sample_too() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let sim = ModbusSim::detached();
    // Each read serves the next value of a counter, so a discarded answer leaves a hole.
    sim.set_read_hook(Some(std::sync::Arc::new(|bank, _, _, _| {
        let next = bank.register(Area::HoldingRegister, 0) + 1;
        bank.set_registers(Area::HoldingRegister, 0, &[next]);
    })));
    let server = tokio_modbus_rtu_over_tcp(listener, sim.clone());
    let spec = behind_device_server(addr, vec![tag("count", "hr:0", DataType::U16)]);
    let (stop, _) = watch::channel(false);
    let mut r = run(vec![spec], stop);
    let mut values = Vec::new();
    while values.len() < 3 {
        let b = tokio::time::timeout(Duration::from_secs(5), r.rx.recv())
            .await
            .expect("a batch")
            .expect("running");
        values.extend(b.samples.iter().filter_map(|s| s.value.clone()));
    }
    assert_eq!(
        values[..3],
        [Value::U16(1), Value::U16(2), Value::U16(3)],
        "the first answer (the connection probe) is the first sample"
    );
    let _ = r.stop.send(true);
    server.abort();
}

/// Device "meter", unit 9, behind the device server at `addr`.
fn behind_device_server(addr: std::net::SocketAddr, tags: Vec<TagSpec>) -> DeviceSpec {
    DeviceSpec {
        name: DeviceId("meter".into()),
        transport: Transport::RtuOverTcp,
        host: addr.ip().to_string(),
        port: addr.port(),
        unit_id: 9,
        timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
        limits: PlanLimits::default(),
        tags,
        learned_limits: None,
    }
}

/// A device server: RTU frames over TCP, answered by `sim` for unit 9 only.
fn tokio_modbus_rtu_over_tcp(
    listener: tokio::net::TcpListener,
    sim: ModbusSim,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = edge_sim::serve_rtu_over_tcp(listener, vec![(9, sim)]).await;
    })
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("rtu-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
