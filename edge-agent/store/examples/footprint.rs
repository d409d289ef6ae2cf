//! The store alone under the 10,000-tag load: `devices` batches of `tags` samples (u16 and f32
//! alternating, as the pipeline bench's PLCs) committed through the group-commit writer every
//! `period_ms`, a reader that reads and acknowledges like a publisher (unless `--outage`), and
//! what it costs: bytes written to the device per sample and per record byte (/proc/self/io),
//! resident memory (/proc/self/status) every few seconds.
//!
//! `cargo run --release -p edge-store --example footprint -- [--outage] [seconds] [period_ms]`

use std::time::{Duration, Instant};

use edge_model::{Batch, DeviceId, Sample, TagName, Value};
use edge_store::{spawn_writer, Store, StoreOptions};
use tokio::sync::mpsc;

const DEVICES: usize = 10;
const TAGS: usize = 1000;
const NORTHBOUND: &str = "uns";
/// What the publisher reads at once.
const READ_RECORDS: usize = 64;
const REPORT_EVERY: Duration = Duration::from_secs(5);

fn proc_field(file: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn write_bytes() -> u64 {
    proc_field("/proc/self/io", "write_bytes")
}

fn rss_kb() -> u64 {
    proc_field("/proc/self/status", "VmRSS")
}

fn batch(device: usize, tick: u64, tags: &[TagName]) -> Batch {
    let now = edge_model::now_ms();
    Batch {
        device: DeviceId(format!("plc{device:02}")),
        samples: tags
            .iter()
            .enumerate()
            .map(|(i, tag)| {
                let j = (i / 2) as u64;
                let value = if i % 2 == 0 {
                    Value::U16((tick.wrapping_add(j) % 65_536) as u16)
                } else {
                    Value::F32(tick as f32 * 0.5 + j as f32)
                };
                Sample::good(tag.clone(), value, now)
            })
            .collect(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let outage = args.iter().any(|a| a == "--outage");
    args.retain(|a| a != "--outage");
    let seconds: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(60);
    let period = Duration::from_millis(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000));
    let dir = std::env::temp_dir().join(format!("edge-store-footprint-{}", std::process::id()));
    let opts = StoreOptions::default();
    let (store, _) = Store::open(&dir, opts, &[NORTHBOUND.to_owned()]).expect("open the store");
    let tags: Vec<TagName> = (0..TAGS / 2)
        .flat_map(|j| [TagName(format!("u{j:03}")), TagName(format!("f{j:03}"))])
        .collect();

    let (tx, rx) = mpsc::channel::<Batch>(4096);
    let writer = spawn_writer(store.clone(), rx, Duration::ZERO);
    let reader = (!outage).then(|| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut watch = store.watch();
            let mut next = store.cursor(NORTHBOUND);
            loop {
                let records = store.read(NORTHBOUND, next, READ_RECORDS).expect("read");
                if let Some((last, _)) = records.last() {
                    // One acknowledgement per record, as the publisher makes one per PUBACK.
                    for (id, _) in &records {
                        store.ack(NORTHBOUND, id + 1).expect("ack");
                    }
                    next = last + 1;
                    continue;
                }
                if watch.changed().await.is_err() {
                    break;
                }
            }
        })
    });

    println!(
        "{DEVICES} devices x {TAGS} tags every {} ms for {seconds} s{}",
        period.as_millis(),
        if outage { ", no acknowledgements" } else { "" }
    );
    let started = Instant::now();
    let written_at_start = write_bytes();
    let rss_start = rss_kb();
    let mut rss_peak = rss_start;
    let mut next_report = started + REPORT_EVERY;
    let mut tick = 0u64;
    let mut next_tick = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        // Each device polls at its own phase, as the agent's pollers do.
        for d in 0..DEVICES {
            tx.send(batch(d, tick, &tags))
                .await
                .expect("the writer runs");
            next_tick += period / DEVICES as u32;
            tokio::time::sleep_until(next_tick).await;
        }
        tick += 1;
        let rss = rss_kb();
        rss_peak = rss_peak.max(rss);
        if Instant::now() >= next_report {
            next_report += REPORT_EVERY;
            let stats = store.stats();
            println!(
                "{:>5.0} s  rss {:>6.1} MB  written {:>7.1} MB  disk {:>6.1} MB  pending {}",
                started.elapsed().as_secs_f64(),
                rss as f64 / 1024.0,
                (write_bytes() - written_at_start) as f64 / 1e6,
                stats.disk_bytes as f64 / 1e6,
                stats.northbounds.first().map_or(0, |n| n.pending_records),
            );
        }
    }
    drop(tx);
    writer.await.expect("writer").expect("commits");
    let stats = store.stats();
    let written = write_bytes() - written_at_start;
    let samples = stats.committed_samples.max(1);
    println!(
        "samples {samples}, record bytes per sample {:.1}, written per sample {:.1} B ({:.2} x the record), commits {}",
        stats.committed_bytes as f64 / samples as f64,
        written as f64 / samples as f64,
        written as f64 / stats.committed_bytes.max(1) as f64,
        stats.commits,
    );
    println!(
        "rss start {:.1} MB, end {:.1} MB, peak {:.1} MB",
        rss_start as f64 / 1024.0,
        rss_kb() as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    if let Some(r) = reader {
        r.abort();
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
