//! The device task against a simulated PLC on a real socket: reads become samples, writes reach
//! the PLC's registers exactly, and refused or impossible writes reach nothing.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use edge_driver::{ReportRule, Scaling, WriteError};
use edge_modbus::plan::PlanLimits;
use edge_modbus::poller::{DevicePoller, DeviceSpec, TagSpec};
use edge_modbus::{Area, ByteOrder};
use edge_model::{Batch, DataType, DeviceId, Quality, TagName, Value};
use edge_sim::ModbusSim;
use tokio::sync::{mpsc, watch};

fn tag(name: &str, address: &str, dt: DataType, order: ByteOrder, writable: bool) -> TagSpec {
    TagSpec {
        name: TagName(name.into()),
        address: address.parse().expect("address"),
        data_type: dt,
        byte_order: order,
        scaling: Scaling::IDENTITY,
        report: ReportRule {
            deadband: None,
            heartbeat: None,
        },
        interval: Duration::from_millis(50),
        writable,
    }
}

fn spec(port: u16, tags: Vec<TagSpec>) -> DeviceSpec {
    DeviceSpec {
        transport: edge_modbus::link::Transport::Tcp,
        learned_limits: None,
        name: DeviceId("press".into()),
        host: "127.0.0.1".into(),
        port,
        unit_id: 1,
        timeout: Duration::from_millis(300),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        limits: PlanLimits::default(),
        tags,
    }
}

async fn next_batch(rx: &mut mpsc::Receiver<Batch>) -> Batch {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a batch within 5 s")
        .expect("poller running")
}

#[tokio::test]
async fn writes_reach_the_plc_in_the_tags_type_and_byte_order_and_bad_ones_reach_nothing() {
    let sim = ModbusSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .expect("sim");
    let tags = vec![
        tag("setpoint", "hr:10", DataType::F32, ByteOrder::Cdab, true),
        tag("enable", "coil:3", DataType::Bool, ByteOrder::Abcd, true),
        tag("mode_bit", "hr:20.4", DataType::Bool, ByteOrder::Abcd, true),
        tag("order", "hr:30", DataType::String(8), ByteOrder::Abcd, true),
        tag("readonly", "hr:40", DataType::U16, ByteOrder::Abcd, false),
    ];
    sim.set_registers(Area::HoldingRegister, 20, &[0b1]);
    let poller = DevicePoller::new(spec(sim.local_addr().port(), tags)).expect("plan");
    let handle = poller.handle();
    let (tx, mut rx) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(poller.run(tx, stop_rx));
    // Connected and polling: the first batch holds every tag.
    let first = next_batch(&mut rx).await;
    assert_eq!(first.samples.len(), 5);
    assert!(first.samples.iter().all(|s| s.quality == Quality::Good));

    let limit = Duration::from_secs(2);
    handle
        .write("setpoint", &Value::F64(123.456), limit)
        .await
        .expect("f32 write");
    assert_eq!(
        sim.registers(Area::HoldingRegister, 10, 2),
        vec![0xE979, 0x42F6]
    );
    handle
        .write("enable", &Value::Bool(true), limit)
        .await
        .expect("coil write");
    assert_eq!(sim.bits(Area::Coil, 3, 1), vec![true]);
    handle
        .write("mode_bit", &Value::Bool(true), limit)
        .await
        .expect("bit write");
    assert_eq!(
        sim.registers(Area::HoldingRegister, 20, 1),
        vec![0b1_0001],
        "other bits kept"
    );
    handle
        .write("order", &Value::String("WO-7".into()), limit)
        .await
        .expect("string write");
    assert_eq!(
        sim.registers(Area::HoldingRegister, 30, 2),
        vec![0x574F, 0x2D37]
    );

    // Refused before the wire: the PLC's registers stay as they were.
    let before = sim.registers(Area::HoldingRegister, 0, 64);
    let requests = sim.request_count();
    for (name, value) in [
        ("readonly", Value::U16(1)),
        ("setpoint", Value::String("hot".into())),
        ("order", Value::String("WO-123456".into())),
        ("nope", Value::U16(1)),
    ] {
        let e = handle.write(name, &value, limit).await.expect_err(name);
        assert!(e.is_rejection(), "{name}: {e}");
    }
    assert_eq!(sim.registers(Area::HoldingRegister, 0, 64), before);
    // Polling goes on meanwhile, but no write request was made: the read log only grows.
    assert!(sim.request_count() >= requests);

    // The PLC refuses: a failure, not a rejection, and named.
    sim.add_exception(
        Area::HoldingRegister,
        10..12,
        edge_sim::ExceptionCode::IllegalDataAddress,
    );
    let e = handle
        .write("setpoint", &Value::F64(1.0), limit)
        .await
        .expect_err("exception");
    assert!(
        matches!(&e, WriteError::Refused(why) if why.contains("IllegalDataAddress")),
        "{e}"
    );
    assert!(!e.is_rejection());
    sim.clear_exceptions();

    // An offline device answers at once instead of queueing the write.
    sim.stop().await;
    let offline = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match handle.write("enable", &Value::Bool(false), limit).await {
                Err(WriteError::Offline) => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await;
    assert!(
        offline.is_ok(),
        "writes to a stopped PLC are answered Offline"
    );

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("poller stops")
        .expect("poller task");
}
