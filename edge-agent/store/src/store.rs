//! The store: commits batches durably and in order, hands them to each northbound from its
//! cursor, forgets them once every northbound has acknowledged them, and evicts the oldest
//! (counted and logged) when the disk quota is exceeded.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use edge_model::{Batch, DeviceId};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::error::StoreError;
use crate::evictions::{EvictionLog, Evictions};
use crate::index::{RecordIndex, RecordMeta};
use crate::journal::{self, LossJournal};
use crate::keys::{self, CHECKPOINT, COUNTER, CURSOR, LOSS, SEQ};
use crate::losses::{self, Ledger, Loss, LossReason, LostCounts, RecordSeqs, SeqBounds};
use crate::mark::{self, DeviceMark, Mark, MarkFile};
use crate::quota::{BudgetChange, QuotaPolicy};
use crate::salvage::{self, Salvaged};

mod purge;
pub use purge::Purge;

/// The position of a record in the store: assigned in commit order, never reused.
pub type RecordId = u64;

/// The seq the first sample of a device gets (0 means "not yet stored").
pub const FIRST_SEQ: u64 = 1;

/// `size_on_disk` costs system calls: ask it at most this often.
const CHECK_EVERY_COMMITS: u32 = 64;
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// How long `open` waits for a held lock before it reports [`StoreError::Locked`].
const LOCK_WAIT: Duration = Duration::from_secs(1);
const LOCK_POLL: Duration = Duration::from_millis(20);
/// How often sled writes its log in the background; a cursor update lost in a crash only
/// means duplicates, so acknowledgements rely on this instead of flushing.
const BACKGROUND_FLUSH_MS: u64 = 500;
/// Seq floors kept for the loss cover (one taken per mark sync, about one a second).
const MAX_EPOCHS: usize = 64;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The disk use (sled's files) above which the oldest records are evicted.
    pub max_disk_bytes: u64,
    /// sled's page cache. Keep it small: sled's memory use can exceed it.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_disk_bytes: 512 << 20,
            cache_capacity_bytes: 8 << 20,
        }
    }
}

/// What `open` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Records in the store after recovery.
    pub records: u64,
    pub first_id: Option<RecordId>,
    pub next_id: RecordId,
    /// Records that could not be decoded; removed and counted in `corrupt_records`.
    pub corrupt_records_removed: u64,
    /// Where an unreadable store directory was moved before a fresh one was created.
    pub quarantined: Option<PathBuf>,
    /// Records copied from the quarantined directory into the fresh store.
    pub salvaged_records: u64,
    /// What this open found lost (a rolled-back log, damaged files), as recorded in the ledger.
    pub losses: Vec<Loss>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    pub records: u64,
    pub samples: u64,
    /// Earliest read time in the oldest record.
    pub oldest_read_ts_ms: Option<u64>,
    pub next_id: RecordId,
    /// sled's files on disk.
    pub disk_bytes: u64,
    /// Sum of the stored sizes of the records.
    pub logical_bytes: u64,
    /// The logical size eviction currently keeps the records under, while over quota.
    pub eviction_budget_bytes: Option<u64>,
    /// Lifetime totals, persisted.
    pub dropped_records: u64,
    pub dropped_samples: u64,
    pub corrupt_records: u64,
    pub quarantines: u64,
    /// Unreadable directories whose content was copied into a fresh store, and the records
    /// that were.
    pub salvages: u64,
    pub salvaged_records: u64,
    /// Samples lost, per reason, over the store's life (persisted with the loss ledger).
    pub lost: LostCounts,
    /// Since open.
    pub committed_samples: u64,
    pub committed_bytes: u64,
    /// Durable writes (one flush each); committed samples per commit is the group size.
    pub commits: u64,
    pub commit_retries: u64,
    pub northbounds: Vec<NorthboundStats>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NorthboundStats {
    pub name: String,
    pub cursor: RecordId,
    pub pending_records: u64,
    pub pending_samples: u64,
    /// Earliest read time in the oldest record this northbound has not acknowledged.
    pub oldest_pending_read_ts_ms: Option<u64>,
}

/// What a northbound's publisher derived from the records below `at` (for the MES bridge:
/// last counter readings, current order and state), stored with its cursor so that a restart
/// from the cursor continues from exactly that state. The bytes are the publisher's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The cursor the checkpoint was taken at. Differs from the northbound's cursor only when
    /// eviction moved the cursor past records nobody derived anything from.
    pub at: RecordId,
    pub bytes: Vec<u8>,
}

/// The durable, ordered sample store. Cheap to clone; every clone is the same store.
///
/// Records get ids in commit order, never reused (not even after every record was
/// acknowledged and the store reopened). Readers see only records that are on disk. Each
/// northbound's cursor is the first id it has not acknowledged; a record is removed once every
/// configured northbound's cursor is past it, or when it is evicted over quota. The store keeps
/// an index of 16 bytes per record in memory.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    dir: PathBuf,
    state: Mutex<State>,
    /// Written after every flush; its own lock so that its occasional sync holds up no reader.
    mark: Mutex<Option<MarkFile>>,
    /// The loss ledger's copy outside sled; `None` once writing it failed.
    journal: Mutex<Option<LossJournal>>,
    /// Commits run one at a time, flush included, so that ids become visible in order.
    commit_lock: tokio::sync::Mutex<()>,
    watch_tx: watch::Sender<RecordId>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    dropped_records: u64,
    dropped_samples: u64,
    corrupt_records: u64,
    quarantines: u64,
    salvages: u64,
    salvaged_records: u64,
    next_id_floor: RecordId,
}

/// Every sample of a device with a seq below `seqs[device]` is in a record below `below`.
#[derive(Debug, Clone)]
struct Epoch {
    below: RecordId,
    seqs: HashMap<DeviceId, u64>,
}

struct State {
    /// The id the next record will be given.
    next_assigned: RecordId,
    /// Records below this are known to be on disk; nothing above it is ever read, so nothing
    /// is published that a crash could take back (and whose seqs would then be reused).
    next_durable: RecordId,
    index: RecordIndex,
    /// The next seq of each device.
    seqs: HashMap<DeviceId, u64>,
    cursors: BTreeMap<String, RecordId>,
    /// Northbounds with a stored checkpoint (which then describes their cursor, unless
    /// eviction moved the cursor since).
    checkpointed: BTreeSet<String>,
    counters: Counters,
    committed_samples: u64,
    committed_bytes: u64,
    commits: u64,
    commit_retries: u64,
    quota: QuotaPolicy,
    commits_since_check: u32,
    last_check: Option<Instant>,
    disk_bytes: u64,
    evictions: EvictionLog,
    ledger: Ledger,
    /// Oldest first; the first one below the lowest cursor gives each device's seq floor.
    epochs: VecDeque<Epoch>,
    last_epoch: Option<Instant>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("next_id", &self.next_id())
            .finish_non_exhaustive()
    }
}

/// Why a first attempt to open the directory failed.
enum OpenFailure {
    /// Nothing to do but tell the operator (locked, permissions, I/O).
    Fatal(StoreError),
    /// The content cannot be read: move it aside and start fresh.
    Unreadable(String),
}

/// What the scan at open found.
#[derive(Default)]
struct Loaded {
    index: RecordIndex,
    seqs: HashMap<DeviceId, u64>,
    cursors: BTreeMap<String, RecordId>,
    /// Northbounds with a stored checkpoint.
    checkpoints: Vec<String>,
    counters: Counters,
    corrupt_removed: u64,
    losses: BTreeMap<u64, Loss>,
    lost: LostCounts,
    /// The lowest seq of each device among the readable records.
    first_seqs: HashMap<DeviceId, u64>,
}

/// How the directory was found before it was read: the mark, and a quarantine with salvage.
struct Opened {
    mark: mark::ReadMark,
    /// The loss journal's entries (a copy of the ledger outside sled).
    journal: Vec<Loss>,
    quarantined: Option<PathBuf>,
    salvaged: Option<Salvaged>,
}

impl Store {
    /// Opens (or creates) the store in `dir` for the given northbounds.
    ///
    /// A northbound without a cursor yet starts at the first record still in the store: a new
    /// northbound receives the backlog. A cursor of a northbound no longer configured is removed,
    /// so it no longer holds records back. A directory sled cannot read is moved aside to
    /// `<dir>.corrupt-<epoch_ms>` and a fresh store is created (reported in
    /// [`Recovery::quarantined`]); a directory locked by a running process is
    /// [`StoreError::Locked`]. With no northbound at all, records are only removed by eviction.
    ///
    /// A held lock is waited for up to a second (this blocks the calling thread) before
    /// `Locked` is returned. sled panics on some corrupted files; that is caught here, which
    /// needs the default `panic = "unwind"`.
    pub fn open(
        dir: &Path,
        opts: StoreOptions,
        northbounds: &[String],
    ) -> Result<(Store, Recovery), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        // An absolute path, so that the quarantine name is a sibling even for `.` or `..`.
        let dir = std::fs::canonicalize(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;

        // Read before sled touches anything, and before a quarantine takes the file away.
        let mut opened = Opened {
            mark: mark::read(&dir),
            journal: journal::read(&dir),
            quarantined: None,
            salvaged: None,
        };
        if opened.mark.file_found && opened.mark.mark.is_none() {
            error!(store = %dir.display(),
                "the store's high-water mark file is unreadable: a log sled rolled back cannot be detected at this start");
        } else if !opened.mark.damaged_slots.is_empty() {
            warn!(store = %dir.display(), damaged_slots = ?opened.mark.damaged_slots,
                usable = opened.mark.mark.is_some(),
                "the store's high-water mark file is damaged; using what is left of it");
        }
        let (db, loaded) = match open_waiting_for_lock(&dir, &opts) {
            Ok(opened) => opened,
            Err(OpenFailure::Fatal(e)) => return Err(e),
            Err(OpenFailure::Unreadable(reason)) => {
                let to = quarantine(&dir, &reason)?;
                let unusable = |reason| StoreError::Unusable {
                    dir: dir.clone(),
                    reason,
                };
                let db = match open_db(&dir, &opts) {
                    Ok(db) => db,
                    Err(OpenFailure::Fatal(e)) => return Err(e),
                    Err(OpenFailure::Unreadable(reason)) => return Err(unusable(reason)),
                };
                let salvaged = salvage::salvage(&to, &db, &opts);
                let loaded = match catch_unwind(AssertUnwindSafe(|| load(&db, &dir))) {
                    Ok(Ok(loaded)) => loaded,
                    Ok(Err(e)) => return Err(unusable(e.to_string())),
                    Err(panic) => return Err(unusable(panic_message(panic.as_ref()))),
                };
                error!(store = %dir.display(), moved_to = %to.display(),
                    salvaged_records = salvaged.records, salvaged_entries = salvaged.entries,
                    unreadable_parts = salvaged.errors.len(), errors = ?salvaged.errors,
                    "salvaged what could be read from the unreadable store into a fresh one");
                opened.quarantined = Some(to);
                opened.salvaged = Some(salvaged);
                (db, loaded)
            }
        };
        Store::start(db, dir, opts, northbounds, loaded, opened)
    }

    /// Settles cursors and builds the running store from what the scan found.
    fn start(
        db: sled::Db,
        dir: PathBuf,
        opts: StoreOptions,
        northbounds: &[String],
        loaded: Loaded,
        opened: Opened,
    ) -> Result<(Store, Recovery), StoreError> {
        let Loaded {
            mut index,
            mut seqs,
            cursors: stored_cursors,
            checkpoints,
            mut counters,
            corrupt_removed,
            losses: ledger_entries,
            lost,
            first_seqs,
        } = loaded;
        let Opened {
            mark: read_mark,
            journal: journal_losses,
            quarantined,
            salvaged,
        } = opened;
        let sled_err = |op, source| StoreError::Sled {
            dir: dir.clone(),
            op,
            source,
        };

        // Ids continue after the last record, and never fall below a cursor: with every record
        // acknowledged and removed, the cursors are what remembers how far ids went.
        let sled_next = index
            .last_id()
            .map_or(0, |last| last + 1)
            .max(stored_cursors.values().copied().max().unwrap_or(0))
            .max(counters.next_id_floor);
        let mark = read_mark.mark.as_ref();
        // ... and after the mark's: never give an id or a seq a second time, even when sled
        // came back with less than it had.
        let next_id = sled_next.max(mark.map_or(0, |m| m.next_id));
        let mut writes = sled::Batch::default();
        for (device, d) in mark.map(|m| &m.devices).into_iter().flatten() {
            let seq = seqs.entry(DeviceId(device.clone())).or_insert(FIRST_SEQ);
            if d.next_seq > *seq {
                *seq = d.next_seq;
                writes.insert(keys::named_key(SEQ, device), &seq.to_be_bytes());
            }
        }
        if next_id > counters.next_id_floor {
            counters.next_id_floor = next_id;
            writes.insert(
                keys::named_key(COUNTER, keys::NEXT_ID_FLOOR),
                &next_id.to_be_bytes(),
            );
        }
        let found_lost = find_losses(
            &db,
            &dir,
            &index,
            &stored_cursors,
            &seqs,
            mark,
            next_id,
            sled_next,
            salvaged.is_some(),
        );
        // The journal restores ledger entries a rolled-back log took with it; entries the
        // ledger still holds are not counted again.
        let ledger = Ledger::load(ledger_entries, lost);
        let held = ledger.losses();
        let restored: Vec<Loss> = journal_losses
            .into_iter()
            .filter(|l| !held.iter().any(|h| h.contains(l)))
            .collect();
        if !restored.is_empty() {
            warn!(store = %dir.display(), ranges = restored.len(), lost_ranges = %ranges_text(&restored),
                "loss ledger entries missing from the store were restored from its loss journal");
        }
        let ledger = ledger
            .with(&restored, &mut writes)
            .with(&found_lost, &mut writes);
        if let Some(s) = &salvaged {
            counters.salvages += 1;
            counters.salvaged_records += s.records;
            writes.insert(
                keys::named_key(COUNTER, keys::SALVAGES),
                &counters.salvages.to_be_bytes(),
            );
            writes.insert(
                keys::named_key(COUNTER, keys::SALVAGED_RECORDS),
                &counters.salvaged_records.to_be_bytes(),
            );
        }
        let first_in_store = index.first_id().unwrap_or(next_id);

        let mut cursors = BTreeMap::new();
        for (name, cursor) in &stored_cursors {
            if !northbounds.contains(name) {
                warn!(store = %dir.display(), northbound = %name, cursor,
                    pending_records = index.span_from(*cursor).records,
                    "removing the cursor of a northbound that is no longer configured; its undelivered records are no longer kept for it");
                writes.remove(keys::named_key(CURSOR, name));
            }
        }
        let mut checkpointed = BTreeSet::new();
        for name in checkpoints {
            if northbounds.contains(&name) {
                checkpointed.insert(name);
            } else {
                writes.remove(keys::named_key(CHECKPOINT, &name));
            }
        }
        for name in northbounds {
            let cursor = match stored_cursors.get(name) {
                Some(&c) => c.max(first_in_store),
                None => {
                    info!(store = %dir.display(), northbound = %name, from = first_in_store,
                        backlog_records = index.records(),
                        "new northbound: it receives every record still in the store");
                    first_in_store
                }
            };
            writes.insert(keys::named_key(CURSOR, name), &cursor.to_be_bytes());
            cursors.insert(name.clone(), cursor);
        }
        // Records every remaining northbound has acknowledged (for example those a removed
        // northbound was holding back) go now.
        if let Some(min) = cursors.values().copied().min() {
            for id in index.ids_below(min) {
                writes.remove(&keys::record_key(id));
            }
        }
        if quarantined.is_some() {
            counters.quarantines += 1;
            writes.insert(
                keys::named_key(COUNTER, keys::QUARANTINES),
                &counters.quarantines.to_be_bytes(),
            );
        }
        db.apply_batch(writes)
            .map_err(|e| sled_err("record the northbound cursors", e))?;
        db.flush().map_err(|e| sled_err("flush at open", e))?;
        if let Some(min) = cursors.values().copied().min() {
            let released = index.remove_below(min);
            if released.records > 0 {
                info!(store = %dir.display(), records = released.records,
                    "released records every configured northbound has acknowledged");
            }
        }

        let recovery = Recovery {
            records: index.records(),
            first_id: index.first_id(),
            next_id,
            corrupt_records_removed: corrupt_removed,
            quarantined,
            salvaged_records: salvaged.as_ref().map_or(0, |s| s.records),
            losses: found_lost,
        };
        info!(store = %dir.display(), records = recovery.records, samples = index.samples(),
            first_id = ?recovery.first_id, next_id, logical_bytes = index.bytes(),
            corrupt_records_removed = corrupt_removed, "store opened");

        let (watch_tx, _) = watch::channel(next_id);
        // What is in the store now bounds each device's unacknowledged seqs from below.
        let mut floor_seqs = seqs.clone();
        for (device, first) in first_seqs {
            let floor = floor_seqs.entry(device).or_insert(first);
            *floor = (*floor).min(first);
        }
        let state = State {
            next_assigned: next_id,
            next_durable: next_id,
            index,
            seqs,
            cursors,
            checkpointed,
            counters,
            committed_samples: 0,
            committed_bytes: 0,
            commits: 0,
            commit_retries: 0,
            quota: QuotaPolicy::new(opts.max_disk_bytes),
            commits_since_check: 0,
            last_check: None,
            disk_bytes: 0,
            evictions: EvictionLog::default(),
            ledger,
            epochs: VecDeque::from([Epoch {
                below: 0,
                seqs: floor_seqs,
            }]),
            last_epoch: None,
        };
        let journal = match LossJournal::create(&dir, &state.ledger.losses()) {
            Ok(j) => Some(j),
            Err(e) => {
                error!(store = %dir.display(), error = %e,
                    "cannot write the store's loss journal; the loss ledger has no copy outside sled");
                None
            }
        };
        let mark_file = match MarkFile::create(&dir, read_mark.generation, &mark_of(&state)) {
            Ok(f) => Some(f),
            Err(e) => {
                error!(store = %dir.display(), error = %e,
                    "cannot write the store's high-water mark file; a log that sled rolls back in a crash will go unnoticed");
                None
            }
        };
        let store = Store {
            inner: Arc::new(Inner {
                db,
                dir,
                state: Mutex::new(state),
                mark: Mutex::new(mark_file),
                journal: Mutex::new(journal),
                commit_lock: tokio::sync::Mutex::new(()),
                watch_tx,
            }),
        };
        Ok((store, recovery))
    }

    /// Stores the batches durably, in order, and returns them with their record ids and the
    /// seqs of their samples filled in. Each sample gets the next seq of its device; each batch
    /// one record. Returns only once everything is on disk. Empty batches are skipped.
    pub async fn commit(&self, batches: Vec<Batch>) -> Result<Vec<(RecordId, Batch)>, StoreError> {
        self.commit_or_return(batches)
            .await
            .map_err(|failure| failure.error)
    }

    /// [`Store::commit`], giving the batches back when nothing was written, so that a retry
    /// needs no copy of them.
    pub(crate) async fn commit_or_return(
        &self,
        batches: Vec<Batch>,
    ) -> Result<Vec<(RecordId, Batch)>, CommitFailure> {
        let batches: Vec<Batch> = batches.into_iter().filter(|b| !b.is_empty()).collect();
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let _one_at_a_time = self.inner.commit_lock.lock().await;
        let (committed, target) = self.write_records(batches)?;
        self.flush_to(target).await.map_err(|error| CommitFailure {
            error,
            batches: None,
        })?;
        if let Some(&(first, _)) = committed.first() {
            self.enforce_quota(first);
        }
        Ok(committed)
    }

    /// Assigns ids and seqs and hands records and seq counters to sled in one atomic batch.
    fn write_records(
        &self,
        mut batches: Vec<Batch>,
    ) -> Result<(Vec<(RecordId, Batch)>, RecordId), CommitFailure> {
        let mut st = self.state();
        let mut id = st.next_assigned;
        let mut seqs: HashMap<DeviceId, u64> = HashMap::new();
        let mut writes = sled::Batch::default();
        let mut metas = Vec::with_capacity(batches.len());
        let (mut samples, mut bytes) = (0u64, 0u64);
        for batch in &mut batches {
            let next = seqs
                .entry(batch.device.clone())
                .or_insert_with(|| st.seqs.get(&batch.device).copied().unwrap_or(FIRST_SEQ));
            for sample in &mut batch.samples {
                sample.seq = *next;
                *next += 1;
            }
            let value = batch.to_bytes();
            metas.push(RecordMeta {
                id,
                samples: u32::try_from(batch.samples.len()).unwrap_or(u32::MAX),
                bytes: u32::try_from(value.len()).unwrap_or(u32::MAX),
            });
            samples += batch.samples.len() as u64;
            bytes += value.len() as u64;
            writes.insert(&keys::record_key(id), value);
            id += 1;
        }
        for (device, next) in &seqs {
            writes.insert(keys::named_key(SEQ, &device.0), &next.to_be_bytes());
        }
        if let Err(source) = self.inner.db.apply_batch(writes) {
            return Err(CommitFailure {
                error: self.sled_err("write records", source),
                batches: Some(batches),
            });
        }
        st.seqs.extend(seqs);
        for meta in metas {
            st.index.push(meta);
        }
        let first = st.next_assigned;
        st.next_assigned = id;
        st.committed_samples += samples;
        st.committed_bytes += bytes;
        st.commits += 1;
        drop(st);
        let committed = (first..).zip(batches).collect();
        Ok((committed, id))
    }

    /// Waits until everything written before `target` is on disk, then makes it readable.
    async fn flush_to(&self, target: RecordId) -> Result<(), StoreError> {
        self.inner
            .db
            .flush_async()
            .await
            .map_err(|source| StoreError::NotDurable {
                dir: self.inner.dir.clone(),
                source,
            })?;
        let mark = {
            let mut st = self.state();
            if target > st.next_durable {
                st.next_durable = target;
                // Sent under the lock so that receivers never see the id go backwards.
                self.inner.watch_tx.send_replace(target);
            }
            if st
                .last_epoch
                .is_none_or(|t| t.elapsed() >= mark::SYNC_EVERY)
            {
                st.last_epoch = Some(Instant::now());
                let epoch = Epoch {
                    below: st.next_durable,
                    seqs: st.seqs.clone(),
                };
                st.epochs.push_back(epoch);
                if st.epochs.len() > MAX_EPOCHS {
                    // Keep the oldest: it may be the only floor below the lowest cursor.
                    st.epochs.remove(1);
                }
            }
            mark_of(&st)
        };
        self.write_mark(&mark);
        Ok(())
    }

    /// Writes the high-water mark (after a flush: the records it names are on disk).
    fn write_mark(&self, mark: &Mark) {
        let mut file = self
            .inner
            .mark
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write(mark) {
                error!(store = %self.inner.dir.display(), file = %f.path().display(), error = %e,
                    "cannot write the store's high-water mark; no longer keeping it");
                *file = None;
            }
        }
    }

    /// Copies newly recorded losses into the loss journal.
    fn journal_losses(&self, added: &[Loss], ledger: &Ledger) {
        if added.is_empty() {
            return;
        }
        let mut journal = self
            .inner
            .journal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(j) = journal.as_mut() {
            if let Err(e) = j.append(added, &ledger.losses()) {
                error!(store = %self.inner.dir.display(), error = %e,
                    "cannot write the store's loss journal; no longer keeping it");
                *journal = None;
            }
        }
    }

    /// The loss ledger, oldest range first: every sample the store lost (evicted over quota,
    /// unreadable on disk, or gone with a rolled-back log), per device as seq ranges.
    pub fn losses(&self) -> Vec<Loss> {
        self.state().ledger.losses()
    }

    /// Makes sure everything written so far is on disk (and readable). The way to retry after
    /// [`StoreError::NotDurable`].
    pub async fn flush(&self) -> Result<(), StoreError> {
        let target = self.state().next_assigned;
        self.flush_to(target).await
    }

    /// Up to `max_records` records with an id of at least `from`, in order. A record that
    /// cannot be decoded is logged, counted, removed and skipped.
    pub fn read(
        &self,
        northbound: &str,
        from: RecordId,
        max_records: usize,
    ) -> Result<Vec<(RecordId, Batch)>, StoreError> {
        let end = {
            let st = self.state();
            self.check_northbound(&st, northbound)?;
            st.next_durable
        };
        let mut out = Vec::new();
        if max_records == 0 || from >= end {
            return Ok(out);
        }
        for item in self
            .inner
            .db
            .range(keys::record_key(from)..keys::record_key(end))
        {
            let (key, value) = item.map_err(|e| self.sled_err("read records", e))?;
            let decoded = decode_record(&key, &value);
            match decoded {
                Ok(record) => {
                    out.push(record);
                    if out.len() >= max_records {
                        break;
                    }
                }
                Err(reason) => self.remove_corrupt(&key, &reason),
            }
        }
        Ok(out)
    }

    /// Removes one undecodable record, counted; the read goes on without it.
    fn remove_corrupt(&self, key: &[u8], reason: &str) {
        let id = keys::record_id(key);
        let mut st = self.state();
        // Already gone (acknowledged or evicted meanwhile): nothing to count.
        if let Some(id) = id {
            if st.index.first_from(id) != Some(id) {
                return;
            }
        }
        let corrupt = st.counters.corrupt_records + 1;
        let mut writes = sled::Batch::default();
        writes.remove(key);
        writes.insert(
            keys::named_key(COUNTER, keys::CORRUPT_RECORDS),
            &corrupt.to_be_bytes(),
        );
        // Which device's samples it held is unreadable too: the neighbours bound them.
        let found = match id {
            Some(id) => {
                let bounds = SeqBounds {
                    floor: floors(&st),
                    next: st.seqs.iter().map(|(d, &n)| (d.0.clone(), n)).collect(),
                };
                let records = readable_seqs(&self.inner.db, Some(id));
                losses::cover_missing(
                    &records,
                    &[(id, id + 1)],
                    &bounds,
                    |_| LossReason::Corrupted,
                    edge_model::now_ms(),
                )
            }
            None => Vec::new(),
        };
        let ledger = st.ledger.with(&found, &mut writes);
        match self.inner.db.apply_batch(writes) {
            Ok(()) => {
                st.counters.corrupt_records = corrupt;
                self.journal_losses(&found, &ledger);
                st.ledger = ledger;
                let lost = id.and_then(|id| st.index.remove(id));
                error!(store = %self.inner.dir.display(), record = ?id, reason,
                    samples = lost.map(|m| m.samples), corrupt_records = corrupt,
                    lost_ranges = %ranges_text(&found),
                    "removed a corrupted record: its samples are lost");
            }
            Err(e) => error!(store = %self.inner.dir.display(), record = ?id, reason,
                error = %e, "a corrupted record could not be removed; it is skipped"),
        }
    }

    /// Records that `northbound` has everything below `next`. The cursor never moves back.
    /// Records every northbound has acknowledged are removed in the same write. Not flushed:
    /// sled writes it within half a second, and a lost update only means duplicates.
    pub fn ack(&self, northbound: &str, next: RecordId) -> Result<(), StoreError> {
        self.ack_inner(northbound, next, None)
    }

    /// [`Store::ack`], storing `checkpoint` (the northbound's derived state as of the records
    /// below `next`) in the same atomic write, so that the cursor and the checkpoint are
    /// always found together, after a crash too. An acknowledgement that does not move the
    /// cursor stores nothing (its checkpoint is not newer than the stored one); one beyond the
    /// last stored record is [`StoreError::BeyondStored`] and stores nothing either. A plain
    /// [`Store::ack`] that moves the cursor removes the checkpoint, which would no longer
    /// describe the cursor.
    pub fn ack_with_checkpoint(
        &self,
        northbound: &str,
        next: RecordId,
        checkpoint: &[u8],
    ) -> Result<(), StoreError> {
        self.ack_inner(northbound, next, Some(checkpoint))
    }

    /// The cursor of `northbound` and its stored checkpoint, read together: where a publisher
    /// resumes after a restart or a lost connection.
    pub fn resume_point(
        &self,
        northbound: &str,
    ) -> Result<(RecordId, Option<Checkpoint>), StoreError> {
        let st = self.state();
        self.check_northbound(&st, northbound)?;
        let cursor = st.cursors.get(northbound).copied().unwrap_or(0);
        let stored = self
            .inner
            .db
            .get(keys::named_key(CHECKPOINT, northbound))
            .map_err(|e| self.sled_err("read a checkpoint", e))?;
        let checkpoint = match stored {
            None => None,
            Some(v) => match keys::split_checkpoint(&v) {
                Some((at, bytes)) => Some(Checkpoint {
                    at,
                    bytes: bytes.to_vec(),
                }),
                None => {
                    warn!(store = %self.inner.dir.display(), northbound,
                        "ignoring an unreadable checkpoint; derived state starts afresh");
                    None
                }
            },
        };
        Ok((cursor, checkpoint))
    }

    fn ack_inner(
        &self,
        northbound: &str,
        next: RecordId,
        checkpoint: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        self.check_northbound(&st, northbound)?;
        let current = st.cursors.get(northbound).copied().unwrap_or(0);
        let next = if next > st.next_durable {
            if checkpoint.is_some() {
                return Err(StoreError::BeyondStored {
                    northbound: northbound.to_owned(),
                    next,
                    next_id: st.next_durable,
                });
            }
            warn!(store = %self.inner.dir.display(), northbound, next, next_id = st.next_durable,
                "acknowledgement beyond the last stored record; limited to it");
            st.next_durable
        } else {
            next
        };
        if next <= current {
            return Ok(());
        }
        let min = st
            .cursors
            .iter()
            .map(|(name, &c)| if name == northbound { next } else { c })
            .min()
            .unwrap_or(next);
        let mut writes = sled::Batch::default();
        writes.insert(keys::named_key(CURSOR, northbound), &next.to_be_bytes());
        let checkpointed = match checkpoint {
            Some(checkpoint) => {
                writes.insert(
                    keys::named_key(CHECKPOINT, northbound),
                    keys::checkpoint_value(next, checkpoint),
                );
                true
            }
            None => {
                if st.checkpointed.contains(northbound) {
                    writes.remove(keys::named_key(CHECKPOINT, northbound));
                }
                false
            }
        };
        for id in st.index.ids_below(min) {
            writes.remove(&keys::record_key(id));
        }
        self.inner
            .db
            .apply_batch(writes)
            .map_err(|e| self.sled_err("record an acknowledgement", e))?;
        st.cursors.insert(northbound.to_owned(), next);
        if checkpointed {
            st.checkpointed.insert(northbound.to_owned());
        } else {
            st.checkpointed.remove(northbound);
        }
        st.index.remove_below(min);
        Ok(())
    }

    /// The first record `northbound` has not acknowledged; 0 for an unknown northbound.
    pub fn cursor(&self, northbound: &str) -> RecordId {
        self.state().cursors.get(northbound).copied().unwrap_or(0)
    }

    /// The id the next committed record will get: every record below it is on disk.
    pub fn next_id(&self) -> RecordId {
        self.state().next_durable
    }

    /// Follows [`Store::next_id`]; changes after every commit.
    pub fn watch(&self) -> watch::Receiver<RecordId> {
        self.inner.watch_tx.subscribe()
    }

    /// A snapshot for health reports and `buffer stats`. Costs a few system calls and one
    /// record read per northbound; pending samples are summed over the pending records.
    pub fn stats(&self) -> StoreStats {
        let (mut stats, firsts) = {
            let st = self.state();
            let mut firsts = vec![st.index.first_id()];
            let northbounds = st
                .cursors
                .iter()
                .map(|(name, &cursor)| {
                    let pending = st.index.span_from(cursor);
                    firsts.push(pending.first);
                    NorthboundStats {
                        name: name.clone(),
                        cursor,
                        pending_records: pending.records,
                        pending_samples: pending.samples,
                        oldest_pending_read_ts_ms: None,
                    }
                })
                .collect();
            let stats = StoreStats {
                records: st.index.records(),
                samples: st.index.samples(),
                oldest_read_ts_ms: None,
                next_id: st.next_durable,
                disk_bytes: st.disk_bytes,
                logical_bytes: st.index.bytes(),
                eviction_budget_bytes: st.quota.budget(),
                dropped_records: st.counters.dropped_records,
                dropped_samples: st.counters.dropped_samples,
                corrupt_records: st.counters.corrupt_records,
                quarantines: st.counters.quarantines,
                salvages: st.counters.salvages,
                salvaged_records: st.counters.salvaged_records,
                lost: st.ledger.counts,
                committed_samples: st.committed_samples,
                committed_bytes: st.committed_bytes,
                commits: st.commits,
                commit_retries: st.commit_retries,
                northbounds,
            };
            (stats, firsts)
        };
        if let Ok(disk) = self.inner.db.size_on_disk() {
            stats.disk_bytes = disk;
        }
        let mut read_ts = firsts
            .into_iter()
            .map(|id| id.and_then(|id| self.oldest_read_ts(id)));
        stats.oldest_read_ts_ms = read_ts.next().flatten();
        for (nb, ts) in stats.northbounds.iter_mut().zip(read_ts) {
            nb.oldest_pending_read_ts_ms = ts;
        }
        stats
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The earliest read time in one record, if it is still there and readable.
    fn oldest_read_ts(&self, id: RecordId) -> Option<u64> {
        let value = self.inner.db.get(keys::record_key(id)).ok()??;
        let batch = Batch::decode(&value).ok()?;
        batch.samples.iter().map(|s| s.read_ts_ms).min()
    }

    pub(crate) fn note_commit_retry(&self) {
        self.state().commit_retries += 1;
    }

    /// After a commit: reads the disk size now and then, and evicts the oldest records while
    /// the records exceed the budget the quota policy set. Never evicts the records of the
    /// commit that just happened (from `protect_from` on). Failures are logged, not returned:
    /// the commit itself succeeded.
    fn enforce_quota(&self, protect_from: RecordId) {
        let due = {
            let mut st = self.state();
            st.commits_since_check += 1;
            let due = st.commits_since_check >= CHECK_EVERY_COMMITS
                || st.last_check.is_none_or(|t| t.elapsed() >= CHECK_EVERY);
            if due {
                st.commits_since_check = 0;
                st.last_check = Some(Instant::now());
            }
            due
        };
        let disk = if due {
            match self.inner.db.size_on_disk() {
                Ok(disk) => Some(disk),
                Err(e) => {
                    warn!(store = %self.inner.dir.display(), error = %e,
                        "cannot measure the store's size on disk; the quota is not checked");
                    None
                }
            }
        } else {
            None
        };

        let mut st = self.state();
        if let Some(disk) = disk {
            st.disk_bytes = disk;
            let logical = st.index.bytes();
            match st.quota.observe(disk, logical) {
                Some(BudgetChange::Set(budget)) => warn!(store = %self.inner.dir.display(),
                    disk_bytes = disk, max_disk_bytes = st.quota.quota(), logical_bytes = logical,
                    budget_bytes = budget, "store over its disk quota: evicting the oldest records"),
                Some(BudgetChange::Shrunk { from, to }) => warn!(store = %self.inner.dir.display(),
                    disk_bytes = disk, logical_bytes = logical, from_bytes = from, to_bytes = to,
                    "store still growing over its disk quota: keeping fewer records"),
                Some(BudgetChange::Lifted) => {
                    info!(store = %self.inner.dir.display(), disk_bytes = disk,
                    "store back under its disk quota: no more eviction")
                }
                None => {}
            }
        }
        let Some(budget) = st.quota.budget() else {
            return;
        };
        if st.index.bytes() <= budget {
            return;
        }
        if let Some(bound) = st.index.eviction_bound(budget, protect_from) {
            self.evict_below(&mut st, bound);
        }
        if st.index.bytes() > budget && st.index.first_id() >= Some(protect_from) {
            warn!(store = %self.inner.dir.display(), logical_bytes = st.index.bytes(), budget_bytes = budget,
                "the records of one commit alone exceed the disk budget; they are kept");
        }
    }

    /// Evicts every record below `bound`: one write removes them, updates the dropped counters
    /// and moves up the cursors that pointed at them.
    fn evict_below(&self, st: &mut State, bound: RecordId) {
        let span = st.index.span_below(bound);
        let Some(first) = span.first else {
            return;
        };
        let new_first = st.index.first_from(bound).unwrap_or(st.next_assigned);
        let dropped_records = st.counters.dropped_records + span.records;
        let dropped_samples = st.counters.dropped_samples + span.samples;

        let mut writes = sled::Batch::default();
        for id in st.index.ids_below(bound) {
            writes.remove(&keys::record_key(id));
        }
        writes.insert(
            keys::named_key(COUNTER, keys::DROPPED_RECORDS),
            &dropped_records.to_be_bytes(),
        );
        writes.insert(
            keys::named_key(COUNTER, keys::DROPPED_SAMPLES),
            &dropped_samples.to_be_bytes(),
        );
        let mut undelivered = BTreeMap::new();
        for (name, &cursor) in &st.cursors {
            if cursor < new_first {
                writes.insert(keys::named_key(CURSOR, name), &new_first.to_be_bytes());
                let lost = span.records - st.index.span_below(cursor).records;
                undelivered.insert(name.clone(), lost);
            }
        }
        let (per_device, ranges) = self.count_per_device(first, bound);
        let evicted = Evictions {
            first_id: span.first,
            last_id: span.last,
            records: span.records,
            samples: span.samples,
            bytes: span.bytes,
            per_device,
            undelivered,
        };
        let ledger = st.ledger.with(&ranges, &mut writes);
        if let Err(e) = self.inner.db.apply_batch(writes) {
            error!(store = %self.inner.dir.display(), error = %e,
                "cannot evict the oldest records; the store keeps growing over its quota");
            return;
        }
        st.index.remove_below(bound);
        self.journal_losses(&ranges, &ledger);
        st.ledger = ledger;
        st.counters.dropped_records = dropped_records;
        st.counters.dropped_samples = dropped_samples;
        for name in evicted.undelivered.keys() {
            st.cursors.insert(name.clone(), new_first);
        }
        if let Some(report) = st.evictions.record(evicted, Instant::now()) {
            report_evictions(&self.inner.dir, &report, &st.counters);
        }
    }

    /// Records and samples per device in `first..bound`, for the eviction report, and the
    /// exact seq ranges they held, for the loss ledger. Reading the evicted records back costs
    /// a disk read per record on a rare path, where keeping each record's device and seqs in
    /// the index would cost memory for every record all the time.
    fn count_per_device(
        &self,
        first: RecordId,
        bound: RecordId,
    ) -> (BTreeMap<String, (u64, u64)>, Vec<Loss>) {
        let mut per_device: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut ranges: Vec<Loss> = Vec::new();
        let now = edge_model::now_ms();
        for (key, value) in self
            .inner
            .db
            .range(keys::record_key(first)..keys::record_key(bound))
            .flatten()
        {
            let (device, samples) = match Batch::decode(&value) {
                Ok(b) => {
                    for sample in &b.samples {
                        push_seq(
                            &mut ranges,
                            &b.device.0,
                            sample.seq,
                            LossReason::Evicted,
                            now,
                        );
                    }
                    (b.device.0, b.samples.len() as u64)
                }
                Err(e) => {
                    error!(store = %self.inner.dir.display(), record = ?keys::record_id(&key), error = %e,
                        "an evicted record was unreadable: its samples are not in the loss ledger");
                    ("(unreadable)".to_owned(), 0)
                }
            };
            let entry = per_device.entry(device).or_default();
            entry.0 += 1;
            entry.1 += samples;
        }
        (per_device, ranges)
    }

    fn check_northbound(&self, st: &State, name: &str) -> Result<(), StoreError> {
        if st.cursors.contains_key(name) {
            Ok(())
        } else {
            Err(StoreError::UnknownNorthbound {
                name: name.to_owned(),
                known: st.cursors.keys().cloned().collect(),
            })
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave sled inconsistent (every change is one
        // atomic write); the in-memory state is still the best view there is.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The sled database, for the store's other trees (command answers).
    pub(crate) fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    pub(crate) fn sled_err(&self, op: &'static str, source: sled::Error) -> StoreError {
        StoreError::Sled {
            dir: self.inner.dir.clone(),
            op,
            source,
        }
    }
}

/// Data loss: an operator must act, hence error level.
fn report_evictions(dir: &Path, evicted: &Evictions, totals: &Counters) {
    error!(store = %dir.display(), first_id = ?evicted.first_id, last_id = ?evicted.last_id,
        records = evicted.records, samples = evicted.samples, bytes = evicted.bytes,
        per_device = %evicted.per_device_text(), northbounds = %evicted.undelivered_text(),
        dropped_records_total = totals.dropped_records, dropped_samples_total = totals.dropped_samples,
        "store over its disk quota: dropped the oldest records; raise the quota or restore the northbound connection");
}

impl Drop for Inner {
    fn drop(&mut self) {
        let st = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(evicted) = st.evictions.take_pending() {
            report_evictions(&self.dir, &evicted, &st.counters);
        }
    }
}

/// A failed commit; `batches` is `Some` when nothing was written (commit them again) and
/// `None` when they were written but not flushed (retry the flush).
#[derive(Debug)]
pub(crate) struct CommitFailure {
    pub error: StoreError,
    pub batches: Option<Vec<Batch>>,
}

/// [`open_and_load`], waiting a moment for a lock to go: sled's background threads hold the
/// files briefly after the last handle of a store is dropped, so a store reopened in the same
/// process can find its own lock still held. Another running agent keeps it for good.
fn open_waiting_for_lock(
    dir: &Path,
    opts: &StoreOptions,
) -> Result<(sled::Db, Loaded), OpenFailure> {
    let started = Instant::now();
    loop {
        match open_and_load(dir, opts) {
            Err(OpenFailure::Fatal(StoreError::Locked { .. })) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(LOCK_POLL);
            }
            other => return other,
        }
    }
}

/// Opens sled in `dir` and scans it, telling an unreadable directory from one that is merely
/// locked or inaccessible.
fn open_and_load(dir: &Path, opts: &StoreOptions) -> Result<(sled::Db, Loaded), OpenFailure> {
    let db = open_db(dir, opts)?;
    match catch_unwind(AssertUnwindSafe(|| load(&db, dir))) {
        Ok(Ok(loaded)) => Ok((db, loaded)),
        Ok(Err(e)) => {
            drop(db);
            Err(classify(dir, e, "read its content"))
        }
        Err(panic) => {
            drop(db);
            Err(OpenFailure::Unreadable(format!(
                "sled failed while reading it: {}",
                panic_message(panic.as_ref())
            )))
        }
    }
}

/// Opens sled in `dir`.
fn open_db(dir: &Path, opts: &StoreOptions) -> Result<sled::Db, OpenFailure> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(opts.cache_capacity_bytes)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(Some(BACKGROUND_FLUSH_MS));
    // sled starts an empty database over a log whose beginning it cannot read, without an
    // error: a log that had content but yields no database is unreadable, not new.
    let had_log = std::fs::metadata(dir.join("db")).is_ok_and(|m| m.len() > 0);
    match catch_unwind(AssertUnwindSafe(|| config.open())) {
        Ok(Ok(db)) if had_log && !db.was_recovered() => {
            drop(db);
            Err(OpenFailure::Unreadable(
                "sled found no database in the existing log file".to_owned(),
            ))
        }
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(classify(dir, e, "open")),
        Err(panic) => Err(OpenFailure::Unreadable(format!(
            "sled failed while opening it: {}",
            panic_message(panic.as_ref())
        ))),
    }
}

/// sled 0.34 reports a held lock as an `Other` I/O error "could not acquire lock on ..."
/// wrapping the `WouldBlock` of `flock`; corruption and foreign files come as `Corruption` or
/// `Unsupported` (a `conf` file it cannot parse).
fn classify(dir: &Path, e: sled::Error, op: &'static str) -> OpenFailure {
    match e {
        sled::Error::Io(ref io) if io.to_string().contains("could not acquire lock") => {
            OpenFailure::Fatal(StoreError::Locked {
                dir: dir.to_owned(),
            })
        }
        sled::Error::Io(ref io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenFailure::Unreadable(e.to_string())
        }
        sled::Error::Io(_) => OpenFailure::Fatal(if op == "open" {
            StoreError::Open {
                dir: dir.to_owned(),
                source: e,
            }
        } else {
            StoreError::Sled {
                dir: dir.to_owned(),
                op,
                source: e,
            }
        }),
        other => OpenFailure::Unreadable(other.to_string()),
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown failure".to_owned()
    }
}

/// Moves an unreadable store directory aside, so that the agent can start and the files stay
/// available for inspection.
fn quarantine(dir: &Path, reason: &str) -> Result<PathBuf, StoreError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "store".to_owned());
    let to = dir.with_file_name(format!("{name}.corrupt-{}", edge_model::now_ms()));
    std::fs::rename(dir, &to).map_err(|source| StoreError::Quarantine {
        dir: dir.to_owned(),
        to: to.clone(),
        reason: reason.to_owned(),
        source,
    })?;
    error!(store = %dir.display(), moved_to = %to.display(), reason,
        "the store directory is unreadable: moved it aside; salvaging what can be read into a fresh store");
    Ok(to)
}

/// Reads everything back at open: records into the index (undecodable ones removed and
/// counted), seqs, cursors and counters.
fn load(db: &sled::Db, dir: &Path) -> Result<Loaded, sled::Error> {
    let mut loaded = Loaded::default();
    let mut record_seqs: HashMap<DeviceId, u64> = HashMap::new();
    let mut corrupt_keys = Vec::new();
    for item in db.iter() {
        let (key, value) = item?;
        let Some(&prefix) = key.first() else {
            warn!(store = %dir.display(), "ignoring an empty key");
            continue;
        };
        match prefix {
            keys::RECORD => {
                let decoded = decode_record(&key, &value);
                match decoded {
                    Ok((id, batch)) => {
                        if let Some(max) = batch.samples.iter().map(|s| s.seq).max() {
                            let next = record_seqs.entry(batch.device.clone()).or_default();
                            *next = (*next).max(max.saturating_add(1));
                        }
                        if let Some(min) = batch.samples.iter().map(|s| s.seq).min() {
                            let first =
                                loaded.first_seqs.entry(batch.device.clone()).or_insert(min);
                            *first = (*first).min(min);
                        }
                        loaded.index.push(RecordMeta {
                            id,
                            samples: u32::try_from(batch.samples.len()).unwrap_or(u32::MAX),
                            bytes: u32::try_from(value.len()).unwrap_or(u32::MAX),
                        });
                    }
                    Err(reason) => {
                        error!(store = %dir.display(), record = ?keys::record_id(&key), reason,
                            "removing a corrupted record: its samples are lost");
                        corrupt_keys.push(key);
                    }
                }
            }
            SEQ | CURSOR | COUNTER => {
                let name = keys::key_name(prefix, &key);
                let number = keys::u64_value(&value);
                match (prefix, name, number) {
                    (SEQ, Some(device), Some(next)) => {
                        loaded.seqs.insert(DeviceId(device.to_owned()), next);
                    }
                    (CURSOR, Some(nb), Some(cursor)) => {
                        loaded.cursors.insert(nb.to_owned(), cursor);
                    }
                    (COUNTER, Some(counter), Some(n)) => match counter {
                        keys::DROPPED_RECORDS => loaded.counters.dropped_records = n,
                        keys::DROPPED_SAMPLES => loaded.counters.dropped_samples = n,
                        keys::CORRUPT_RECORDS => loaded.counters.corrupt_records = n,
                        keys::QUARANTINES => loaded.counters.quarantines = n,
                        keys::SALVAGES => loaded.counters.salvages = n,
                        keys::SALVAGED_RECORDS => loaded.counters.salvaged_records = n,
                        keys::NEXT_ID_FLOOR => loaded.counters.next_id_floor = n,
                        keys::LOST_EVICTED => loaded.lost.evicted = n,
                        keys::LOST_CORRUPTED => loaded.lost.corrupted = n,
                        keys::LOST_ROLLED_BACK => loaded.lost.rolled_back = n,
                        keys::LOST_PURGED => loaded.lost.purged = n,
                        keys::FOLDED_LOSS_RANGES => loaded.lost.folded_ranges = n,
                        other => {
                            debug!(store = %dir.display(), counter = other, "ignoring an unknown counter")
                        }
                    },
                    _ => warn!(store = %dir.display(), key = ?key.as_ref(),
                        "ignoring an unreadable seq, cursor or counter entry (a missing cursor means duplicates, not loss)"),
                }
            }
            CHECKPOINT => match keys::key_name(CHECKPOINT, &key) {
                Some(nb) => loaded.checkpoints.push(nb.to_owned()),
                None => {
                    warn!(store = %dir.display(), key = ?key.as_ref(), "ignoring a checkpoint with an unreadable name")
                }
            },
            LOSS => match (keys::u64_value(&key[1..]), Loss::decode(&value)) {
                (Some(k), Some(loss)) => {
                    loaded.losses.insert(k, loss);
                }
                _ => {
                    warn!(store = %dir.display(), key = ?key.as_ref(), "ignoring an unreadable loss ledger entry")
                }
            },
            _ => debug!(store = %dir.display(), key = ?key.as_ref(), "ignoring an unknown key"),
        }
    }
    // A seq counter is written with its records, but a device's records say it as well; take
    // whichever is further so that a seq is never given twice.
    for (device, next) in record_seqs {
        let seq = loaded.seqs.entry(device).or_insert(FIRST_SEQ);
        *seq = (*seq).max(next);
    }
    if !corrupt_keys.is_empty() {
        loaded.corrupt_removed = corrupt_keys.len() as u64;
        loaded.counters.corrupt_records += loaded.corrupt_removed;
        let mut writes = sled::Batch::default();
        for key in corrupt_keys {
            writes.remove(key);
        }
        writes.insert(
            keys::named_key(COUNTER, keys::CORRUPT_RECORDS),
            &loaded.counters.corrupt_records.to_be_bytes(),
        );
        db.apply_batch(writes)?;
    }
    Ok(loaded)
}

/// The high-water mark of the running store.
fn mark_of(st: &State) -> Mark {
    let floor = floors(st);
    let min_cursor = st
        .cursors
        .values()
        .copied()
        .min()
        .unwrap_or_else(|| st.index.first_id().unwrap_or(st.next_durable));
    Mark {
        next_id: st.next_durable,
        min_cursor,
        devices: st
            .seqs
            .iter()
            .map(|(device, &next_seq)| {
                let floor_seq = floor.get(&device.0).copied().unwrap_or(FIRST_SEQ);
                (
                    device.0.clone(),
                    DeviceMark {
                        next_seq,
                        floor_seq,
                    },
                )
            })
            .collect(),
    }
}

/// Each device's seq floor: the newest epoch every northbound has acknowledged everything
/// below of. Epochs older than it are dropped on the way.
fn floors(st: &State) -> BTreeMap<String, u64> {
    let min_cursor = st.cursors.values().copied().min().unwrap_or(0);
    let epoch = st
        .epochs
        .iter()
        .rev()
        .find(|e| e.below <= min_cursor)
        .or(st.epochs.front());
    epoch
        .map(|e| e.seqs.iter().map(|(d, &s)| (d.0.clone(), s)).collect())
        .unwrap_or_default()
}

/// Adds one lost seq to the ranges: extends the device's last range or starts one.
fn push_seq(ranges: &mut Vec<Loss>, device: &str, seq: u64, reason: LossReason, at_ms: u64) {
    let last = ranges.iter_mut().rev().find(|l| l.device == device);
    match last {
        Some(l) if l.last_seq.checked_add(1) == Some(seq) => {
            l.last_seq = seq;
            l.samples += 1;
        }
        _ => ranges.push(Loss::range(device, seq, seq, reason, at_ms)),
    }
}

/// Device and seqs of every readable record, in id order (except `skip`); a rare-path scan.
fn readable_seqs(db: &sled::Db, skip: Option<RecordId>) -> Vec<RecordSeqs> {
    let mut out = Vec::new();
    for (key, value) in db
        .range(keys::record_key(0)..=keys::record_key(RecordId::MAX))
        .flatten()
    {
        let Ok((id, batch)) = decode_record(&key, &value) else {
            continue;
        };
        let seqs = batch.samples.iter().map(|s| s.seq);
        if Some(id) == skip {
            continue;
        }
        if let (Some(first), Some(last)) = (seqs.clone().min(), seqs.max()) {
            out.push(RecordSeqs {
                id,
                device: batch.device.0,
                first_seq: first,
                last_seq: last,
            });
        }
    }
    out
}

/// "plc1 10..=19 (corrupted), ..."
fn ranges_text(losses: &[Loss]) -> String {
    losses
        .iter()
        .map(|l| {
            format!(
                "{} {}..={} ({})",
                l.device, l.first_seq, l.last_seq, l.reason
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// At open: the records that should be here (from the lowest cursor up to the mark, or up to
/// the last one sled knows without a mark) and are not, covered per device by seq ranges, and
/// logged. A run above everything sled still has is a rolled-back log; anything else (holes,
/// undecodable records, a salvage) is corruption.
#[allow(clippy::too_many_arguments)]
fn find_losses(
    db: &sled::Db,
    dir: &Path,
    index: &RecordIndex,
    stored_cursors: &BTreeMap<String, RecordId>,
    seqs: &HashMap<DeviceId, u64>,
    mark: Option<&Mark>,
    next_id: RecordId,
    sled_next: RecordId,
    salvaged: bool,
) -> Vec<Loss> {
    let sled_min_cursor = stored_cursors.values().copied().min();
    let from = match mark {
        Some(m) => m.min_cursor.max(sled_min_cursor.unwrap_or(0)),
        None => sled_min_cursor.unwrap_or_else(|| index.first_id().unwrap_or(next_id)),
    };
    let runs = losses::missing_runs(index.ids_below(RecordId::MAX), from, next_id);
    if runs.is_empty() {
        return Vec::new();
    }
    let records = readable_seqs(db, None);
    let mut bounds = SeqBounds {
        floor: BTreeMap::new(),
        next: seqs.iter().map(|(d, &n)| (d.0.clone(), n)).collect(),
    };
    if let Some(m) = mark {
        for (device, d) in &m.devices {
            bounds.floor.insert(device.clone(), d.floor_seq);
            let next = bounds.next.entry(device.clone()).or_insert(0);
            *next = (*next).max(d.next_seq);
        }
    }
    let found = losses::cover_missing(
        &records,
        &runs,
        &bounds,
        |(start, _)| {
            if !salvaged && start >= sled_next {
                LossReason::RolledBack
            } else {
                LossReason::Corrupted
            }
        },
        edge_model::now_ms(),
    );
    let missing: u64 = runs.iter().map(|(a, b)| b - a).sum();
    let samples: u64 = found.iter().map(|l| l.samples).sum();
    error!(store = %dir.display(), missing_records = missing, missing_runs = runs.len(),
        first_missing = runs.first().map(|r| r.0), last_missing = runs.last().map(|r| r.1 - 1),
        expected_next_id = next_id, sled_next_id = sled_next, mark = mark.is_some(),
        lost_samples_at_most = samples, lost_ranges = %ranges_text(&found),
        "records committed to the store are gone (a damaged or rolled-back log): recorded as lost; ids and seqs continue after the highest ever given");
    found
}

/// A stored record from its sled key and value; any malformation is an error text for the log.
fn decode_record(key: &[u8], value: &[u8]) -> Result<(RecordId, Batch), String> {
    match keys::record_id(key) {
        Some(id) => Batch::decode(value)
            .map(|b| (id, b))
            .map_err(|e| e.to_string()),
        None => Err("malformed record key".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_model::{Sample, TagName, Value};

    fn batch(samples: usize) -> Batch {
        Batch {
            device: DeviceId::from("plc"),
            samples: (0..samples)
                .map(|i| Sample::good(TagName::from("t"), Value::U16(i as u16), 1000))
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_record_that_turns_corrupt_while_open_is_skipped_counted_and_removed_by_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nbs = vec!["mes".to_owned()];
        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &nbs).expect("open");
        for _ in 0..3 {
            store.commit(vec![batch(2)]).await.expect("commit");
        }
        store
            .inner
            .db
            .insert(keys::record_key(1), &[0x01, 0x05, b'p'][..])
            .expect("garbage");

        let ids: Vec<_> = store
            .read("mes", 0, 10)
            .expect("read")
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(ids, vec![0, 2]);
        let stats = store.stats();
        assert_eq!(
            (stats.records, stats.samples, stats.corrupt_records),
            (2, 4, 1)
        );
        assert_eq!(store.inner.db.get(keys::record_key(1)).expect("get"), None);
        // Reading again neither finds nor counts it a second time.
        assert_eq!(store.read("mes", 0, 10).expect("read").len(), 2);
        assert_eq!(store.stats().corrupt_records, 1);

        drop(store);
        let (store, recovery) =
            Store::open(dir.path(), StoreOptions::default(), &nbs).expect("reopen");
        assert_eq!(recovery.corrupt_records_removed, 0);
        assert_eq!(store.stats().corrupt_records, 1, "the counter is persisted");
    }

    #[tokio::test]
    async fn an_eviction_whose_ledger_entry_sled_lost_is_restored_from_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nbs = vec!["mes".to_owned()];
        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &nbs).expect("open");
        for _ in 0..4 {
            store.commit(vec![batch(3)]).await.expect("commit");
        }
        {
            let mut st = store.state();
            store.evict_below(&mut st, 2);
        }
        let evicted = store.losses();
        assert_eq!(evicted.len(), 1);
        assert_eq!(
            (evicted[0].first_seq, evicted[0].last_seq, evicted[0].reason),
            (1, 6, LossReason::Evicted)
        );
        // A log sled recovered only up to before the eviction's ledger entry.
        for (key, _) in store.inner.db.scan_prefix([keys::LOSS]).flatten() {
            store.inner.db.remove(key).expect("remove");
        }
        store
            .inner
            .db
            .remove(keys::named_key(COUNTER, LossReason::Evicted.counter()))
            .expect("remove");
        store.inner.db.flush().expect("flush");
        drop(store);

        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &nbs).expect("reopen");
        assert_eq!(store.losses(), evicted, "restored from the journal");
        assert_eq!(store.stats().lost.evicted, 6);
        drop(store);
        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &nbs).expect("reopen");
        assert_eq!(store.stats().lost.evicted, 6, "not counted twice");
    }

    #[tokio::test]
    async fn records_an_older_build_stored_in_version_1_are_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nbs = vec!["mes".to_owned()];
        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &nbs).expect("open");
        // Version 1: device "plc", one sample: tag "t", good with a value, U16 7, read at
        // 1000 ms, seq 5.
        let v1 = [
            1, 3, b'p', b'l', b'c', 1, 1, b't', 4, 2, 7, 0, 0xe8, 0x07, 5,
        ];
        store
            .inner
            .db
            .insert(keys::record_key(0), &v1[..])
            .expect("insert");
        store.inner.db.flush().expect("flush");
        drop(store);

        let (store, recovery) =
            Store::open(dir.path(), StoreOptions::default(), &nbs).expect("reopen");
        assert_eq!(recovery.records, 1);
        store.commit(vec![batch(1)]).await.expect("commit");
        let records = store.read("mes", 0, 10).expect("read");
        assert_eq!(records.len(), 2);
        let old = &records[0].1.samples[0];
        assert_eq!(
            (old.value.clone(), old.read_ts_ms, old.seq),
            (Some(Value::U16(7)), 1000, 5)
        );
        assert_eq!(
            records[1].1.samples[0].seq, 6,
            "seqs continue after the old record"
        );
    }

    #[tokio::test]
    async fn records_are_not_readable_before_they_are_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nbs = vec!["mes".to_owned()];
        let (store, _) = Store::open(dir.path(), StoreOptions::default(), &nbs).expect("open");
        // Written but not yet flushed: what a reader sees between the write and the flush.
        let (committed, target) = store.write_records(vec![batch(1)]).expect("write");
        assert_eq!(committed.len(), 1);
        assert_eq!(store.next_id(), 0);
        assert!(store.read("mes", 0, 10).expect("read").is_empty());
        store.ack("mes", 1).expect("ack");
        assert_eq!(
            store.cursor("mes"),
            0,
            "cannot acknowledge what is not yet durable"
        );
        store.flush().await.expect("flush");
        assert_eq!(store.next_id(), target);
        assert_eq!(store.read("mes", 0, 10).expect("read").len(), 1);
    }
}
