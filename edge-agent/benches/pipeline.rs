//! The SPEC §9 benchmark: end-to-end throughput through the store to a real Mosquitto, latency
//! from a PLC change to a subscriber, memory and disk writes with 10,000 tags, Modbus requests
//! per scan against the minimum, and the release binary's size. Prints a table and writes the
//! same figures to `target/bench-pipeline.json`.
//!
//! ```text
//! cargo bench -p edge-agent --bench pipeline                 # everything, about 3 minutes
//! cargo bench -p edge-agent --bench pipeline -- --quick      # shorter runs, under a minute
//! cargo bench -p edge-agent --bench pipeline -- latency size # only these scenarios
//! ```
//!
//! Everything runs on 127.0.0.1 with ports chosen by the kernel; Mosquitto must be installed
//! (`scripts/test.sh` installs it). Every run is bounded and stops by itself.

// The integration tests' harness (Mosquitto launcher, agent process, collector); the benchmark
// uses only part of it.
#[allow(unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

// The integration tests' config writer and helpers; the benchmark uses only part of them.
#[allow(dead_code)]
#[path = "../../tests/integration/common.rs"]
mod common;

#[path = "pipeline/harness.rs"]
mod harness;
#[path = "pipeline/latency.rs"]
mod latency;
#[path = "pipeline/report.rs"]
mod report;
#[path = "pipeline/subscriber.rs"]
mod subscriber;
#[path = "pipeline/sysinfo.rs"]
mod sysinfo;
#[path = "pipeline/tags10k.rs"]
mod tags10k;
#[path = "pipeline/throughput.rs"]
mod throughput;
// Shared with the Neuron benchmark, which uses all of it.
#[allow(dead_code)]
#[path = "pipeline/window.rs"]
mod window;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edge_config::Batching;
use report::{print_table, target_dir, thousands};
use serde::Serialize;
use serde_json::json;

const USAGE: &str = "usage: cargo bench -p edge-agent --bench pipeline -- [--quick] [SCENARIO...]
scenarios (default: all): throughput latency memory requests size";

/// SPEC §9 targets.
const TARGET_PER_DEVICE_VALUES: f64 = 1_000_000.0;
const TARGET_PER_TAG_MESSAGES: f64 = 100_000.0;
/// Above this CPU use by other processes during a measurement (percent of one core), the
/// figures are flagged as disturbed.
const OTHER_LOAD_NOTICE_PCT: f64 = 15.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Throughput,
    Latency,
    Memory,
    Requests,
    Size,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Throughput,
        Scenario::Latency,
        Scenario::Memory,
        Scenario::Requests,
        Scenario::Size,
    ];

    fn parse(s: &str) -> Option<Scenario> {
        Some(match s {
            "throughput" => Scenario::Throughput,
            "latency" => Scenario::Latency,
            "memory" => Scenario::Memory,
            "requests" => Scenario::Requests,
            "size" => Scenario::Size,
            _ => return None,
        })
    }

    fn needs_broker(self) -> bool {
        self != Scenario::Size
    }
}

/// How long and how much each scenario runs.
#[derive(Debug, Clone)]
struct Plan {
    quick: bool,
    scenarios: Vec<Scenario>,
    per_tag_values: u64,
    per_tag_batch: usize,
    per_device_values: u64,
    per_device_batch: usize,
    inflights: Vec<u16>,
    run_timeout: Duration,
    latency_for: Duration,
    memory_for: Duration,
    /// How long the 10,000-tag agent runs when only the requests are asked for.
    requests_for: Duration,
}

impl Plan {
    fn new(quick: bool, scenarios: Vec<Scenario>) -> Plan {
        if quick {
            Plan {
                quick,
                scenarios,
                per_tag_values: 200_000,
                per_tag_batch: 100,
                per_device_values: 1_000_000,
                per_device_batch: 1000,
                inflights: vec![1024],
                run_timeout: Duration::from_secs(20),
                latency_for: Duration::from_secs(8),
                memory_for: Duration::from_secs(15),
                requests_for: Duration::from_secs(5),
            }
        } else {
            Plan {
                quick,
                scenarios,
                per_tag_values: 500_000,
                per_tag_batch: 100,
                per_device_values: 5_000_000,
                per_device_batch: 1000,
                inflights: vec![256, 1024, 4096],
                run_timeout: Duration::from_secs(45),
                latency_for: Duration::from_secs(20),
                memory_for: Duration::from_secs(60),
                requests_for: Duration::from_secs(5),
            }
        }
    }

    fn wants(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut scenarios = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            // Cargo passes `--bench` to every benchmark binary.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => match Scenario::parse(other) {
                Some(s) if !scenarios.contains(&s) => scenarios.push(s),
                Some(_) => {}
                None => {
                    eprintln!("unknown argument `{other}`\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
        }
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    let needs_broker = scenarios.iter().any(|s| s.needs_broker());
    let plan = Plan::new(quick, scenarios);
    harness::run("pipeline", needs_broker, || run(&plan))
}

/// One line of the summary: a figure next to its SPEC §9 target.
#[derive(Debug, Clone, Serialize)]
struct Row {
    figure: String,
    measured: String,
    target: String,
    verdict: String,
}

fn row(figure: &str, measured: String, target: &str, verdict: &str) -> Row {
    Row {
        figure: figure.to_owned(),
        measured,
        target: target.to_owned(),
        verdict: verdict.to_owned(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "meets"
    } else {
        "MISSES"
    }
}

async fn run(plan: &Plan) -> anyhow::Result<()> {
    let started = Instant::now();
    let bin = common::bin();
    let machine = json!({
        "cpus": sysinfo::cpus(),
        "cpu_model": sysinfo::cpu_model(),
        "kernel": sysinfo::kernel(),
        "arch": std::env::consts::ARCH,
    });
    println!(
        "edge-agent pipeline benchmark{}, {} | {} CPUs, {} | Linux {}",
        if plan.quick { " (--quick)" } else { "" },
        sysinfo::today_utc(),
        sysinfo::cpus(),
        sysinfo::cpu_model(),
        sysinfo::kernel()
    );
    println!("binary under test: {}", bin.display());

    let mut report = serde_json::Map::new();
    let mut summary: Vec<Row> = Vec::new();
    // CPU other processes used during each measurement: on a shared machine they distort it.
    let mut other_load: Vec<(String, f64)> = Vec::new();

    if plan.wants(Scenario::Throughput) {
        let runs = throughput_all(plan).await?;
        other_load.extend(runs.iter().map(|o| {
            (
                format!("throughput {} inflight {}", o.batching, o.max_inflight),
                o.cpu_other_pct,
            )
        }));
        summary.extend(throughput_summary(&runs));
        report.insert("throughput".into(), serde_json::to_value(&runs)?);
    }
    if plan.wants(Scenario::Latency) {
        println!(
            "\n== Latency: PLC change -> subscriber (real binary, poll {} ms, per-tag, {} s) ==",
            latency::POLL_MS,
            plan.latency_for.as_secs()
        );
        let l = latency::run(plan.latency_for).await?;
        print_latency(&l);
        other_load.push(("latency".to_owned(), l.other_cpu_pct));
        summary.push(row(
            "latency p99, change -> subscriber (incl. wait for the poll)",
            format!("{:.0} ms", l.since_earliest_change.p99_ms),
            &format!("<= {} ms (poll + 10 ms)", l.target_ms),
            verdict(l.meets_target),
        ));
        summary.push(row(
            "latency p99, latest value read -> subscriber (pipeline only)",
            format!("{:.0} ms", l.since_latest_change.p99_ms),
            "(part of the above)",
            "-",
        ));
        report.insert("latency".into(), serde_json::to_value(&l)?);
    }
    if plan.wants(Scenario::Memory) || plan.wants(Scenario::Requests) {
        let duration = if plan.wants(Scenario::Memory) {
            plan.memory_for
        } else {
            plan.requests_for
        };
        println!(
            "\n== 10,000 tags: 10 simulated PLCs x 1,000 tags, poll {} ms, per-device, {} s ==",
            tags10k::POLL_MS,
            duration.as_secs()
        );
        let t = tags10k::run(duration).await?;
        other_load.push(("10,000 tags".to_owned(), t.memory.other_cpu_pct));
        if plan.wants(Scenario::Memory) {
            print_memory(&t.memory);
            summary.push(row(
                "resident memory, 10,000 tags (peak sampled / kernel high-water mark)",
                format!(
                    "{:.1} MB / {:.1} MB",
                    t.memory.rss_peak_mb, t.memory.rss_hwm_mb
                ),
                "< 20 MB",
                verdict(t.memory.meets_target),
            ));
            summary.push(row(
                "bytes written to disk per stored sample",
                format!(
                    "{:.0} B ({:.1} B stored record size)",
                    t.memory.disk_bytes_per_sample, t.memory.logical_bytes_per_sample
                ),
                "reported",
                "-",
            ));
            report.insert("memory".into(), serde_json::to_value(&t.memory)?);
        }
        if plan.wants(Scenario::Requests) {
            print_requests(&t.requests);
            let r = &t.requests;
            summary.push(row(
                "Modbus requests per scan, 10,000 tags (planned / observed)",
                format!(
                    "{} / {}",
                    r.planned,
                    r.observed_per_scan
                        .map_or("n/a".to_owned(), |o| format!("{o:.0}"))
                ),
                &format!(
                    "= minimum {} (values whole; {} if values could split)",
                    r.lower_bound_unsplit, r.lower_bound
                ),
                verdict(
                    r.planned as u64 == r.lower_bound_unsplit
                        && r.observed_per_scan
                            .is_none_or(|o| (o - r.planned as f64).abs() < 0.5),
                ),
            ));
            report.insert("requests".into(), serde_json::to_value(&t.requests)?);
        }
    }
    if plan.wants(Scenario::Size) {
        let size = binary_size(&bin)?;
        println!(
            "\n== Release binary ==\n{}: {} bytes ({:.2} MB), {} {}",
            bin.display(),
            size.bytes,
            size.bytes as f64 / (1024.0 * 1024.0),
            size.arch,
            match size.stripped {
                Some(true) => "stripped (no symbol table)",
                Some(false) => "NOT stripped (has a symbol table)",
                None => "(not an ELF64 file)",
            }
        );
        summary.push(row(
            &format!("release binary size ({}, stripped)", size.arch),
            format!("{:.2} MB", size.bytes as f64 / (1024.0 * 1024.0)),
            "reported (SPEC asks for aarch64; this is the host build)",
            "-",
        ));
        report.insert("binary".into(), serde_json::to_value(&size)?);
    }

    println!("\n== Summary against SPEC section 9 ==");
    print_table(
        &["figure", "measured", "target", "verdict"],
        &summary
            .iter()
            .map(|r| {
                vec![
                    r.figure.clone(),
                    r.measured.clone(),
                    r.target.clone(),
                    r.verdict.clone(),
                ]
            })
            .collect::<Vec<_>>(),
    );
    let disturbed: Vec<String> = other_load
        .iter()
        .filter(|(_, pct)| *pct > OTHER_LOAD_NOTICE_PCT)
        .map(|(what, pct)| format!("{what} ({pct:.0}%)"))
        .collect();
    if !disturbed.is_empty() {
        println!(
            "\nnote: other processes used CPU during: {}. With {} CPUs ({}% in all), these \
             figures are disturbed; run again on an idle machine for clean ones.",
            disturbed.join(", "),
            sysinfo::cpus(),
            100 * sysinfo::cpus()
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("\nbenchmark took {elapsed:.0} s");

    report.insert("summary".into(), serde_json::to_value(&summary)?);
    report.insert("other_processes_cpu_pct".into(), json!(other_load));
    report.insert("date".into(), json!(sysinfo::today_utc()));
    report.insert("machine".into(), machine);
    report.insert("quick".into(), json!(plan.quick));
    report.insert("elapsed_s".into(), json!(elapsed));
    let out = target_dir(&bin).join("bench-pipeline.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("figures written to {}", out.display());
    Ok(())
}

/// Every throughput configuration of the plan, printed as they finish.
async fn throughput_all(plan: &Plan) -> anyhow::Result<Vec<throughput::Outcome>> {
    println!(
        "\n== Throughput: generator -> sled store -> publisher -> Mosquitto -> subscriber (QoS 0) =="
    );
    let headers = [
        "batching",
        "batch",
        "inflight",
        "values",
        "stored/s",
        "acked/s",
        "delivered/s",
        "msgs/s",
        "missing",
        "reconnects",
        "cpu pipe/sub/mosq/other %",
        "bound by",
    ];
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    for (batching, values, batch_size) in [
        (Batching::PerTag, plan.per_tag_values, plan.per_tag_batch),
        (
            Batching::PerDevice,
            plan.per_device_values,
            plan.per_device_batch,
        ),
    ] {
        for &max_inflight in &plan.inflights {
            let o = throughput::run(throughput::Params {
                batching,
                batch_size,
                values,
                max_inflight,
                timeout: plan.run_timeout,
            })
            .await?;
            let r = vec![
                o.batching.to_owned(),
                o.batch_size.to_string(),
                o.max_inflight.to_string(),
                thousands(o.values_generated as f64),
                thousands(o.stored_values_per_s),
                o.acked_values_per_s.map_or("-".to_owned(), thousands),
                thousands(o.delivered_values_per_s),
                thousands(o.delivered_messages_per_s),
                format!(
                    "{}{}",
                    o.values_missing,
                    if o.timed_out { " (timed out)" } else { "" }
                ),
                if o.publisher_reconnects == 0 {
                    "0".to_owned()
                } else {
                    format!(
                        "{} ({} resent; {})",
                        o.publisher_reconnects,
                        o.messages_resent,
                        o.publisher_last_error
                            .as_deref()
                            .unwrap_or("no reason given")
                    )
                },
                format!(
                    "{:.0}/{:.0}/{:.0}/{:.0}",
                    o.cpu_pipeline_pct, o.cpu_subscriber_pct, o.cpu_broker_pct, o.cpu_other_pct
                ),
                o.bound.clone(),
            ];
            println!("  {}", r.join(" | "));
            if o.publisher_reconnects > 0 {
                for note in &o.broker_notes {
                    println!("    mosquitto: {note}");
                }
            }
            rows.push(r);
            runs.push(o);
        }
    }
    println!();
    print_table(&headers, &rows);
    println!(
        "  stored/s: generation to the last durable commit; acked/s: to the broker's last PUBACK;\n  \
         delivered/s and msgs/s: first value generated to last message received; cpu in % of one core."
    );
    Ok(runs)
}

fn throughput_summary(runs: &[throughput::Outcome]) -> Vec<Row> {
    let mut rows = Vec::new();
    let best = |b: &str, key: fn(&throughput::Outcome) -> f64| {
        runs.iter()
            .filter(|o| o.batching == b)
            .max_by(|x, y| key(x).total_cmp(&key(y)))
    };
    if let Some(o) = best("per-device", |o| o.delivered_values_per_s) {
        rows.push(row(
            "throughput per-device batching, values/s end to end",
            format!(
                "{} (inflight {}, {} per batch)",
                thousands(o.delivered_values_per_s),
                o.max_inflight,
                o.batch_size
            ),
            "1,000,000 values/s",
            verdict(o.delivered_values_per_s >= TARGET_PER_DEVICE_VALUES && o.values_missing == 0),
        ));
    }
    if let Some(o) = best("per-tag", |o| o.delivered_messages_per_s) {
        rows.push(row(
            "throughput per-tag, messages/s end to end",
            format!(
                "{} (inflight {})",
                thousands(o.delivered_messages_per_s),
                o.max_inflight
            ),
            "100,000 messages/s",
            verdict(o.delivered_messages_per_s >= TARGET_PER_TAG_MESSAGES && o.values_missing == 0),
        ));
    }
    rows
}

fn print_latency(l: &latency::Outcome) {
    let line = |name: &str, p: &latency::Percentiles| {
        vec![
            name.to_owned(),
            format!("{:.1}", p.p50_ms),
            format!("{:.1}", p.p90_ms),
            format!("{:.1}", p.p99_ms),
            format!("{:.1}", p.max_ms),
        ]
    };
    print_table(
        &["latency (ms)", "p50", "p90", "p99", "max"],
        &[
            line(
                "change -> subscriber (incl. poll wait)",
                &l.since_earliest_change,
            ),
            line("latest value -> subscriber", &l.since_latest_change),
            line("read timestamp -> subscriber", &l.since_read),
        ],
    );
    println!(
        "  {} clock messages; target p99 within one poll interval + 10 ms = {} ms: {}\n  \
         agent cpu {:.1}%, other processes {:.0}%",
        l.messages,
        l.target_ms,
        verdict(l.meets_target),
        l.agent_cpu_pct,
        l.other_cpu_pct
    );
}

fn print_memory(m: &tags10k::Memory) {
    print_table(
        &[
            "RSS start",
            "RSS peak",
            "RSS end",
            "high-water",
            "samples/s",
            "delivered/s",
            "cpu agent/mosq/sims/other",
        ],
        &[vec![
            format!("{:.1} MB", m.rss_start_mb),
            format!("{:.1} MB", m.rss_peak_mb),
            format!("{:.1} MB", m.rss_end_mb),
            format!("{:.1} MB", m.rss_hwm_mb),
            thousands(m.samples_per_s),
            thousands(m.delivered_values_per_s),
            format!(
                "{:.0}/{:.0}/{:.0}/{:.0}%",
                m.agent_cpu_pct, m.broker_cpu_pct, m.simulators_cpu_pct, m.other_cpu_pct
            ),
        ]],
    );
    println!(
        "  of the RSS at the end, {:.1} MB is anonymous (heap, stacks), the rest mapped files",
        m.rss_anon_end_mb
    );
    println!(
        "  disk: {:.0} B written per stored sample ({} B/s), stored record size {:.1} B per sample",
        m.disk_bytes_per_sample,
        thousands(m.disk_write_bytes_per_s),
        m.logical_bytes_per_sample
    );
    println!(
        "  RSS every second (MB): {}",
        m.rss_samples_mb
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn print_requests(r: &tags10k::Requests) {
    print_table(
        &["per scan, all devices", "requests"],
        &[
            vec!["one request per tag".into(), r.one_per_tag.to_string()],
            vec![
                "read planner (edge_modbus::plan)".into(),
                r.planned.to_string(),
            ],
            vec![
                "lower bound, values kept whole".into(),
                r.lower_bound_unsplit.to_string(),
            ],
            vec![
                format!(
                    "lower bound, sum of ceil(registers/125) ({} registers)",
                    r.registers
                ),
                r.lower_bound.to_string(),
            ],
            vec![
                format!("observed at the simulators ({} scans)", r.observed_scans),
                r.observed_per_scan
                    .map_or("n/a".to_owned(), |o| format!("{o:.2}")),
            ],
        ],
    );
}

#[derive(Debug, Clone, Serialize)]
struct BinarySize {
    path: PathBuf,
    bytes: u64,
    arch: &'static str,
    stripped: Option<bool>,
}

fn binary_size(bin: &Path) -> anyhow::Result<BinarySize> {
    let bytes = std::fs::metadata(bin)
        .with_context(|| format!("reading {}", bin.display()))?
        .len();
    Ok(BinarySize {
        path: bin.to_owned(),
        bytes,
        arch: std::env::consts::ARCH,
        stripped: sysinfo::elf_has_symtab(bin).map(|has| !has),
    })
}
