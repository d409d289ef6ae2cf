//! OPC UA southbound end to end: the real agent against the simulated OPC UA plant on a free
//! port and a real Mosquitto. Subscribed values keep the server's source timestamps, polled
//! values arrive at their interval, a server restart turns the tags bad and they recover by
//! themselves, SignAndEncrypt works once the trust command accepts the server's certificate
//! (and not before), a node that does not exist is bad alone, and node ids printed by
//! `opcua browse` work when pasted into a config.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use edge_opcua::opcua::types::{DateTime, StatusCode, Variant};
use edge_sim::opcua::{OpcUaSim, OpcUaSimOptions};

use crate::common::*;
use crate::support::agent::run_cli_with;
use crate::support::mqtt::Received;
use crate::support::{run_cli, AgentProcess, Collector, Mosquitto, TestDir};

const DEVICE: &str = "line_ua";
/// 1970-01-01 in OPC UA ticks (100 ns since 1601-01-01).
const UNIX_EPOCH_TICKS: i64 = 116_444_736_000_000_000;

async fn start_sim(dir: &TestDir) -> OpcUaSim {
    OpcUaSim::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        OpcUaSimOptions::new(dir.join("server-pki")),
    )
    .await
    .expect("simulated OPC UA server starts")
}

/// A board config with one OPC UA device on `endpoint`; `device_extra` and each tag's lines go
/// in as written.
fn opcua_config(
    data_dir: &Path,
    broker_port: u16,
    endpoint: &str,
    device_extra: &[&str],
    tags: &[(&str, &str, &[&str])],
) -> String {
    let mut s = config_toml(data_dir, broker_port, "per-tag", "", &[]);
    let _ = writeln!(
        s,
        "[[device]]\nname = \"{DEVICE}\"\nprotocol = \"opcua\"\nendpoint = \"{endpoint}\"\ntimeout_ms = 2000\nkeep_alive_ms = 1000\nbackoff_min_ms = 200\nbackoff_max_ms = 1000"
    );
    for line in device_extra {
        let _ = writeln!(s, "{line}");
    }
    for (name, node, extra) in tags {
        let _ = writeln!(
            s,
            "  [[device.tag]]\n  name = \"{name}\"\n  address = \"{node}\""
        );
        for line in *extra {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

fn topic(tag: &str) -> String {
    format!("{ROOT}/{DEVICE}/{tag}")
}

fn of(msgs: &[Received], tag: &str) -> Vec<serde_json::Value> {
    let t = topic(tag);
    msgs.iter()
        .filter(|m| m.topic == t)
        .filter_map(|m| m.json())
        .collect()
}

fn last_quality(msgs: &[Received], tag: &str) -> Option<String> {
    of(msgs, tag)
        .last()
        .and_then(|v| v["quality"].as_str().map(str::to_owned))
}

fn good_count(msgs: &[Received], tag: &str) -> usize {
    of(msgs, tag)
        .iter()
        .filter(|v| v["quality"] == "good")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_values_keep_source_timestamps_polled_values_come_at_their_interval_and_a_missing_node_is_bad_alone(
) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let dir = TestDir::new();
    let sim = start_sim(&dir).await;
    let config = opcua_config(
        &dir.data_dir(),
        broker.port(),
        &sim.endpoint_url(),
        &["publishing_interval_ms = 100"],
        &[
            ("good_count", "ns=2;s=Filler.GoodCount", &[]),
            (
                "temperature",
                "ns=2;s=Filler.Temperature",
                &["unit = \"degC\""],
            ),
            ("setpoint", "ns=2;s=Filler.Setpoint", &[]),
            (
                "speed",
                "ns=2;s=Filler.Speed",
                &["mode = \"polling\"", "poll_interval_ms = 200"],
            ),
            (
                "work_order",
                "ns=2;s=Filler.WorkOrder",
                &["mode = \"polling\"", "poll_interval_ms = 500"],
            ),
            ("missing", "ns=2;s=Filler.NoSuchVariable", &[]),
        ],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "ua-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    collector
        .wait_for(
            |m| {
                good_count(m, "good_count") >= 5
                    && good_count(m, "work_order") >= 2
                    && last_quality(m, "missing").is_some()
            },
            Duration::from_secs(30),
        )
        .await
        .expect("subscribed and polled values flow");

    // A value the server stamps 1.5 s in the past is published with the server's source
    // timestamp, not the time the gateway received it: subscribed ...
    let ticks = DateTime::now().ticks() - 15_000_000;
    let source_ms = ((ticks - UNIX_EPOCH_TICKS) / 10_000) as u64;
    assert!(
        sim.set_at(
            "Filler.Setpoint",
            Variant::Double(31.5),
            StatusCode::Good,
            DateTime::from(ticks)
        )
        .await
    );
    // ... and polled (a Read returns the stamp as stored, however old).
    let old = DateTime::ymd_hms(2025, 11, 22, 8, 26, 40);
    assert!(
        sim.set_at("Filler.Speed", Variant::Float(90.0), StatusCode::Good, old)
            .await
    );
    collector
        .wait_for(
            |m| {
                of(m, "setpoint").iter().any(|v| v["value"] == 31.5)
                    && of(m, "speed").iter().any(|v| v["value"] == 90.0)
            },
            Duration::from_secs(10),
        )
        .await
        .expect("the new setpoint and speed arrive");
    let msgs = collector.messages();
    let sp = of(&msgs, "setpoint")
        .into_iter()
        .find(|v| v["value"] == 31.5)
        .expect("setpoint message");
    assert_eq!(sp["timestamp_ms"], source_ms, "{sp}");
    assert_eq!(sp["quality"], "good");
    let speed = of(&msgs, "speed")
        .into_iter()
        .find(|v| v["value"] == 90.0)
        .expect("speed message");
    assert_eq!(speed["timestamp_ms"], 1_763_800_000_000u64, "{speed}");
    let t = of(&msgs, "temperature").pop().expect("temperature");
    assert_eq!(t["unit"], "degC");
    assert!(t["value"].is_f64(), "{t}");

    // Status codes map to quality: Uncertain stays a value with quality uncertain.
    assert!(
        sim.set(
            "Filler.Setpoint",
            Variant::Double(30.0),
            StatusCode::UncertainLastUsableValue
        )
        .await
    );
    collector
        .wait_for(
            |m| last_quality(m, "setpoint").as_deref() == Some("uncertain"),
            Duration::from_secs(10),
        )
        .await
        .expect("an uncertain value arrives as uncertain");

    // Polled at its interval: about two reads a second, each one published.
    let t0 = Instant::now();
    let before = good_count(&collector.messages(), "work_order");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let polled = good_count(&collector.messages(), "work_order") - before;
    let expected = t0.elapsed().as_secs_f64() / 0.5;
    assert!(
        (polled as f64) >= expected * 0.7 && (polled as f64) <= expected * 1.3 + 1.0,
        "{polled} polled values in {:?}",
        t0.elapsed()
    );

    // The missing node: bad once, no value, named in the log; the others keep flowing.
    let msgs = collector.messages();
    let missing = of(&msgs, "missing");
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["quality"], "bad");
    assert!(missing[0]["value"].is_null());
    assert_eq!(last_quality(&msgs, "good_count").as_deref(), Some("good"));
    agent
        .wait_log("BadNodeIdUnknown", Duration::from_secs(5))
        .await
        .expect("the per-tag error names the status");
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("BadNodeIdUnknown"))
        .unwrap_or_default();
    assert!(
        line.contains("missing") && line.contains("ns=2;s=Filler.NoSuchVariable"),
        "the log line names the tag and its node: {line}"
    );
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_and_started_again_turns_tags_bad_then_values_flow_without_restarting_the_agent(
) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let dir = TestDir::new();
    let sim = start_sim(&dir).await;
    let config = opcua_config(
        &dir.data_dir(),
        broker.port(),
        &sim.endpoint_url(),
        &["publishing_interval_ms = 100"],
        &[
            ("good_count", "ns=2;s=Filler.GoodCount", &[]),
            (
                "temperature",
                "ns=2;s=Filler.Temperature",
                &["mode = \"polling\"", "poll_interval_ms = 200"],
            ),
        ],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "ua-restart", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    collector
        .wait_for(
            |m| good_count(m, "good_count") >= 5 && good_count(m, "temperature") >= 3,
            Duration::from_secs(30),
        )
        .await
        .expect("values flow");

    sim.stop().await;
    collector
        .wait_for(
            |m| {
                last_quality(m, "good_count").as_deref() == Some("bad")
                    && last_quality(m, "temperature").as_deref() == Some("bad")
            },
            Duration::from_secs(15),
        )
        .await
        .expect("the tags go bad while the server is down");
    agent
        .wait_log("OPC UA session lost", Duration::from_secs(5))
        .await
        .expect("the loss is logged");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = good_count(&collector.messages(), "good_count");
    sim.restart().await.expect("server restarts");
    collector
        .wait_for(
            |m| {
                good_count(m, "good_count") >= before + 5
                    && last_quality(m, "good_count").as_deref() == Some("good")
                    && last_quality(m, "temperature").as_deref() == Some("good")
            },
            Duration::from_secs(30),
        )
        .await
        .expect("subscriptions come back after the restart");
    assert!(agent.is_running(), "the agent was never restarted");
    assert_eq!(
        agent.log().matches("OPC UA session established").count(),
        2,
        "one session before the restart, one after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_encrypt_is_refused_until_the_trust_command_accepts_the_servers_certificate() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let dir = TestDir::new();
    let sim = start_sim(&dir).await;
    let config = opcua_config(
        &dir.data_dir(),
        broker.port(),
        &sim.endpoint_url(),
        &[
            "security_policy = \"Basic256Sha256\"",
            "security_mode = \"SignAndEncrypt\"",
            "publishing_interval_ms = 100",
        ],
        &[("good_count", "ns=2;s=Filler.GoodCount", &[])],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "ua-trust", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");

    // Refused: the tag is bad, and the log says which command trusts the certificate.
    agent
        .wait_log("edge-agent opcua trust -c", Duration::from_secs(60))
        .await
        .expect("the rejection names the trust command");
    collector
        .wait_for(
            |m| last_quality(m, "good_count").as_deref() == Some("bad"),
            Duration::from_secs(10),
        )
        .await
        .expect("the tag is bad while the server is untrusted");
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("edge-agent opcua trust -c"))
        .expect("the line");
    let command = line
        .split("trust it with: ")
        .nth(1)
        .expect("the command")
        .split_whitespace()
        .collect::<Vec<_>>();
    // edge-agent opcua trust -c CONFIG accept THUMBPRINT
    assert_eq!(command[..4], ["edge-agent", "opcua", "trust", "-c"]);
    assert_eq!(command[4], path.display().to_string());
    assert_eq!(command[5], "accept");
    let thumbprint = command[6].trim_end_matches(|c: char| !c.is_ascii_hexdigit());

    let list = run_cli(
        &bin(),
        &["opcua", "trust", "-c", &path.display().to_string(), "list"],
    );
    let listed = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(list.status.success(), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("rejected") && l.contains(thumbprint)),
        "{listed}"
    );
    assert!(listed.contains("gateway certificate"), "{listed}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        good_count(&collector.messages(), "good_count"),
        0,
        "nothing flows before the trust command"
    );

    let accept = run_cli(
        &bin(),
        &[
            "opcua",
            "trust",
            "-c",
            &path.display().to_string(),
            "accept",
            thumbprint,
        ],
    );
    assert!(
        accept.status.success(),
        "{}",
        String::from_utf8_lossy(&accept.stderr)
    );
    collector
        .wait_for(
            |m| good_count(m, "good_count") >= 5,
            Duration::from_secs(30),
        )
        .await
        .expect("values flow over SignAndEncrypt once the certificate is trusted");
    let log = agent.log();
    assert!(
        log.contains("Basic256Sha256/SignAndEncrypt"),
        "the session says its security"
    );
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_prints_the_fillers_variables_and_a_node_id_pasted_from_it_works() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let dir = TestDir::new();
    let sim = start_sim(&dir).await;
    let endpoint = sim.endpoint_url();
    let out = run_cli(&bin(), &["opcua", "browse", endpoint.as_str()]);
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tree}\n{stderr}");
    // Security None needs no key: nothing to complain about.
    assert!(
        !stderr.lines().any(|l| l.contains("ERROR")),
        "no error lines from a browse with security None:\n{stderr}"
    );
    for name in [
        "State",
        "GoodCount",
        "ScrapCount",
        "Temperature",
        "WorkOrder",
    ] {
        assert!(
            tree.lines()
                .any(|l| l.contains(&format!("{name}  ns=2;s=Filler.{name}"))),
            "{name} in\n{tree}"
        );
    }
    assert!(
        tree.contains("Setpoint  ns=2;s=Filler.Setpoint  Double  read/write"),
        "{tree}"
    );
    let line = tree
        .lines()
        .find(|l| l.contains("Temperature  ns="))
        .expect("temperature line");
    assert!(line.contains("Double") && line.contains("read"), "{line}");
    // The node id is the word after the browse name.
    let node = line
        .split_once("Temperature  ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .expect("node id")
        .to_owned();

    let toml = run_cli(&bin(), &["opcua", "browse", endpoint.as_str(), "--toml"]);
    let blocks = String::from_utf8_lossy(&toml.stdout).into_owned();
    assert!(
        blocks.contains(&format!("address = \"{node}\"")),
        "{blocks}"
    );

    let config = opcua_config(
        &dir.data_dir(),
        broker.port(),
        &endpoint,
        &["publishing_interval_ms = 100"],
        &[("temperature", node.as_str(), &[])],
    );
    let path = dir.write_config(&config);
    let check = run_cli(&bin(), &["check", "-c", &path.display().to_string()]);
    let checked = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(check.status.success(), "{checked}");
    assert!(checked.contains("1 subscribed, 0 polled"), "{checked}");
    let collector = Collector::start(broker.port(), "ua-browse", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let _agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    collector
        .wait_for(
            |m| good_count(m, "temperature") >= 3,
            Duration::from_secs(30),
        )
        .await
        .expect("the pasted node id works");

    // Browsing a node that does not exist says so.
    let bad = run_cli_with(
        &bin(),
        &["opcua", "browse", endpoint.as_str(), "ns=2;s=Nope"],
        &[],
        Duration::from_secs(60),
    )
    .expect("browse runs");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("BadNodeIdUnknown"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
