//! The MES tier (SPEC §5, §6) with the real agent, a real Mosquitto and a simulated filler: a
//! scripted production run gives exactly the expected events in order; an agent killed with
//! SIGKILL and restarted counts every part once (consumers deduplicating by `event_id`); a
//! dispatch writes the PLC registers in order and is answered `ok`, a duplicate is answered
//! again without writing; and every bad command is answered `rejected` or `failed` without
//! touching a register.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_modbus::{Area, ByteOrder};
use edge_model::{DataType, Value};
use edge_sim::ModbusSim;
use serde_json::{json, Value as Json};

use crate::common::*;
use crate::support::mqtt::{QoS, Received};
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

const MES: &str = "acme/plant1/packaging/line1/filler/_mes";
const WAIT: Duration = Duration::from_secs(20);

/// The filler's tags: counters, work order, state word, and the dispatch targets.
fn filler_tags(counter_type: &str) -> Vec<TagToml> {
    let changes = |mut t: TagToml| {
        t.extra.push("deadband = 0".into());
        t
    };
    let writable = |mut t: TagToml| {
        t.extra.push("writable = true".into());
        t
    };
    vec![
        changes(tag("good", "hr:0", counter_type)),
        changes(tag("scrap", "hr:2", counter_type)),
        changes(tag("order", "hr:10", "string:16")),
        changes(tag("state", "hr:20", "u16")),
        writable(tag("next_order", "hr:30", "string:16")),
        writable(tag("target", "hr:40", "u32")),
        writable(tag("speed", "hr:42", "u16")),
        writable(tag("new_order", "coil:1", "bool")),
    ]
}

const MACHINE: &str = r#"
[[machine]]
name = "filler"
device = "filler"
work_order_tag = "order"
good_count_tag = "good"
scrap_count_tag = "scrap"
state_tag = "state"

  [[machine.state]]
  value = 1
  state = "running"

  [[machine.state]]
  value = 2
  state = "idle"

  [[machine.state]]
  value = 3
  state = "down"
  reason_code = 180100
  reason = "filler valve jammed"

  [machine.dispatch]
  work_order_tag = "next_order"
  quantity_tag = "target"
  handshake_tag = "new_order"
    [[machine.dispatch.parameter]]
    name = "speed"
    tag = "speed"
"#;

pub(crate) fn write_config(
    dir: &TestDir,
    broker: u16,
    plc: &ModbusSim,
    poll_ms: u64,
    counter: &str,
) -> std::path::PathBuf {
    write_config_on(dir, broker, plc.local_addr().port(), poll_ms, counter, 300)
}

/// [`write_config`] with the PLC at `plc_port` (a proxy in front of it, say) and the device's
/// request timeout.
pub(crate) fn write_config_on(
    dir: &TestDir,
    broker: u16,
    plc_port: u16,
    poll_ms: u64,
    counter: &str,
    timeout_ms: u64,
) -> std::path::PathBuf {
    let filler = DeviceToml {
        timeout_ms,
        ..device("filler", plc_port, poll_ms, filler_tags(counter))
    };
    let base = config_toml(&dir.path().join("data"), broker, "per-tag", "", &[filler]);
    dir.write_config(&format!("{base}{MACHINE}"))
}

fn set_string(sim: &ModbusSim, at: u16, s: &str) {
    put(
        sim,
        Area::HoldingRegister,
        at,
        DataType::String(16),
        ByteOrder::Abcd,
        &Value::String(s.into()),
    );
}

fn string_at(sim: &ModbusSim, at: u16) -> String {
    let regs = sim.registers(Area::HoldingRegister, at, 8);
    match edge_modbus::codec::decode_registers(DataType::String(16), ByteOrder::Abcd, None, &regs) {
        Ok(Value::String(s)) => s,
        other => panic!("not a string at hr:{at}: {other:?}"),
    }
}

/// MES events received so far (commands and answers left out), as `(kind, payload)`.
fn events(msgs: &[Received]) -> Vec<(String, Json)> {
    let prefix = format!("{MES}/");
    msgs.iter()
        .filter_map(|m| {
            let kind = m.topic.strip_prefix(&prefix)?;
            if kind.starts_with("cmd/") {
                return None;
            }
            Some((kind.to_owned(), m.json()?))
        })
        .collect()
}

fn count_of(msgs: &[Received], kind: &str) -> usize {
    events(msgs).iter().filter(|(k, _)| k == kind).count()
}

/// Waits until at least `n` events of `kind` have arrived.
async fn wait_events(c: &Collector, kind: &str, n: usize) {
    c.wait_for(|m| count_of(m, kind) >= n, WAIT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {n} × {kind}: {e}"));
}

/// The fields of an event that the scripted run predicts.
fn summary(kind: &str, v: &Json) -> Json {
    match kind {
        "workorder/start" => json!({"order": v["external_work_order_id"]}),
        "workorder/complete" => {
            json!({"order": v["external_work_order_id"], "good": v["good_quantity"], "scrap": v["bad_quantity"], "quantity": v["quantity"]})
        }
        "workorder/current" => {
            json!({"order": v["external_work_order_id"], "good": v["good_quantity"], "scrap": v["bad_quantity"]})
        }
        "production/count" => {
            json!({"order": v["external_work_order_id"], "good": v["good_quantity"], "scrap": v["bad_quantity"]})
        }
        "state/change" => {
            json!({"state": v["state"], "reason_code": v["reason_code"], "previous": v["previous_state"]})
        }
        "state/current" => json!({"state": v["state"]}),
        other => json!({"unexpected": other}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_production_run_gives_exactly_the_expected_events_in_order() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    plc.update(|bank| {
        bank.set_registers(Area::HoldingRegister, 0, &[0, 100, 0]);
        bank.set_registers(Area::HoldingRegister, 20, &[1]);
    });
    set_string(&plc, 10, "WO-A");
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    let c = Collector::start(broker.port(), "mes-run", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");

    // The first readings announce the order and the state; counters are baselines.
    wait_events(&c, "state/current", 1).await;
    // Parts, good only, then good and scrap in one scan (one read request).
    plc.set_registers(Area::HoldingRegister, 0, &[0, 105]);
    wait_events(&c, "production/count", 1).await;
    plc.set_registers(Area::HoldingRegister, 0, &[0, 110, 0, 1]);
    wait_events(&c, "production/count", 2).await;
    // A stop with a reason, and back to running.
    plc.set_registers(Area::HoldingRegister, 20, &[3]);
    wait_events(&c, "state/change", 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    plc.set_registers(Area::HoldingRegister, 20, &[1]);
    wait_events(&c, "state/change", 3).await;
    plc.set_registers(Area::HoldingRegister, 0, &[0, 120]);
    wait_events(&c, "production/count", 3).await;
    // Work order B, and its first parts.
    set_string(&plc, 10, "WO-B");
    wait_events(&c, "workorder/start", 2).await;
    plc.set_registers(Area::HoldingRegister, 0, &[0, 123]);
    wait_events(&c, "production/count", 4).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let msgs = c.messages();
    let got: Vec<(String, Json)> = events(&msgs)
        .iter()
        .map(|(k, v)| (k.clone(), summary(k, v)))
        .collect();
    let e = |k: &str, v: Json| (k.to_owned(), v);
    let expected = vec![
        e("workorder/start", json!({"order": "WO-A"})),
        e(
            "workorder/current",
            json!({"order": "WO-A", "good": 0, "scrap": 0}),
        ),
        e(
            "state/change",
            json!({"state": "running", "reason_code": 10000, "previous": null}),
        ),
        e("state/current", json!({"state": "running"})),
        e(
            "production/count",
            json!({"order": "WO-A", "good": 5, "scrap": 0}),
        ),
        e(
            "workorder/current",
            json!({"order": "WO-A", "good": 5, "scrap": 0}),
        ),
        e(
            "production/count",
            json!({"order": "WO-A", "good": 5, "scrap": 1}),
        ),
        e(
            "workorder/current",
            json!({"order": "WO-A", "good": 10, "scrap": 1}),
        ),
        e(
            "state/change",
            json!({"state": "down", "reason_code": 180100, "previous": "running"}),
        ),
        e("state/current", json!({"state": "down"})),
        e(
            "state/change",
            json!({"state": "running", "reason_code": 10000, "previous": "down"}),
        ),
        e("state/current", json!({"state": "running"})),
        e(
            "production/count",
            json!({"order": "WO-A", "good": 10, "scrap": 0}),
        ),
        e(
            "workorder/current",
            json!({"order": "WO-A", "good": 20, "scrap": 1}),
        ),
        e(
            "workorder/complete",
            json!({"order": "WO-A", "good": 20, "scrap": 1, "quantity": 21}),
        ),
        e("workorder/start", json!({"order": "WO-B"})),
        e(
            "workorder/current",
            json!({"order": "WO-B", "good": 0, "scrap": 0}),
        ),
        e(
            "production/count",
            json!({"order": "WO-B", "good": 3, "scrap": 0}),
        ),
        e(
            "workorder/current",
            json!({"order": "WO-B", "good": 3, "scrap": 0}),
        ),
    ];
    assert_eq!(got, expected, "all events:\n{:#?}", events(&msgs));

    // Each event names the stored sample behind it: its seq and its source timestamp are
    // those of that sample's telemetry.
    let telemetry: HashMap<u64, u64> = msgs
        .iter()
        .filter(|m| !m.topic.contains("/_"))
        .filter_map(|m| {
            let v = m.json()?;
            Some((v["seq"].as_u64()?, v["timestamp_ms"].as_u64()?))
        })
        .collect();
    for (kind, v) in events(&msgs) {
        let seq = v["seq"].as_u64().expect("seq");
        assert_eq!(v["event_id"], json!(format!("filler:{kind}:{seq}")), "{v}");
        assert_eq!(v["machine"], json!("filler"));
        assert_eq!(
            telemetry.get(&seq).copied(),
            v["timestamp_ms"].as_u64(),
            "{kind} {v}: the sample with seq {seq}"
        );
        assert!(
            v.get("replay").is_none(),
            "live events are not replays: {v}"
        );
    }
    // The stop lasted from the down state's start to the running state's start.
    let changes: Vec<Json> = events(&msgs)
        .into_iter()
        .filter(|(k, _)| k == "state/change")
        .map(|(_, v)| v)
        .collect();
    let down_start = changes[1]["start_time_unix_ms"].as_u64().expect("start");
    let up_start = changes[2]["start_time_unix_ms"].as_u64().expect("start");
    assert_eq!(
        changes[2]["previous_duration_ms"].as_u64(),
        Some(up_start - down_start)
    );
    assert!(up_start - down_start >= 250, "{changes:#?}");
    assert_eq!(changes[1]["reason"], json!("filler valve jammed"));
    // The current state and order are retained for subscribers that come later.
    let late = Collector::start(broker.port(), "mes-late", &[&format!("{MES}/+/current")])
        .await
        .expect("late subscriber");
    late.wait_for(|m| m.len() >= 2, WAIT)
        .await
        .expect("retained current state and order");
    let retained: HashMap<String, Json> = late
        .messages()
        .iter()
        .filter(|m| m.retain)
        .filter_map(|m| Some((m.topic.clone(), m.json()?)))
        .collect();
    assert_eq!(
        retained[&format!("{MES}/state/current")]["state"],
        json!("running")
    );
    assert_eq!(
        retained[&format!("{MES}/workorder/current")]["external_work_order_id"],
        json!("WO-B")
    );
    assert!(agent.is_running());
}

/// A filler that counts while `run` is set: good every tick, scrap every 7th; a new order
/// every 150 ticks and a stop every other second. It keeps the totals it made.
struct Line {
    run: Arc<AtomicBool>,
    good: Arc<AtomicU64>,
    scrap: Arc<AtomicU64>,
}

fn start_line(plc: &ModbusSim) -> (Line, tokio::task::JoinHandle<()>) {
    let line = Line {
        run: Arc::new(AtomicBool::new(false)),
        good: Arc::new(AtomicU64::new(0)),
        scrap: Arc::new(AtomicU64::new(0)),
    };
    let (run, good, scrap) = (line.run.clone(), line.good.clone(), line.scrap.clone());
    // Near the top of their range: both counters wrap around during the run.
    let (mut g, mut s): (u16, u16) = (65_000, 65_530);
    let mut ticks = 0u64;
    let program = plc.spawn_program(Duration::from_millis(10), move |bank, _| {
        if run.load(Ordering::SeqCst) {
            ticks += 1;
            g = g.wrapping_add(1);
            good.fetch_add(1, Ordering::SeqCst);
            if ticks.is_multiple_of(7) {
                s = s.wrapping_add(1);
                scrap.fetch_add(1, Ordering::SeqCst);
            }
        }
        bank.set_registers(Area::HoldingRegister, 0, &[g]);
        bank.set_registers(Area::HoldingRegister, 2, &[s]);
        let order = format!("WO-{}", 1 + ticks / 150);
        if let Ok(regs) = edge_modbus::codec::encode_registers(
            DataType::String(16),
            ByteOrder::Abcd,
            &Value::String(order),
        ) {
            bank.set_registers(Area::HoldingRegister, 10, &regs);
        }
        let state = if (ticks / 100) % 2 == 1 { 3 } else { 1 };
        bank.set_registers(Area::HoldingRegister, 20, &[state]);
    });
    (line, program)
}

/// Distinct events by id; the copies of an event sent again after a crash must be the same
/// event (only `replay` may differ).
fn distinct(msgs: &[Received]) -> (Vec<(String, Json)>, usize) {
    let mut seen: HashMap<String, Json> = HashMap::new();
    let mut out = Vec::new();
    let mut duplicates = 0;
    for (kind, mut v) in events(msgs) {
        if let Some(o) = v.as_object_mut() {
            o.remove("replay");
        }
        let id = v["event_id"].as_str().expect("event_id").to_owned();
        match seen.get(&id) {
            Some(first) => {
                assert_eq!(first, &v, "an event sent again is the same event");
                duplicates += 1;
            }
            None => {
                seen.insert(id, v.clone());
                out.push((kind, v));
            }
        }
    }
    (out, duplicates)
}

fn totals(events: &[(String, Json)]) -> (u64, u64) {
    events
        .iter()
        .filter(|(k, _)| k == "production/count")
        .fold((0, 0), |(g, s), (_, v)| {
            (
                g + v["good_quantity"].as_u64().unwrap_or(0),
                s + v["bad_quantity"].as_u64().unwrap_or(0),
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_sigkill_mid_run_and_restarted_counts_every_part_once() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let (line, _program) = start_line(&plc);
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let path = write_config(&dir, broker.port(), &plc, 20, "u16");
    let c = Collector::start(broker.port(), "mes-kill", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    // The first readings are the baselines; production starts after them.
    wait_events(&c, "state/current", 1).await;
    line.run.store(true, Ordering::SeqCst);

    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        agent.kill9().expect("SIGKILL");
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent restarts");
        let before = c.len();
        c.wait_for(|m| m.len() > before + 20, WAIT)
            .await
            .unwrap_or_else(|e| panic!("events resume after kill {round}: {e}"));
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    line.run.store(false, Ordering::SeqCst);
    let (made_good, made_scrap) = (
        line.good.load(Ordering::SeqCst),
        line.scrap.load(Ordering::SeqCst),
    );

    // Everything stored is delivered; the counted parts reach what the line made.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (events, _) = distinct(&c.messages());
        let (g, s) = totals(&events);
        if (g, s) >= (made_good, made_scrap) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "counted {g} good / {s} scrap of {made_good} / {made_scrap}; status: {:#?}",
            status(&data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Anything counted twice would arrive by now.
    tokio::time::sleep(Duration::from_millis(2_000)).await;

    let msgs = c.messages();
    let (events, duplicates) = distinct(&msgs);
    let (good, scrap) = totals(&events);
    eprintln!(
        "made {made_good} good / {made_scrap} scrap; {} distinct events, {duplicates} sent again after the kills",
        events.len()
    );
    assert_eq!(
        (good, scrap),
        (made_good, made_scrap),
        "every part counted exactly once"
    );
    assert!(made_good > 300, "the line ran: {made_good}");

    // Order totals agree with the counts attributed to each order.
    let mut per_order: HashMap<String, (u64, u64)> = HashMap::new();
    for (kind, v) in &events {
        if kind == "production/count" {
            let id = v["external_work_order_id"]
                .as_str()
                .expect("always an order")
                .to_owned();
            let e = per_order.entry(id).or_default();
            e.0 += v["good_quantity"].as_u64().unwrap_or(0);
            e.1 += v["bad_quantity"].as_u64().unwrap_or(0);
        }
    }
    let completed: Vec<&Json> = events
        .iter()
        .filter(|(k, _)| k == "workorder/complete")
        .map(|(_, v)| v)
        .collect();
    assert!(completed.len() >= 2, "orders changed during the run");
    for v in completed {
        let id = v["external_work_order_id"].as_str().expect("id");
        let counted = per_order.get(id).copied().unwrap_or_default();
        assert_eq!(
            (v["good_quantity"].as_u64(), v["bad_quantity"].as_u64()),
            (Some(counted.0), Some(counted.1)),
            "totals of {id}"
        );
    }
    // Every state change after the first says how long the state before lasted.
    let changes: Vec<&Json> = events
        .iter()
        .filter(|(k, _)| k == "state/change")
        .map(|(_, v)| v)
        .collect();
    assert!(changes.len() >= 3, "{changes:#?}");
    for pair in changes.windows(2) {
        let lasted = pair[1]["start_time_unix_ms"].as_u64().unwrap_or(0)
            - pair[0]["start_time_unix_ms"].as_u64().unwrap_or(0);
        assert_eq!(pair[1]["previous_duration_ms"].as_u64(), Some(lasted));
        assert_eq!(pair[1]["previous_state"], pair[0]["state"]);
    }
    assert!(agent.is_running());
}

/// Sends a command and returns the next answer on its response topic.
pub(crate) async fn command(c: &Collector, topic: &str, payload: impl Into<Vec<u8>>) -> Json {
    let response = format!("{topic}/_response");
    let answers = |m: &[Received]| m.iter().filter(|r| r.topic == response).count();
    let before = answers(&c.messages());
    c.publish(topic, timed(payload), QoS::AtLeastOnce, false)
        .await
        .expect("command published");
    c.wait_for(|m| answers(m) > before, WAIT)
        .await
        .unwrap_or_else(|e| panic!("no answer on {response}: {e}"));
    c.messages()
        .iter()
        .rev()
        .find(|r| r.topic == response)
        .and_then(Received::json)
        .expect("the answer is JSON")
}

/// Starts the agent and waits until it takes commands: its command subscription is made
/// right after it connects, so a first command may go unheard; one is sent until answered
/// (with one request id: the answer is the same however often it is sent).
pub(crate) async fn agent_taking_commands(c: &Collector, path: &std::path::Path) -> AgentProcess {
    let mut agent = AgentProcess::spawn(&bin(), path, &[]).expect("agent starts");
    agent
        .wait_log("connected to broker", WAIT)
        .await
        .expect("agent connects");
    let topic = format!("{ROOT}/filler/nothing/_set");
    let response = format!("{topic}/_response");
    let deadline = Instant::now() + WAIT;
    loop {
        c.publish(
            &topic,
            timed(r#"{"request_id": "hello", "value": 1}"#),
            QoS::AtLeastOnce,
            false,
        )
        .await
        .expect("publish");
        if c.wait_for(
            |m| m.iter().any(|r| r.topic == response),
            Duration::from_millis(500),
        )
        .await
        .is_ok()
        {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never answered a command"
        );
    }
}

/// Everything a command could write to.
pub(crate) fn registers(plc: &ModbusSim) -> (Vec<u16>, Vec<bool>) {
    (
        plc.registers(Area::HoldingRegister, 0, 64),
        plc.bits(Area::Coil, 0, 16),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_writes_the_plc_tags_in_order_and_a_duplicate_is_answered_without_writing_again()
{
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    let c = Collector::start(broker.port(), "mes-dispatch", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = agent_taking_commands(&c, &path).await;

    let dispatch = format!("{MES}/cmd/workorder/dispatch");
    let order = json!({"request_id": "d-1", "external_work_order_id": "WO-77", "quantity": 1200,
        "parameters": {"speed": 150}});
    let answer = command(&c, &dispatch, order.to_string()).await;
    assert_eq!(
        answer,
        json!({"request_id": "d-1", "status": "ok", "error": null})
    );
    assert_eq!(string_at(&plc, 30), "WO-77");
    assert_eq!(
        plc.registers(Area::HoldingRegister, 40, 3),
        vec![0, 1200, 150]
    );
    assert!(plc.bits(Area::Coil, 1, 1)[0], "the handshake is set last");

    // The PLC takes the order and clears the handshake; the same request arrives again (an
    // MQTT redelivery, or the MES retrying): the same answer, nothing written again.
    plc.set_bits(Area::Coil, 1, &[false]);
    plc.set_registers(Area::HoldingRegister, 42, &[7]);
    let again = command(&c, &dispatch, order.to_string()).await;
    assert_eq!(again, answer);
    assert!(!plc.bits(Area::Coil, 1, 1)[0], "not written twice");
    assert_eq!(plc.registers(Area::HoldingRegister, 42, 1), vec![7]);
    agent
        .wait_log("duplicate command answered again without writing", WAIT)
        .await
        .expect("the duplicate is logged");

    // A tag write on its own.
    let set = command(
        &c,
        &format!("{ROOT}/filler/speed/_set"),
        r#"{"request_id": "s-1", "value": 99}"#,
    )
    .await;
    assert_eq!(set["status"], json!("ok"), "{set}");
    assert_eq!(plc.registers(Area::HoldingRegister, 42, 1), vec![99]);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_command_is_answered_rejected_or_failed_and_writes_nothing() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    let c = Collector::start(broker.port(), "mes-bad", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = agent_taking_commands(&c, &path).await;
    plc.set_registers(Area::HoldingRegister, 42, &[5]);
    let untouched = registers(&plc);

    let dispatch = format!("{MES}/cmd/workorder/dispatch");
    let speed = format!("{ROOT}/filler/speed/_set");
    let big = format!(
        r#"{{"request_id": "big", "value": 1, "pad": "{}"}}"#,
        "x".repeat(20_000)
    );
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("not JSON, _set", speed.clone(), "speed up please".into(), "not JSON"),
        ("not JSON, dispatch", dispatch.clone(), "{\"request_id\": ".into(), "not JSON"),
        ("not an object", speed.clone(), "[1, 2]".into(), "JSON object"),
        ("no request id", speed.clone(), r#"{"value": 3}"#.into(), "missing `request_id`"),
        ("wrong type of value", speed.clone(), r#"{"request_id": "b1", "value": "fast"}"#.into(), "expected a number"),
        ("wrong type of quantity", dispatch.clone(), r#"{"request_id": "b2", "external_work_order_id": "W", "quantity": "ten"}"#.into(), "above 0"),
        ("missing value", speed.clone(), r#"{"request_id": "b3"}"#.into(), "missing `value`"),
        ("missing work order", dispatch.clone(), r#"{"request_id": "b4", "quantity": 5}"#.into(), "missing `external_work_order_id`"),
        ("missing quantity", dispatch.clone(), r#"{"request_id": "b5", "external_work_order_id": "W"}"#.into(), "missing `quantity`"),
        ("unknown machine", format!("{ROOT}/press/_mes/cmd/workorder/dispatch"), r#"{"request_id": "b6", "external_work_order_id": "W", "quantity": 5}"#.into(), "unknown machine `press`"),
        ("unknown command", format!("{MES}/cmd/workorder/abort"), r#"{"request_id": "b7"}"#.into(), "unknown command"),
        ("unknown device", format!("{ROOT}/press/speed/_set"), r#"{"request_id": "b8", "value": 1}"#.into(), "unknown device `press`"),
        ("unknown tag", format!("{ROOT}/filler/sped/_set"), r#"{"request_id": "b9", "value": 1}"#.into(), "unknown tag `sped`"),
        ("read-only tag", format!("{ROOT}/filler/good/_set"), r#"{"request_id": "b10", "value": 1}"#.into(), "not writable"),
        ("out of range", speed.clone(), r#"{"request_id": "b11", "value": 70000}"#.into(), "out of range"),
        ("negative", speed.clone(), r#"{"request_id": "b12", "value": -1}"#.into(), "out of range"),
        ("not whole", speed.clone(), r#"{"request_id": "b13", "value": 1.5}"#.into(), "whole number"),
        ("string too long", dispatch.clone(), r#"{"request_id": "b14", "external_work_order_id": "WO-MUCH-TOO-LONG-FOR-16", "quantity": 5}"#.into(), "at most 16 bytes"),
        ("unknown parameter", dispatch.clone(), r#"{"request_id": "b15", "external_work_order_id": "W", "quantity": 5, "parameters": {"pressure": 2}}"#.into(), "unknown parameter"),
        ("parameter out of range", dispatch.clone(), r#"{"request_id": "b16", "external_work_order_id": "W", "quantity": 5, "parameters": {"speed": 70000}}"#.into(), "out of range"),
        ("oversized payload", speed.clone(), big, "at most 16384"),
    ];
    for (what, topic, payload, why) in &cases {
        let answer = command(&c, topic, payload.clone()).await;
        assert_eq!(answer["status"], json!("rejected"), "{what}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(why)),
            "{what}: expected an error about {why:?}, got {answer}"
        );
        assert_eq!(registers(&plc), untouched, "{what} wrote nothing");
    }
    // The answers carry the request id whenever the command had a readable one.
    let answer = command(&c, &speed, r#"{"request_id": "b20", "value": "x"}"#).await;
    assert_eq!(answer["request_id"], json!("b20"));

    // A PLC that is off: answered failed at once, not queued for later.
    plc.stop().await;
    wait_status(&data, WAIT, "the PLC seen offline", |s| {
        s["devices"][0]["connected"] == json!(false)
    })
    .await;
    let started = Instant::now();
    let answer = command(
        &c,
        &dispatch,
        r#"{"request_id": "off-1", "external_work_order_id": "WO-9", "quantity": 5}"#,
    )
    .await;
    assert_eq!(answer["status"], json!("failed"), "{answer}");
    // Between two reconnect attempts the write is refused as not connected; during one (the
    // PLC's port still accepts, nothing answers) it fails on the connection at once.
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("not connected")
                || e.contains("closed the connection")
                || e.contains("did not answer")),
        "{answer}"
    );
    let answer = command(&c, &speed, r#"{"request_id": "off-2", "value": 9}"#).await;
    assert_eq!(answer["status"], json!("failed"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not after a timeout"
    );
    plc.restart().await.expect("PLC back on");
    wait_status(&data, WAIT, "the PLC back", |s| {
        s["devices"][0]["connected"] == json!(true)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        registers(&plc),
        untouched,
        "nothing was queued and written later"
    );

    // Bad input never stopped the agent: a good command still works.
    let ok = command(&c, &speed, r#"{"request_id": "good-1", "value": 6}"#).await;
    assert_eq!(ok["status"], json!("ok"), "{ok}");
    assert_eq!(plc.registers(Area::HoldingRegister, 42, 1), vec![6]);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_megabyte_message_on_a_command_topic_is_dropped_without_disturbing_the_session() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    let c = Collector::start(broker.port(), "mes-huge", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = agent_taking_commands(&c, &path).await;
    let untouched = registers(&plc);

    // Retained, too: the broker hands it to every new subscription of the topic.
    let speed = format!("{ROOT}/filler/speed/_set");
    let huge = format!(
        r#"{{"request_id": "huge", "value": 1, "pad": "{}"}}"#,
        "x".repeat(2 << 20)
    );
    c.publish(&speed, timed(huge.clone()), QoS::AtLeastOnce, false)
        .await
        .expect("published");
    c.publish(&speed, timed(huge), QoS::AtLeastOnce, true)
        .await
        .expect("published retained");
    let telemetry = format!("{ROOT}/filler/speed");
    let samples = |m: &[Received]| m.iter().filter(|r| r.topic == telemetry).count();
    let before = samples(&c.messages());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = agent.log();
    assert_eq!(
        log.matches("connected to broker").count(),
        1,
        "no reconnect:\n{log}"
    );
    assert!(
        samples(&c.messages()) > before,
        "telemetry kept flowing while the message was dropped"
    );
    assert_eq!(registers(&plc), untouched);
    // Commands are taken again.
    let deadline = Instant::now() + WAIT;
    loop {
        let answers = |m: &[Received]| {
            m.iter()
                .filter(|r| r.topic.ends_with("speed/_set/_response"))
                .filter_map(Received::json)
                .any(|v| v["request_id"] == json!("after") && v["status"] == json!("ok"))
        };
        c.publish(
            &speed,
            timed(r#"{"request_id": "after", "value": 4}"#),
            QoS::AtLeastOnce,
            false,
        )
        .await
        .expect("published");
        if c.wait_for(answers, Duration::from_millis(500))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "commands are answered again");
    }
    assert_eq!(plc.registers(Area::HoldingRegister, 42, 1), vec![4]);
    assert!(agent.is_running());
}
