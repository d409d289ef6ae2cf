//! PLC faults: a PLC that stops answering turns its tags `bad` without slowing another PLC and
//! is picked up again; a PLC that refuses some reads with Modbus exceptions turns only those
//! tags `bad`, with the exception named in the log.

use std::time::{Duration, Instant};

use edge_modbus::Area;
use edge_sim::ExceptionCode;

use crate::common::*;
use crate::support::mqtt::Received;
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

fn count_from(msgs: &[Received], topic: &str, since: Instant) -> usize {
    msgs.iter()
        .filter(|m| m.topic == topic && m.at >= since)
        .count()
}

fn last_quality(msgs: &[Received], topic: &str) -> Option<String> {
    msgs.iter().rev().find(|m| m.topic == topic).and_then(|m| {
        serde_json::from_slice::<serde_json::Value>(&m.payload)
            .ok()
            .and_then(|v| v["quality"].as_str().map(str::to_owned))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_plc_goes_bad_does_not_slow_the_other_and_is_picked_up_again() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (a, b) = (start_plc().await, start_plc().await);
    let _pa = counting(&a, Duration::from_millis(10));
    let _pb = counting(&b, Duration::from_millis(10));
    let dir = TestDir::new();
    let config = config_toml(
        &dir.path().join("data"),
        broker.port(),
        "per-tag",
        "",
        &[
            device("press_a", a.local_addr().port(), 50, counter_tags()),
            device("press_b", b.local_addr().port(), 50, counter_tags()),
        ],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "silent-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    let a_count = format!("{ROOT}/press_a/count");
    let b_count = format!("{ROOT}/press_b/count");
    collector
        .wait_for(
            |m| count_from(m, &b_count, Instant::now() - Duration::from_secs(60)) >= 20,
            Duration::from_secs(20),
        )
        .await
        .expect("both PLCs flow");

    // B's rate with both PLCs healthy.
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthy = count_from(&collector.messages(), &b_count, t0);

    a.set_silent(true);
    collector
        .wait_for(
            |m| last_quality(m, &a_count).as_deref() == Some("bad"),
            Duration::from_secs(10),
        )
        .await
        .expect("the silent PLC's tags go bad");
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = count_from(&collector.messages(), &b_count, t1);
    assert!(
        during as f64 >= healthy as f64 * 0.7,
        "PLC B kept its rate while A was silent: {during} samples in 3 s vs {healthy} before"
    );
    assert_eq!(
        last_quality(&collector.messages(), &b_count).as_deref(),
        Some("good")
    );

    a.set_silent(false);
    collector
        .wait_for(
            |m| last_quality(m, &a_count).as_deref() == Some("good"),
            Duration::from_secs(15),
        )
        .await
        .expect("PLC A is picked up again");
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_exceptions_turn_only_the_refused_tags_bad_and_are_named_in_the_log() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    plc.add_exception(
        Area::HoldingRegister,
        100..110,
        ExceptionCode::IllegalDataAddress,
    );
    let dir = TestDir::new();
    let mut tags = counter_tags();
    tags.push(tag("missing", "hr:100", "u16"));
    let config = config_toml(
        &dir.path().join("data"),
        broker.port(),
        "per-tag",
        "",
        &[device("oven", plc.local_addr().port(), 50, tags)],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "exc-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");

    let missing = format!("{ROOT}/oven/missing");
    let count = format!("{ROOT}/oven/count");
    collector
        .wait_for(
            |m| {
                last_quality(m, &missing).is_some()
                    && count_from(m, &count, Instant::now() - Duration::from_secs(60)) >= 20
            },
            Duration::from_secs(20),
        )
        .await
        .expect("messages from both requests");
    let msgs = collector.messages();
    assert_eq!(last_quality(&msgs, &missing).as_deref(), Some("bad"));
    assert_eq!(last_quality(&msgs, &count).as_deref(), Some("good"));
    agent
        .wait_log("IllegalDataAddress", Duration::from_secs(5))
        .await
        .expect("the exception is named in the log");

    // The PLC fixes its map: the tag recovers without a restart.
    plc.clear_exceptions();
    collector
        .wait_for(
            |m| last_quality(m, &missing).as_deref() == Some("good"),
            Duration::from_secs(10),
        )
        .await
        .expect("the tag recovers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_plc_turns_the_tag_bad_is_logged_once_and_recovers() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    // Not UTF-8: what a PLC holds when a string register is used for something else.
    plc.set_registers(Area::HoldingRegister, 50, &[0xFFFE, 0xC328]);
    let dir = TestDir::new();
    let mut tags = counter_tags();
    tags.push(tag("batch_code", "hr:50", "string:4"));
    let config = config_toml(
        &dir.path().join("data"),
        broker.port(),
        "per-tag",
        "",
        &[device("labeler", plc.local_addr().port(), 50, tags)],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "garbage-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    let code = format!("{ROOT}/labeler/batch_code");
    let count = format!("{ROOT}/labeler/count");
    collector
        .wait_for(
            |m| {
                last_quality(m, &code).is_some()
                    && count_from(m, &count, Instant::now() - Duration::from_secs(60)) >= 40
            },
            Duration::from_secs(20),
        )
        .await
        .expect("telemetry flows");
    assert_eq!(
        last_quality(&collector.messages(), &code).as_deref(),
        Some("bad")
    );
    assert_eq!(
        last_quality(&collector.messages(), &count).as_deref(),
        Some("good")
    );
    let warnings = agent
        .log()
        .matches("does not decode as the configured type")
        .count();
    assert_eq!(
        warnings,
        1,
        "logged once, not at every poll:\n{}",
        agent.log()
    );

    plc.set_registers(Area::HoldingRegister, 50, &[0x4C34, 0x3200]); // "L42"
    collector
        .wait_for(
            |m| last_quality(m, &code).as_deref() == Some("good"),
            Duration::from_secs(10),
        )
        .await
        .expect("the tag recovers");
    let value = collector
        .json()
        .into_iter()
        .rev()
        .find(|(t, _)| *t == code)
        .map(|(_, v)| v["value"].clone());
    assert_eq!(value, Some(serde_json::json!("L42")));
    assert!(agent.is_running());
}
