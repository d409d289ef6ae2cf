//! The agent's life as the broker and an operator see it (SPEC §5): the retained gateway status
//! and the MQTT will, a clean stop that drains before it says goodbye, `seq` continuing across
//! a restart. The demo, a binary of its own, is tested in `demo/tests/demo.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::mqtt::Received;
use crate::support::seqcheck::{check_payloads, SeqReport};
use crate::support::{run_cli, AgentProcess, Collector, Mosquitto, TestDir};

/// `keep_alive_s` of the board configs in `common`.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// How long a clean stop may take to say `{"online": false}` once asked.
const PROMPT: Duration = Duration::from_secs(3);

fn status_topic() -> String {
    format!("{ROOT}/_gateway/gw-test/status")
}

/// The `online` field of a gateway status message.
fn online(m: &Received) -> Option<bool> {
    if m.topic != status_topic() {
        return None;
    }
    m.json().and_then(|v| v["online"].as_bool())
}

fn reports(msgs: &[Received]) -> std::collections::BTreeMap<String, SeqReport> {
    check_payloads(
        ROOT,
        msgs.iter()
            .map(|m| (m.topic.as_str(), m.payload.as_slice())),
    )
}

fn report(msgs: &[Received], device: &str) -> SeqReport {
    reports(msgs)
        .remove(device)
        .unwrap_or_else(|| panic!("no telemetry from {device}"))
}

/// The first message a collector received, which for a late subscriber is the retained one.
async fn first_message(collector: &Collector, what: &str) -> Received {
    collector
        .wait_for(|m| !m.is_empty(), Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    collector.messages().remove(0)
}

/// `edge-agent buffer stats --json` of a stopped agent: read from the store itself.
fn stored_stats(config: &Path) -> serde_json::Value {
    let out = run_cli(
        &bin(),
        &[
            "buffer",
            "stats",
            "--json",
            "-c",
            config.to_str().expect("utf-8 path"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "buffer stats: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("buffer stats JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_status_is_retained_online_and_the_will_marks_it_offline_after_a_sigkill() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let dir = TestDir::new();
    let config = config_toml(
        &dir.data_dir(),
        broker.port(),
        "per-tag",
        "",
        &[device(
            "filler",
            plc.local_addr().port(),
            50,
            counter_tags(),
        )],
    );
    let path = dir.write_config(&config);
    let live = Collector::start(broker.port(), "status-live", &[&status_topic()])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    live.wait_for(
        |m| m.iter().any(|m| online(m) == Some(true)),
        Duration::from_secs(20),
    )
    .await
    .expect("the agent announces itself online");

    // A subscriber that arrives after the agent connected still learns that it is online.
    let late = Collector::start(broker.port(), "status-late", &[&status_topic()])
        .await
        .expect("late subscriber connects");
    let retained = first_message(&late, "the retained online status").await;
    let body = retained.json().expect("the status is JSON");
    assert!(
        retained.retain,
        "the status is retained: {}",
        retained.text()
    );
    assert_eq!(body["online"], true, "{body}");
    assert_eq!(body["gateway_id"], "gw-test", "{body}");

    let killed = Instant::now();
    agent.kill9().expect("SIGKILL");
    // The broker publishes the will at the latest when the keep-alive (× 1.5) runs out.
    live.wait_for(
        |m| m.iter().any(|m| m.at >= killed && online(m) == Some(false)),
        KEEP_ALIVE.mul_f64(1.5),
    )
    .await
    .expect("the will marks the gateway offline");
    let will = live
        .messages()
        .into_iter()
        .find(|m| m.at >= killed && online(m) == Some(false))
        .expect("the will");
    assert_eq!(
        will.json().expect("JSON")["online"],
        false,
        "{}",
        will.text()
    );

    let after = Collector::start(broker.port(), "status-after", &[&status_topic()])
        .await
        .expect("subscriber connects after the kill");
    let retained = first_message(&after, "the retained offline status").await;
    assert!(retained.retain, "the will is retained: {}", retained.text());
    assert_eq!(online(&retained), Some(false), "{}", retained.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_drains_every_stored_sample_publishes_offline_and_exits_zero() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(10));
    let dir = TestDir::new();
    let config = config_toml(
        &dir.data_dir(),
        broker.port(),
        "per-tag",
        "",
        &[device(
            "filler",
            plc.local_addr().port(),
            20,
            counter_tags(),
        )],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "stop-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    collector
        .wait_for(
            |m| reports(m).get("filler").is_some_and(|r| r.samples >= 100),
            Duration::from_secs(20),
        )
        .await
        .expect("telemetry flows");

    // The PLC keeps moving: samples are being taken right up to the stop.
    let asked = Instant::now();
    let exit = agent.terminate().expect("the agent stops on SIGTERM");
    assert!(exit.success(), "a clean stop exits 0: {exit}");
    collector
        .wait_for(
            |m| m.iter().any(|m| m.at >= asked && online(m) == Some(false)),
            PROMPT,
        )
        .await
        .expect("the offline status is published promptly");
    let goodbye = collector
        .messages()
        .into_iter()
        .position(|m| online(&m) == Some(false))
        .expect("the offline status");

    // Everything the store held was acknowledged by the broker before the agent exited ...
    let stats = stored_stats(&path);
    let nb = stats["northbounds"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == "mes"))
        .unwrap_or_else(|| panic!("no `mes` northbound in {stats:#}"));
    assert_eq!(
        nb["pending_records"], 0,
        "nothing left in the store: {stats:#}"
    );
    assert_eq!(
        nb["cursor"], stats["store"]["next_id"],
        "the cursor stands after the last record: {stats:#}"
    );
    // ... and reached the subscriber, complete and in order, before the goodbye.
    let msgs = collector.messages();
    let r = report(&msgs[..goodbye], "filler");
    assert_eq!(r.first, Some(1), "{r:#?}");
    assert!(r.is_complete() && r.is_ordered(), "{r:#?}");
    assert_eq!(r.duplicates, 0, "a clean stop sends nothing twice: {r:#?}");
    assert_eq!(
        report(&msgs, "filler").last,
        r.last,
        "no telemetry after the goodbye"
    );

    // The log tells the order: signal, pollers and store writer, drain, done.
    let log = agent.log();
    let at = |pattern: &str| {
        log.find(pattern)
            .unwrap_or_else(|| panic!("the log lacks {pattern:?}:\n{log}"))
    };
    assert!(
        at("edge-agent running") < at("stopping") && at("stopping") < at("stopped"),
        "the stop is logged in order:\n{log}"
    );
    assert!(
        !log.contains("stop deadline reached"),
        "the drain finished in time:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_continues_each_devices_seq_without_reuse_or_gap() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(10));
    let dir = TestDir::new();
    let port = plc.local_addr().port();
    let config = config_toml(
        &dir.data_dir(),
        broker.port(),
        "per-tag",
        "",
        &[
            device("press_a", port, 30, counter_tags()),
            device("press_b", port, 50, counter_tags()),
        ],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "restart-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let enough = |m: &[Received], n: usize| {
        let r = reports(m);
        ["press_a", "press_b"]
            .iter()
            .all(|d| r.get(*d).is_some_and(|r| r.distinct >= n))
    };

    let mut first = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    collector
        .wait_for(|m| enough(m, 30), Duration::from_secs(20))
        .await
        .expect("telemetry flows");
    let exit = first.terminate().expect("the agent stops on SIGTERM");
    assert!(exit.success(), "{exit}");
    // The offline status comes after the last acknowledged sample: all of the run is in.
    collector
        .wait_for(
            |m| m.iter().any(|m| online(m) == Some(false)),
            Duration::from_secs(10),
        )
        .await
        .expect("the first run says goodbye");
    let before = collector.messages();
    let split = before.len();

    let mut second = AgentProcess::spawn(&bin(), &path, &[]).expect("agent restarts");
    collector
        .wait_for(|m| enough(&m[split..], 20), Duration::from_secs(20))
        .await
        .expect("telemetry flows after the restart");
    second.terminate().expect("the second run stops");
    let after = collector.messages().split_off(split);

    for dev in ["press_a", "press_b"] {
        let old = report(&before, dev);
        assert_eq!(old.first, Some(1), "{old:#?}");
        assert!(old.is_complete() && old.is_ordered(), "{old:#?}");
        let last = old.last.expect("a last seq before the restart");
        let new = report(&after, dev);
        assert_eq!(
            new.first,
            Some(last + 1),
            "{dev}: the first seq after the restart follows the last one before it \
             ({last}); after the restart: {new:#?}"
        );
        assert!(new.is_complete() && new.is_ordered(), "{new:#?}");
        assert_eq!(new.duplicates, 0, "{new:#?}");
        assert_eq!(new.replayed, 0, "nothing was left to replay: {new:#?}");
    }
}
