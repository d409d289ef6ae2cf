//! SPEC §9 throughput: tag values through the sled store to a real Mosquitto and a subscriber.
//! In process, with the product's own pieces: a generator feeds the store's group-commit
//! writer as fast as its channel accepts, one `Publisher` publishes what is committed, and a
//! counting subscriber on its own thread receives it. Each run has a fresh broker and store.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use edge_agent::daemon::runtime;
use edge_agent::northbound::uns::{GatewayInfo, Publisher};
use edge_config::{Batching, SystemSecrets};
use edge_model::{Batch, DeviceId, Sample, TagName, Value};
use edge_store::Store;
use mes_bridge::{Catalog, UnsEncoder};
use rumqttc::QoS;
use serde::Serialize;
use std::sync::atomic::Ordering;
use tokio::sync::{mpsc, watch};

use crate::common;
use crate::subscriber::{self, CountingSubscriber};
use crate::support::{Mosquitto, TestDir};
use crate::sysinfo;

/// The writer's queue, as in the agent (`runtime::BATCH_QUEUE`).
const BATCH_QUEUE: usize = 4096;
/// Devices the generated batches are spread over, round robin.
const DEVICES: usize = 10;
/// After the publisher has every PUBACK, how long the subscriber may stay silent before the
/// run ends with values missing (QoS 0 lets the broker drop messages for a slow subscriber).
const SUBSCRIBER_IDLE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PUBLISHER_STOP: Duration = Duration::from_secs(10);

/// One throughput run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub batching: Batching,
    /// Samples per generated batch (one store record, one per-device message).
    pub batch_size: usize,
    pub values: u64,
    pub max_inflight: u16,
    /// The whole run, generation to last delivery, must end within this.
    pub timeout: Duration,
}

/// What one run measured. Rates are per second of wall time from the first generated value.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub batching: &'static str,
    pub batch_size: usize,
    pub max_inflight: u16,
    pub values_generated: u64,
    pub records: u64,
    pub messages_expected: u64,
    /// Generation to the last batch committed durably (the writer ended).
    pub stored_s: f64,
    pub stored_values_per_s: f64,
    /// Generation to the broker's last PUBACK, if every message was acknowledged.
    pub acked_s: Option<f64>,
    pub acked_values_per_s: Option<f64>,
    /// Generation to the last message at the subscriber.
    pub delivered_s: f64,
    pub values_delivered: u64,
    pub messages_delivered: u64,
    pub delivered_values_per_s: f64,
    pub delivered_messages_per_s: f64,
    /// Values that never reached the subscriber (QoS 0 drops by the broker, or a timeout).
    pub values_missing: u64,
    /// CPU use over the run, in percent of one core (the machine has `cpus` × 100).
    pub cpu_pipeline_pct: f64,
    pub cpu_subscriber_pct: f64,
    pub cpu_broker_pct: f64,
    /// CPU the rest of the machine used meanwhile (other processes: a shared machine).
    pub cpu_other_pct: f64,
    /// The component that used the most CPU, and whether the machine was saturated.
    pub bound: String,
    pub timed_out: bool,
    /// Times the subscriber lost its connection (each followed by a reconnect).
    pub subscriber_errors: u64,
    /// Times the publisher lost its broker connection during the run (it then resends
    /// everything after its cursor), the messages it resent, and why it last lost it.
    pub publisher_reconnects: u64,
    pub messages_resent: u64,
    pub publisher_last_error: Option<String>,
    /// What the broker logged about disconnections and errors during the run (up to 10 lines).
    pub broker_notes: Vec<String>,
}

/// Runs one configuration against its own Mosquitto and store.
pub async fn run(p: Params) -> anyhow::Result<Outcome> {
    let broker = Mosquitto::start().context("starting Mosquitto")?;
    let dir = TestDir::new();
    let batching = match p.batching {
        Batching::PerTag => "per-tag",
        Batching::PerDevice => "per-device",
    };
    // The board config gives the northbound its product defaults; the device is never polled.
    let toml = common::config_toml(
        &dir.data_dir(),
        broker.port(),
        batching,
        "",
        &[common::device(
            "dev0",
            502,
            1000,
            vec![common::tag("t0", "hr:0", "f64")],
        )],
    );
    let mut cfg = edge_config::parse(&toml, &dir.join("agent.toml"), &SystemSecrets)
        .map_err(|e| anyhow::anyhow!("the benchmark's board config is invalid: {e:?}"))?;
    let Some(nb) = cfg.northbounds.first_mut() else {
        bail!("the benchmark's board config has no northbound");
    };
    nb.max_inflight = p.max_inflight;
    let nb = nb.clone();

    let (store, _recovery) = Store::open(
        &runtime::store_dir(&cfg),
        runtime::store_options(&cfg),
        &runtime::northbound_names(&cfg),
    )
    .context("opening the store")?;

    let mut sub = CountingSubscriber::start(
        broker.port(),
        &format!("{}/+/+", nb.topic_root),
        QoS::AtMostOnce,
    )
    .await?;

    let encoder = UnsEncoder::new(
        &nb.topic_root,
        match p.batching {
            Batching::PerTag => mes_bridge::Batching::PerTag,
            Batching::PerDevice => mes_bridge::Batching::PerDevice,
        },
        &Catalog::new(),
    );
    let gateway = GatewayInfo {
        id: cfg.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_ms: edge_model::now_ms(),
        isa95: edge_agent::northbound::mqtt::Isa95::new(&cfg.gateway.uns),
    };
    let publisher = Publisher::new(nb, store.clone(), encoder, gateway);
    let stats = publisher.stats();
    let (stop_tx, stop_rx) = watch::channel(false);
    let publisher_task = tokio::spawn(publisher.run(stop_rx, Duration::from_secs(5)));
    let connect_deadline = Instant::now() + CONNECT_TIMEOUT;
    while !stats.connected.load(Ordering::Relaxed) {
        if Instant::now() >= connect_deadline {
            bail!("the publisher did not connect to Mosquitto within {CONNECT_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let batch_size = p.batch_size.max(1);
    let records = p.values.div_ceil(batch_size as u64);
    let messages_expected = match p.batching {
        Batching::PerTag => p.values,
        Batching::PerDevice => records,
    };

    let me = std::process::id();
    let threads_before = sysinfo::thread_cpu_seconds(me);
    let broker_before = sysinfo::process_cpu_seconds(broker.pid()).unwrap_or(0.0);
    let machine_before = sysinfo::machine_busy_seconds();

    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel::<Batch>(BATCH_QUEUE);
    let writer = edge_store::spawn_writer(store.clone(), rx, cfg.store.commit_interval);
    let generator = tokio::spawn(generate(tx, p.values, batch_size));

    let deadline = t0 + p.timeout;
    let stored_at = match tokio::time::timeout_at(deadline.into(), writer).await {
        Ok(Ok(Ok(()))) => Instant::now(),
        Ok(Ok(Err(e))) => bail!("the store writer failed: {e}"),
        Ok(Err(e)) => bail!("the store writer task failed: {e}"),
        Err(_) => bail!(
            "the store did not take {} values within {:?}",
            p.values,
            p.timeout
        ),
    };
    generator.await.context("the generator task failed")??;

    let mut acked_at = None;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if acked_at.is_none() && stats.acked.load(Ordering::Relaxed) >= messages_expected {
            acked_at = Some(now);
        }
        let counts = sub.counts();
        if counts.values() >= p.values {
            // Everything arrived; the last PUBACKs may still be on their way to the publisher.
            let arrived = counts.last_at().unwrap_or(now);
            if acked_at.is_some() || now.duration_since(arrived) >= SUBSCRIBER_IDLE {
                break;
            }
        } else if let Some(acked) = acked_at {
            let quiet_since = counts.last_at().unwrap_or(acked).max(acked);
            if now.duration_since(quiet_since) >= SUBSCRIBER_IDLE {
                break;
            }
        }
        if now >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let end = Instant::now();
    let threads_after = sysinfo::thread_cpu_seconds(me);
    let broker_after = sysinfo::process_cpu_seconds(broker.pid()).unwrap_or(0.0);
    let machine_after = sysinfo::machine_busy_seconds();

    let _ = stop_tx.send(true);
    if tokio::time::timeout(PUBLISHER_STOP, publisher_task)
        .await
        .is_err()
    {
        eprintln!("  the publisher did not stop within {PUBLISHER_STOP:?}");
    }
    sub.stop().await;
    let broker_notes: Vec<String> = broker
        .log()
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("disconnect") || l.contains("warning") || l.contains("error")
        })
        .take(10)
        .map(str::to_owned)
        .collect();

    let counts = sub.counts();
    let last = counts.last_at().unwrap_or(end);
    let delivered_s = last.duration_since(t0).as_secs_f64().max(1e-9);
    let stored_s = stored_at.duration_since(t0).as_secs_f64().max(1e-9);
    let acked_s = acked_at.map(|a| a.duration_since(t0).as_secs_f64().max(1e-9));
    // CPU is sampled from the first value generated to the end of the wait.
    let window = end.duration_since(t0).as_secs_f64();
    let pct = |secs: f64| 100.0 * secs / window.max(1e-9);
    let sub_cpu = sysinfo::thread_cpu_between(&threads_before, &threads_after, |n| {
        n == subscriber::THREAD_NAME
    });
    let pipeline_cpu = sysinfo::thread_cpu_between(&threads_before, &threads_after, |n| {
        n != subscriber::THREAD_NAME
    });
    let cpu_pipeline_pct = pct(pipeline_cpu);
    let cpu_subscriber_pct = pct(sub_cpu);
    let cpu_broker_pct = pct(broker_after - broker_before);
    let cpu_other_pct = match (machine_before, machine_after) {
        (Some(a), Some(b)) => {
            (pct(b - a) - cpu_pipeline_pct - cpu_subscriber_pct - cpu_broker_pct).max(0.0)
        }
        _ => 0.0,
    };
    let values_delivered = counts.values();
    let messages_delivered = counts.messages();
    let publisher_last_error = stats
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(Outcome {
        batching,
        batch_size,
        max_inflight: p.max_inflight,
        values_generated: p.values,
        records,
        messages_expected,
        stored_s,
        stored_values_per_s: p.values as f64 / stored_s,
        acked_s,
        acked_values_per_s: acked_s.map(|s| p.values as f64 / s),
        delivered_s,
        values_delivered,
        messages_delivered,
        delivered_values_per_s: values_delivered as f64 / delivered_s,
        delivered_messages_per_s: messages_delivered as f64 / delivered_s,
        values_missing: p.values.saturating_sub(values_delivered),
        cpu_pipeline_pct,
        cpu_subscriber_pct,
        cpu_broker_pct,
        cpu_other_pct,
        bound: bound(
            cpu_pipeline_pct,
            cpu_subscriber_pct,
            cpu_broker_pct,
            cpu_other_pct,
        ),
        timed_out,
        subscriber_errors: counts.errors(),
        publisher_reconnects: stats.connects.load(Ordering::Relaxed).saturating_sub(1),
        messages_resent: stats.resent.load(Ordering::Relaxed),
        publisher_last_error,
        broker_notes,
    })
}

/// Which process or thread used the most CPU, and whether the cores were all busy (other
/// processes of a shared machine included).
fn bound(pipeline: f64, subscriber: f64, broker: f64, other: f64) -> String {
    let total = pipeline + subscriber + broker + other;
    let capacity = 100.0 * sysinfo::cpus() as f64;
    let (name, pct) = [
        ("edge-agent pipeline", pipeline),
        ("subscriber", subscriber),
        ("mosquitto", broker),
    ]
    .into_iter()
    .fold(
        ("", f64::MIN),
        |best, c| if c.1 > best.1 { c } else { best },
    );
    let saturated = if total >= 0.9 * capacity {
        "all cores busy"
    } else {
        "cores not saturated"
    };
    // A single-threaded component at a full core is the bottleneck by itself.
    let single_core = if (name == "subscriber" || name == "mosquitto") && pct >= 90.0 {
        ", one full core"
    } else {
        ""
    };
    format!(
        "{name} ({pct:.0}%{single_core}); {saturated} ({total:.0}% of {capacity:.0}%, \
         other processes {other:.0}%)"
    )
}

/// Feeds `values` samples to the writer in batches of `batch_size`, spread over the devices,
/// as fast as the channel takes them.
async fn generate(tx: mpsc::Sender<Batch>, values: u64, batch_size: usize) -> anyhow::Result<()> {
    let devices: Vec<DeviceId> = (0..DEVICES).map(|d| DeviceId(format!("dev{d}"))).collect();
    let tags: Vec<TagName> = (0..batch_size)
        .map(|t| TagName(format!("t{t:04}")))
        .collect();
    let mut sent = 0u64;
    let mut n = 0usize;
    while sent < values {
        let len = usize::try_from(values - sent).map_or(batch_size, |left| left.min(batch_size));
        let ts = edge_model::now_ms();
        let samples = tags[..len]
            .iter()
            .enumerate()
            .map(|(k, tag)| {
                Sample::good(
                    tag.clone(),
                    Value::F64(((sent + k as u64) % 100_000) as f64 * 0.25),
                    ts,
                )
            })
            .collect();
        let batch = Batch {
            device: devices[n % DEVICES].clone(),
            samples,
        };
        if tx.send(batch).await.is_err() {
            bail!("the store writer stopped taking batches");
        }
        sent += len as u64;
        n += 1;
    }
    Ok(())
}
