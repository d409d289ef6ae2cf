//! The OPC UA device task against the simulated server over real sockets: subscribed and polled
//! values with source timestamps, a missing node that goes bad alone, writes with the
//! variable's type enforced, recovery after a server restart, a server that accepts
//! connections but never answers (one outage, a growing backoff), and the certificate trust
//! workflow with SignAndEncrypt.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use edge_driver::{WriteError, WriteHandle};
use edge_model::{Batch, DeviceId, Quality, Sample, TagName, Value};
use edge_opcua::pki::Pki;
use edge_opcua::{
    Deadband, DeviceSpec, Identity, OpcUaDevice, PkiSettings, SecurityMode, SecurityPolicy,
    TagMode, TagSpec,
};
use edge_sim::opcua::{OpcUaSim, OpcUaSimOptions};
use edge_sim::HangingFront;
use tokio::sync::{mpsc, watch};

const APP_URI: &str = "urn:edge-agent:test-gw";

fn sub(ms: u64) -> TagMode {
    TagMode::Subscription {
        publishing_interval: Duration::from_millis(ms),
        sampling_interval: Duration::from_millis(ms),
        queue_size: 10,
        deadband: Deadband::None,
    }
}

fn poll(ms: u64) -> TagMode {
    TagMode::Polling {
        interval: Duration::from_millis(ms),
        deadband: None,
        heartbeat: None,
    }
}

fn tag(name: &str, node: &str, mode: TagMode, writable: bool) -> TagSpec {
    TagSpec {
        name: TagName(name.into()),
        node: node.parse().expect("node id"),
        data_type: None,
        scale: 1.0,
        offset: 0.0,
        mode,
        writable,
    }
}

fn spec(endpoint: String, pki: &Path, tags: Vec<TagSpec>) -> DeviceSpec {
    DeviceSpec {
        name: DeviceId("line".into()),
        endpoint,
        security_policy: SecurityPolicy::None,
        security_mode: SecurityMode::None,
        identity: Identity::Anonymous,
        session_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(3),
        keep_alive: Duration::from_secs(1),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(1),
        max_nodes_per_read: 0,
        pki: PkiSettings {
            dir: pki.to_path_buf(),
            application_uri: APP_URI.into(),
            application_name: "edge-agent test-gw".into(),
            trust_on_first_use: false,
            config_path: None,
        },
        tags,
    }
}

async fn start_sim(dir: &Path, options: impl FnOnce(&mut OpcUaSimOptions)) -> OpcUaSim {
    let mut o = OpcUaSimOptions::new(dir.join("server-pki"));
    options(&mut o);
    OpcUaSim::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), o)
        .await
        .expect("simulator starts")
}

/// Samples received so far, and a way to wait for a condition on them.
struct Received {
    rx: mpsc::Receiver<Batch>,
    samples: Vec<Sample>,
}

impl Received {
    async fn until(&mut self, limit: Duration, what: &str, pred: impl Fn(&[Sample]) -> bool) {
        let deadline = Instant::now() + limit;
        while !pred(&self.samples) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(b)) => self.samples.extend(b.samples),
                Ok(None) => panic!("the device task stopped while waiting for {what}"),
                Err(_) => panic!(
                    "timed out waiting for {what}; last samples: {:#?}",
                    &self.samples[self.samples.len().saturating_sub(10)..]
                ),
            }
        }
    }

    /// Takes what was sent meanwhile, without waiting.
    fn drain(&mut self) {
        while let Ok(b) = self.rx.try_recv() {
            self.samples.extend(b.samples);
        }
    }

    fn last(&self, tag: &str) -> Option<&Sample> {
        self.samples.iter().rev().find(|s| s.tag.0 == tag)
    }

    fn count_good(&self, tag: &str) -> usize {
        self.samples
            .iter()
            .filter(|s| s.tag.0 == tag && s.quality == Quality::Good)
            .count()
    }
}

fn run(spec: DeviceSpec) -> (Received, WriteHandle, watch::Sender<bool>) {
    // The device task's log, shown when a test fails (RUST_LOG filters).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("edge_opcua=debug")),
        )
        .with_test_writer()
        .try_init();
    let device = OpcUaDevice::new(spec);
    let handle = device.handle();
    let (tx, rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(device.run(tx, stop_rx));
    (
        Received {
            rx,
            samples: Vec::new(),
        },
        handle,
        stop,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_and_polled_values_flow_with_source_timestamps_and_a_missing_node_goes_bad_alone(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(dir.path(), |_| {}).await;
    let ns = |p: &str| format!("ns=2;s={p}");
    let s = spec(
        sim.endpoint_url(),
        &dir.path().join("pki"),
        vec![
            tag("temperature", &ns("Filler.Temperature"), sub(100), false),
            tag("good_count", &ns("Filler.GoodCount"), sub(100), false),
            tag("work_order", &ns("Filler.WorkOrder"), poll(200), false),
            tag("missing", &ns("Filler.NoSuchThing"), sub(100), false),
            tag("setpoint", &ns("Filler.Setpoint"), poll(200), true),
            tag("speed", &ns("Filler.Speed"), poll(1000), true),
        ],
    );
    assert_eq!(
        sim.node_id("Filler.Temperature").await,
        Some(ns("Filler.Temperature"))
    );
    let (mut got, handle, stop) = run(s);
    got.until(Duration::from_secs(20), "values of every good tag", |s| {
        ["temperature", "good_count", "work_order", "setpoint"]
            .iter()
            .all(|t| {
                s.iter()
                    .filter(|x| x.tag.0 == *t && x.quality == Quality::Good)
                    .count()
                    >= 3
            })
            && s.iter().any(|x| x.tag.0 == "missing")
    })
    .await;
    let t = got.last("temperature").expect("temperature");
    assert!(matches!(t.value, Some(Value::F64(_))));
    let source = t.source_ts_ms.expect("a source timestamp");
    assert!(source.abs_diff(t.read_ts_ms) < 5_000, "{t:?}");
    assert!(matches!(
        got.last("work_order").and_then(|s| s.value.clone()),
        Some(Value::String(w)) if w.starts_with("WO-2026-")
    ));
    let missing = got.last("missing").expect("missing");
    assert_eq!(missing.quality, Quality::Bad);
    assert_eq!(missing.value, None);
    assert_eq!(
        got.samples.iter().filter(|s| s.tag.0 == "missing").count(),
        1,
        "a bad tag is reported once"
    );

    // Writes take the variable's type: a Double setpoint, a Float speed.
    let limit = Duration::from_secs(5);
    handle
        .write("setpoint", &Value::I64(25), limit)
        .await
        .expect("setpoint written");
    assert_eq!(sim.value("Filler.Setpoint").await, Some(opcua_double(25.0)));
    let e = handle
        .write("setpoint", &Value::String("hot".into()), limit)
        .await
        .expect_err("a string is not a Double");
    assert!(e.is_rejection(), "{e}");
    let e = handle
        .write("speed", &Value::F64(1e300), limit)
        .await
        .expect_err("out of Float range");
    assert!(e.is_rejection(), "{e}");
    assert_eq!(
        handle.write("temperature", &Value::F64(1.0), limit).await,
        Err(WriteError::NotWritable("temperature".into()))
    );
    got.until(
        Duration::from_secs(10),
        "the written setpoint read back",
        |s| {
            s.iter()
                .rev()
                .find(|x| x.tag.0 == "setpoint")
                .is_some_and(|x| x.value == Some(Value::F64(25.0)))
        },
    )
    .await;
    let _ = stop.send(true);
}

fn opcua_double(v: f64) -> edge_opcua::opcua::types::Variant {
    edge_opcua::opcua::types::Variant::Double(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_turns_tags_bad_then_subscriptions_come_back_by_themselves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(dir.path(), |_| {}).await;
    let s = spec(
        sim.endpoint_url(),
        &dir.path().join("pki"),
        vec![
            tag("good_count", "ns=2;s=Filler.GoodCount", sub(100), false),
            tag("temperature", "ns=2;s=Filler.Temperature", poll(200), false),
        ],
    );
    let (mut got, _handle, stop) = run(s);
    got.until(Duration::from_secs(20), "first values", |s| {
        s.iter().filter(|x| x.quality == Quality::Good).count() >= 6
    })
    .await;
    sim.stop().await;
    got.until(Duration::from_secs(15), "both tags bad", |s| {
        ["good_count", "temperature"].iter().all(|t| {
            s.iter()
                .rev()
                .find(|x| x.tag.0 == *t)
                .is_some_and(|x| x.quality == Quality::Bad)
        })
    })
    .await;
    let good_before = got.count_good("good_count");
    sim.restart().await.expect("server restarts");
    got.until(
        Duration::from_secs(30),
        "values again after the restart",
        |s| {
            s.iter()
                .filter(|x| x.tag.0 == "good_count" && x.quality == Quality::Good)
                .count()
                >= good_before + 5
                && s.iter()
                    .rev()
                    .find(|x| x.tag.0 == "temperature")
                    .is_some_and(|x| x.quality == Quality::Good)
        },
    )
    .await;
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_accepts_connections_but_never_answers_is_one_outage_with_a_growing_backoff()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(dir.path(), |_| {}).await;
    let front = HangingFront::start(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), sim.local_addr())
        .await
        .expect("front");
    let request_timeout = Duration::from_millis(500);
    let mut s = spec(
        format!("opc.tcp://{}/", front.local_addr()),
        &dir.path().join("pki"),
        vec![
            tag("good_count", "ns=2;s=Filler.GoodCount", sub(100), false),
            tag("temperature", "ns=2;s=Filler.Temperature", poll(100), false),
        ],
    );
    s.request_timeout = request_timeout;
    s.backoff_min = Duration::from_millis(50);
    s.backoff_max = Duration::from_millis(400);
    let (mut got, _handle, stop) = run(s);
    let both_good = |s: &[Sample]| {
        ["good_count", "temperature"].iter().all(|t| {
            s.iter()
                .any(|x| x.tag.0 == *t && x.quality == Quality::Good)
        })
    };
    got.until(Duration::from_secs(20), "first values", both_good)
        .await;

    // The server hangs: its connection goes silent, and every new one is accepted and never
    // sent the Hello's acknowledgement.
    let start = got.samples.len();
    let before = front.accepted().len();
    front.set_frozen(true);
    let deadline = Instant::now() + Duration::from_secs(60);
    let times = loop {
        got.drain();
        let accepted = front.accepted();
        if accepted.len() >= before + 6 {
            break accepted[before..before + 6].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "only {} reconnects",
            accepted.len() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    let steps = [100, 200, 400, 400, 400].map(Duration::from_millis);
    for (i, (gap, step)) in gaps.iter().zip(steps).enumerate() {
        // Each attempt waits out the request timeout, then at least half of its step.
        let floor = request_timeout + step / 2 - Duration::from_millis(20);
        assert!(
            *gap >= floor,
            "reconnect {i} came {gap:?} after the one before: {gaps:?}"
        );
    }
    let during = &got.samples[start..];
    for t in ["good_count", "temperature"] {
        let bad = during
            .iter()
            .filter(|x| x.tag.0 == t && x.quality == Quality::Bad)
            .count();
        assert_eq!(bad, 1, "{t} is bad once for the whole outage: {during:?}");
    }
    assert!(
        during.iter().all(|x| x.quality == Quality::Bad),
        "{during:?}"
    );

    // The server answers again: a new session, and values.
    let back = got.samples.len();
    front.set_frozen(false);
    got.until(Duration::from_secs(20), "values after the outage", |s| {
        both_good(&s[back..])
    })
    .await;
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_and_encrypt_is_refused_until_the_servers_certificate_is_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(dir.path(), |_| {}).await;
    let pki_dir = dir.path().join("pki");
    let pki = Pki::new(&pki_dir);
    pki.ensure_own_certificate(APP_URI, "edge-agent test-gw")
        .expect("gateway certificate");
    let mut s = spec(
        sim.endpoint_url(),
        &pki_dir,
        vec![tag(
            "good_count",
            "ns=2;s=Filler.GoodCount",
            sub(100),
            false,
        )],
    );
    s.security_policy = SecurityPolicy::Basic256Sha256;
    s.security_mode = SecurityMode::SignAndEncrypt;
    let (mut got, _handle, stop) = run(s);
    // Refused: the tag is bad and the certificate waits in rejected/.
    got.until(Duration::from_secs(20), "the tag bad", |s| {
        s.iter().any(|x| x.quality == Quality::Bad)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let rejected = loop {
        let list = pki.list().expect("list");
        if let Some(e) = list
            .into_iter()
            .find(|e| e.state == edge_opcua::pki::TrustState::Rejected)
        {
            break e;
        }
        assert!(Instant::now() < deadline, "no certificate was rejected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.count_good("good_count"), 0);
    pki.accept(&rejected.thumbprint).expect("accept");
    got.until(Duration::from_secs(30), "values over SignAndEncrypt", |s| {
        s.iter().filter(|x| x.quality == Quality::Good).count() >= 3
    })
    .await;
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tag_lists_fit_the_servers_limits_per_read_and_per_subscription() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The simulated server takes 1000 monitored items per subscription and, here, 5 nodes per
    // Read: 1200 subscribed tags need two subscriptions, 12 polled tags three Reads.
    let sim = start_sim(dir.path(), |o| {
        o.extra_variables = 1212;
        o.max_nodes_per_read = 5;
    })
    .await;
    let mut tags: Vec<TagSpec> = (0..1200)
        .map(|i| {
            tag(
                &format!("s{i:04}"),
                &format!("ns=2;s=Load.V{i:04}"),
                sub(100),
                false,
            )
        })
        .collect();
    tags.extend((1200..1212).map(|i| {
        tag(
            &format!("p{i:04}"),
            &format!("ns=2;s=Load.V{i:04}"),
            poll(200),
            false,
        )
    }));
    let (mut got, _handle, stop) = run(spec(sim.endpoint_url(), &dir.path().join("pki"), tags));
    got.until(Duration::from_secs(60), "a good value of every tag", |s| {
        let mut seen = std::collections::HashSet::new();
        for x in s.iter().filter(|x| x.quality == Quality::Good) {
            seen.insert(x.tag.0.as_str());
        }
        seen.len() == 1212
    })
    .await;
    let bad: Vec<&Sample> = got
        .samples
        .iter()
        .filter(|s| s.quality == Quality::Bad)
        .collect();
    assert!(bad.is_empty(), "no tag was refused: {bad:?}");
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_only_polled_tags_polls_and_writes_and_stops_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim(dir.path(), |_| {}).await;
    let s = spec(
        sim.endpoint_url(),
        &dir.path().join("pki"),
        vec![
            tag("good_count", "ns=2;s=Filler.GoodCount", poll(100), false),
            tag("speed", "ns=2;s=Filler.Speed", poll(100), true),
        ],
    );
    let device = OpcUaDevice::new(s);
    let handle = device.handle();
    let (tx, rx) = mpsc::channel(1024);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(device.run(tx, stop_rx));
    let mut got = Received {
        rx,
        samples: Vec::new(),
    };
    got.until(Duration::from_secs(20), "polled values", |s| {
        s.iter()
            .filter(|x| x.tag.0 == "good_count" && x.quality == Quality::Good)
            .count()
            >= 5
    })
    .await;
    handle
        .write("speed", &Value::F64(80.5), Duration::from_secs(5))
        .await
        .expect("speed written as a Float");
    got.until(Duration::from_secs(10), "the new speed", |s| {
        s.iter()
            .any(|x| x.tag.0 == "speed" && x.value == Some(Value::F32(80.5)))
    })
    .await;
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the task stops when asked")
        .expect("the task ends cleanly");
}
