//! `edge-agent buffer stats|export|purge` (SPEC §3): the store tools open the store only, so
//! they run where the broker's password is not in the environment. The store is made by the
//! real agent against a simulated PLC, with its northbound on a port where no broker listens,
//! so that everything it reads stays in the backlog.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support::agent::run_cli_env;
use crate::support::{free_port, AgentProcess, TestDir};

/// The variable the northbound's password is read from: set for the agent, never for the tools.
const PASSWORD_ENV: &str = "EDGE_TEST_BUFFER_TOOLS_PASSWORD";
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// A stopped agent's data: its config and data directory.
struct Stored {
    _dir: TestDir,
    config: PathBuf,
    data: PathBuf,
}

/// Runs the agent until the `mes` backlog holds at least `records` records, then stops it.
async fn stored_backlog(records: u64) -> Stored {
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let dir = TestDir::new();
    let data = dir.data_dir();
    let config = config_toml(
        &data,
        free_port(),
        "per-tag",
        "",
        &[device("press", plc.local_addr().port(), 50, counter_tags())],
    )
    .replace(
        "keep_alive_s = 5\n",
        &format!("keep_alive_s = 5\nusername = \"edge\"\npassword_env = \"{PASSWORD_ENV}\"\n"),
    );
    assert!(config.contains(PASSWORD_ENV), "{config}");
    let path = dir.write_config(&config);
    let mut agent =
        AgentProcess::spawn(&bin(), &path, &[(PASSWORD_ENV, "s3cret")]).expect("agent starts");
    wait_status(&data, Duration::from_secs(30), "a backlog", |s| {
        let p = pending(s);
        p != u64::MAX && p >= records
    })
    .await;
    agent.terminate().expect("the agent stops");
    Stored {
        _dir: dir,
        config: path,
        data,
    }
}

/// `edge-agent buffer ARGS -c CONFIG`, without the password variable in its environment.
fn buffer(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["buffer"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-c", config.to_str().expect("utf-8 path")]);
    run_cli_env(&bin(), &all, &[], &[PASSWORD_ENV], TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("buffer {args:?}: {e:#}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeeds(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn stats_json(config: &Path) -> serde_json::Value {
    let out = buffer(config, &["stats", "--json"]);
    succeeds(&out, "buffer stats --json");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("buffer stats JSON ({e}): {}", text(&out.stdout)))
}

fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    text(bytes)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// Exports with `extra` arguments to a file and returns its lines.
fn export(stored: &Stored, extra: &[&str]) -> Vec<serde_json::Value> {
    static EXPORTS: AtomicU32 = AtomicU32::new(0);
    let n = EXPORTS.fetch_add(1, Ordering::Relaxed);
    let file = stored.data.with_file_name(format!("export-{n}.jsonl"));
    let mut args = vec!["export", "--northbound", "mes", "--output"];
    let file_arg = file.to_str().expect("utf-8 path").to_owned();
    args.push(&file_arg);
    args.extend_from_slice(extra);
    let out = buffer(&stored.config, &args);
    succeeds(&out, "buffer export");
    json_lines(&std::fs::read(&file).expect("the export file exists"))
}

/// The seqs of each device, in file order.
fn seqs_per_device(lines: &[serde_json::Value]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for l in lines {
        let device = l["device"].as_str().expect("device").to_owned();
        out.entry(device)
            .or_default()
            .push(l["seq"].as_u64().expect("seq"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_tools_run_without_the_broker_password_and_export_the_backlog_as_json_lines() {
    let stored = stored_backlog(20).await;
    // The agent itself does need the password: the tools are the exception.
    let check = run_cli_env(
        &bin(),
        &["check", "-c", stored.config.to_str().expect("utf-8")],
        &[],
        &[PASSWORD_ENV],
        TOOL_TIMEOUT,
    )
    .expect("check runs");
    assert_eq!(check.status.code(), Some(64), "{}", text(&check.stderr));
    assert!(text(&check.stderr).contains(PASSWORD_ENV));

    let stats = stats_json(&stored.config);
    let mes = &stats["northbounds"][0];
    assert_eq!(mes["name"], "mes");
    let pending = mes["pending_records"].as_u64().expect("pending");
    let cursor = mes["cursor"].as_u64().expect("cursor");
    assert!(pending >= 20, "{stats:#}");
    let text_stats = buffer(&stored.config, &["stats"]);
    succeeds(&text_stats, "buffer stats");
    assert!(text(&text_stats.stdout).contains("northbound mes:"));

    let lines = export(&stored, &[]);
    assert!(!lines.is_empty());
    for l in &lines {
        for field in [
            "record",
            "device",
            "tag",
            "value",
            "quality",
            "timestamp_ms",
            "seq",
        ] {
            assert!(l.get(field).is_some(), "`{field}` missing in {l}");
        }
        assert_eq!(l["device"], "press");
        assert!(
            ["count", "mirror"].contains(&l["tag"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(
            ["good", "uncertain", "bad"].contains(&l["quality"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(l["record"].as_u64().expect("record") >= cursor, "{l}");
    }
    let mut records: Vec<u64> = lines.iter().filter_map(|l| l["record"].as_u64()).collect();
    records.dedup();
    assert_eq!(records.len() as u64, pending, "one record after another");
    // Nothing was ever delivered or lost: the backlog is every seq from the first.
    let seqs = seqs_per_device(&lines)["press"].clone();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected);

    let window = export(
        &stored,
        &["--device", "press", "--from-seq", "3", "--to-seq", "7"],
    );
    assert_eq!(seqs_per_device(&window)["press"], vec![3, 4, 5, 6, 7]);
    assert_eq!(
        export(&stored, &["--device", "nosuch"]).len(),
        0,
        "another device's filter matches nothing"
    );
    // `--all` adds what the cursor is past; nothing here.
    assert_eq!(export(&stored, &["--all"]).len(), lines.len());

    // To stdout too, and the export is read-only.
    let out = buffer(&stored.config, &["export", "--northbound", "mes"]);
    succeeds(&out, "buffer export to stdout");
    assert_eq!(json_lines(&out.stdout).len(), lines.len());
    assert_eq!(
        stats_json(&stored.config)["northbounds"][0]["pending_records"],
        pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_without_yes_changes_nothing_and_with_yes_empties_the_backlog_into_the_ledger() {
    let stored = stored_backlog(10).await;
    let before = stats_json(&stored.config);
    let pending = before["northbounds"][0]["pending_records"]
        .as_u64()
        .expect("pending");
    let exported = export(&stored, &[]);
    let last_seq = seqs_per_device(&exported)["press"]
        .last()
        .copied()
        .expect("samples");

    let dry = buffer(&stored.config, &["purge", "--northbound", "mes"]);
    assert_ne!(dry.status.code(), Some(0), "without --yes it refuses");
    let said = text(&dry.stdout);
    assert!(said.contains("would purge"), "{said}");
    assert!(
        said.contains(&format!("press seq 1..={last_seq}")),
        "{said}"
    );
    assert!(said.contains("--yes"), "{said}");
    let after_dry = stats_json(&stored.config);
    assert_eq!(after_dry["northbounds"][0]["pending_records"], pending);
    assert_eq!(after_dry["losses"], serde_json::json!([]), "{after_dry:#}");
    assert_eq!(export(&stored, &[]).len(), exported.len());

    let purge = buffer(&stored.config, &["purge", "--northbound", "mes", "--yes"]);
    succeeds(&purge, "buffer purge --yes");
    assert!(
        text(&purge.stdout).contains("purged"),
        "{}",
        text(&purge.stdout)
    );

    let after = stats_json(&stored.config);
    assert_eq!(after["northbounds"][0]["pending_records"], 0, "{after:#}");
    assert_eq!(
        after["store"]["records"], 0,
        "the records are released: {after:#}"
    );
    assert_eq!(
        after["losses"],
        serde_json::json!([{
            "device": "press",
            "first_seq": 1,
            "last_seq": last_seq,
            "samples": last_seq,
            "reason": "purged",
            "at_ms": after["losses"][0]["at_ms"],
        }]),
        "{after:#}"
    );
    assert_eq!(after["store"]["lost_purged_samples"], last_seq);
    let text_stats = buffer(&stored.config, &["stats"]);
    succeeds(&text_stats, "buffer stats");
    let said = text(&text_stats.stdout);
    assert!(said.contains(&format!("{last_seq} purged")), "{said}");
    assert!(
        said.contains(&format!(
            "lost press seq 1..={last_seq} ({last_seq} samples, purged"
        )),
        "{said}"
    );
    assert!(export(&stored, &["--all"]).is_empty());

    // A second purge finds nothing and records nothing more.
    let again = buffer(&stored.config, &["purge", "--northbound", "mes", "--yes"]);
    succeeds(&again, "a second purge");
    assert!(text(&again.stdout).contains("nothing to purge"));
    assert_eq!(
        stats_json(&stored.config)["store"]["lost_purged_samples"],
        last_seq
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_purge_say_the_store_is_in_use_while_the_agent_runs() {
    let plc = start_plc().await;
    let _p = counting(&plc, Duration::from_millis(20));
    let dir = TestDir::new();
    let data = dir.data_dir();
    let config = config_toml(
        &data,
        free_port(),
        "per-tag",
        "",
        &[device("press", plc.local_addr().port(), 50, counter_tags())],
    );
    let path = dir.write_config(&config);
    let mut agent = AgentProcess::spawn(&bin(), &path, &[]).expect("agent starts");
    wait_status(&data, Duration::from_secs(30), "a backlog", |s| {
        pending(s) != u64::MAX && pending(s) > 0
    })
    .await;

    for args in [
        &["export", "--northbound", "mes"][..],
        &["purge", "--northbound", "mes", "--yes"][..],
    ] {
        let started = Instant::now();
        let out = buffer(&path, args);
        assert_ne!(out.status.code(), Some(0), "{args:?} refuses");
        let said = text(&out.stderr);
        assert!(
            said.contains("in use by a running agent"),
            "{args:?}: {said}"
        );
        assert!(said.contains("stop the agent"), "{args:?}: {said}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{args:?} does not wait for the lock"
        );
    }
    // The unknown northbound is refused before the store is touched.
    let out = buffer(&path, &["export", "--northbound", "scada"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("no [[northbound]] named `scada`"));

    assert!(agent.is_running(), "the agent is undisturbed");
    let s = status(&data).expect("status");
    assert!(
        s["losses"].as_array().is_some_and(|l| l.is_empty()),
        "{s:#}"
    );
    agent.terminate().expect("the agent stops");
}
