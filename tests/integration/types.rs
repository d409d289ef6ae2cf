//! Every configured type in every byte order arrives at the broker as exactly the value the
//! simulated PLC holds.

use std::collections::BTreeMap;
use std::time::Duration;

use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};

use crate::common::*;
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

fn cases() -> Vec<(DataType, Value)> {
    vec![
        (DataType::I16, Value::I16(-12345)),
        (DataType::U16, Value::U16(54321)),
        (DataType::I32, Value::I32(-123_456_789)),
        (DataType::U32, Value::U32(3_000_000_001)),
        (DataType::I64, Value::I64(-1_234_567_890_123_456_789)),
        (DataType::U64, Value::U64(12_345_678_901_234_567_890)),
        (DataType::F32, Value::F32(123.456)),
        (DataType::F64, Value::F64(-9_876.543_21)),
        (DataType::String(12), Value::String("LINE-7 Wärm".into())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_in_every_byte_order_arrives_as_the_value_the_plc_holds() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();

    let mut tags = Vec::new();
    let mut expected: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut at: u16 = 100;
    for (dt, value) in cases() {
        for order in ByteOrder::ALL {
            let name = format!("{}_{}", dt.to_string().replace(':', ""), order).to_lowercase();
            put(&plc, Area::HoldingRegister, at, dt, order, &value);
            let mut t = tag(&name, &format!("hr:{at}"), &dt.to_string());
            t.extra.push(format!("byte_order = \"{order}\""));
            tags.push(t);
            // The wire form of the value, as JSON would carry it.
            let json = serde_json::to_string(&value).expect("value serialises");
            expected.insert(name, serde_json::from_str(&json).expect("json"));
            at += edge_modbus::codec::register_count(dt) + 3;
        }
    }
    // The same values in input registers, and bits in all three places a bool can live.
    put(
        &plc,
        Area::InputRegister,
        10,
        DataType::F32,
        ByteOrder::Cdab,
        &Value::F32(-0.125),
    );
    tags.push({
        let mut t = tag("ir_f32_cdab", "ir:10", "f32");
        t.extra.push("byte_order = \"CDAB\"".into());
        t
    });
    expected.insert("ir_f32_cdab".into(), serde_json::json!(-0.125));
    plc.set_bits(Area::Coil, 5, &[true]);
    plc.set_bits(Area::DiscreteInput, 9, &[true]);
    plc.set_registers(Area::HoldingRegister, 60, &[0b1000]);
    tags.push(tag("coil_on", "coil:5", "bool"));
    tags.push(tag("di_on", "di:9", "bool"));
    tags.push(tag("coil_off", "coil:6", "bool"));
    tags.push(tag("hr_bit3", "hr:60.3", "bool"));
    tags.push(tag("hr_bit2", "hr:60.2", "bool"));
    for (n, v) in [
        ("coil_on", true),
        ("di_on", true),
        ("coil_off", false),
        ("hr_bit3", true),
        ("hr_bit2", false),
    ] {
        expected.insert(n.into(), serde_json::json!(v));
    }
    // Scaling: raw 2155 × 0.01 + 0.5 = 22.05.
    plc.set_registers(Area::HoldingRegister, 70, &[2155]);
    tags.push({
        let mut t = tag("scaled", "hr:70", "u16");
        t.extra.push("scale = 0.01".into());
        t.extra.push("offset = 0.5".into());
        t
    });

    let config = config_toml(
        &dir.path().join("data"),
        broker.port(),
        "per-tag",
        "",
        &[device("plc1", plc.local_addr().port(), 200, tags.clone())],
    );
    let config_path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "types-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let _agent = AgentProcess::spawn(&bin(), &config_path, &[]).expect("agent starts");

    let names: Vec<String> = tags.iter().map(|t| t.name.clone()).collect();
    collector
        .wait_for(
            |msgs| {
                names.iter().all(|n| {
                    let topic = format!("{ROOT}/plc1/{n}");
                    msgs.iter().any(|m| m.topic == topic)
                })
            },
            Duration::from_secs(20),
        )
        .await
        .expect("every tag arrives");

    let received = collector.json();
    for (name, want) in &expected {
        let topic = format!("{ROOT}/plc1/{name}");
        let (_, msg) = received
            .iter()
            .find(|(t, _)| *t == topic)
            .unwrap_or_else(|| panic!("no message for {topic}"));
        assert_eq!(msg["quality"], "good", "{name}: {msg}");
        assert_eq!(
            &msg["value"], want,
            "{name} decodes to the PLC's value: {msg}"
        );
    }
    let (_, scaled) = received
        .iter()
        .find(|(t, _)| t.ends_with("/plc1/scaled"))
        .expect("scaled tag arrives");
    let v = scaled["value"].as_f64().expect("scaled value is a number");
    assert!((v - 22.05).abs() < 1e-9, "scaled value {v}");
}
