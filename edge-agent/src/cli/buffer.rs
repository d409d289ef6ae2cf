//! `edge-agent buffer export` and `buffer purge`: a northbound's backlog out of the store as
//! JSON lines, or dropped on purpose (recorded in the loss ledger). Like `buffer stats`, they
//! read the config without its secrets and open the store only: no broker, no device, no
//! password needed. The store is locked while the agent runs; they say so and stop.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use edge_config::{Config, ConfigErrors};
use edge_store::{Loss, Purge, RecordId, Store, StoreError};

use crate::daemon::runtime;
use crate::EXIT_CONFIG;

/// Records read from the store at a time: the export's memory is one chunk, whatever the
/// backlog.
const READ_CHUNK: usize = 256;

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The board config (TOML); its secrets are not needed.
    #[arg(short, long)]
    pub config: PathBuf,
    /// The northbound whose backlog to export.
    #[arg(long, value_name = "NAME")]
    pub northbound: String,
    /// Only the samples of this device.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Only samples with a seq of at least N (seqs count per device: use with --device).
    #[arg(long, value_name = "N")]
    pub from_seq: Option<u64>,
    /// Only samples with a seq of at most M.
    #[arg(long, value_name = "M")]
    pub to_seq: Option<u64>,
    /// Every record still stored, not only those from the northbound's cursor on.
    #[arg(long)]
    pub all: bool,
    /// Write to this file (replaced once the export is complete) instead of stdout.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct PurgeArgs {
    /// The board config (TOML); its secrets are not needed.
    #[arg(short, long)]
    pub config: PathBuf,
    /// The northbound whose backlog to purge.
    #[arg(long, value_name = "NAME")]
    pub northbound: String,
    /// Purge. Without it, print what would be purged and exit 1.
    #[arg(long)]
    pub yes: bool,
}

/// Which samples an export writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Filter {
    device: Option<String>,
    from_seq: Option<u64>,
    to_seq: Option<u64>,
}

impl Filter {
    fn keeps(&self, device: &str, seq: u64) -> bool {
        self.device.as_deref().is_none_or(|d| d == device)
            && self.from_seq.is_none_or(|from| seq >= from)
            && self.to_seq.is_none_or(|to| seq <= to)
    }

    /// Whether nothing from this record on can match: a device's seqs grow with the record id,
    /// so past `to_seq` of the one device asked for, the export is complete.
    fn done_after(&self, device: &str, last_seq: u64) -> bool {
        match (&self.device, self.to_seq) {
            (Some(d), Some(to)) => d == device && last_seq >= to,
            _ => false,
        }
    }
}

/// What an export wrote, per device: samples and the first and last seq.
#[derive(Debug, Default)]
struct Exported {
    records: u64,
    samples: u64,
    first_record: Option<RecordId>,
    last_record: Option<RecordId>,
    devices: BTreeMap<String, (u64, u64, u64)>,
}

impl Exported {
    fn add(&mut self, record: RecordId, device: &str, seq: u64) {
        self.samples += 1;
        let entry = self
            .devices
            .entry(device.to_owned())
            .or_insert((0, seq, seq));
        entry.0 += 1;
        entry.1 = entry.1.min(seq);
        entry.2 = entry.2.max(seq);
        if self.last_record != Some(record) {
            self.records += 1;
            self.first_record.get_or_insert(record);
            self.last_record = Some(record);
        }
    }

    fn summary(&self) -> String {
        let mut out = format!("{} samples from {} records", self.samples, self.records);
        if let (Some(first), Some(last)) = (self.first_record, self.last_record) {
            let _ = write!(out, " (records {first}..={last})");
        }
        for (device, (samples, first, last)) in &self.devices {
            let _ = write!(out, "; {device}: {samples} samples, seq {first}..={last}");
        }
        out
    }
}

fn load(path: &Path) -> Result<Config, i32> {
    edge_config::load_for_store(path).map_err(|errors: ConfigErrors| {
        eprintln!("{errors}");
        EXIT_CONFIG
    })
}

/// Opens the store of `cfg` for one of the buffer tools; `None` when the agent never ran with
/// this config. A store held by a running agent is an error that says so (the store waits
/// about a second for the lock, never longer).
fn open_store(cfg: &Config, northbound: &str, tool: &str) -> Result<Option<Store>, i32> {
    if !cfg.northbounds.iter().any(|nb| nb.name == northbound) {
        let known: Vec<&str> = cfg.northbounds.iter().map(|nb| nb.name.as_str()).collect();
        eprintln!(
            "{}: no [[northbound]] named `{northbound}` (configured: {})",
            cfg.source.display(),
            known.join(", ")
        );
        return Err(1);
    }
    let dir = runtime::store_dir(cfg);
    if !dir.exists() {
        eprintln!(
            "no store yet at {} (the agent has not run with this config)",
            dir.display()
        );
        return Ok(None);
    }
    match Store::open(
        &dir,
        runtime::store_options(cfg),
        &runtime::northbound_names(cfg),
    ) {
        Ok((store, _)) => Ok(Some(store)),
        Err(StoreError::Locked { .. }) => {
            eprintln!(
                "the store {} is in use by a running agent: stop the agent (for example `systemctl stop edge-agent`), then run `edge-agent buffer {tool}` again",
                dir.display()
            );
            Err(1)
        }
        Err(e) => {
            eprintln!("cannot open the store: {e}");
            Err(1)
        }
    }
}

/// `edge-agent buffer export`. Returns the exit code.
pub fn export(args: &ExportArgs) -> i32 {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match open_store(&cfg, &args.northbound, "export") {
        Ok(Some(store)) => store,
        Ok(None) => return 0,
        Err(code) => return code,
    };
    let filter = Filter {
        device: args.device.clone(),
        from_seq: args.from_seq,
        to_seq: args.to_seq,
    };
    let from = if args.all {
        0
    } else {
        store.cursor(&args.northbound)
    };
    let result = match &args.output {
        None => {
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            write_backlog(&store, &args.northbound, from, &filter, &mut out)
                .and_then(|exported| out.flush().map(|()| exported).map_err(Failure::Write))
        }
        Some(path) => export_to_file(&store, &args.northbound, from, &filter, path),
    };
    match result {
        Ok(exported) => {
            let to = args
                .output
                .as_ref()
                .map_or_else(|| "stdout".to_owned(), |p| p.display().to_string());
            eprintln!(
                "exported {} of northbound {} to {to}",
                exported.summary(),
                args.northbound
            );
            0
        }
        Err(Failure::Store(e)) => {
            eprintln!("cannot read the store: {e}");
            1
        }
        Err(Failure::Write(e)) => {
            eprintln!("cannot write the export: {e}");
            1
        }
    }
}

#[derive(Debug)]
enum Failure {
    Store(StoreError),
    Write(io::Error),
}

/// Writes to `path.part`, then renames it over `path`: a failed export never looks complete.
fn export_to_file(
    store: &Store,
    northbound: &str,
    from: RecordId,
    filter: &Filter,
    path: &Path,
) -> Result<Exported, Failure> {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let file = File::create(&part).map_err(Failure::Write)?;
    let mut out = BufWriter::new(file);
    let written = write_backlog(store, northbound, from, filter, &mut out).and_then(|exported| {
        let file = out
            .into_inner()
            .map_err(|e| Failure::Write(e.into_error()))?;
        file.sync_all().map_err(Failure::Write)?;
        std::fs::rename(&part, path).map_err(Failure::Write)?;
        Ok(exported)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    written
}

/// Streams the stored records of `northbound` from `from` on, one JSON line per sample that
/// `filter` keeps, reading [`READ_CHUNK`] records at a time.
fn write_backlog(
    store: &Store,
    northbound: &str,
    from: RecordId,
    filter: &Filter,
    out: &mut impl Write,
) -> Result<Exported, Failure> {
    let mut exported = Exported::default();
    let mut line = Vec::with_capacity(256);
    let mut next = from;
    // Every pass moves `next` past at least one record, and the store ends.
    loop {
        let records = store
            .read(northbound, next, READ_CHUNK)
            .map_err(Failure::Store)?;
        let Some(&(last, _)) = records.last() else {
            return Ok(exported);
        };
        for (id, batch) in &records {
            line.clear();
            for sample in &batch.samples {
                if filter.keeps(&batch.device.0, sample.seq) {
                    mes_bridge::uns::export_line(*id, &batch.device, sample, &mut line);
                    exported.add(*id, &batch.device.0, sample.seq);
                }
            }
            out.write_all(&line).map_err(Failure::Write)?;
            let last_seq = batch.samples.iter().map(|s| s.seq).max().unwrap_or(0);
            if filter.done_after(&batch.device.0, last_seq) {
                return Ok(exported);
            }
        }
        next = last + 1;
    }
}

/// `edge-agent buffer purge`. Returns the exit code.
pub fn purge(args: &PurgeArgs) -> i32 {
    let cfg = match load(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = match open_store(&cfg, &args.northbound, "purge") {
        Ok(Some(store)) => store,
        Ok(None) => return if args.yes { 0 } else { 1 },
        Err(code) => return code,
    };
    if !args.yes {
        return match store.purge_preview(&args.northbound) {
            Ok(p) if p.is_empty() => {
                println!("northbound {}: nothing to purge", args.northbound);
                1
            }
            Ok(p) => {
                println!("would purge {}", describe(&p));
                println!("nothing was changed; run again with --yes to purge (recorded in the loss ledger as `purged`)");
                1
            }
            Err(e) => {
                eprintln!("cannot read the backlog: {e}");
                1
            }
        };
    }
    match store.purge(&args.northbound) {
        Ok(p) if p.is_empty() => {
            println!("northbound {}: nothing to purge", args.northbound);
            0
        }
        Ok(p) => {
            println!(
                "purged {}; recorded in the loss ledger as `purged`",
                describe(&p)
            );
            0
        }
        Err(e) => {
            eprintln!("cannot purge: {e}");
            1
        }
    }
}

/// "12 records (48 samples) of northbound mes, records 3..15: plc1 seq 7..=30, ..."
fn describe(p: &Purge) -> String {
    let mut out = format!(
        "{} records ({} samples) of northbound {}, records {}..{}",
        p.records, p.samples, p.northbound, p.from, p.to
    );
    let ranges: Vec<String> = p.ranges.iter().map(range_text).collect();
    if !ranges.is_empty() {
        let _ = write!(out, ": {}", ranges.join(", "));
    }
    out
}

fn range_text(l: &Loss) -> String {
    format!("{} seq {}..={}", l.device, l.first_seq, l.last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_model::{Batch, DeviceId, Sample, TagName, Value};
    use edge_store::StoreOptions;

    fn batch(device: &str, samples: usize) -> Batch {
        Batch {
            device: DeviceId::from(device),
            samples: (0..samples)
                .map(|i| Sample::good(TagName::from("t"), Value::U16(i as u16), 1000))
                .collect(),
        }
    }

    async fn store(dir: &Path) -> Store {
        let (store, _) =
            Store::open(dir, StoreOptions::default(), &["mes".to_owned()]).expect("open");
        for _ in 0..(READ_CHUNK + 10) {
            store
                .commit(vec![batch("a", 2), batch("b", 1)])
                .await
                .expect("commit");
        }
        store
    }

    fn lines(bytes: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    #[tokio::test]
    async fn an_export_streams_every_sample_across_chunks_in_record_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        store.ack("mes", 2).expect("ack");
        let mut out = Vec::new();
        let exported = write_backlog(
            &store,
            "mes",
            store.cursor("mes"),
            &Filter::default(),
            &mut out,
        )
        .expect("export");
        let lines = lines(&out);
        let records = 2 * (READ_CHUNK as u64 + 10) - 2;
        assert_eq!(exported.records, records);
        assert_eq!(lines.len() as u64, exported.samples);
        assert_eq!(lines[0]["record"], 2);
        assert_eq!(
            (lines[0]["device"].as_str(), lines[0]["seq"].as_u64()),
            (Some("a"), Some(3))
        );
        let ids: Vec<u64> = lines.iter().filter_map(|l| l["record"].as_u64()).collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(ids.last(), Some(&(records + 1)));
    }

    #[tokio::test]
    async fn an_export_of_one_device_keeps_its_seq_range_and_stops_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path()).await;
        let filter = Filter {
            device: Some("a".to_owned()),
            from_seq: Some(5),
            to_seq: Some(8),
        };
        let mut out = Vec::new();
        let exported = write_backlog(&store, "mes", 0, &filter, &mut out).expect("export");
        let seqs: Vec<u64> = lines(&out)
            .iter()
            .filter_map(|l| l["seq"].as_u64())
            .collect();
        assert_eq!(seqs, vec![5, 6, 7, 8]);
        assert_eq!(
            exported.summary(),
            "4 samples from 2 records (records 4..=6); a: 4 samples, seq 5..=8"
        );
    }

    #[tokio::test]
    async fn an_export_to_a_file_appears_only_when_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(&dir.path().join("store")).await;
        let path = dir.path().join("backlog.jsonl");
        let exported = export_to_file(&store, "mes", 0, &Filter::default(), &path).expect("export");
        let bytes = std::fs::read(&path).expect("read");
        assert_eq!(lines(&bytes).len() as u64, exported.samples);
        assert!(!dir.path().join("backlog.jsonl.part").exists());
    }
}
