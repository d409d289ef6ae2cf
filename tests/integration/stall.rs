//! The publisher against a broker that stops reading for a moment while the window holds more
//! than the sockets can buffer: the condition of the packet-id collision stall. With the MQTT
//! client's event loop polled from a `select!` that other wake-ups (new records in the store)
//! cancel, a publish stuck in a full socket was lost inside the client; its packet id came
//! round again, the client waited for a PUBACK that could never come, and after two
//! keep-alives it gave up ("Timeout while waiting to resolve collision") and reconnected.
//! A broker that merely pauses must cost no reconnect and no lost message.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use edge_agent::daemon::runtime;
use edge_agent::northbound::uns::{GatewayInfo, Publisher};
use edge_config::SystemSecrets;
use edge_model::{Batch, DeviceId, Sample, TagName, Value};
use edge_store::Store;
use mes_bridge::{Catalog, UnsEncoder};
use tokio::sync::{mpsc, watch};

use crate::common;
use crate::support::{Mosquitto, TestDir};

/// Samples per record: one per-device message of about 90 KB of JSON.
const SAMPLES: usize = 1000;
/// How long the broker is stopped; under the 5 s keep-alive, so the pause alone is no outage.
const PAUSE: Duration = Duration::from_secs(3);
/// Longer than two keep-alives (5 s each): a collision would have ended the connection.
const CATCH_UP: Duration = Duration::from_secs(30);

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill {sig} {pid} failed: {status}");
    }
    Ok(())
}

/// Commits one record of `SAMPLES` values every `every` until `stop` turns true.
async fn generate(
    tx: mpsc::Sender<Batch>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> u64 {
    let tags: Vec<TagName> = (0..SAMPLES).map(|t| TagName(format!("t{t:04}"))).collect();
    let device = DeviceId("dev0".into());
    let mut n = 0u64;
    let mut tick = tokio::time::interval(every);
    // Bounded: the test ends generation after a few seconds; this is the backstop.
    for _ in 0..100_000 {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let ts = edge_model::now_ms();
        let samples = tags
            .iter()
            .enumerate()
            .map(|(k, t)| Sample::good(t.clone(), Value::F64((n * 7 + k as u64) as f64 * 0.5), ts))
            .collect();
        if tx
            .send(Batch {
                device: device.clone(),
                samples,
            })
            .await
            .is_err()
        {
            break;
        }
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_pauses_with_the_sockets_full_costs_no_reconnect_and_no_message() {
    let mut broker = Mosquitto::start().expect("mosquitto");
    let dir = TestDir::new();
    let toml = common::config_toml(
        &dir.data_dir(),
        broker.port(),
        "per-device",
        "",
        &[common::device(
            "dev0",
            1,
            1000,
            vec![common::tag("t0", "hr:0", "f64")],
        )],
    );
    let mut cfg =
        edge_config::parse(&toml, &dir.join("agent.toml"), &SystemSecrets).expect("valid config");
    let nb = cfg.northbounds.first_mut().expect("a northbound");
    // A window far larger than the loopback socket buffers (256 × 90 KB ≈ 23 MB), so that
    // writes block while the broker is stopped.
    nb.max_inflight = 4096;
    nb.max_inflight_bytes = 64 << 20;
    let nb = nb.clone();
    let (store, _) = Store::open(
        &runtime::store_dir(&cfg),
        runtime::store_options(&cfg),
        &runtime::northbound_names(&cfg),
    )
    .expect("store");
    let encoder = UnsEncoder::new(
        &nb.topic_root,
        mes_bridge::Batching::PerDevice,
        &Catalog::new(),
    );
    let gateway = GatewayInfo {
        id: cfg.gateway.id.clone(),
        version: "test".into(),
        started_ms: edge_model::now_ms(),
        isa95: edge_agent::northbound::mqtt::Isa95::new(&cfg.gateway.uns),
    };
    let publisher = Publisher::new(nb.clone(), store.clone(), encoder, gateway);
    let stats = publisher.stats();
    let (stop_tx, stop_rx) = watch::channel(false);
    let publisher_task = tokio::spawn(publisher.run(stop_rx, Duration::from_secs(5)));

    let (tx, rx) = mpsc::channel::<Batch>(64);
    let writer = edge_store::spawn_writer(store.clone(), rx, cfg.store.commit_interval);
    let (gen_stop, gen_stop_rx) = watch::channel(false);
    let generator = tokio::spawn(generate(tx, Duration::from_millis(6), gen_stop_rx));

    // Generous: the suite runs tests side by side on two cores.
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.acked.load(Ordering::Relaxed) < 50 {
        assert!(
            Instant::now() < deadline,
            "the publisher did not deliver its first messages: {} connects, last error {:?}",
            stats.connects.load(Ordering::Relaxed),
            stats.last_error.lock().map(|e| e.clone()).ok()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(broker.pid(), "-STOP").expect("stop the broker");
    tokio::time::sleep(PAUSE).await;
    let inflight_during_pause = stats.inflight.load(Ordering::Relaxed);
    let held_during_pause = stats.window_bytes.load(Ordering::Relaxed);
    let published_during_pause = stats.published.load(Ordering::Relaxed);
    signal(broker.pid(), "-CONT").expect("resume the broker");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = gen_stop.send(true);
    let records = generator.await.expect("generator");
    writer.await.expect("writer task").expect("writer");

    let end = store.next_id();
    let deadline = Instant::now() + CATCH_UP;
    while store.cursor(&nb.name) < end && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cursor = store.cursor(&nb.name);
    let connects = stats.connects.load(Ordering::Relaxed);
    let last_error = stats
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let _ = stop_tx.send(true);
    let _ = publisher_task.await;
    broker.stop().expect("stop broker");

    assert!(
        inflight_during_pause > 40,
        "the window held more than the sockets buffer while the broker was stopped ({inflight_during_pause} messages in flight, {held_during_pause} bytes held, {published_during_pause} published)"
    );
    assert!(records > 300, "{records} records generated");
    assert_eq!(
        cursor, end,
        "every record acknowledged within {CATCH_UP:?} after the pause"
    );
    assert_eq!(
        (connects, last_error),
        (1, None),
        "one connection for the whole run: the pause is no network fault"
    );
}
