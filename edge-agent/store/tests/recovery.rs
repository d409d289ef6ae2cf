//! Recovery from damaged store files and the loss ledger: whatever is damaged (a byte here and
//! there, a truncated log, a broken config, the mark itself), the store opens, never gives an
//! id or a seq twice, and every committed sample not yet acknowledged is either readable,
//! intact, or inside a recorded loss range.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use edge_model::{Batch, DeviceId, Sample, TagName, Value};
use edge_store::{Loss, LossReason, RecordId, Store, StoreOptions};

const DEVICES: [&str; 3] = ["plc1", "plc2", "press/3"];
const RECORDS: usize = 300;
const ACKED: u64 = 50;

fn nbs() -> Vec<String> {
    vec!["mes".to_owned()]
}

/// A small xorshift generator: deterministic damage per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn batch(device: &str, samples: usize, i: usize) -> Batch {
    Batch {
        device: DeviceId::from(device),
        samples: (0..samples)
            .map(|s| {
                Sample::good(
                    TagName(format!("t{s}")),
                    Value::U32((i * 10 + s) as u32),
                    i as u64,
                )
            })
            .collect(),
    }
}

/// What was committed: every record by id.
type Committed = BTreeMap<RecordId, Batch>;

/// Commits `RECORDS` records (one per commit, devices in turn, 1 to 3 samples) and
/// acknowledges the first `ACKED`.
async fn fill(dir: &Path) -> Committed {
    let (store, _) = Store::open(dir, StoreOptions::default(), &nbs()).expect("open");
    let mut committed = Committed::new();
    for i in 0..RECORDS {
        let b = batch(DEVICES[i % 3], 1 + i % 3, i);
        for (id, b) in store.commit(vec![b]).await.expect("commit") {
            committed.insert(id, b);
        }
    }
    store.ack("mes", ACKED).expect("ack");
    committed
}

fn covered(losses: &[Loss], device: &str, seq: u64) -> bool {
    losses
        .iter()
        .any(|l| l.device == device && l.first_seq <= seq && seq <= l.last_seq)
}

/// The invariants every recovery must keep.
async fn check_recovery(dir: &Path, committed: &mut Committed, case: &str) -> Store {
    let (store, recovery) = Store::open(dir, StoreOptions::default(), &nbs())
        .unwrap_or_else(|e| panic!("{case}: open failed: {e}"));
    let losses = store.losses();
    let readable: BTreeMap<RecordId, Batch> = store
        .read("mes", 0, usize::MAX)
        .expect("read")
        .into_iter()
        .collect();
    for (id, b) in &readable {
        assert_eq!(
            committed.get(id),
            Some(b),
            "{case}: record {id} is not intact"
        );
    }
    for (id, b) in committed.range(ACKED..) {
        if readable.contains_key(id) {
            continue;
        }
        for s in &b.samples {
            assert!(
                covered(&losses, &b.device.0, s.seq),
                "{case}: record {id} ({} seq {}) is neither readable nor in a loss range; \
                 recovery {recovery:?}, losses {losses:?}",
                b.device.0,
                s.seq
            );
        }
    }
    let lost_samples: u64 = losses.iter().map(|l| l.samples).sum();
    let stats = store.stats();
    assert_eq!(
        stats.lost.total(),
        lost_samples,
        "{case}: counters agree with the ledger"
    );

    // New commits never reuse an id or a seq.
    let max_id = committed.keys().max().copied().unwrap_or(0);
    let mut max_seq: BTreeMap<String, u64> = BTreeMap::new();
    for b in committed.values() {
        let m = max_seq.entry(b.device.0.clone()).or_default();
        *m = (*m).max(b.samples.iter().map(|s| s.seq).max().unwrap_or(0));
    }
    for (i, device) in DEVICES.iter().enumerate() {
        let done = store
            .commit(vec![batch(device, 2, i)])
            .await
            .expect("commit after recovery");
        let (id, b) = &done[0];
        assert!(*id > max_id, "{case}: id {id} given again (max {max_id})");
        assert!(
            b.samples[0].seq > max_seq[*device],
            "{case}: {device} seq {} given again (max {})",
            b.samples[0].seq,
            max_seq[*device]
        );
        committed.insert(*id, b.clone());
    }
    store
}

fn flip_bytes(path: &Path, rng: &mut Rng, n: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    if bytes.is_empty() {
        return;
    }
    for _ in 0..n {
        let at = rng.below(bytes.len() as u64) as usize;
        bytes[at] ^= 1 << rng.below(8);
    }
    std::fs::write(path, bytes).expect("write");
}

fn snapshot_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        })
}

#[tokio::test]
async fn damaged_store_files_never_lose_a_committed_sample_without_recording_it() {
    let mut kinds_seen = BTreeSet::new();
    let mut losses_seen = BTreeSet::new();
    for seed in 1..=30u64 {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("store");
        let mut committed = fill(&dir).await;
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let kind = match seed % 5 {
            0 => {
                flip_bytes(&dir.join("db"), &mut rng, 4);
                "flip db"
            }
            1 => {
                let db = dir.join("db");
                let len = std::fs::metadata(&db).expect("db").len();
                let to = rng.below(len);
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&db)
                    .and_then(|f| f.set_len(to))
                    .expect("truncate");
                "truncate db"
            }
            2 => {
                flip_bytes(&dir.join("conf"), &mut rng, 4);
                "flip conf"
            }
            3 => match snapshot_file(&dir) {
                Some(snap) => {
                    flip_bytes(&snap, &mut rng, 4);
                    "flip snapshot"
                }
                None => {
                    flip_bytes(&dir.join("db"), &mut rng, 8);
                    "flip db (no snapshot)"
                }
            },
            _ => {
                flip_bytes(&dir.join("edge-store.mark"), &mut rng, 4);
                "flip mark"
            }
        };
        kinds_seen.insert(kind);
        let case = format!("seed {seed} ({kind})");
        let store = check_recovery(&dir, &mut committed, &case).await;
        for l in store.losses() {
            losses_seen.insert(l.reason);
        }
        // A second open finds nothing new and keeps the ledger.
        let before = store.losses();
        drop(store);
        let again = check_recovery(&dir, &mut committed, &format!("{case}, reopened")).await;
        let after: Vec<Loss> = again.losses();
        assert_eq!(
            after
                .iter()
                .map(|l| (&l.device, l.first_seq, l.last_seq, l.reason))
                .collect::<Vec<_>>(),
            before
                .iter()
                .map(|l| (&l.device, l.first_seq, l.last_seq, l.reason))
                .collect::<Vec<_>>(),
            "{case}: reopening changed the ledger"
        );
    }
    assert!(kinds_seen.len() >= 4, "{kinds_seen:?}");
    assert!(
        losses_seen.contains(&LossReason::RolledBack),
        "no case rolled the log back: {losses_seen:?}"
    );
}

#[tokio::test]
async fn a_damaged_conf_is_salvaged_whole_with_no_loss() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("store");
    let mut committed = fill(&dir).await;
    std::fs::write(dir.join("conf"), b"this is not a sled configuration file").expect("write");

    let (store, recovery) = Store::open(&dir, StoreOptions::default(), &nbs()).expect("open");
    let moved = recovery.quarantined.clone().expect("moved aside");
    assert!(moved.join("db").exists(), "the damaged files are kept");
    assert!(!parent
        .path()
        .join(format!(
            "{}.salvage",
            moved.file_name().expect("name").to_string_lossy()
        ))
        .exists());
    assert!(recovery.losses.is_empty(), "{:?}", recovery.losses);
    assert!(store.losses().is_empty());
    let readable = store.read("mes", 0, usize::MAX).expect("read");
    assert_eq!(
        readable.len(),
        RECORDS - ACKED as usize,
        "every unacknowledged record is back"
    );
    for (id, b) in &readable {
        assert_eq!(committed.get(id), Some(b));
    }
    assert_eq!(store.cursor("mes"), ACKED, "the cursor came along");
    let stats = store.stats();
    assert_eq!((stats.quarantines, stats.salvages), (1, 1));
    assert_eq!(stats.salvaged_records, (RECORDS - ACKED as usize) as u64);
    assert_eq!(stats.lost.total(), 0);
    drop(store);
    check_recovery(&dir, &mut committed, "conf salvaged, reopened").await;
}

#[tokio::test]
async fn a_log_sled_cannot_open_is_moved_aside_and_its_loss_recorded_from_the_mark() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("store");
    let mut committed = fill(&dir).await;
    let db = dir.join("db");
    let mut bytes = std::fs::read(&db).expect("read");
    let mut rng = Rng(7);
    for b in bytes.iter_mut() {
        *b = rng.next() as u8;
    }
    std::fs::write(&db, bytes).expect("write");

    let store = check_recovery(&dir, &mut committed, "garbage log").await;
    let stats = store.stats();
    assert_eq!((stats.quarantines, stats.salvages), (1, 1), "{stats:?}");
    assert!(stats.lost.corrupted > 0, "{stats:?}");
    assert_eq!(stats.lost.rolled_back, 0);
    for device in DEVICES {
        assert!(store
            .losses()
            .iter()
            .any(|l| l.device == device && l.reason == LossReason::Corrupted));
    }
}

#[tokio::test]
async fn a_truncated_log_is_a_rollback_recorded_per_device_and_ids_continue_after_the_mark() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("store");
    let mut committed = fill(&dir).await;
    let db = dir.join("db");
    let len = std::fs::metadata(&db).expect("db").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(len / 3))
        .expect("truncate");

    let last_seqs: BTreeMap<String, u64> = DEVICES
        .iter()
        .map(|d| {
            let last = committed
                .values()
                .filter(|b| b.device.0 == *d)
                .flat_map(|b| b.samples.iter().map(|s| s.seq))
                .max()
                .unwrap_or(0);
            ((*d).to_owned(), last)
        })
        .collect();
    let store = check_recovery(&dir, &mut committed, "truncated log").await;
    let losses = store.losses();
    assert!(!losses.is_empty());
    assert!(
        losses.iter().all(|l| l.reason == LossReason::RolledBack),
        "{losses:?}"
    );
    // The loss reaches the last committed seq of each device, no further.
    for device in DEVICES {
        let last = last_seqs.get(device).copied();
        let reported = losses
            .iter()
            .filter(|l| l.device == device)
            .map(|l| l.last_seq)
            .max();
        assert_eq!(reported, last, "{device}");
    }
    assert_eq!(
        store.stats().lost.rolled_back,
        losses.iter().map(|l| l.samples).sum::<u64>()
    );
}

fn kib_batch(i: usize) -> Batch {
    let mut b = Batch::new(DeviceId::from(if i.is_multiple_of(2) {
        "even"
    } else {
        "odd"
    }));
    b.samples.push(Sample::good(
        TagName::from("blob"),
        Value::String(format!("{i:06}").repeat(170)),
        i as u64,
    ));
    b
}

#[tokio::test]
async fn eviction_records_the_exact_seq_ranges_it_dropped_and_the_ledger_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_disk_bytes: 2 << 20,
        cache_capacity_bytes: 4 << 20,
    };
    let (store, _) = Store::open(dir.path(), opts.clone(), &nbs()).expect("open");
    let mut committed = Committed::new();
    for c in 0..300 {
        let group = (0..16).map(|i| kib_batch(c * 16 + i)).collect();
        committed.extend(store.commit(group).await.expect("commit"));
    }
    let stats = store.stats();
    assert!(stats.dropped_samples > 0, "nothing evicted: {stats:?}");
    assert_eq!(stats.lost.evicted, stats.dropped_samples);
    let readable: BTreeSet<RecordId> = store
        .read("mes", 0, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|r| r.0)
        .collect();
    // Exactly the evicted seqs, per device.
    let mut expected: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for (id, b) in &committed {
        if !readable.contains(id) {
            expected
                .entry(b.device.0.clone())
                .or_default()
                .extend(b.samples.iter().map(|s| s.seq));
        }
    }
    let losses = store.losses();
    let mut reported: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for l in &losses {
        assert_eq!(l.reason, LossReason::Evicted);
        assert_eq!(l.samples, l.last_seq - l.first_seq + 1);
        reported
            .entry(l.device.clone())
            .or_default()
            .extend(l.first_seq..=l.last_seq);
    }
    assert_eq!(reported, expected);
    assert_eq!(
        losses.len(),
        2,
        "contiguous evictions merge into one range per device: {losses:?}"
    );

    drop(store);
    let (store, recovery) = Store::open(dir.path(), opts, &nbs()).expect("reopen");
    assert!(
        recovery.losses.is_empty(),
        "evicted records are not missing: {:?}",
        recovery.losses
    );
    assert_eq!(store.losses(), losses);
    assert_eq!(store.stats().lost.evicted, stats.dropped_samples);
}
