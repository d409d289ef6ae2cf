//! Sparkplug B 3.0 (SPEC §7) end to end: the real agent as an edge node on a real Mosquitto,
//! simulated PLCs as its devices, and a subscriber that decodes every message with the same
//! protobuf types a SCADA host would use. Each test checks one item of the edge
//! node's contract: namespace, births before data, seq, bdSeq and the will, rebirth, DCMD
//! writes, device death and rebirth, primary host STATE, and the historical replay after a
//! broker outage with no sample missing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};
use edge_sim::ModbusSim;
use mes_bridge::sparkplug::proto::payload::{metric, Metric};
use mes_bridge::sparkplug::proto::Payload;
use mes_bridge::sparkplug::{decode_payload, encode_payload, metric_quality};

use crate::common::*;
use crate::support::mqtt::{QoS, Received};
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

pub(crate) const GROUP: &str = "plant1";
pub(crate) const NODE: &str = "gw-test";
const WAIT: Duration = Duration::from_secs(20);

/// A board config whose one northbound is a Sparkplug B edge node (`extra`: more keys).
pub(crate) fn sparkplug_config(
    data: &std::path::Path,
    port: u16,
    extra: &str,
    devices: &[DeviceToml],
) -> String {
    config_toml(data, port, "per-tag", "", devices)
        .replace("name = \"mes\"", "name = \"scada\"")
        .replace(
            "client_id = \"edge-gw-test-mes\"",
            "client_id = \"edge-gw-test-scada\"",
        )
        .replace(
            "batching = \"per-tag\"\n",
            &format!("format = \"sparkplug-b\"\ngroup_id = \"{GROUP}\"\n{extra}\n"),
        )
}

/// One received Sparkplug message, decoded.
#[derive(Debug, Clone)]
pub(crate) struct Sp {
    pub(crate) kind: String,
    pub(crate) device: Option<String>,
    pub(crate) payload: Payload,
}

impl Sp {
    fn seq(&self) -> Option<u64> {
        self.payload.seq
    }

    fn bd_seq(&self) -> Option<u64> {
        self.payload
            .metrics
            .iter()
            .find(|m| m.name.as_deref() == Some("bdSeq"))
            .and_then(|m| match m.value {
                Some(metric::Value::LongValue(v)) => Some(v),
                _ => None,
            })
    }

    pub(crate) fn is(&self, kind: &str, device: Option<&str>) -> bool {
        self.kind == kind && (device.is_none() || self.device.as_deref() == device)
    }
}

/// Every message under `spBv1.0/`, decoded, in arrival order. Panics on a malformed topic or
/// payload: the edge node must never send one.
pub(crate) fn decode_all(msgs: &[Received]) -> Vec<Sp> {
    msgs.iter()
        .filter(|m| m.topic.starts_with("spBv1.0/") && !m.topic.starts_with("spBv1.0/STATE/"))
        .map(|m| {
            let levels: Vec<&str> = m.topic.split('/').collect();
            assert!(
                levels.len() == 4 || levels.len() == 5,
                "topic {} is not spBv1.0/group/TYPE/node[/device]",
                m.topic
            );
            assert_eq!(levels[1], GROUP, "group of {}", m.topic);
            assert_eq!(levels[3], NODE, "edge node of {}", m.topic);
            let kind = levels[2].to_owned();
            let device = levels.get(4).map(|d| (*d).to_owned());
            match (kind.as_str(), &device) {
                ("NBIRTH" | "NDEATH" | "NDATA" | "NCMD", None) => {}
                ("DBIRTH" | "DDEATH" | "DDATA" | "DCMD", Some(_)) => {}
                _ => panic!("topic {} has the wrong shape for {kind}", m.topic),
            }
            assert!(
                !m.retain,
                "Sparkplug messages are never retained: {}",
                m.topic
            );
            let payload = decode_payload(&m.payload)
                .unwrap_or_else(|e| panic!("{} does not decode: {e}", m.topic));
            Sp {
                kind,
                device,
                payload,
            }
        })
        .collect()
}

fn count(msgs: &[Received], kind: &str, device: Option<&str>) -> usize {
    decode_all(msgs)
        .iter()
        .filter(|m| m.is(kind, device))
        .count()
}

/// The aliases of a DBIRTH, by metric name.
pub(crate) fn aliases(birth: &Sp) -> HashMap<String, u64> {
    birth
        .payload
        .metrics
        .iter()
        .filter_map(|m| Some((m.name.clone()?, m.alias?)))
        .collect()
}

fn metric_by_name<'a>(p: &'a Payload, name: &str) -> &'a Metric {
    p.metrics
        .iter()
        .find(|m| m.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no metric {name} in {p:#?}"))
}

/// Asserts that each seq is the previous one plus one (mod 256), starting again at 0 on every
/// NBIRTH, over everything the node published; NDEATH has no seq, and the commands the test
/// itself sent (NCMD, DCMD) are not the node's. Returns how often the seq wrapped.
fn assert_seq_continuous(sp: &[Sp]) -> usize {
    let mut expected: Option<u64> = None;
    let mut wraps = 0;
    for (i, m) in sp.iter().enumerate() {
        match m.kind.as_str() {
            "NCMD" | "DCMD" => {}
            "NDEATH" => {
                assert_eq!(m.seq(), None, "NDEATH carries no seq (message {i})");
                expected = None;
            }
            "NBIRTH" => {
                assert_eq!(m.seq(), Some(0), "NBIRTH has seq 0 (message {i})");
                expected = Some(1);
            }
            _ => {
                let seq = m.seq().unwrap_or_else(|| panic!("{} has no seq", m.kind));
                if let Some(e) = expected {
                    assert_eq!(
                        seq, e,
                        "message {i} ({} {:?}) breaks the seq",
                        m.kind, m.device
                    );
                }
                if seq == 255 {
                    wraps += 1;
                }
                expected = Some((seq + 1) % 256);
            }
        }
    }
    wraps
}

/// Waits for the `n`th NBIRTH (1-based) and returns its bdSeq.
async fn wait_nbirth(collector: &Collector, n: usize) -> u64 {
    collector
        .wait_for(|m| count(m, "NBIRTH", None) >= n, WAIT)
        .await
        .unwrap_or_else(|e| panic!("NBIRTH number {n}: {e}"));
    let sp = decode_all(&collector.messages());
    sp.iter()
        .filter(|m| m.kind == "NBIRTH")
        .nth(n - 1)
        .and_then(Sp::bd_seq)
        .expect("an NBIRTH carries bdSeq")
}

pub(crate) async fn publish_cmd(collector: &Collector, topic: &str, metrics: Vec<Metric>) {
    let payload = encode_payload(&Payload {
        timestamp: Some(edge_model::now_ms()),
        metrics,
        ..Payload::default()
    });
    collector
        .publish(topic, payload, QoS::AtMostOnce, false)
        .await
        .unwrap_or_else(|e| panic!("publishing to {topic}: {e}"));
}

fn rebirth_metric() -> Metric {
    Metric {
        name: Some("Node Control/Rebirth".into()),
        datatype: Some(11),
        value: Some(metric::Value::BooleanValue(true)),
        ..Metric::default()
    }
}

fn pending_of(s: &serde_json::Value, name: &str) -> u64 {
    s["northbounds"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name))
        .and_then(|n| n["pending_records"].as_u64())
        .unwrap_or(u64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_precede_data_in_the_sparkplug_namespace_and_one_seq_runs_on_through_its_wrap() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (a, b) = (start_plc().await, start_plc().await);
    let _pa = counting(&a, Duration::from_millis(5));
    let _pb = counting(&b, Duration::from_millis(5));
    let mut tags = counter_tags();
    tags.push(TagToml {
        extra: vec!["scale = 0.1".into(), "unit = \"degC\"".into()],
        ..tag("temp", "hr:4", "u16")
    });
    tags.push(TagToml {
        extra: vec!["writable = true".into()],
        ..tag("setpoint", "hr:5", "i16")
    });
    let dir = TestDir::new();
    let config = sparkplug_config(
        &dir.data_dir(),
        broker.port(),
        "",
        &[
            device("press_a", a.local_addr().port(), 10, tags.clone()),
            device("press_b", b.local_addr().port(), 10, counter_tags()),
        ],
    );
    let collector = Collector::start(broker.port(), "sp-seq", &["spBv1.0/#"])
        .await
        .expect("subscriber connects");
    let _agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");

    collector
        .wait_for(|m| m.len() >= 700, Duration::from_secs(40))
        .await
        .expect("the seq wraps at least twice");
    let sp = decode_all(&collector.messages());

    // Births first: NBIRTH, then a DBIRTH per device before any of its data.
    assert!(
        sp[0].is("NBIRTH", None),
        "the first message is NBIRTH: {:?}",
        sp[0]
    );
    let nbirth = &sp[0].payload;
    assert_eq!(nbirth.seq, Some(0));
    assert!(nbirth.timestamp.is_some());
    let bd = metric_by_name(nbirth, "bdSeq");
    assert_eq!(bd.datatype, Some(4), "bdSeq is an Int64");
    assert_eq!(
        bd.value,
        Some(metric::Value::LongValue(0)),
        "a fresh node starts at bdSeq 0"
    );
    let rebirth = metric_by_name(nbirth, "Node Control/Rebirth");
    assert_eq!(rebirth.alias, None, "Node Control/Rebirth has no alias");
    assert_eq!(rebirth.value, Some(metric::Value::BooleanValue(false)));
    for dev in ["press_a", "press_b"] {
        let birth = sp.iter().position(|m| m.is("DBIRTH", Some(dev)));
        let data = sp.iter().position(|m| m.is("DDATA", Some(dev)));
        let (Some(birth), Some(data)) = (birth, data) else {
            panic!("{dev} has a DBIRTH and data");
        };
        assert!(birth < data, "{dev}: DBIRTH before DDATA");
    }
    assert!(!sp.iter().any(|m| m.kind == "NDEATH" || m.kind == "DDEATH"));

    // The births describe every tag: name, alias, datatype, value, timestamp, properties.
    let birth_a = sp
        .iter()
        .find(|m| m.is("DBIRTH", Some("press_a")))
        .expect("DBIRTH");
    let birth_b = sp
        .iter()
        .find(|m| m.is("DBIRTH", Some("press_b")))
        .expect("DBIRTH");
    for m in birth_a
        .payload
        .metrics
        .iter()
        .chain(&birth_b.payload.metrics)
    {
        assert!(
            m.name.is_some() && m.alias.is_some() && m.datatype.is_some() && m.timestamp.is_some(),
            "{m:?}"
        );
        assert!(m.value.is_some() || m.is_null == Some(true), "{m:?}");
        assert!(metric_quality(m).is_some(), "births carry Quality: {m:?}");
    }
    let count_m = metric_by_name(&birth_a.payload, "count");
    assert_eq!(count_m.datatype, Some(7), "u32 is UInt32");
    assert!(
        count_m.value.is_none() || matches!(count_m.value, Some(metric::Value::LongValue(_))),
        "UInt32 goes in long_value: {count_m:?}"
    );
    assert_eq!(metric_by_name(&birth_a.payload, "mirror").datatype, Some(6));
    assert_eq!(
        metric_by_name(&birth_a.payload, "setpoint").datatype,
        Some(2)
    );
    let temp = metric_by_name(&birth_a.payload, "temp");
    assert_eq!(temp.datatype, Some(10), "a scaled tag is a Double");
    let props = temp.properties.as_ref().expect("properties");
    assert!(props.keys.iter().any(|k| k == "engUnit"));
    assert!(props.keys.iter().any(|k| k == "scale"));

    // Aliases are unique across the node; data carries aliases only.
    let mut all_aliases = HashSet::new();
    for birth in [birth_a, birth_b] {
        for alias in aliases(birth).values() {
            assert!(all_aliases.insert(*alias), "alias {alias} used twice");
        }
    }
    let mut values = 0;
    for m in sp.iter().filter(|m| m.kind == "DDATA") {
        assert!(m.payload.timestamp.is_some());
        for metric in &m.payload.metrics {
            assert_eq!(metric.name, None, "DATA names no metric");
            assert_eq!(metric.datatype, None, "DATA has no datatype");
            assert!(metric.timestamp.is_some());
            assert!(all_aliases.contains(&metric.alias.expect("an alias")));
            values += 1;
        }
    }
    assert!(values > 0);

    // One seq counter over everything, wrapping from 255 to 0.
    let wraps = assert_seq_continuous(&sp);
    assert!(wraps >= 2, "the seq wrapped twice, saw {wraps}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_is_an_ndeath_with_the_births_bdseq_and_each_new_connection_takes_the_next() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(50));
    let dir = TestDir::new();
    let config = sparkplug_config(
        &dir.data_dir(),
        broker.port(),
        "",
        &[device(
            "mixer",
            plc.local_addr().port(),
            100,
            counter_tags(),
        )],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "sp-will", &["spBv1.0/#"])
        .await
        .expect("subscriber connects");

    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    let bd0 = wait_nbirth(&collector, 1).await;
    assert_eq!(bd0, 0);
    collector
        .wait_for(|m| count(m, "DDATA", Some("mixer")) >= 3, WAIT)
        .await
        .expect("data flows");

    // SIGKILL: the broker publishes the will, an NDEATH with the same bdSeq.
    agent.kill9().expect("SIGKILL");
    collector
        .wait_for(|m| count(m, "NDEATH", None) >= 1, WAIT)
        .await
        .expect("the will is published");
    let sp = decode_all(&collector.messages());
    let death = sp.iter().find(|m| m.kind == "NDEATH").expect("NDEATH");
    assert_eq!(
        death.bd_seq(),
        Some(bd0),
        "the will's bdSeq is the NBIRTH's"
    );
    assert_eq!(death.seq(), None, "NDEATH has no seq");
    assert_eq!(death.payload.metrics.len(), 1, "NDEATH carries bdSeq only");

    // A restart continues from the stored bdSeq.
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent restarts");
    let bd1 = wait_nbirth(&collector, 2).await;
    assert_eq!(bd1, bd0 + 1, "the next connection takes the next bdSeq");
    let seen = collector.len();
    collector
        .wait_for(|m| m.len() >= seen + 3, WAIT)
        .await
        .expect("data flows again");

    // A clean stop publishes NDEATH (the will would not fire on a clean DISCONNECT).
    let status = agent.terminate().expect("clean stop");
    assert!(status.success(), "{status}");
    collector
        .wait_for(|m| count(m, "NDEATH", None) >= 2, WAIT)
        .await
        .expect("NDEATH before the disconnect");
    let sp = decode_all(&collector.messages());
    let deaths: Vec<&Sp> = sp.iter().filter(|m| m.kind == "NDEATH").collect();
    assert_eq!(deaths[1].bd_seq(), Some(bd1));
    let last = sp.last().expect("messages");
    assert_eq!(
        last.kind, "NDEATH",
        "nothing after the NDEATH of a clean stop"
    );
    assert_seq_continuous(&sp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebirth_command_resends_every_birth_with_the_same_bdseq() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (a, b) = (start_plc().await, start_plc().await);
    let _pa = counting(&a, Duration::from_millis(20));
    let _pb = counting(&b, Duration::from_millis(20));
    let dir = TestDir::new();
    let config = sparkplug_config(
        &dir.data_dir(),
        broker.port(),
        "",
        &[
            device("press_a", a.local_addr().port(), 50, counter_tags()),
            device("press_b", b.local_addr().port(), 50, counter_tags()),
        ],
    );
    let collector = Collector::start(broker.port(), "sp-rebirth", &["spBv1.0/#"])
        .await
        .expect("subscriber connects");
    let _agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");
    let bd = wait_nbirth(&collector, 1).await;
    collector
        .wait_for(|m| count(m, "DDATA", None) >= 10, WAIT)
        .await
        .expect("data flows");

    publish_cmd(
        &collector,
        &format!("spBv1.0/{GROUP}/NCMD/{NODE}"),
        vec![rebirth_metric()],
    )
    .await;
    let again = wait_nbirth(&collector, 2).await;
    assert_eq!(again, bd, "a rebirth keeps the bdSeq");
    collector
        .wait_for(|m| count(m, "DBIRTH", None) >= 4, WAIT)
        .await
        .expect("every device is born again");
    collector
        .wait_for(
            |m| {
                let sp = decode_all(m);
                let second = sp.iter().rposition(|m| m.kind == "NBIRTH").unwrap_or(0);
                sp[second..].iter().filter(|m| m.kind == "DDATA").count() >= 4
            },
            WAIT,
        )
        .await
        .expect("data resumes");

    let sp = decode_all(&collector.messages());
    let second = sp
        .iter()
        .rposition(|m| m.kind == "NBIRTH")
        .expect("second NBIRTH");
    for dev in ["press_a", "press_b"] {
        let birth = sp[second..].iter().position(|m| m.is("DBIRTH", Some(dev)));
        let data = sp[second..].iter().position(|m| m.is("DDATA", Some(dev)));
        match (birth, data) {
            (Some(birth), Some(data)) => assert!(birth < data, "{dev}: DBIRTH before its data"),
            (Some(_), None) => {}
            other => panic!("{dev} was not born again: {other:?}"),
        }
    }
    assert_eq!(sp.iter().filter(|m| m.kind == "NDEATH").count(), 0);
    assert_seq_continuous(&sp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcmd_writes_reach_the_plc_and_wrong_types_or_read_only_metrics_write_nothing() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    put(
        &plc,
        Area::HoldingRegister,
        0,
        DataType::U32,
        ByteOrder::Abcd,
        &Value::U32(7),
    );
    plc.set_registers(Area::HoldingRegister, 12, &[1234, 4321]);
    let writable = |name: &str, address: &str, ty: &str, extra: &[&str]| TagToml {
        extra: std::iter::once("writable = true")
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect(),
        ..tag(name, address, ty)
    };
    let tags = vec![
        tag("count", "hr:0", "u32"),
        writable("setpoint", "hr:10", "i16", &[]),
        writable("speed", "hr:11", "u16", &["scale = 0.1"]),
        writable("guard_a", "hr:12", "i16", &[]),
        writable("guard_b", "hr:13", "u16", &["scale = 0.1"]),
    ];
    let dir = TestDir::new();
    let config = sparkplug_config(
        &dir.data_dir(),
        broker.port(),
        "",
        &[device("filler", plc.local_addr().port(), 50, tags)],
    );
    let collector = Collector::start(broker.port(), "sp-dcmd", &["spBv1.0/#"])
        .await
        .expect("subscriber connects");
    let mut agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");
    collector
        .wait_for(|m| count(m, "DBIRTH", Some("filler")) >= 1, WAIT)
        .await
        .expect("the device is born");
    let sp = decode_all(&collector.messages());
    let birth = sp
        .iter()
        .find(|m| m.is("DBIRTH", Some("filler")))
        .expect("DBIRTH");
    let alias = aliases(birth);
    let dcmd = format!("spBv1.0/{GROUP}/DCMD/{NODE}/filler");
    let by_alias = |name: &str, value: metric::Value| Metric {
        alias: Some(alias[name]),
        value: Some(value),
        ..Metric::default()
    };

    // Invalid: a string for an Int16; a read-only metric; a value beyond Int16; a scaled value
    // whose raw register would overflow; a command mixing a valid and an invalid write.
    let invalid = [
        vec![by_alias("guard_a", metric::Value::StringValue("12".into()))],
        vec![by_alias("count", metric::Value::LongValue(5))],
        vec![by_alias("guard_a", metric::Value::IntValue(70_000))],
        vec![by_alias("guard_b", metric::Value::DoubleValue(7000.0))],
        vec![
            by_alias("guard_a", metric::Value::IntValue(1)),
            by_alias("count", metric::Value::LongValue(5)),
        ],
    ];
    for metrics in invalid.clone() {
        publish_cmd(&collector, &dcmd, metrics).await;
    }
    // Valid, sent after them on the same connection: when these land, the others were handled.
    publish_cmd(
        &collector,
        &dcmd,
        vec![
            by_alias("setpoint", metric::Value::IntValue((-5i32) as u32)),
            by_alias("speed", metric::Value::DoubleValue(21.5)),
        ],
    )
    .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let regs = plc.registers(Area::HoldingRegister, 10, 2);
        if regs == [(-5i16) as u16, 215] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the valid DCMD did not reach the PLC: {regs:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        plc.registers(Area::HoldingRegister, 12, 2),
        [1234, 4321],
        "refused commands wrote nothing"
    );
    assert_eq!(
        plc.registers(Area::HoldingRegister, 0, 2),
        [0, 7],
        "the read-only tag is untouched"
    );
    agent
        .wait_log("DCMD written", WAIT)
        .await
        .expect("the write is logged");
    let refused = agent.log().matches("refused; nothing was written").count();
    assert_eq!(
        refused,
        invalid.len(),
        "every invalid DCMD is logged as refused"
    );

    // The new value comes back as data.
    collector
        .wait_for(
            |m| {
                decode_all(m).iter().filter(|m| m.kind == "DDATA").any(|d| {
                    d.payload.metrics.iter().any(|x| {
                        x.alias == Some(alias["setpoint"])
                            && x.value == Some(metric::Value::IntValue((-5i32) as u32))
                    })
                })
            },
            WAIT,
        )
        .await
        .expect("the written value is reported");
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_plc_gets_a_ddeath_and_a_dbirth_when_it_returns_while_the_other_keeps_reporting() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (a, b) = (start_plc().await, start_plc().await);
    let _pa = counting(&a, Duration::from_millis(20));
    let _pb = counting(&b, Duration::from_millis(20));
    let dir = TestDir::new();
    let config = sparkplug_config(
        &dir.data_dir(),
        broker.port(),
        "",
        &[
            device("press_a", a.local_addr().port(), 50, counter_tags()),
            device("press_b", b.local_addr().port(), 50, counter_tags()),
        ],
    );
    let collector = Collector::start(broker.port(), "sp-outage", &["spBv1.0/#"])
        .await
        .expect("subscriber connects");
    let _agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");
    collector
        .wait_for(|m| count(m, "DDATA", Some("press_a")) >= 5, WAIT)
        .await
        .expect("press_a reports");

    a.stop().await;
    collector
        .wait_for(|m| count(m, "DDEATH", Some("press_a")) >= 1, WAIT)
        .await
        .expect("DDEATH for the lost PLC");
    let at_death = collector.len();
    collector
        .wait_for(
            |m| {
                decode_all(&m[at_death..])
                    .iter()
                    .filter(|m| m.is("DDATA", Some("press_b")))
                    .count()
                    >= 5
            },
            WAIT,
        )
        .await
        .expect("the other PLC keeps reporting");
    let sp = decode_all(&collector.messages());
    let death = sp
        .iter()
        .position(|m| m.is("DDEATH", Some("press_a")))
        .expect("DDEATH");
    assert!(
        !sp[death..].iter().any(|m| m.is("DDATA", Some("press_a"))),
        "no data from a dead device"
    );
    let before = sp[..death]
        .iter()
        .rev()
        .find(|m| m.is("DDATA", Some("press_a")))
        .expect("data before");
    assert!(
        before
            .payload
            .metrics
            .iter()
            .all(|m| metric_quality(m) == Some(0) && m.is_null == Some(true)),
        "the samples that killed it are bad and null: {before:?}"
    );

    a.restart().await.expect("the PLC comes back");
    collector
        .wait_for(|m| count(m, "DBIRTH", Some("press_a")) >= 2, WAIT)
        .await
        .expect("DBIRTH when it returns");
    collector
        .wait_for(
            |m| {
                let sp = decode_all(m);
                let reborn = sp
                    .iter()
                    .rposition(|m| m.is("DBIRTH", Some("press_a")))
                    .unwrap_or(0);
                sp[reborn..]
                    .iter()
                    .filter(|m| m.is("DDATA", Some("press_a")))
                    .count()
                    >= 3
            },
            WAIT,
        )
        .await
        .expect("press_a reports again");
    let sp = decode_all(&collector.messages());
    let reborn = sp
        .iter()
        .rposition(|m| m.is("DBIRTH", Some("press_a")))
        .expect("DBIRTH");
    for m in &sp[reborn].payload.metrics {
        assert_eq!(
            metric_quality(m),
            Some(192),
            "the returned device's values are good: {m:?}"
        );
    }
    assert_eq!(
        count(&collector.messages(), "NBIRTH", None),
        1,
        "the node itself stayed up"
    );
    assert_seq_continuous(&sp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_wait_for_the_primary_host_and_its_going_offline_ends_the_session() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(50));
    let dir = TestDir::new();
    let config = sparkplug_config(
        &dir.data_dir(),
        broker.port(),
        "primary_host_id = \"scada-host\"",
        &[device(
            "mixer",
            plc.local_addr().port(),
            100,
            counter_tags(),
        )],
    );
    let collector = Collector::start(broker.port(), "sp-host", &["spBv1.0/#"])
        .await
        .expect("subscriber connects");
    let mut agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");
    agent
        .wait_log("waiting for the primary host", WAIT)
        .await
        .expect("the node waits for its host");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&collector.messages(), "NBIRTH", None),
        0,
        "no birth while the host is unknown"
    );

    let state = "spBv1.0/STATE/scada-host";
    let t0 = edge_model::now_ms();
    let set_state = |online: bool, ts: u64| {
        format!("{{\"online\": {online}, \"timestamp\": {ts}}}").into_bytes()
    };
    collector
        .publish(state, set_state(true, t0), QoS::AtLeastOnce, true)
        .await
        .expect("STATE online");
    let bd0 = wait_nbirth(&collector, 1).await;
    collector
        .wait_for(|m| count(m, "DDATA", None) >= 3, WAIT)
        .await
        .expect("data flows");

    // An older offline is ignored; a newer one ends the session with NDEATH.
    collector
        .publish(state, set_state(false, t0 - 1), QoS::AtLeastOnce, false)
        .await
        .expect("stale STATE");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        count(&collector.messages(), "NDEATH", None),
        0,
        "a stale STATE is ignored"
    );
    collector
        .publish(state, set_state(false, t0 + 1), QoS::AtLeastOnce, true)
        .await
        .expect("STATE offline");
    collector
        .wait_for(|m| count(m, "NDEATH", None) >= 1, WAIT)
        .await
        .expect("NDEATH when the host goes offline");
    let sp = decode_all(&collector.messages());
    assert_eq!(
        sp.iter().find(|m| m.kind == "NDEATH").and_then(Sp::bd_seq),
        Some(bd0)
    );

    // Reconnected, it waits again; the host's return brings births with the next bdSeq.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&collector.messages(), "NBIRTH", None),
        1,
        "no birth while the host is offline"
    );
    collector
        .publish(state, set_state(true, t0 + 2), QoS::AtLeastOnce, true)
        .await
        .expect("STATE online again");
    let bd1 = wait_nbirth(&collector, 2).await;
    assert!(
        bd1 > bd0,
        "a new connection takes a new bdSeq ({bd0} then {bd1})"
    );
    assert_seq_continuous(&decode_all(&collector.messages()));
    assert!(agent.is_running());
}

/// Counts `hr:0` up by one once the agent has certainly read the current value (two more
/// requests answered: the first may have been in flight when it changed), so with `deadband =
/// 0` each value is exactly one stored sample and a missing value is a lost sample.
fn stepping_counter(sim: &ModbusSim, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u32> {
    let sim = sim.clone();
    tokio::spawn(async move {
        let mut value: u32 = 0;
        put(
            &sim,
            Area::HoldingRegister,
            0,
            DataType::U32,
            ByteOrder::Abcd,
            &Value::U32(value),
        );
        let deadline = Instant::now() + Duration::from_secs(180);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let seen = sim.request_count();
            while sim.request_count() < seen + 2 {
                if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                    return value;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            value += 1;
            put(
                &sim,
                Area::HoldingRegister,
                0,
                DataType::U32,
                ByteOrder::Abcd,
                &Value::U32(value),
            );
        }
        value
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_outage_the_backlog_is_replayed_historical_in_order_with_no_sample_missing()
{
    // The broker keeps the subscriber's session and queues QoS 0 for it while it reconnects.
    let mut broker = Mosquitto::start_with_config(
        "persistence true\nautosave_interval 1\nqueue_qos0_messages true\n",
    )
    .expect("mosquitto starts");
    let plc = start_plc().await;
    let stop = Arc::new(AtomicBool::new(false));
    let driver = stepping_counter(&plc, stop.clone());
    let dir = TestDir::new();
    let data = dir.data_dir();
    let config = sparkplug_config(
        &data,
        broker.port(),
        "",
        &[device(
            "press",
            plc.local_addr().port(),
            20,
            vec![TagToml {
                extra: vec!["deadband = 0".into()],
                ..tag("count", "hr:0", "u32")
            }],
        )],
    );
    let collector = Collector::start_persistent(broker.port(), "sp-replay", &["spBv1.0/#"])
        .await
        .expect("subscriber connects");
    let mut agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");
    let bd0 = wait_nbirth(&collector, 1).await;
    collector
        .wait_for(|m| count(m, "DDATA", Some("press")) >= 20, WAIT)
        .await
        .expect("live data flows");

    // The broker must have saved the subscriber's session before it is killed, or whatever
    // the node publishes before the subscriber is back would go nowhere.
    let deadline = Instant::now() + WAIT;
    while !broker.log().contains("Saving in-memory database") {
        assert!(
            Instant::now() < deadline,
            "mosquitto never saved its database"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Frozen first, so the node keeps sending data the broker never reads, then killed: that
    // data is lost on the way, and only the missing proof brings it back.
    let frozen = std::process::Command::new("kill")
        .args(["-STOP", &broker.pid().to_string()])
        .status()
        .expect("kill -STOP runs");
    assert!(frozen.success());
    tokio::time::sleep(Duration::from_millis(800)).await;
    broker.kill().expect("broker killed");
    let before = status(&data).map_or(0, |s| s["store"]["next_id"].as_u64().unwrap_or(0));
    wait_status(&data, WAIT, "records stored during the outage", |s| {
        s["store"]["next_id"].as_u64().unwrap_or(0) >= before + 30 && pending_of(s, "scada") >= 20
    })
    .await;
    broker.restart().expect("broker restarts on the same port");
    let bd1 = wait_nbirth(&collector, 2).await;
    assert!(
        bd1 > bd0,
        "the reconnect takes a new bdSeq ({bd0} then {bd1})"
    );
    collector
        .wait_for(
            |m| {
                decode_all(m).iter().any(|m| {
                    m.kind == "DDATA" && m.payload.metrics.iter().any(|x| x.is_historical.is_none())
                }) && count(m, "NBIRTH", None) >= 2
            },
            WAIT,
        )
        .await
        .expect("live data after the replay");

    // Freeze the counter and let everything be delivered.
    stop.store(true, Ordering::SeqCst);
    let last_value = driver.await.expect("driver ends");
    wait_status(
        &data,
        Duration::from_secs(30),
        "the backlog delivered",
        |s| pending_of(s, "scada") == 0,
    )
    .await;
    collector
        .wait_for(
            |m| {
                decode_all(m).iter().any(|m| {
                    m.kind == "DDATA"
                        && m.payload
                            .metrics
                            .iter()
                            .any(|x| x.value == Some(metric::Value::LongValue(last_value.into())))
                })
            },
            WAIT,
        )
        .await
        .expect("the last value arrives");

    let resent = status(&data)
        .and_then(|s| {
            s["northbounds"]
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == "scada"))
                .and_then(|n| n["resent"].as_u64())
        })
        .unwrap_or(0);
    assert!(resent > 0, "data sent to the frozen broker was sent again");

    let sp = decode_all(&collector.messages());
    let second = sp
        .iter()
        .rposition(|m| m.kind == "NBIRTH")
        .expect("second NBIRTH");
    let births: Vec<usize> = sp
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is("DBIRTH", Some("press")))
        .map(|(i, _)| i)
        .collect();
    assert!(
        births.len() >= 2 && births[1] > second,
        "the device is born again after the NBIRTH"
    );

    // Every value of the counter, in order, duplicates (resent records) aside; the backlog
    // arrives after the new births, marked historical.
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut values: Vec<(u64, u64)> = Vec::new();
    let mut historical = 0;
    for (i, m) in sp
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is("DDATA", Some("press")))
    {
        for x in &m.payload.metrics {
            let (Some(metric::Value::LongValue(v)), Some(ts)) = (&x.value, x.timestamp) else {
                continue;
            };
            if x.is_historical == Some(true) && i > second {
                historical += 1;
            }
            if seen.insert((*v, ts)) {
                values.push((*v, ts));
            }
        }
    }
    eprintln!(
        "replay: {} distinct values, {historical} historical metrics, {} duplicates",
        values.len(),
        sp.iter()
            .filter(|m| m.is("DDATA", Some("press")))
            .map(|m| m.payload.metrics.len())
            .sum::<usize>()
            - values.len()
    );
    assert!(
        historical > 0,
        "the backlog, sent after the new births, is marked historical"
    );
    for pair in values.windows(2) {
        assert!(
            pair[1].0 > pair[0].0 && pair[1].1 >= pair[0].1,
            "order is kept: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let distinct: BTreeSet<u64> = values.iter().map(|(v, _)| *v).collect();
    let (first, last) = (
        *distinct.first().expect("values"),
        *distinct.last().expect("values"),
    );
    assert_eq!(last, u64::from(last_value), "the last value arrived");
    let missing: Vec<u64> = (first..=last).filter(|v| !distinct.contains(v)).collect();
    assert!(
        missing.is_empty(),
        "no sample is missing; missing {missing:?}"
    );
    assert!(
        first <= 1,
        "the first samples arrived too (first value {first})"
    );
    assert_seq_continuous(&sp);
    assert!(agent.is_running());
    agent.terminate().expect("clean stop");
}

/// The bdSeq of the last message of `kind` in `msgs`.
fn last_bd_seq(msgs: &[Received], kind: &str) -> Option<u64> {
    decode_all(msgs)
        .iter()
        .rev()
        .find(|m| m.kind == kind)
        .and_then(Sp::bd_seq)
}

/// A server set of two Mosquitto brokers and a primary host simulated on both: when the host
/// goes offline on the node's server, the node ends its session there with NDEATH and is born
/// on the next server; `Node Control/Next Server` moves it back. Each NDEATH carries the bdSeq
/// of its NBIRTH, and every new session the next bdSeq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_walks_its_server_set_when_the_host_goes_offline_and_on_next_server() {
    let a = Mosquitto::start().expect("server A starts");
    let b = Mosquitto::start().expect("server B starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(50));
    let dir = TestDir::new();
    let config = sparkplug_config(
        &dir.data_dir(),
        a.port(),
        "primary_host_id = \"scada-host\"",
        &[device(
            "mixer",
            plc.local_addr().port(),
            100,
            counter_tags(),
        )],
    )
    .replace(
        &format!("url = \"mqtt://127.0.0.1:{}\"", a.port()),
        &format!(
            "urls = [\"mqtt://127.0.0.1:{}\", \"mqtt://127.0.0.1:{}\"]",
            a.port(),
            b.port()
        ),
    );
    assert!(config.contains("urls = ["), "{config}");
    let host_a = Collector::start(a.port(), "host-a", &["spBv1.0/#"])
        .await
        .expect("host on A");
    let host_b = Collector::start(b.port(), "host-b", &["spBv1.0/#"])
        .await
        .expect("host on B");
    let state = "spBv1.0/STATE/scada-host";
    let t0 = edge_model::now_ms();
    let set_state = |online: bool, ts: u64| {
        format!("{{\"online\": {online}, \"timestamp\": {ts}}}").into_bytes()
    };
    for host in [&host_a, &host_b] {
        host.publish(state, set_state(true, t0), QoS::AtLeastOnce, true)
            .await
            .expect("STATE online");
    }
    let mut agent =
        AgentProcess::spawn(&bin(), &dir.write_config(&config), &[]).expect("agent starts");
    let bd0 = wait_nbirth(&host_a, 1).await;
    host_a
        .wait_for(|m| count(m, "DDATA", None) >= 3, WAIT)
        .await
        .expect("data on A");
    assert_eq!(
        count(&host_b.messages(), "NBIRTH", None),
        0,
        "born on A only"
    );

    // The host goes offline on A: NDEATH there, born on B.
    host_a
        .publish(state, set_state(false, t0 + 1), QoS::AtLeastOnce, true)
        .await
        .expect("STATE offline on A");
    host_a
        .wait_for(|m| count(m, "NDEATH", None) >= 1, WAIT)
        .await
        .expect("NDEATH on A");
    assert_eq!(last_bd_seq(&host_a.messages(), "NDEATH"), Some(bd0));
    let bd1 = wait_nbirth(&host_b, 1).await;
    assert_eq!(bd1, (bd0 + 1) % 256, "a new session, the next bdSeq");
    host_b
        .wait_for(|m| count(m, "DDATA", None) >= 3, WAIT)
        .await
        .expect("data on B");

    // Back online on A, then Next Server from the host on B: NDEATH on B, born on A.
    host_a
        .publish(state, set_state(true, t0 + 2), QoS::AtLeastOnce, true)
        .await
        .expect("STATE online on A");
    let next = Metric {
        name: Some("Node Control/Next Server".into()),
        datatype: Some(11),
        value: Some(metric::Value::BooleanValue(true)),
        ..Metric::default()
    };
    publish_cmd(&host_b, &format!("spBv1.0/{GROUP}/NCMD/{NODE}"), vec![next]).await;
    host_b
        .wait_for(|m| count(m, "NDEATH", None) >= 1, WAIT)
        .await
        .expect("NDEATH on B");
    assert_eq!(last_bd_seq(&host_b.messages(), "NDEATH"), Some(bd1));
    let bd2 = wait_nbirth(&host_a, 2).await;
    assert_eq!(bd2, (bd1 + 1) % 256);
    agent
        .wait_log("Node Control/Next Server: NDEATH, disconnect", WAIT)
        .await
        .expect("logged");
    agent.terminate().expect("agent stops");
    plc.stop().await;
}
