//! Command safety with the real agent, a real Mosquitto and a simulated PLC, each test
//! checking the PLC's registers afterwards: a retained `_set` is never written, at start or
//! after a restart; a command queued in the broker while the agent was stopped is refused as
//! expired; a command sent again after a restart is answered with its first answer and
//! written once; a northbound with `commands = false` answers every command refused.

use std::time::Duration;

use edge_modbus::Area;
use serde_json::json;

use crate::common::*;
use crate::mes::{agent_taking_commands, command, registers, write_config};
use crate::support::mqtt::{QoS, Received};
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

const WAIT: Duration = Duration::from_secs(20);

/// `hr:42`, the filler's writable `speed`.
const SPEED: u16 = 42;

fn speed_topic() -> String {
    format!("{ROOT}/filler/speed/_set")
}

/// Answers on `topic`'s response topic so far.
fn answers(msgs: &[Received], topic: &str) -> Vec<serde_json::Value> {
    let response = format!("{topic}/_response");
    msgs.iter()
        .filter(|m| m.topic == response)
        .filter_map(Received::json)
        .collect()
}

/// Adds `line` to the config's (one) northbound.
fn with_northbound_key(path: &std::path::Path, line: &str) {
    let cfg = std::fs::read_to_string(path).expect("config");
    let keyed = cfg.replacen(
        "keep_alive_s = 5\n",
        &format!("keep_alive_s = 5\n{line}\n"),
        1,
    );
    assert_ne!(keyed, cfg, "the config has a northbound to add {line} to");
    std::fs::write(path, keyed).expect("config written");
}

fn speed(plc: &edge_sim::ModbusSim) -> u16 {
    plc.registers(Area::HoldingRegister, SPEED, 1)[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_set_is_never_written_at_start_nor_after_a_restart() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    let c = Collector::start(broker.port(), "safety-retained", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    // A fresh, valid command, mistakenly published with the retain flag.
    c.publish(
        &speed_topic(),
        timed(r#"{"request_id": "stale", "value": 77}"#),
        QoS::AtLeastOnce,
        true,
    )
    .await
    .expect("published");
    for run in 1..=2 {
        let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
        c.wait_for(|m| answers(m, &speed_topic()).len() >= run, WAIT)
            .await
            .unwrap_or_else(|e| panic!("run {run}: the retained command is answered: {e}"));
        let a = answers(&c.messages(), &speed_topic())[run - 1].clone();
        assert_eq!(a["request_id"], "stale", "{a}");
        assert_eq!(a["status"], "rejected", "{a}");
        assert!(
            a["error"].as_str().is_some_and(|e| e.contains("retain")),
            "the answer says why: {a}"
        );
        // Polls go on; the register is untouched.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(speed(&plc), 0, "run {run}: nothing written");
        agent.terminate().expect("agent stops");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_queued_in_the_broker_while_the_agent_was_stopped_is_refused_as_expired() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    // A tight skew, so the test need not wait long between sending and restarting.
    with_northbound_key(&path, "command_clock_skew_ms = 300");
    let c = Collector::start(broker.port(), "safety-queued", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    // The agent's persistent session and its command subscriptions exist on the broker.
    let mut agent = agent_taking_commands(&c, &path).await;
    agent.terminate().expect("agent stops");
    // Sent while the agent is away: fresh when sent, queued by the broker for the session.
    c.publish(
        &speed_topic(),
        timed(r#"{"request_id": "queued", "value": 55}"#),
        QoS::AtLeastOnce,
        false,
    )
    .await
    .expect("published");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent restarts");
    let queued = |m: &[Received]| {
        answers(m, &speed_topic())
            .into_iter()
            .find(|a| a["request_id"] == "queued")
    };
    c.wait_for(|m| queued(m).is_some(), WAIT)
        .await
        .expect("the queued command is answered");
    let a = queued(&c.messages()).expect("answer");
    assert_eq!(a["status"], "rejected", "{a}");
    assert!(
        a["error"].as_str().is_some_and(|e| e.contains("expired")),
        "refused as expired: {a}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(speed(&plc), 0, "nothing written");
    agent.terminate().expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_sent_again_after_a_restart_is_written_once_and_answered_twice_alike() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    let c = Collector::start(broker.port(), "safety-dedup", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = agent_taking_commands(&c, &path).await;
    let payload = json!({"request_id": "once", "value": 9}).to_string();
    let first = command(&c, &speed_topic(), payload.clone()).await;
    assert_eq!(first["status"], "ok", "{first}");
    assert_eq!(speed(&plc), 9);
    agent.terminate().expect("agent stops");
    // The PLC moves on; a command written twice would show.
    plc.set_registers(Area::HoldingRegister, SPEED, &[0]);
    let mut agent = agent_taking_commands(&c, &path).await;
    let second = command(&c, &speed_topic(), payload).await;
    assert_eq!(second, first, "the first answer, again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(speed(&plc), 0, "not written again");
    agent.terminate().expect("agent stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_northbound_with_commands_off_answers_every_command_refused_and_writes_nothing() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let dir = TestDir::new();
    let path = write_config(&dir, broker.port(), &plc, 50, "u32");
    with_northbound_key(&path, "commands = false");
    let c = Collector::start(broker.port(), "safety-off", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = agent_taking_commands(&c, &path).await;
    let untouched = registers(&plc);
    let dispatch = format!("{ROOT}/filler/_mes/cmd/workorder/dispatch");
    for (topic, payload) in [
        (speed_topic(), json!({"request_id": "s", "value": 3})),
        (
            dispatch,
            json!({"request_id": "d", "external_work_order_id": "WO-1", "quantity": 5}),
        ),
    ] {
        let a = command(&c, &topic, payload.to_string()).await;
        assert_eq!(a["status"], "rejected", "{a}");
        assert!(
            a["error"]
                .as_str()
                .is_some_and(|e| e.contains("switched off")),
            "{a}"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(registers(&plc), untouched);
    agent.terminate().expect("agent stops");
}
