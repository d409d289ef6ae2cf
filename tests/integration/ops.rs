//! Running as a service: sd_notify READY and watchdog pings to a socket the test binds, the
//! admin endpoint (`/metrics` parses and moves, `/ready` follows the broker), SIGHUP reloads
//! (a broken config keeps the old one; devices added and removed without a lost or reordered
//! sample), and a SIGTERM stop within its bound.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpStream, UnixDatagram};

use crate::common::*;
use crate::support::seqcheck;
use crate::support::{free_port, AgentProcess, Collector, Mosquitto, TestDir};

/// `(status, body)` of `GET path` on the admin endpoint.
pub(crate) async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch).await??;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

pub(crate) async fn wait_status_code(port: u16, path: &str, want: u16, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match get(port, path).await {
            Ok((code, body)) if code == want => return body,
            Ok((code, body)) => last = format!("{code} {body}"),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{path} did not answer {want} within {limit:?}; last: {last}");
}

/// Every sample line as `(name, labels, value)`; panics on a line that is not the text format.
pub(crate) fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                assert!(rest.ends_with('}'), "unclosed labels: {line}");
                (n.to_owned(), rest.trim_end_matches('}').to_owned())
            }
            None => (series.to_owned(), String::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        out.push((name, labels, value));
    }
    out
}

pub(crate) fn metric(samples: &[(String, String, f64)], name: &str, label: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.contains(label))
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no {name}{{{label}}}"))
}

pub(crate) fn with_admin(config: String, port: u16) -> String {
    format!("{config}\n[admin]\nlisten = \"127.0.0.1:{port}\"\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_tells_systemd_it_is_ready_and_feeds_the_watchdog() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let dir = TestDir::new();
    let config = config_toml(
        &dir.path().join("data"),
        broker.port(),
        "per-tag",
        "",
        &[device(
            "press",
            plc.local_addr().port(),
            100,
            counter_tags(),
        )],
    );
    let path = dir.write_config(&config);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the notify socket");
    let sock_env = sock_path.display().to_string();
    let mut agent = AgentProcess::spawn(
        &bin(),
        &path,
        &[("NOTIFY_SOCKET", &sock_env), ("WATCHDOG_USEC", "1000000")],
    )
    .expect("agent starts");

    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline
        && !(seen.iter().any(|m| m.starts_with("READY=1"))
            && seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3)
    {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let ready_at = seen.iter().position(|m| m.starts_with("READY=1"));
    let first_ping = seen.iter().position(|m| m == "WATCHDOG=1");
    assert!(
        ready_at.is_some(),
        "READY=1 arrives: {seen:?}\n{}",
        agent.log()
    );
    assert!(
        seen.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "watchdog pings arrive at half the interval: {seen:?}"
    );
    assert!(
        ready_at < first_ping,
        "READY comes before the first ping: {seen:?}"
    );

    let status = agent.terminate().expect("stops on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    let mut tail = Vec::new();
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), sock.recv(&mut buf)).await
    {
        tail.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        tail.iter().any(|m| m.starts_with("STOPPING=1")),
        "STOPPING=1 is sent on SIGTERM: {tail:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic_and_ready_follows_the_broker() {
    let mut broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let dir = TestDir::new();
    let admin = free_port();
    let config = with_admin(
        config_toml(
            &dir.path().join("data"),
            broker.port(),
            "per-tag",
            "",
            &[device("press", plc.local_addr().port(), 50, counter_tags())],
        ),
        admin,
    );
    let path = dir.write_config(&config);
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    wait_status_code(admin, "/live", 200, Duration::from_secs(20)).await;
    wait_status_code(admin, "/ready", 200, Duration::from_secs(20)).await;

    let (code, first) = get(admin, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    let first = parse_metrics(&first);
    let families: BTreeSet<&str> = first.iter().map(|(n, _, _)| n.as_str()).collect();
    for want in [
        "edge_agent_device_polls_total",
        "edge_agent_device_errors_total",
        "edge_agent_device_read_latency_seconds_bucket",
        "edge_agent_device_read_latency_seconds_count",
        "edge_agent_northbound_connected",
        "edge_agent_northbound_inflight",
        "edge_agent_northbound_published_total",
        "edge_agent_northbound_acked_total",
        "edge_agent_store_records",
        "edge_agent_store_oldest_record_age_seconds",
        "edge_agent_store_disk_bytes",
        "edge_agent_store_dropped_records_total",
        "process_resident_memory_bytes",
    ] {
        assert!(families.contains(want), "{want} is exported: {families:?}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, second) = get(admin, "/metrics").await.expect("metrics");
    let second = parse_metrics(&second);
    for (name, label) in [
        ("edge_agent_device_polls_total", "device=\"press\""),
        (
            "edge_agent_device_read_latency_seconds_count",
            "device=\"press\"",
        ),
        ("edge_agent_northbound_acked_total", "northbound=\"mes\""),
        (
            "edge_agent_northbound_published_total",
            "northbound=\"mes\"",
        ),
    ] {
        assert!(
            metric(&second, name, label) > metric(&first, name, label),
            "{name} moves with traffic"
        );
    }
    assert_eq!(
        metric(&second, "edge_agent_northbound_connected", "mes"),
        1.0
    );

    broker.stop().expect("broker stops");
    let body = wait_status_code(admin, "/ready", 503, Duration::from_secs(20)).await;
    assert!(
        body.contains("mes"),
        "the reason names the northbound: {body}"
    );
    // Liveness does not depend on the broker: the data is buffered.
    assert_eq!(get(admin, "/live").await.expect("live").0, 200);
    broker.restart().expect("broker comes back");
    wait_status_code(admin, "/ready", 200, Duration::from_secs(30)).await;
    agent.terminate().expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one_running() {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let dir = TestDir::new();
    let config = config_toml(
        &dir.path().join("data"),
        broker.port(),
        "per-tag",
        "",
        &[device("press", plc.local_addr().port(), 50, counter_tags())],
    );
    let path = dir.write_config(&config);
    let collector = Collector::start(broker.port(), "hup-broken", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    let topic = format!("{ROOT}/press/count");
    collector
        .wait_for(
            |m| m.iter().any(|r| r.topic == topic),
            Duration::from_secs(20),
        )
        .await
        .expect("data flows");

    std::fs::write(
        &path,
        config.replace(
            "poll_interval_ms = 50",
            "poll_interval_ms = \"fast\"\nbogus_key = 1",
        ),
    )
    .expect("write broken config");
    agent.sighup().expect("SIGHUP");
    agent
        .wait_log("still running the previous one", Duration::from_secs(10))
        .await
        .expect("the refusal is logged");
    let log = agent.log();
    assert!(
        log.contains("poll_interval_ms"),
        "every error is logged: {log}"
    );
    assert!(log.contains("bogus_key"), "every error is logged: {log}");

    let before = collector
        .messages()
        .iter()
        .filter(|r| r.topic == topic)
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = collector
        .messages()
        .iter()
        .filter(|r| r.topic == topic)
        .count();
    assert!(
        after > before + 5,
        "polling goes on with the old config: {before} -> {after}"
    );
    assert!(agent.is_running(), "the agent is still running");
    agent.terminate().expect("stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_devices_without_losing_or_reordering_a_sample_then_sigterm_stops_in_time(
) {
    let broker = Mosquitto::start().expect("mosquitto starts");
    let (a, b) = (start_plc().await, start_plc().await);
    let _pa = counting(&a, Duration::from_millis(10));
    let _pb = counting(&b, Duration::from_millis(10));
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let dev_a = device("press_a", a.local_addr().port(), 50, counter_tags());
    let dev_b = device("press_b", b.local_addr().port(), 50, counter_tags());
    let only_a = config_toml(
        &data,
        broker.port(),
        "per-tag",
        "",
        std::slice::from_ref(&dev_a),
    );
    let both = config_toml(
        &data,
        broker.port(),
        "per-tag",
        "",
        &[dev_a.clone(), dev_b.clone()],
    );
    let only_b = config_toml(
        &data,
        broker.port(),
        "per-tag",
        "",
        std::slice::from_ref(&dev_b),
    );
    let path = dir.write_config(&only_a);
    let collector = Collector::start(broker.port(), "hup-devices", &[&format!("{ROOT}/#")])
        .await
        .expect("subscriber");
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    let a_topic = format!("{ROOT}/press_a/count");
    let b_topic = format!("{ROOT}/press_b/count");
    collector
        .wait_for(
            |m| m.iter().filter(|r| r.topic == a_topic).count() >= 10,
            Duration::from_secs(20),
        )
        .await
        .expect("press_a flows");
    assert!(!collector.messages().iter().any(|r| r.topic == b_topic));

    std::fs::write(&path, &both).expect("add press_b");
    agent.sighup().expect("SIGHUP");
    collector
        .wait_for(
            |m| m.iter().filter(|r| r.topic == b_topic).count() >= 10,
            Duration::from_secs(20),
        )
        .await
        .expect("the added device is polled");

    std::fs::write(&path, &only_b).expect("remove press_a");
    agent.sighup().expect("SIGHUP");
    agent
        .wait_log("removed=press_a", Duration::from_secs(10))
        .await
        .expect("the removal is applied");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let a_after_removal = collector
        .messages()
        .iter()
        .filter(|r| r.topic == a_topic)
        .count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        collector
            .messages()
            .iter()
            .filter(|r| r.topic == a_topic)
            .count(),
        a_after_removal,
        "the removed device is no longer polled"
    );

    let started = Instant::now();
    let status = agent.terminate().expect("stops on SIGTERM");
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped within its bound"
    );
    // What was acknowledged before the stop arrives; give the last PUBACKs a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reports = seqcheck::check(ROOT, &collector.json());
    for dev in ["press_a", "press_b"] {
        let r = reports
            .get(dev)
            .unwrap_or_else(|| panic!("{dev} reported: {reports:?}"));
        assert!(
            r.is_complete(),
            "{dev}: no sample lost across the reloads: {r:?}"
        );
        assert!(r.is_ordered(), "{dev}: no sample reordered: {r:?}");
    }
}
