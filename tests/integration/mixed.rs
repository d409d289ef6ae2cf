//! One line of two PLCs behind one agent: a Modbus PLC and an OPC UA server, a UNS northbound
//! and a Sparkplug B northbound on a real Mosquitto. The OPC UA server is a device like the
//! Modbus one everywhere: a Sparkplug device with births, data, death and rebirth; a target
//! of DCMD and UNS `_set` writes (read back from the server), with read-only nodes refused; and
//! the source of MES machines, alone or mixed with the Modbus PLC's tags.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};
use edge_opcua::opcua::types::{StatusCode, Variant};
use edge_sim::opcua::{OpcUaSim, OpcUaSimOptions};
use edge_sim::ModbusSim;
use mes_bridge::sparkplug::proto::payload::{metric, Metric};
use serde_json::{json, Value as Json};

use crate::common::*;
use crate::mes::agent_taking_commands;
use crate::sparkplug::{aliases, decode_all, publish_cmd, Sp, GROUP, NODE};
use crate::support::mqtt::Received;
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

const UA: &str = "line_ua";
const PLC: &str = "plc";
const WAIT: Duration = Duration::from_secs(30);

/// The OPC UA server, its plant standing still (values change only when a test sets them).
async fn start_ua(dir: &TestDir) -> OpcUaSim {
    let mut options = OpcUaSimOptions::new(dir.join("server-pki"));
    options.tick = Duration::from_secs(3600);
    OpcUaSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), options)
        .await
        .expect("simulated OPC UA server starts")
}

/// The OPC UA device's tags: the server's own types except `good_count`, a counter, which
/// needs its width; `temperature` writable in the config but read-only on the server.
const UA_TAGS: &[(&str, &str, &[&str])] = &[
    ("good_count", "Filler.GoodCount", &["type = \"u32\""]),
    ("scrap_count", "Filler.ScrapCount", &[]),
    (
        "temperature",
        "Filler.Temperature",
        &["unit = \"degC\"", "writable = true"],
    ),
    ("work_order", "Filler.WorkOrder", &[]),
    ("state", "Filler.State", &[]),
    ("running", "Filler.Running", &[]),
    ("setpoint", "Filler.Setpoint", &["writable = true"]),
    ("speed", "Filler.Speed", &[]),
];

/// A UNS northbound, a Sparkplug northbound, the Modbus PLC and the OPC UA server, then
/// `machines` as written.
fn line_config(
    data: &Path,
    broker: u16,
    plc: &ModbusSim,
    endpoint: &str,
    machines: &str,
) -> String {
    let modbus = device(
        PLC,
        plc.local_addr().port(),
        50,
        vec![
            TagToml {
                extra: vec!["deadband = 0".into()],
                ..tag("product", "hr:10", "string:16")
            },
            TagToml {
                extra: vec!["deadband = 0".into()],
                ..tag("scrap", "hr:2", "u16")
            },
        ],
    );
    let mut s = config_toml(data, broker, "per-tag", "", &[modbus]);
    let _ = writeln!(
        s,
        "[[northbound]]\nname = \"scada\"\nurl = \"mqtt://127.0.0.1:{broker}\"\nclient_id = \"edge-gw-test-scada\"\nformat = \"sparkplug-b\"\ngroup_id = \"{GROUP}\"\nreconnect_min_ms = 200\nreconnect_max_ms = 1000\n"
    );
    let _ = writeln!(
        s,
        "[[device]]\nname = \"{UA}\"\nprotocol = \"opcua\"\nendpoint = \"{endpoint}\"\npublishing_interval_ms = 100\ntimeout_ms = 2000\nkeep_alive_ms = 1000\nbackoff_min_ms = 200\nbackoff_max_ms = 1000"
    );
    for (name, path, extra) in UA_TAGS {
        let _ = writeln!(
            s,
            "  [[device.tag]]\n  name = \"{name}\"\n  address = \"ns=2;s={path}\""
        );
        for line in *extra {
            let _ = writeln!(s, "  {line}");
        }
    }
    s.push('\n');
    s.push_str(machines);
    s
}

fn set_string(plc: &ModbusSim, at: u16, text: &str) {
    put(
        plc,
        Area::HoldingRegister,
        at,
        DataType::String(16),
        ByteOrder::Abcd,
        &Value::String(text.into()),
    );
}

/// Sends a UNS command and returns its answer.
async fn command(c: &Collector, topic: &str, payload: Json) -> Json {
    crate::mes::command(c, topic, payload.to_string()).await
}

/// Waits (bounded) until the server's variable holds `want`.
async fn wait_value(sim: &OpcUaSim, path: &str, want: &Variant) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = sim.value(path).await;
        if now.as_ref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} is {now:?}, never {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Sparkplug datatype of each metric of a birth, by name.
fn datatypes(birth: &Sp) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = birth
        .payload
        .metrics
        .iter()
        .filter_map(|m| Some((m.name.clone()?, m.datatype?)))
        .collect();
    v.sort();
    v
}

/// The births of the OPC UA device, in arrival order.
fn ua_births(msgs: &[Received]) -> Vec<Sp> {
    decode_all(msgs)
        .into_iter()
        .filter(|m| m.is("DBIRTH", Some(UA)))
        .collect()
}

fn complete_birth(birth: &Sp) -> bool {
    birth.payload.metrics.len() == UA_TAGS.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opcua_server_is_a_sparkplug_device_and_takes_dcmd_and_set_writes_like_a_modbus_plc() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let dir = TestDir::new();
    let sim = start_ua(&dir).await;
    let plc = start_plc().await;
    let path = dir.write_config(&line_config(
        &dir.data_dir(),
        broker.port(),
        &plc,
        &sim.endpoint_url(),
        "",
    ));
    let c = Collector::start(
        broker.port(),
        "mixed-sp",
        &["spBv1.0/#", &format!("{ROOT}/#")],
    )
    .await
    .expect("subscriber connects");
    let mut agent = agent_taking_commands(&c, &path).await;

    // Births: every configured tag, each with the datatype of the server's variable (or the
    // configured type), once the first values have told the gateway the server's types.
    c.wait_for(|m| ua_births(m).iter().any(complete_birth), WAIT)
        .await
        .unwrap_or_else(|e| panic!("no complete DBIRTH for {UA}: {e}\n{}", agent.log()));
    let msgs = c.messages();
    let births = ua_births(&msgs);
    let birth = births
        .iter()
        .find(|b| complete_birth(b))
        .expect("complete birth");
    let types: Vec<(String, u32)> = [
        ("good_count", 7),   // UInt32, configured
        ("running", 11),     // Boolean
        ("scrap_count", 7),  // UInt32
        ("setpoint", 10),    // Double
        ("speed", 9),        // Float
        ("state", 3),        // Int32 (an enumeration)
        ("temperature", 10), // Double
        ("work_order", 12),  // String
    ]
    .into_iter()
    .map(|(n, t)| (n.to_owned(), t))
    .collect();
    assert_eq!(datatypes(birth), types);
    assert!(
        birth
            .payload
            .metrics
            .iter()
            .all(|m| mes_bridge::sparkplug::metric_quality(m) == Some(192)),
        "every metric is born good: {:#?}",
        birth.payload
    );
    let alias = aliases(birth);
    assert_eq!(alias.len(), UA_TAGS.len(), "every metric has an alias");

    // Data: a change on the server arrives as DDATA by alias, a UInt32 in long_value.
    assert!(
        sim.set("Filler.GoodCount", Variant::UInt32(41), StatusCode::Good)
            .await
    );
    let good_alias = alias["good_count"];
    let has_41 = |m: &[Received]| {
        decode_all(m).iter().any(|s| {
            s.is("DDATA", Some(UA))
                && s.payload.metrics.iter().any(|x| {
                    x.alias == Some(good_alias) && x.value == Some(metric::Value::LongValue(41))
                })
        })
    };
    c.wait_for(has_41, WAIT)
        .await
        .expect("DDATA carries the new count");

    // DCMD: a read-only metric is refused and nothing is written; the valid one sent after it
    // on the same connection lands, so the refused one was handled before it.
    let dcmd = format!("spBv1.0/{GROUP}/DCMD/{NODE}/{UA}");
    let by_alias = |name: &str, value: metric::Value| Metric {
        alias: Some(alias[name]),
        value: Some(value),
        ..Metric::default()
    };
    publish_cmd(
        &c,
        &dcmd,
        vec![by_alias("speed", metric::Value::FloatValue(1.0))],
    )
    .await;
    publish_cmd(
        &c,
        &dcmd,
        vec![by_alias("setpoint", metric::Value::DoubleValue(42.5))],
    )
    .await;
    wait_value(&sim, "Filler.Setpoint", &Variant::Double(42.5)).await;
    assert_eq!(
        sim.value("Filler.Speed").await,
        Some(Variant::Float(120.0)),
        "a DCMD to a read-only tag writes nothing"
    );

    // UNS `_set`: the same write path and validation.
    let set = |tag: &str| format!("{ROOT}/{UA}/{tag}/_set");
    let a = command(
        &c,
        &set("setpoint"),
        json!({"request_id": "s1", "value": 17.25}),
    )
    .await;
    assert_eq!(a["status"], "ok", "{a}");
    wait_value(&sim, "Filler.Setpoint", &Variant::Double(17.25)).await;
    let a = command(&c, &set("speed"), json!({"request_id": "s2", "value": 80})).await;
    assert_eq!(a["status"], "rejected", "{a}");
    assert!(
        a["error"]
            .as_str()
            .is_some_and(|e| e.contains("not writable")),
        "{a}"
    );
    // Writable in the config but read-only on the server: the server's refusal, in words.
    let before = sim.value("Filler.Temperature").await;
    let a = command(
        &c,
        &set("temperature"),
        json!({"request_id": "s3", "value": 99.0}),
    )
    .await;
    assert_ne!(a["status"], "ok", "{a}");
    let error = a["error"].as_str().unwrap_or("");
    assert!(
        error.contains("Bad") || error.contains("not writable"),
        "the answer names the refusal: {a}"
    );
    assert_eq!(sim.value("Filler.Temperature").await, before);
    // A string for a Double: refused before anything is sent.
    let a = command(
        &c,
        &set("setpoint"),
        json!({"request_id": "s4", "value": "hot"}),
    )
    .await;
    assert_eq!(a["status"], "rejected", "{a}");
    assert_eq!(
        sim.value("Filler.Setpoint").await,
        Some(Variant::Double(17.25))
    );

    // The server goes away: DDEATH for its device alone; back: a fresh DBIRTH.
    let deaths = |m: &[Received]| {
        decode_all(m)
            .iter()
            .filter(|s| s.is("DDEATH", Some(UA)))
            .count()
    };
    assert_eq!(deaths(&c.messages()), 0);
    sim.stop().await;
    c.wait_for(|m| deaths(m) == 1, WAIT)
        .await
        .expect("DDEATH when the server stops");
    let births_before = ua_births(&c.messages()).len();
    sim.restart().await.expect("server restarts");
    c.wait_for(
        |m| {
            let b = ua_births(m);
            b.len() > births_before && b.last().is_some_and(complete_birth)
        },
        WAIT,
    )
    .await
    .expect("a fresh DBIRTH when the server is back");
    assert_eq!(
        deaths(&c.messages()),
        1,
        "one death for one outage: {}",
        agent.log()
    );
    let msgs = c.messages();
    assert_eq!(
        decode_all(&msgs)
            .iter()
            .filter(|s| s.is("DDEATH", Some(PLC)))
            .count(),
        0,
        "the Modbus PLC stays alive"
    );
    assert!(agent.is_running());
    agent.terminate().expect("agent stops");
}

const MACHINES: &str = r#"
[[machine]]
name = "filler_ua"
device = "line_ua"
work_order_tag = "work_order"
good_count_tag = "good_count"
state_tag = "state"

  [[machine.state]]
  value = 1
  state = "running"

  [[machine.state]]
  value = 2
  state = "changeover"

  [[machine.state]]
  value = 3
  state = "down"
  reason_code = 180100

# Work order, good count and state from the OPC UA server; product and scrap from the PLC.
[[machine]]
name = "mixed"
device = "plc"
work_order_tag = "line_ua/work_order"
product_tag = "product"
good_count_tag = "line_ua/good_count"
scrap_count_tag = "scrap"
state_tag = "line_ua/state"

  [[machine.state]]
  value = 1
  state = "running"

  [[machine.state]]
  value = 2
  state = "changeover"

  [[machine.state]]
  value = 3
  state = "down"
  reason_code = 180100
"#;

/// The MES events of `machine`, in arrival order: (kind, payload).
fn events(msgs: &[Received], machine: &str) -> Vec<(String, Json)> {
    let prefix = format!("{ROOT}/{machine}/_mes/");
    msgs.iter()
        .filter_map(|m| {
            let kind = m.topic.strip_prefix(&prefix)?;
            if kind.starts_with("cmd/") || kind.ends_with("/current") {
                return None;
            }
            Some((kind.to_owned(), m.json()?))
        })
        .collect()
}

fn of_kind(msgs: &[Received], machine: &str, kind: &str) -> Vec<Json> {
    events(msgs, machine)
        .into_iter()
        .filter(|(k, _)| k == kind)
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_on_opcua_tags_alone_or_mixed_with_a_modbus_plc_give_orders_counts_and_states() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let dir = TestDir::new();
    let sim = start_ua(&dir).await;
    let plc = start_plc().await;
    let path: PathBuf = dir.write_config(&line_config(
        &dir.data_dir(),
        broker.port(),
        &plc,
        &sim.endpoint_url(),
        MACHINES,
    ));
    let check = crate::support::run_cli(&bin(), &["check", "-c", &path.display().to_string()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let c = Collector::start(broker.port(), "mixed-mes", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");

    // The plant at rest: order WO-2026-0001, changeover (state 2), no parts yet.
    for m in ["filler_ua", "mixed"] {
        c.wait_for(
            |msgs| {
                !of_kind(msgs, m, "workorder/start").is_empty()
                    && !of_kind(msgs, m, "state/change").is_empty()
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{m}: no start and state: {e}\n{}", agent.log()));
    }
    let msgs = c.messages();
    let start = &of_kind(&msgs, "filler_ua", "workorder/start")[0];
    assert_eq!(start["external_work_order_id"], "WO-2026-0001");
    let state = &of_kind(&msgs, "mixed", "state/change")[0];
    assert_eq!(state["state"], "changeover", "{state}");

    // Production: the product (from the PLC) is set, the line runs, parts are counted on both
    // sides; then the server's work order changes.
    set_string(&plc, 10, "P-7");
    assert!(
        sim.set("Filler.State", Variant::Int32(1), StatusCode::Good)
            .await
    );
    c.wait_for(
        |m| {
            of_kind(m, "mixed", "state/change")
                .iter()
                .any(|v| v["state"] == "running")
        },
        WAIT,
    )
    .await
    .expect("running");
    assert!(
        sim.set("Filler.GoodCount", Variant::UInt32(5), StatusCode::Good)
            .await
    );
    put(
        &plc,
        Area::HoldingRegister,
        2,
        DataType::U16,
        ByteOrder::Abcd,
        &Value::U16(2),
    );
    let counted = |m: &[Received], machine: &str| -> (u64, u64) {
        of_kind(m, machine, "production/count")
            .iter()
            .fold((0, 0), |(g, s), v| {
                (
                    g + v["good_quantity"].as_u64().unwrap_or(0),
                    s + v["bad_quantity"].as_u64().unwrap_or(0),
                )
            })
    };
    c.wait_for(
        |m| counted(m, "mixed") == (5, 2) && counted(m, "filler_ua") == (5, 0),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| {
        let m = c.messages();
        panic!(
            "counts: mixed {:?}, filler_ua {:?}: {e}",
            counted(&m, "mixed"),
            counted(&m, "filler_ua")
        )
    });
    assert!(
        sim.set("Filler.WorkOrder", Variant::from("WO-B"), StatusCode::Good)
            .await
    );
    for m in ["filler_ua", "mixed"] {
        c.wait_for(
            |msgs| {
                !of_kind(msgs, m, "workorder/complete").is_empty()
                    && of_kind(msgs, m, "workorder/start").len() >= 2
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{m}: no changeover: {e}"));
    }
    let msgs = c.messages();
    let done = &of_kind(&msgs, "mixed", "workorder/complete")[0];
    assert_eq!(done["external_work_order_id"], "WO-2026-0001", "{done}");
    assert_eq!(done["external_product_id"], "P-7", "{done}");
    assert_eq!(done["good_quantity"], 5, "{done}");
    assert_eq!(done["bad_quantity"], 2, "{done}");
    let done = &of_kind(&msgs, "filler_ua", "workorder/complete")[0];
    assert_eq!(done["external_work_order_id"], "WO-2026-0001", "{done}");
    assert_eq!(done["good_quantity"], 5, "{done}");
    let next = &of_kind(&msgs, "mixed", "workorder/start")[1];
    assert_eq!(next["external_work_order_id"], "WO-B", "{next}");

    // A jam: the enumeration's value 3 maps to down with its reason code.
    assert!(
        sim.set("Filler.State", Variant::Int32(3), StatusCode::Good)
            .await
    );
    c.wait_for(
        |m| {
            of_kind(m, "filler_ua", "state/change")
                .iter()
                .any(|v| v["state"] == "down")
        },
        WAIT,
    )
    .await
    .expect("down");
    let msgs = c.messages();
    let down = of_kind(&msgs, "filler_ua", "state/change")
        .into_iter()
        .find(|v| v["state"] == "down")
        .expect("down");
    assert_eq!(down["reason_code"], 180100, "{down}");
    assert_eq!(down["previous_state"], "running", "{down}");
    // Events of the two devices' samples never share an id.
    let mut ids: Vec<String> = ["filler_ua", "mixed"]
        .iter()
        .flat_map(|m| events(&msgs, m))
        .filter_map(|(_, v)| v["event_id"].as_str().map(str::to_owned))
        .collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "event ids are unique");
    assert!(agent.is_running());
    agent.terminate().expect("agent stops");
}
