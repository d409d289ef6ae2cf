//! A northbound with a list of brokers: two real Mosquitto instances, the first stopped while
//! the agent publishes; the agent goes on with the second, says so in its status, and returns
//! to the first once it is back. A subscriber on each broker: together they saw every `seq` of
//! every device, and each saw them in order. The same with a three-node RabbitMQ cluster
//! (its MQTT plugin), one node killed with SIGKILL while the agent publishes to it.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::proxy::{FaultProxy, Mode};
use crate::support::rabbitmq::RabbitCluster;
use crate::support::seqcheck;
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

const WAIT: Duration = Duration::from_secs(30);

/// Telemetry messages of `c` so far, as (topic, JSON).
fn telemetry(c: &Collector) -> Vec<(String, serde_json::Value)> {
    c.json()
        .into_iter()
        .filter(|(t, _)| seqcheck::classify(ROOT, t).is_some())
        .collect()
}

/// The broker the agent's status snapshot names for northbound `mes`.
fn broker_in_status(data: &std::path::Path) -> Option<String> {
    status(data)?["northbounds"][0]["broker"]
        .as_str()
        .map(str::to_owned)
}

/// A board config whose northbound lists the brokers on `ports` (plus `extra` keys), one
/// counting PLC polled every 50 ms; writes it in `dir` and starts the agent on it.
fn agent_on_brokers(
    dir: &TestDir,
    plc: &edge_sim::ModbusSim,
    ports: &[u16],
    extra: &str,
) -> AgentProcess {
    let urls = ports
        .iter()
        .map(|p| format!("\"mqtt://127.0.0.1:{p}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = config_toml(
        &dir.join("data"),
        ports[0],
        "per-tag",
        "",
        &[device("plc", plc.local_addr().port(), 50, counter_tags())],
    )
    .replace(
        &format!("url = \"mqtt://127.0.0.1:{}\"", ports[0]),
        &format!("urls = [{urls}]\n{extra}"),
    );
    assert!(
        config.contains("urls = [") && config.contains(extra),
        "{config}"
    );
    let path = dir.join("board.toml");
    std::fs::write(&path, &config).expect("config written");
    AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts")
}

async fn wait_broker(data: &std::path::Path, want: &str) {
    let deadline = Instant::now() + WAIT;
    while broker_in_status(data).as_deref() != Some(want) {
        assert!(
            Instant::now() < deadline,
            "the status never named {want}: {:?}",
            broker_in_status(data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stopped_broker_is_walked_past_to_the_next_and_returned_to_with_every_seq_delivered_in_order(
) {
    let mut a = Mosquitto::start_persistent().expect("broker A starts");
    let b = Mosquitto::start().expect("broker B starts");
    let mut on_a = Collector::start_persistent(a.port(), "failover-a", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber on A");
    let on_b = Collector::start(b.port(), "failover-b", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber on B");
    let plc = start_plc().await;
    let _program = counting(&plc, Duration::from_millis(50));
    let dir = TestDir::new();
    let data = dir.join("data");
    let mut agent = agent_on_brokers(
        &dir,
        &plc,
        &[a.port(), b.port()],
        "return_to_preferred_s = 1",
    );
    let url_a = format!("mqtt://127.0.0.1:{}", a.port());
    let url_b = format!("mqtt://127.0.0.1:{}", b.port());

    on_a.wait_for(|m| m.len() > 20, WAIT)
        .await
        .expect("data on A");
    wait_broker(&data, &url_a).await;
    // Stopped, not SIGKILLed: a Mosquitto killed with SIGKILL loses the messages it had
    // acknowledged but not yet forwarded (it keeps them in memory), which no publisher can
    // recover; stopped, it saves them for its persistent subscriber.
    a.stop().expect("A stopped");
    on_b.wait_for(|m| m.len() > 20, WAIT)
        .await
        .expect("the agent went on with B");
    wait_broker(&data, &url_b).await;
    agent
        .wait_log("trying the next broker of the list", WAIT)
        .await
        .expect("the walk is logged");

    a.restart().expect("A back");
    agent
        .wait_log("the preferred broker is back", WAIT)
        .await
        .expect("the agent returns to A");
    wait_broker(&data, &url_a).await;
    let on_a_before = on_a.len();
    on_a.wait_for(|m| m.len() > on_a_before + 20, WAIT)
        .await
        .expect("data on A again");
    agent.terminate().expect("agent stops");

    let seen_a = telemetry(&on_a);
    let seen_b = telemetry(&on_b);
    for (name, seen) in [("A", &seen_a), ("B", &seen_b)] {
        for (device, r) in seqcheck::check(ROOT, seen) {
            assert!(r.malformed.is_empty(), "{name} {device}: {:?}", r.malformed);
            assert!(r.is_ordered(), "{name} saw {device} out of order: {r:?}");
        }
    }
    let both: Vec<(String, serde_json::Value)> = seen_a.iter().chain(&seen_b).cloned().collect();
    let union = seqcheck::check(ROOT, &both);
    assert!(!union.is_empty(), "telemetry arrived");
    for (device, r) in &union {
        assert!(
            r.gaps.is_empty(),
            "{device}: seqs missing on both brokers: {:?}",
            r.gaps
        );
        assert!(r.distinct > 40, "{device}: {r:?}");
    }
    on_a.stop().await;
    plc.stop().await;
}

/// A replay capped at 20 records a second: an outage's backlog (about 100 records)
/// takes at least the time the cap allows (uncapped it drains in milliseconds), nothing is
/// missing and everything arrives in order, with live data after it.
#[tokio::test]
async fn a_capped_replay_holds_its_pace_and_drains_the_backlog_in_order() {
    const CAP: f64 = 20.0;
    // The agent reaches the broker through a proxy that the test blackholes; the subscriber
    // stays connected to the broker, so arrival times are the agent's sending times.
    let broker = Mosquitto::start().expect("broker starts");
    let proxy = FaultProxy::start(([127, 0, 0, 1], broker.port()).into())
        .await
        .expect("proxy");
    let mut c = Collector::start(broker.port(), "paced", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber");
    let plc = start_plc().await;
    let _program = counting(&plc, Duration::from_millis(50));
    let dir = TestDir::new();
    let data = dir.join("data");
    let config = config_toml(
        &data,
        proxy.port(),
        "per-device",
        "",
        &[device("plc", plc.local_addr().port(), 100, counter_tags())],
    )
    .replace(
        "batching = \"per-device\"",
        &format!("batching = \"per-device\"\nreplay_records_per_s = {CAP}"),
    );
    assert!(config.contains("replay_records_per_s = 20"), "{config}");
    let path = dir.join("board.toml");
    std::fs::write(&path, &config).expect("config written");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    c.wait_for(|m| m.len() > 10, WAIT).await.expect("live data");
    // Keep-alive 5 s: the agent notices the dead path after about 7.5 s.
    proxy.set(Mode::Blackhole);
    agent
        .wait_log("broker unreachable", WAIT)
        .await
        .expect("the path is noticed dead");
    // Records stored from here on are the replay (those sent into the dead path go again
    // as resends of the live data they were).
    tokio::time::sleep(Duration::from_secs(7)).await;
    proxy.set(Mode::Pass);
    let replayed = |m: &[crate::support::mqtt::Received]| {
        m.iter()
            .filter(|r| r.topic.ends_with("/_batch"))
            .filter(|r| {
                r.json()
                    .is_some_and(|j| j["replay"] == serde_json::json!(true))
            })
            .count()
    };
    // Drained: live (not replayed) batches arrive after the replayed ones.
    c.wait_for(
        |m| {
            let last_replay = m.iter().rposition(|r| {
                r.json()
                    .is_some_and(|j| j["replay"] == serde_json::json!(true))
            });
            last_replay.is_some_and(|i| m.len() > i + 5)
        },
        Duration::from_secs(60),
    )
    .await
    .expect("the backlog drained and live data followed");
    agent.terminate().expect("agent stops");

    let messages = c.messages();
    let times: Vec<Instant> = messages
        .iter()
        .filter(|r| {
            r.json()
                .is_some_and(|j| j["replay"] == serde_json::json!(true))
        })
        .map(|r| r.at)
        .collect();
    let n = replayed(&messages) as f64;
    assert!(n >= 50.0, "a backlog of about 70 records, got {n}");
    let took = times
        .last()
        .zip(times.first())
        .map_or(0.0, |(l, f)| l.duration_since(*f).as_secs_f64());
    // One second's worth may go at once; the rest at the cap. Arrival times are the
    // subscriber's: a loaded machine can hold back the first arrivals, which shortens the span
    // seen by that delay; a second of it is allowed (uncapped, the span is milliseconds).
    let least = (n - CAP - 1.0) / CAP - 1.0;
    assert!(
        took >= least,
        "{n} replayed records took {took:.2} s; the cap allows no less than {least:.2} s (with 1 s of delivery delay)"
    );
    let seen = telemetry(&c);
    for (device, r) in seqcheck::check(ROOT, &seen) {
        assert!(r.gaps.is_empty(), "{device}: {:?}", r.gaps);
        assert!(r.is_ordered(), "{device}: {r:?}");
        assert!(r.malformed.is_empty(), "{device}: {:?}", r.malformed);
    }
    c.stop().await;
    plc.stop().await;
    drop(broker);
}

/// A three-node RabbitMQ cluster, the agent preferring node 1, the subscriber on node 3: node 1
/// is killed (SIGKILL) while the agent publishes to it; the agent goes on with node 2 and the
/// subscriber sees every `seq`, in order. (RabbitMQ acknowledges a QoS 1 publish once the
/// queues it is routed to have it, so a killed node loses nothing it acknowledged.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_cluster_node_killed_while_publishing_loses_nothing() {
    let mut cluster = tokio::task::spawn_blocking(|| RabbitCluster::start(3))
        .await
        .expect("joins")
        .expect("a three-node RabbitMQ cluster starts");
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.mqtt_port).collect();
    let c = Collector::start(ports[2], "rabbit-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber on node 3");
    let plc = start_plc().await;
    let _program = counting(&plc, Duration::from_millis(50));
    let dir = TestDir::new();
    let data = dir.join("data");
    let mut agent = agent_on_brokers(&dir, &plc, &ports, "return_to_preferred_s = 0");
    c.wait_for(|m| m.len() > 40, WAIT)
        .await
        .expect("data through node 1");
    wait_broker(&data, &format!("mqtt://127.0.0.1:{}", ports[0])).await;
    cluster.nodes[0].kill().expect("node 1 killed");
    agent
        .wait_log("trying the next broker of the list", WAIT)
        .await
        .expect("the walk");
    wait_broker(&data, &format!("mqtt://127.0.0.1:{}", ports[1])).await;
    let before = c.len();
    c.wait_for(|m| m.len() > before + 40, WAIT)
        .await
        .expect("data through node 2");
    agent.terminate().expect("agent stops");
    let seen = telemetry(&c);
    let report = seqcheck::check(ROOT, &seen);
    assert!(!report.is_empty());
    for (device, r) in report {
        assert!(r.malformed.is_empty(), "{device}: {:?}", r.malformed);
        assert!(r.gaps.is_empty(), "{device}: lost {:?}", r.gaps);
        assert!(r.is_ordered(), "{device}: {r:?}");
        assert!(r.distinct > 60, "{device}: {r:?}");
    }
    plc.stop().await;
    drop(cluster);
}

/// A first broker that accepts TCP but never answers CONNECT (a hung broker, or something else
/// on the port): the agent gives up on it after `connect_timeout_ms`, says why, and publishes
/// through the second.
#[tokio::test]
async fn a_broker_that_never_answers_connect_is_walked_past_with_the_reason() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a silent listener");
    let silent_port = silent.local_addr().expect("addr").port();
    // Accepts and holds every connection, never writes a byte.
    let _holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().take(32).flatten() {
            held.push(s);
        }
    });
    let b = Mosquitto::start().expect("broker B starts");
    let on_b = Collector::start(b.port(), "silent-b", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber on B");
    let plc = start_plc().await;
    let _program = counting(&plc, Duration::from_millis(50));
    let dir = TestDir::new();
    let data = dir.join("data");
    let mut agent = agent_on_brokers(
        &dir,
        &plc,
        &[silent_port, b.port()],
        "return_to_preferred_s = 0\nconnect_timeout_ms = 1000",
    );
    on_b.wait_for(|m| m.len() > 20, WAIT)
        .await
        .expect("data through B");
    wait_broker(&data, &format!("mqtt://127.0.0.1:{}", b.port())).await;
    let log = agent.log();
    let walked = log
        .lines()
        .find(|l| {
            l.contains("trying the next broker of the list") && l.contains(&silent_port.to_string())
        })
        .unwrap_or_else(|| panic!("no walk past the silent broker in the log:\n{log}"));
    assert!(walked.contains("reason="), "the reason is given: {walked}");
    agent.terminate().expect("agent stops");
    plc.stop().await;
}
