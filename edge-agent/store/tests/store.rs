//! The store against a real sled on disk: durability across reopen and `kill -9`, per-device
//! seqs, cursors and release, eviction over quota, corruption and locking at open, and the
//! group-commit writer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edge_model::{Batch, DeviceId, Sample, TagName, Value};
use edge_store::{spawn_writer, Checkpoint, RecordId, Store, StoreError, StoreOptions, FIRST_SEQ};

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn batch(device: &str, samples: usize, read_ts_ms: u64) -> Batch {
    Batch {
        device: DeviceId::from(device),
        samples: (0..samples)
            .map(|i| {
                Sample::good(
                    TagName(format!("t{i}")),
                    Value::F64(i as f64),
                    read_ts_ms + i as u64,
                )
            })
            .collect(),
    }
}

fn open(dir: &Path, northbounds: &[&str]) -> Store {
    Store::open(dir, StoreOptions::default(), &names(northbounds))
        .expect("store opens")
        .0
}

fn read_all(store: &Store, nb: &str) -> Vec<(RecordId, Batch)> {
    store.read(nb, 0, usize::MAX).expect("read")
}

fn seqs_of(records: &[(RecordId, Batch)], device: &str) -> Vec<u64> {
    records
        .iter()
        .filter(|(_, b)| b.device.0 == device)
        .flat_map(|(_, b)| b.samples.iter().map(|s| s.seq))
        .collect()
}

#[tokio::test]
async fn commit_then_reopen_keeps_every_record_and_seqs_continue_per_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let committed = {
        let store = open(dir.path(), &["mes"]);
        let mut all = store
            .commit(vec![batch("plc1", 3, 1000), batch("plc2", 2, 1000)])
            .await
            .expect("commit");
        all.extend(
            store
                .commit(vec![batch("plc1", 2, 2000)])
                .await
                .expect("commit"),
        );
        all
    };
    let (store, recovery) =
        Store::open(dir.path(), StoreOptions::default(), &names(&["mes"])).expect("reopen");
    assert_eq!(recovery.records, 3);
    assert_eq!(recovery.first_id, Some(0));
    assert_eq!(recovery.next_id, 3);
    assert_eq!(recovery.quarantined, None);
    assert_eq!(read_all(&store, "mes"), committed);

    let more = store
        .commit(vec![batch("plc1", 1, 3000), batch("plc2", 1, 3000)])
        .await
        .expect("commit after reopen");
    assert_eq!(more[0].0, 3);
    assert_eq!(
        more[0].1.samples[0].seq,
        FIRST_SEQ + 5,
        "plc1 continues, no gap, no reuse"
    );
    assert_eq!(
        more[1].1.samples[0].seq,
        FIRST_SEQ + 2,
        "plc2 continues, no gap, no reuse"
    );
}

#[tokio::test]
async fn seqs_count_per_device_independently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    store
        .commit(vec![batch("a", 2, 0), batch("b", 3, 0), batch("a", 1, 0)])
        .await
        .expect("commit");
    store.commit(vec![batch("b", 1, 0)]).await.expect("commit");
    let records = read_all(&store, "mes");
    let s = FIRST_SEQ;
    assert_eq!(seqs_of(&records, "a"), vec![s, s + 1, s + 2]);
    assert_eq!(seqs_of(&records, "b"), vec![s, s + 1, s + 2, s + 3]);
}

#[tokio::test]
async fn commit_returns_the_stored_batches_and_skips_empty_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    let committed = store
        .commit(vec![batch("a", 0, 0), batch("a", 2, 5), batch("b", 0, 0)])
        .await
        .expect("commit");
    assert_eq!(committed.len(), 1);
    assert_eq!(committed, read_all(&store, "mes"));
    assert!(store
        .commit(vec![batch("a", 0, 0)])
        .await
        .expect("commit")
        .is_empty());
    assert!(store.commit(Vec::new()).await.expect("commit").is_empty());
    assert_eq!(store.next_id(), 1);
    assert_eq!(store.stats().commits, 1);
}

#[tokio::test]
async fn ack_advances_the_cursor_and_removes_only_what_every_northbound_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes", "scada"]);
    for i in 0..5 {
        store
            .commit(vec![batch("plc", 2, i)])
            .await
            .expect("commit");
    }
    store.ack("mes", 4).expect("ack");
    assert_eq!(store.cursor("mes"), 4);
    assert_eq!(store.cursor("scada"), 0);
    assert_eq!(store.stats().records, 5, "scada still needs every record");

    store.ack("scada", 2).expect("ack");
    let stats = store.stats();
    assert_eq!(stats.records, 3);
    assert_eq!(stats.samples, 6);
    assert_eq!(read_all(&store, "mes").first().map(|r| r.0), Some(2));
    let mes = &stats.northbounds[0];
    assert_eq!(
        (mes.name.as_str(), mes.pending_records, mes.pending_samples),
        ("mes", 1, 2)
    );
    let scada = &stats.northbounds[1];
    assert_eq!(
        (scada.cursor, scada.pending_records, scada.pending_samples),
        (2, 3, 6)
    );
    assert_eq!(scada.oldest_pending_read_ts_ms, Some(2));
    assert_eq!(stats.oldest_read_ts_ms, Some(2));

    drop(store);
    let store = open(dir.path(), &["mes", "scada"]);
    assert_eq!((store.cursor("mes"), store.cursor("scada")), (4, 2));
    assert_eq!(store.stats().records, 3);
}

#[tokio::test]
async fn ack_never_moves_a_cursor_backwards_nor_past_the_last_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    for _ in 0..4 {
        store
            .commit(vec![batch("plc", 1, 0)])
            .await
            .expect("commit");
    }
    store.ack("mes", 3).expect("ack");
    store.ack("mes", 1).expect("ack");
    assert_eq!(store.cursor("mes"), 3);
    store.ack("mes", 100).expect("ack");
    assert_eq!(store.cursor("mes"), 4);
    assert!(matches!(
        store.ack("nobody", 1),
        Err(StoreError::UnknownNorthbound { .. })
    ));
}

async fn committed(dir: &Path, northbounds: &[&str], records: usize) -> Store {
    let store = open(dir, northbounds);
    for _ in 0..records {
        store
            .commit(vec![batch("plc", 1, 0)])
            .await
            .expect("commit");
    }
    store
}

#[tokio::test]
async fn a_checkpoint_is_stored_with_its_cursor_and_found_together_after_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = committed(dir.path(), &["mes"], 5).await;
        assert_eq!(store.resume_point("mes").expect("resume"), (0, None));
        store
            .ack_with_checkpoint("mes", 3, b"after 0..3")
            .expect("ack");
        let (cursor, cp) = store.resume_point("mes").expect("resume");
        assert_eq!(cursor, 3);
        assert_eq!(
            cp,
            Some(Checkpoint {
                at: 3,
                bytes: b"after 0..3".to_vec()
            })
        );
        store.flush().await.expect("flush");
    }
    let store = open(dir.path(), &["mes"]);
    let (cursor, cp) = store.resume_point("mes").expect("resume");
    assert_eq!(
        (cursor, cp.map(|c| (c.at, c.bytes))),
        (3, Some((3, b"after 0..3".to_vec())))
    );
    assert!(matches!(
        store.resume_point("nobody"),
        Err(StoreError::UnknownNorthbound { .. })
    ));
}

#[tokio::test]
async fn an_acknowledgement_that_does_not_move_the_cursor_keeps_the_newer_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = committed(dir.path(), &["mes"], 5).await;
    store.ack_with_checkpoint("mes", 4, b"four").expect("ack");
    store
        .ack_with_checkpoint("mes", 2, b"two")
        .expect("stale ack");
    store
        .ack_with_checkpoint("mes", 4, b"four again")
        .expect("same ack");
    let (_, cp) = store.resume_point("mes").expect("resume");
    assert_eq!(cp.map(|c| c.bytes), Some(b"four".to_vec()));
    // A plain acknowledgement that moves the cursor drops the checkpoint: it no longer
    // describes the cursor (the northbound stopped deriving state).
    store.ack("mes", 5).expect("ack");
    assert_eq!(store.resume_point("mes").expect("resume"), (5, None));
    drop(store);
    let store = open(dir.path(), &["mes"]);
    assert_eq!(store.resume_point("mes").expect("resume"), (5, None));
}

#[tokio::test]
async fn a_checkpoint_beyond_the_stored_records_is_refused_and_records_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = committed(dir.path(), &["mes"], 3).await;
    assert!(matches!(
        store.ack_with_checkpoint("mes", 10, b"ahead"),
        Err(StoreError::BeyondStored {
            next: 10,
            next_id: 3,
            ..
        })
    ));
    assert_eq!(store.resume_point("mes").expect("resume"), (0, None));
}

#[tokio::test]
async fn a_removed_northbound_takes_its_checkpoint_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = committed(dir.path(), &["mes", "old"], 3).await;
        store
            .ack_with_checkpoint("old", 2, b"old state")
            .expect("ack");
        store
            .ack_with_checkpoint("mes", 1, b"mes state")
            .expect("ack");
        store.flush().await.expect("flush");
    }
    drop(open(dir.path(), &["mes"]));
    let store = open(dir.path(), &["mes", "old"]);
    let (_, old) = store.resume_point("old").expect("resume");
    assert_eq!(old, None, "a northbound added again starts afresh");
    let (_, mes) = store.resume_point("mes").expect("resume");
    assert_eq!(mes.map(|c| c.bytes), Some(b"mes state".to_vec()));
}

#[tokio::test]
async fn ids_continue_after_every_record_was_acknowledged_and_the_store_reopened() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), &["mes"]);
        for _ in 0..3 {
            store
                .commit(vec![batch("plc", 1, 0)])
                .await
                .expect("commit");
        }
        store.ack("mes", 3).expect("ack");
        assert_eq!(store.stats().records, 0);
        store.flush().await.expect("flush");
    }
    let (store, recovery) =
        Store::open(dir.path(), StoreOptions::default(), &names(&["mes"])).expect("reopen");
    assert_eq!((recovery.records, recovery.next_id), (0, 3));
    let committed = store
        .commit(vec![batch("plc", 1, 0)])
        .await
        .expect("commit");
    assert_eq!(
        committed[0].0, 3,
        "an id below the cursor would never be delivered"
    );
    assert_eq!(committed[0].1.samples[0].seq, FIRST_SEQ + 3);
    assert_eq!(read_all(&store, "mes").len(), 1);
}

#[tokio::test]
async fn a_new_northbound_receives_the_backlog() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), &["mes"]);
        for _ in 0..4 {
            store
                .commit(vec![batch("plc", 1, 0)])
                .await
                .expect("commit");
        }
        store.ack("mes", 1).expect("ack");
        store.flush().await.expect("flush");
    }
    let store = open(dir.path(), &["mes", "scada"]);
    assert_eq!(
        store.cursor("scada"),
        1,
        "from the first record still stored"
    );
    let ids: Vec<_> = read_all(&store, "scada").into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_removed_northbound_no_longer_holds_records_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), &["mes", "old"]);
        for _ in 0..4 {
            store
                .commit(vec![batch("plc", 1, 0)])
                .await
                .expect("commit");
        }
        store.ack("mes", 3).expect("ack");
        assert_eq!(store.stats().records, 4);
        store.flush().await.expect("flush");
    }
    let store = open(dir.path(), &["mes"]);
    let stats = store.stats();
    assert_eq!(stats.records, 1);
    assert_eq!(stats.northbounds.len(), 1);
    assert!(matches!(
        store.read("old", 0, 10),
        Err(StoreError::UnknownNorthbound { .. })
    ));
    drop(store);
    // The cursor is gone for good: bringing the northbound back gives it the backlog.
    let store = open(dir.path(), &["mes", "old"]);
    assert_eq!(store.cursor("old"), 3);
}

#[tokio::test]
async fn read_returns_records_in_order_from_the_given_id_and_respects_max() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    for i in 0..10 {
        store
            .commit(vec![batch("plc", 1, i)])
            .await
            .expect("commit");
    }
    let ids =
        |records: Vec<(RecordId, Batch)>| records.into_iter().map(|r| r.0).collect::<Vec<_>>();
    assert_eq!(ids(store.read("mes", 0, 3).expect("read")), vec![0, 1, 2]);
    assert_eq!(ids(store.read("mes", 7, 100).expect("read")), vec![7, 8, 9]);
    assert!(store.read("mes", 10, 100).expect("read").is_empty());
    assert!(store.read("mes", 0, 0).expect("read").is_empty());
    let records = store.read("mes", 4, 2).expect("read");
    assert_eq!(records[0].1.samples[0].read_ts_ms, 4);
}

#[tokio::test]
async fn watch_wakes_after_a_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    let mut rx = store.watch();
    assert_eq!(*rx.borrow_and_update(), 0);
    let waiter = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("woken within 10 s")
            .expect("store alive");
        *rx.borrow()
    });
    store
        .commit(vec![batch("plc", 1, 0), batch("plc", 1, 0)])
        .await
        .expect("commit");
    assert_eq!(waiter.await.expect("waiter"), 2);
    assert_eq!(store.next_id(), 2);
}

#[tokio::test]
async fn a_corrupted_record_is_skipped_counted_removed_and_never_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(dir.path(), &["mes"]);
        for i in 0..3 {
            store
                .commit(vec![batch("plc", 2, i)])
                .await
                .expect("commit");
        }
    }
    {
        let db = sled::open(dir.path()).expect("raw sled");
        let mut key = vec![0x01];
        key.extend_from_slice(&1u64.to_be_bytes());
        db.insert(key, &b"\x01\xffgarbage"[..])
            .expect("insert garbage");
        db.flush().expect("flush");
    }
    let (store, recovery) =
        Store::open(dir.path(), StoreOptions::default(), &names(&["mes"])).expect("reopen");
    assert_eq!(recovery.corrupt_records_removed, 1);
    assert_eq!(recovery.records, 2);
    let ids: Vec<_> = read_all(&store, "mes").into_iter().map(|r| r.0).collect();
    assert_eq!(ids, vec![0, 2]);
    let stats = store.stats();
    assert_eq!(
        (stats.corrupt_records, stats.records, stats.samples),
        (1, 2, 4)
    );
    // Removed, not just skipped: the next open finds nothing to remove.
    drop(store);
    let (_, recovery) =
        Store::open(dir.path(), StoreOptions::default(), &names(&["mes"])).expect("reopen");
    assert_eq!(recovery.corrupt_records_removed, 0);
}

/// About 1 KiB stored per record.
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
async fn over_the_quota_the_oldest_records_are_dropped_counted_and_the_newest_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_disk_bytes: 2 << 20,
        cache_capacity_bytes: 4 << 20,
    };
    let (store, _) = Store::open(dir.path(), opts.clone(), &names(&["mes"])).expect("open");
    let per_commit = 16;
    let commits = 400; // 6,400 records, over 6 MiB: three times the quota
    for c in 0..commits {
        let group = (0..per_commit)
            .map(|i| kib_batch(c * per_commit + i))
            .collect();
        store.commit(group).await.expect("commit");
    }
    let total = (commits * per_commit) as u64;
    let stats = store.stats();
    assert!(stats.dropped_records > 0, "nothing evicted: {stats:?}");
    assert_eq!(stats.dropped_records + stats.records, total);
    assert_eq!(
        stats.dropped_samples, stats.dropped_records,
        "one sample per record"
    );
    assert!(stats.logical_bytes < 2 << 20, "{stats:?}");
    assert_eq!(stats.next_id, total);

    let records = read_all(&store, "mes");
    let first = records.first().map(|r| r.0).expect("records remain");
    assert_eq!(first, stats.dropped_records, "the oldest went, in order");
    assert_eq!(
        records.last().map(|r| r.0),
        Some(total - 1),
        "the newest stayed"
    );
    assert_eq!(
        store.cursor("mes"),
        first,
        "the cursor moved past the dropped records"
    );
    assert_eq!(stats.northbounds[0].pending_records, stats.records);

    drop(store);
    let (store, _) = Store::open(dir.path(), opts, &names(&["mes"])).expect("reopen");
    let again = store.stats();
    assert_eq!(
        (again.dropped_records, again.dropped_samples),
        (stats.dropped_records, stats.dropped_samples),
        "the counters are persisted"
    );
}

#[tokio::test]
async fn eviction_moves_the_cursor_but_the_checkpoint_keeps_saying_where_it_was_taken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_disk_bytes: 2 << 20,
        cache_capacity_bytes: 4 << 20,
    };
    let (store, _) = Store::open(dir.path(), opts, &names(&["mes"])).expect("open");
    store
        .commit((0..16).map(kib_batch).collect())
        .await
        .expect("commit");
    store.ack_with_checkpoint("mes", 1, b"early").expect("ack");
    for c in 1..400 {
        let group = (0..16).map(|i| kib_batch(c * 16 + i)).collect();
        store.commit(group).await.expect("commit");
    }
    assert!(store.stats().dropped_records > 0);
    let (cursor, cp) = store.resume_point("mes").expect("resume");
    assert!(cursor > 1, "the cursor moved past the evicted records");
    assert_eq!(
        cp,
        Some(Checkpoint {
            at: 1,
            bytes: b"early".to_vec()
        })
    );
}

#[tokio::test]
async fn a_single_commit_larger_than_the_quota_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = StoreOptions {
        max_disk_bytes: 256 << 10,
        cache_capacity_bytes: 4 << 20,
    };
    let (store, _) = Store::open(dir.path(), opts, &names(&["mes"])).expect("open");
    let group: Vec<Batch> = (0..1024).map(kib_batch).collect();
    store.commit(group).await.expect("commit");
    let stats = store.stats();
    assert_eq!((stats.records, stats.dropped_records), (1024, 0));
}

#[tokio::test]
async fn opening_a_directory_locked_by_another_store_gives_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path(), &["mes"]);
    first
        .commit(vec![batch("plc", 1, 0)])
        .await
        .expect("commit");
    let err = Store::open(dir.path(), StoreOptions::default(), &names(&["mes"]))
        .expect_err("the directory is locked");
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already running"), "{err}");
    drop(first);
    let (store, recovery) =
        Store::open(dir.path(), StoreOptions::default(), &names(&["mes"])).expect("reopen");
    assert_eq!(recovery.quarantined, None);
    assert_eq!(
        read_all(&store, "mes").len(),
        1,
        "a locked store is never quarantined"
    );
}

fn siblings_quarantined(dir: &Path) -> Vec<std::path::PathBuf> {
    let name = dir
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    std::fs::read_dir(dir.parent().expect("parent"))
        .expect("read parent")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.corrupt-")))
        })
        .collect()
}

#[tokio::test]
async fn a_store_directory_with_a_garbage_config_is_quarantined_and_a_fresh_store_opens() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("store");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("conf"), b"this is not a sled configuration file").expect("write");
    std::fs::write(dir.join("db"), vec![0xA5u8; 4096]).expect("write");

    let (store, recovery) =
        Store::open(&dir, StoreOptions::default(), &names(&["mes"])).expect("opens fresh");
    let moved = recovery.quarantined.clone().expect("quarantined");
    assert_eq!(siblings_quarantined(&dir), vec![moved.clone()]);
    assert!(
        moved.join("conf").exists(),
        "the old files are kept for inspection"
    );
    assert_eq!((recovery.records, recovery.next_id), (0, 0));
    assert_eq!(store.stats().quarantines, 1);
    let committed = store
        .commit(vec![batch("plc", 1, 0)])
        .await
        .expect("commit");
    assert_eq!(committed[0].1.samples[0].seq, FIRST_SEQ);
}

#[tokio::test]
async fn a_store_whose_log_is_overwritten_with_garbage_is_quarantined_and_a_fresh_store_opens() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("store");
    {
        let store = open(&dir, &["mes"]);
        for i in 0..200 {
            store.commit(vec![kib_batch(i)]).await.expect("commit");
        }
    }
    let db_file = dir.join("db");
    let mut bytes = std::fs::read(&db_file).expect("read db");
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in bytes.iter_mut().take(256 << 10) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&db_file, bytes).expect("write db");

    let (store, recovery) =
        Store::open(&dir, StoreOptions::default(), &names(&["mes"])).expect("opens fresh");
    assert!(recovery.quarantined.is_some(), "{recovery:?}");
    assert_eq!(recovery.records, 0);
    assert!(read_all(&store, "mes").is_empty());
}

#[tokio::test]
async fn the_writer_groups_queued_batches_into_one_commit_and_commits_everything_when_the_channel_closes(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for i in 0..5 {
        tx.send(batch("plc", 2, i)).await.expect("send");
    }
    drop(tx);
    let writer = spawn_writer(store.clone(), rx, Duration::ZERO);
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("writer ends")
        .expect("join")
        .expect("writer ok");
    let stats = store.stats();
    assert_eq!((stats.commits, stats.records, stats.samples), (1, 5, 10));
    let s = FIRST_SEQ;
    assert_eq!(
        seqs_of(&read_all(&store, "mes"), "plc"),
        (s..s + 10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_writer_waits_up_to_max_delay_for_more_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let writer = spawn_writer(store.clone(), rx, Duration::from_secs(30));
    tx.send(batch("plc", 1, 0)).await.expect("send");
    tokio::time::sleep(Duration::from_millis(20)).await;
    tx.send(batch("plc", 1, 1)).await.expect("send");
    // Closing the channel ends the wait at once; nothing is left behind.
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("writer ends without waiting out max_delay")
        .expect("join")
        .expect("writer ok");
    let stats = store.stats();
    assert_eq!((stats.commits, stats.records), (1, 2));
}

const CRASH_DIR_ENV: &str = "EDGE_STORE_CRASH_CHILD_DIR";

/// The child half of the crash test: commits until killed, printing what is committed. Does
/// nothing when run as an ordinary test.
#[tokio::test]
async fn crash_child_commits_until_killed() {
    let Ok(dir) = std::env::var(CRASH_DIR_ENV) else {
        return;
    };
    let store = open(Path::new(&dir), &["mes"]);
    let started = Instant::now();
    // Bounded: the parent kills it long before.
    for i in 0..100_000u64 {
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
        let committed = store
            .commit(vec![batch("plc1", 3, i), batch("plc2", 2, i)])
            .await
            .expect("commit");
        for (_, b) in committed {
            let first = b.samples.first().map_or(0, |s| s.seq);
            let last = b.samples.last().map_or(0, |s| s.seq);
            println!("committed {} {first} {last}", b.device);
        }
    }
}

#[test]
fn kill_9_during_commits_loses_no_committed_sample() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "crash_child_commits_until_killed",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                lines.lock().expect("lines").push(line);
            }
        })
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        if lines.lock().expect("lines").len() >= 300 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    reader.join().expect("reader");

    // Only complete lines count: a line cut by the kill was not fully reported.
    let mut promised: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in lines.lock().expect("lines").iter() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let ["committed", device, first, last] = parts.as_slice() {
            if let (Ok(first), Ok(last)) = (first.parse::<u64>(), last.parse::<u64>()) {
                promised
                    .entry((*device).to_owned())
                    .or_default()
                    .extend(first..=last);
            }
        }
    }
    assert!(
        promised.values().map(BTreeSet::len).sum::<usize>() > 0,
        "the child committed nothing before it was killed"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = open(dir.path(), &["mes"]);
        let records = read_all(&store, "mes");
        for (device, seqs) in &promised {
            let stored: BTreeSet<u64> = seqs_of(&records, device).into_iter().collect();
            let missing: Vec<_> = seqs.difference(&stored).take(5).collect();
            assert!(
                missing.is_empty(),
                "{device}: committed seqs lost: {missing:?}"
            );
            // Stored seqs have no gap and no repeat.
            let all = seqs_of(&records, device);
            let expected: Vec<u64> = (FIRST_SEQ..FIRST_SEQ + all.len() as u64).collect();
            assert_eq!(all, expected, "{device}");
        }
        // And the next seq continues right after the last stored one.
        let next = store
            .commit(vec![batch("plc1", 1, 0)])
            .await
            .expect("commit");
        let stored = seqs_of(&records, "plc1").len() as u64;
        assert_eq!(next[0].1.samples[0].seq, FIRST_SEQ + stored);
    });
}

#[tokio::test]
async fn a_command_answer_survives_a_reopen_and_a_started_command_is_remembered_as_started() {
    use edge_store::Remembered;
    let dir = tempfile::tempdir().expect("tempdir");
    let now = 1_800_000_000_000u64;
    {
        let store = open(dir.path(), &["mes"]);
        store.command_started("t\0r1", now).await.expect("started");
        store
            .command_answered("t\0r1", now + 5, b"{\"status\":\"ok\"}")
            .expect("answered");
        store
            .command_started("t\0r2", now + 6)
            .await
            .expect("started");
        store.flush().await.expect("flush");
    }
    let store = open(dir.path(), &["mes"]);
    assert_eq!(
        store.command_answer("t\0r1", now + 10).expect("read"),
        Some(Remembered::Answered {
            at_ms: now + 5,
            answer: b"{\"status\":\"ok\"}".to_vec()
        })
    );
    assert_eq!(
        store.command_answer("t\0r2", now + 10).expect("read"),
        Some(Remembered::Started { at_ms: now + 6 })
    );
    assert_eq!(store.command_answer("t\0r3", now + 10).expect("read"), None);
    // Older than the age limit: forgotten.
    let day = edge_store::ANSWER_AGE.as_millis() as u64;
    assert_eq!(
        store.command_answer("t\0r1", now + 6 + day).expect("read"),
        None
    );
}

#[test]
fn command_answers_are_bounded_in_count_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path(), &["mes"]);
    let now = 1_800_000_000_000u64;
    let n = edge_store::MAX_ANSWERS + 10;
    for i in 0..n {
        store
            .command_answered(&format!("t\0r{i}"), now + i as u64, b"{}")
            .expect("answered");
    }
    assert_eq!(
        store.command_answers().expect("count"),
        edge_store::MAX_ANSWERS
    );
    let late = now + n as u64;
    assert_eq!(store.command_answer("t\0r0", late).expect("read"), None);
    assert!(store
        .command_answer(&format!("t\0r{}", n - 1), late)
        .expect("read")
        .is_some());
}
