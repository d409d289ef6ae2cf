//! Salvage: what can still be read from a store directory sled refused to open (or to read to
//! the end) is copied into the fresh store that replaces it. The damaged directory itself stays
//! untouched for inspection; the work happens on a scratch copy, where the files sled can
//! rebuild on its own (`conf` from our options, snapshots from the log) are left out when they
//! stand in the way.

use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use tracing::warn;

use crate::keys;
use crate::store::panic_message;
use crate::StoreOptions;

/// Restarts of an iteration that failed part way, before the rest is given up.
const MAX_RESUMES: u32 = 32;
/// Entries copied per write into the fresh store.
const CHUNK: usize = 1000;

/// What a salvage found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Salvaged {
    /// Entries (records, seqs, cursors, counters, checkpoints, losses) copied over.
    pub entries: u64,
    pub records: u64,
    /// Why parts could not be read (empty when everything was).
    pub errors: Vec<String>,
}

/// Copies what can be read from the store files in `from` into `into`.
pub(crate) fn salvage(from: &Path, into: &sled::Db, opts: &StoreOptions) -> Salvaged {
    let mut out = Salvaged::default();
    let name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".to_owned());
    let scratch = from.with_file_name(format!("{name}.salvage"));
    let _ = std::fs::remove_dir_all(&scratch);
    // First without our conf only (sled writes its own from the options), then without the
    // snapshots too (sled then rebuilds its page table from the log).
    for without_snapshots in [false, true] {
        if let Err(e) = copy_store_files(from, &scratch, without_snapshots) {
            out.errors.push(format!("cannot copy the files aside: {e}"));
            break;
        }
        match open_scratch(&scratch, opts) {
            Ok(db) => {
                copy_entries(&db, into, &mut out);
                drop(db);
                break;
            }
            Err(e) => out.errors.push(e),
        }
        let _ = std::fs::remove_dir_all(&scratch);
    }
    if let Err(e) = std::fs::remove_dir_all(&scratch) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(scratch = %scratch.display(), error = %e, "cannot remove the salvage copy; remove it by hand");
        }
    }
    out
}

fn copy_store_files(from: &Path, to: &Path, without_snapshots: bool) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let skip = name == "conf"
            || name == crate::mark::FILE_NAME
            || (without_snapshots && name.starts_with("snap."));
        if skip {
            continue;
        }
        if entry.file_type()?.is_dir() {
            copy_store_files(&entry.path(), &to.join(&*name), false)?;
        } else {
            std::fs::copy(entry.path(), to.join(&*name))?;
        }
    }
    Ok(())
}

fn open_scratch(dir: &Path, opts: &StoreOptions) -> Result<sled::Db, String> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(opts.cache_capacity_bytes)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(None);
    match catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(format!("sled cannot open the copy: {e}")),
        Err(panic) => Err(format!(
            "sled failed while opening the copy: {}",
            panic_message(panic.as_ref())
        )),
    }
}

/// Copies every readable entry; an iteration that fails is resumed after the last good key,
/// then further and further ahead when it fails at the same place again.
fn copy_entries(from: &sled::Db, into: &sled::Db, out: &mut Salvaged) {
    let mut start: Bound<Vec<u8>> = Bound::Unbounded;
    let mut pending = sled::Batch::default();
    let mut pending_len = 0;
    let mut skip = 1u64;
    for _ in 0..=MAX_RESUMES {
        let mut last: Option<Vec<u8>> = None;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
            for item in from.range::<Vec<u8>, _>((start.clone(), Bound::Unbounded)) {
                let (key, value) = item.map_err(|e| e.to_string())?;
                if keys::record_id(&key).is_some() {
                    out.records += 1;
                }
                out.entries += 1;
                pending.insert(key.clone(), value);
                pending_len += 1;
                last = Some(key.to_vec());
                if pending_len >= CHUNK {
                    into.apply_batch(std::mem::take(&mut pending))
                        .map_err(|e| format!("cannot write the fresh store: {e}"))?;
                    pending_len = 0;
                }
            }
            Ok(())
        }));
        let error = match result {
            Ok(Ok(())) => break,
            Ok(Err(e)) => e,
            Err(panic) => panic_message(panic.as_ref()),
        };
        out.errors.push(error);
        // Resume after the last good key; if the same place fails again, jump ahead.
        start = match (last, &start) {
            (Some(key), _) => {
                skip = 1;
                Bound::Excluded(key)
            }
            (None, Bound::Excluded(key) | Bound::Included(key)) => {
                skip = skip.saturating_mul(2);
                Bound::Included(ahead(key, skip))
            }
            (None, Bound::Unbounded) => Bound::Included(ahead(&[keys::RECORD], skip)),
        };
    }
    if pending_len > 0 {
        if let Err(e) = into.apply_batch(pending) {
            out.errors
                .push(format!("cannot write the fresh store: {e}"));
        }
    }
}

/// A key `skip` records past a record key, or the next kind of key past any other key.
fn ahead(key: &[u8], skip: u64) -> Vec<u8> {
    match keys::record_id(key) {
        Some(id) => keys::record_key(id.saturating_add(skip)).to_vec(),
        None => match key.first() {
            Some(&p) if p < u8::MAX => vec![p + 1],
            _ => vec![u8::MAX, u8::MAX],
        },
    }
}
