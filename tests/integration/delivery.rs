//! The delivery guarantees (SPEC §2, §8): nothing lost across a broker outage or a SIGKILL of
//! the agent, order per device kept, replayed messages flagged, and only quota eviction drops
//! data — counted and reported. Gaps and duplicates are judged through `seq` alone (SPEC §5).

use std::time::Duration;

use crate::common::*;
use crate::support::mqtt::Received;
use crate::support::seqcheck::{check_payloads, SeqReport};
use crate::support::{AgentProcess, Collector, Mosquitto, TestDir};

fn report_for(msgs: &[Received], device: &str) -> SeqReport {
    let reports = check_payloads(
        ROOT,
        msgs.iter()
            .map(|m| (m.topic.as_str(), m.payload.as_slice())),
    );
    reports
        .get(device)
        .cloned()
        .unwrap_or_else(|| panic!("no messages from {device}: {reports:#?}"))
}

/// Every seq from 1 to the last one arrived, none out of order.
fn assert_complete(r: &SeqReport) {
    assert_eq!(
        r.first,
        Some(1),
        "the first sample of {} has seq 1: {r:#?}",
        r.device
    );
    assert!(
        r.gaps.is_empty(),
        "no sample of {} is missing: {r:#?}",
        r.device
    );
    assert_eq!(r.out_of_order, 0, "order of {} is kept: {r:#?}", r.device);
    assert!(r.malformed.is_empty(), "{r:#?}");
    assert_eq!(Some(r.distinct as u64), r.last, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_no_sample_keeps_order_and_flags_the_backlog_as_replay() {
    let mut broker = Mosquitto::start_persistent().expect("mosquitto starts");
    let (a, b) = (start_plc().await, start_plc().await);
    let _pa = counting(&a, Duration::from_millis(20));
    let _pb = counting(&b, Duration::from_millis(20));
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let config = config_toml(
        &data,
        broker.port(),
        "per-tag",
        "",
        &[
            device("press_a", a.local_addr().port(), 50, counter_tags()),
            device("press_b", b.local_addr().port(), 50, counter_tags()),
        ],
    );
    let path = dir.write_config(&config);
    // A persistent subscriber session: the broker keeps what arrives while it reconnects.
    let collector =
        Collector::start_persistent(broker.port(), "outage-sub", &[&format!("{ROOT}/#")])
            .await
            .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");

    collector
        .wait_for(|m| m.len() >= 100, Duration::from_secs(20))
        .await
        .expect("live telemetry flows");
    broker.stop().expect("broker stops");
    // Samples keep being taken and stored while the broker is away.
    let before = status(&data)
        .map(|s| s["store"]["next_id"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    wait_status(
        &data,
        Duration::from_secs(20),
        "records stored during the outage",
        |s| s["store"]["next_id"].as_u64().unwrap_or(0) >= before + 40 && pending(s) >= 20,
    )
    .await;
    broker.restart().expect("broker restarts on the same port");
    agent
        .wait_log("connected to broker", Duration::from_secs(20))
        .await
        .expect("agent reconnects");

    // Stop the PLCs so the stream has an end, then wait until the store is drained.
    a.stop().await;
    b.stop().await;
    wait_status(
        &data,
        Duration::from_secs(30),
        "the backlog delivered",
        |s| pending(s) == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let msgs = collector.messages();
    for dev in ["press_a", "press_b"] {
        let r = report_for(&msgs, dev);
        assert_complete(&r);
        assert!(r.replayed > 0, "backlog of {dev} flagged as replay: {r:#?}");
    }
    assert!(agent.is_running(), "agent survived the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_with_sigkill_and_restarted_delivers_every_stored_sample() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(10));
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let config = config_toml(
        &data,
        broker.port(),
        "per-device",
        "",
        &[device("mixer", plc.local_addr().port(), 20, counter_tags())],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "kill-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");

    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    collector
        .wait_for(|m| m.len() >= 30, Duration::from_secs(20))
        .await
        .expect("telemetry flows");
    for round in 0..2 {
        agent.kill9().expect("SIGKILL");
        tokio::time::sleep(Duration::from_millis(300)).await;
        agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent restarts");
        let seen = collector.messages().len();
        collector
            .wait_for(|m| m.len() >= seen + 20, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("telemetry resumes after kill {round}: {e}"));
    }
    plc.stop().await;
    wait_status(
        &data,
        Duration::from_secs(30),
        "everything delivered",
        |s| pending(s) == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let r = report_for(&collector.messages(), "mixer");
    assert_complete(&r);
    // Duplicates are allowed after a crash (at-least-once); they are counted, not hidden.
    eprintln!(
        "after two SIGKILLs: {} distinct samples, {} duplicates",
        r.distinct, r.duplicates
    );
    assert!(r.distinct >= 60, "{r:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_drops_the_oldest_records_counts_them_and_keeps_running() {
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(5));
    let dir = TestDir::new();
    let data = dir.path().join("data");
    // No broker listens on this port: everything stays in the store until the quota bites.
    let dead_port = crate::support::free_port();
    let tags: Vec<TagToml> = (0..60)
        .map(|i| tag(&format!("t{i:02}"), &format!("hr:{}", i % 4), "u16"))
        .collect();
    let config = config_toml(
        &data,
        dead_port,
        "per-tag",
        "max_disk_mb = 1",
        &[device("filler", plc.local_addr().port(), 10, tags)],
    );
    let path = dir.write_config(&config);
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");

    let s = wait_status(&data, Duration::from_secs(60), "quota eviction", |s| {
        s["store"]["dropped_records"].as_u64().unwrap_or(0) > 0
    })
    .await;
    assert!(
        s["store"]["dropped_samples"].as_u64().unwrap_or(0) > 0,
        "{s:#}"
    );
    agent
        .wait_log("dropped", Duration::from_secs(5))
        .await
        .expect("the eviction is logged");
    assert!(agent.is_running(), "agent alive at its quota");
    // Evicting keeps the store near its quota instead of growing without bound.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = status(&data).expect("status");
    let disk = later["store"]["disk_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(disk < 8 * 1024 * 1024, "store stays bounded: {later:#}");
    assert!(later["store"]["dropped_records"].as_u64() >= s["store"]["dropped_records"].as_u64());

    // `buffer stats` reports the drops while the agent runs.
    let out = crate::support::run_cli(
        &bin(),
        &["buffer", "stats", "-c", path.to_str().expect("utf-8")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("dropped by quota"), "{text}");
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_the_session_gets_every_unacknowledged_sample_again() {
    // No persistence: a broker killed and restarted remembers nothing of the agent's session.
    let mut broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(10));
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let config = config_toml(
        &data,
        broker.port(),
        "per-tag",
        "",
        &[device(
            "capper",
            plc.local_addr().port(),
            20,
            counter_tags(),
        )],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "lost-session-sub", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber connects");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    collector
        .wait_for(|m| m.len() >= 100, Duration::from_secs(20))
        .await
        .expect("telemetry flows");

    // Freeze the broker: the agent keeps publishing into the socket and no PUBACK comes back,
    // so its window fills with messages the broker read but never acknowledged or delivered.
    signal(broker.pid(), "-STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Freeze the agent too, so it cannot reconnect before the subscriber is back.
    signal(agent.pid(), "-STOP");
    let subscribed = collector.subscriptions();
    // Killed while frozen: everything it held is gone, including the agent's session.
    broker.kill().expect("broker killed");
    broker
        .restart()
        .expect("broker restarts empty on the same port");
    collector
        .wait_subscribed(subscribed, Duration::from_secs(15))
        .await
        .expect("the subscriber is back before the agent");
    signal(agent.pid(), "-CONT");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while agent.log().matches("connected to broker").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "agent reconnects:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    plc.stop().await;
    wait_status(
        &data,
        Duration::from_secs(30),
        "everything delivered",
        |s| pending(s) == 0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let r = report_for(&collector.messages(), "capper");
    assert_complete(&r);
    // The messages the frozen broker swallowed were sent again, from the store.
    let resent = status(&data).map(|s| s["northbounds"][0]["resent"].as_u64().unwrap_or(0));
    assert!(
        resent.unwrap_or(0) > 0,
        "unacknowledged messages resent: {:#?}",
        status(&data)
    );
    assert!(agent.is_running());
}
