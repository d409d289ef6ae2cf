//! Serial buses and the commissioning probe, end to end: the agent polls a simulated RS-485 bus
//! of several slaves on a pseudo-terminal and their values (and a board input) reach the
//! broker; `edge-agent modbus read|write` works over TCP and RTU and shows every byte order;
//! every shipped board config passes `check`.

use std::time::Duration;

use edge_modbus::Area;
use edge_sim::{ModbusSim, RtuBusSim};

use crate::common::*;
use crate::support::agent::run_cli_with;
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

async fn cli(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        run_cli_with(&bin(), &args, &[], Duration::from_secs(30)).expect("the probe runs")
    })
    .await
    .expect("the probe's thread")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_polls_every_slave_of_a_serial_bus_and_publishes_the_board_inputs() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let slaves: Vec<(u8, ModbusSim)> = (1..=3u8)
        .map(|u| {
            let sim = ModbusSim::detached();
            sim.set_registers(Area::HoldingRegister, 0, &[u16::from(u) * 11]);
            (u, sim)
        })
        .collect();
    let bus = RtuBusSim::start(slaves).expect("bus");
    let dir = TestDir::new();
    let mut config = format!(
        r#"[gateway]
id = "gw-test"
data_dir = "{}"
enterprise = "acme"
site = "plant1"
area = "packaging"
line = "line1"

[[northbound]]
name = "mes"
url = "mqtt://127.0.0.1:{}"
client_id = "edge-gw-rtu-mes"
reconnect_min_ms = 200
reconnect_max_ms = 1000

[board]
model = "test bench"
input_device = "cabinet"

[[board.serial]]
name = "rs485"
path = "{}"
baud = 115200

[board.status_led]
chip = "sim"
line = 1

[[board.input]]
name = "part_present"
chip = "sim"
line = 2
"#,
        dir.path().join("data").display(),
        broker.port(),
        bus.path()
    );
    for u in 1..=3 {
        config.push_str(&format!(
            "\n[[device]]\nname = \"meter{u}\"\nprotocol = \"modbus-rtu\"\nserial = \"rs485\"\nunit_id = {u}\npoll_interval_ms = 100\ntimeout_ms = 200\n  [[device.tag]]\n  name = \"power\"\n  address = \"hr:0\"\n  type = \"u16\"\n  heartbeat_s = 1\n"
        ));
    }
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "rtu-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    let topics: Vec<String> = (1..=3).map(|u| format!("{ROOT}/meter{u}/power")).collect();
    let input = format!("{ROOT}/cabinet/part_present");
    let arrived = collector
        .wait_for(
            |msgs| {
                topics.iter().enumerate().all(|(i, t)| {
                    msgs.iter().any(|m| {
                        m.topic == *t
                            && m.json().is_some_and(|v| {
                                v["value"] == serde_json::json!((i as u64 + 1) * 11)
                                    && v["quality"] == "good"
                            })
                    })
                }) && msgs
                    .iter()
                    .any(|m| m.topic == input && m.json().is_some_and(|v| v["value"] == false))
            },
            Duration::from_secs(20),
        )
        .await;
    if let Err(e) = arrived {
        panic!("{e}\nagent log:\n{}", agent.log());
    }
    agent.terminate().expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reads_and_writes_over_tcp_and_shows_every_byte_order() {
    let plc = start_plc().await;
    // 12.5 as f32 (0x41480000), word-swapped as many meters store it.
    plc.set_registers(Area::HoldingRegister, 10, &[0x0000, 0x4148]);
    let target = format!("127.0.0.1:{}", plc.local_addr().port());
    let out = cli(strings(&[
        "modbus",
        "read",
        "--tcp",
        &target,
        "--unit",
        "1",
        "--address",
        "hr:10",
        "--count",
        "2",
        "--type",
        "f32",
        "--all-orders",
    ]))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = text
        .lines()
        .find(|l| l.starts_with("type"))
        .expect("a table");
    assert!(
        ["ABCD", "CDAB", "BADC", "DCBA"]
            .iter()
            .all(|o| header.contains(o)),
        "{text}"
    );
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.starts_with("f32"))
        .expect("an f32 row")
        .split_whitespace()
        .collect();
    assert_eq!(row.get(2), Some(&"12.5"), "CDAB column:\n{text}");

    let out = cli(strings(&[
        "modbus",
        "write",
        "--tcp",
        &target,
        "--address",
        "hr:20",
        "--type",
        "u32",
        "--value",
        "65539",
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(plc.registers(Area::HoldingRegister, 20, 2), vec![1, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_reads_and_writes_a_slave_on_a_serial_bus() {
    let meter = ModbusSim::detached();
    meter.set_registers(Area::InputRegister, 0, &[0x4148, 0x0000]);
    let other = ModbusSim::detached();
    let bus = RtuBusSim::start(vec![(7, meter.clone()), (8, other.clone())]).expect("bus");
    let out = cli(strings(&[
        "modbus",
        "read",
        "--serial",
        bus.path(),
        "--baud",
        "19200",
        "--parity",
        "even",
        "--unit",
        "7",
        "--address",
        "ir:0",
        "--type",
        "f32",
    ]))
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("f32 Abcd: 12.5"), "{text}");

    let out = cli(strings(&[
        "modbus",
        "write",
        "--serial",
        bus.path(),
        "--unit",
        "8",
        "--address",
        "coil:3",
        "--type",
        "bool",
        "--value",
        "true",
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(other.bits(Area::Coil, 3, 1), vec![true]);
    assert_eq!(meter.bits(Area::Coil, 3, 1), vec![false]);

    // A unit nobody answers for is a timeout, reported and exit 1.
    let out = cli(strings(&[
        "modbus",
        "read",
        "--serial",
        bus.path(),
        "--unit",
        "9",
        "--address",
        "hr:0",
        "--timeout-ms",
        "200",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer"));
}

#[test]
fn every_board_config_passes_check() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
    for name in [
        "revpi-connect.toml",
        "rpi-cm4-rs485-hat.toml",
        "siemens-iot2050.toml",
        "moxa-uc8100-uc8200.toml",
        "generic-x86.toml",
    ] {
        let path = dir.join(name);
        let out = run_cli_with(
            &bin(),
            &["check", "-c", path.to_str().expect("utf-8 path")],
            &[],
            Duration::from_secs(60),
        )
        .expect("check runs");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("serial "),
            "{name} lists its serial ports:\n{text}"
        );
    }
}
