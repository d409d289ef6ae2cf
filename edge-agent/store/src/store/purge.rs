//! An operator drops one northbound's backlog (`edge-agent buffer purge`). Its cursor moves to
//! the end of what is stored, records no other northbound still holds are released, and the
//! purged samples go into the loss ledger as `purged` in the same atomic write, so a consumer
//! can tell a sample an operator gave up on from one that went missing.

use edge_model::Batch;
use tracing::warn;

use super::{decode_record, mark_of, push_seq, RecordId, State, Store};
use crate::error::StoreError;
use crate::keys::{self, CURSOR};
use crate::losses::{Loss, LossReason};

/// One northbound's backlog, as a purge removes it (or would).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    pub northbound: String,
    /// The northbound's cursor before the purge: the first record of its backlog.
    pub from: RecordId,
    /// Its cursor after the purge: every record below it was stored when the purge was taken.
    pub to: RecordId,
    pub records: u64,
    pub samples: u64,
    /// The samples, per device as seq ranges with the reason `purged`: what the loss ledger
    /// records.
    pub ranges: Vec<Loss>,
}

impl Purge {
    /// Whether the backlog was empty.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }
}

impl Store {
    /// What [`Store::purge`] would remove from `northbound`'s backlog now. Changes nothing.
    /// Reads every record of the backlog once (one at a time: memory stays bounded).
    pub fn purge_preview(&self, northbound: &str) -> Result<Purge, StoreError> {
        let st = self.state();
        self.backlog_of(&st, northbound)
    }

    /// Removes `northbound`'s backlog: its cursor moves past every stored record, the records
    /// no other northbound still needs are released, and the samples are recorded in the loss
    /// ledger (reason `purged`) and its journal, all in one atomic write, flushed before this
    /// returns (it blocks the calling thread). A stored checkpoint is kept, as after an
    /// eviction: it describes the records before the purge.
    pub fn purge(&self, northbound: &str) -> Result<Purge, StoreError> {
        let mut st = self.state();
        let purge = self.backlog_of(&st, northbound)?;
        if purge.from >= purge.to {
            return Ok(purge);
        }
        let min = st
            .cursors
            .iter()
            .map(|(name, &c)| if name == northbound { purge.to } else { c })
            .min()
            .unwrap_or(purge.to);
        let mut writes = sled::Batch::default();
        writes.insert(keys::named_key(CURSOR, northbound), &purge.to.to_be_bytes());
        for id in st.index.ids_below(min) {
            writes.remove(&keys::record_key(id));
        }
        let ledger = st.ledger.with(&purge.ranges, &mut writes);
        self.inner
            .db
            .apply_batch(writes)
            .map_err(|e| self.sled_err("record a purge", e))?;
        st.cursors.insert(northbound.to_owned(), purge.to);
        let released = st.index.remove_below(min);
        self.journal_losses(&purge.ranges, &ledger);
        st.ledger = ledger;
        let mark = mark_of(&st);
        drop(st);
        self.inner
            .db
            .flush()
            .map_err(|source| StoreError::NotDurable {
                dir: self.inner.dir.clone(),
                source,
            })?;
        self.write_mark(&mark);
        // Asked for by an operator: a warning, not an error, though the samples are lost.
        warn!(store = %self.inner.dir.display(), northbound, from = purge.from, to = purge.to,
            records = purge.records, samples = purge.samples,
            released_records = released.records, lost_ranges = %super::ranges_text(&purge.ranges),
            "purged the backlog of a northbound: its samples are recorded as lost (purged)");
        Ok(purge)
    }

    /// The backlog of `northbound`: the stored records from its cursor on.
    fn backlog_of(&self, st: &State, northbound: &str) -> Result<Purge, StoreError> {
        self.check_northbound(st, northbound)?;
        let from = st.cursors.get(northbound).copied().unwrap_or(0);
        let to = st.next_durable.max(from);
        let mut purge = Purge {
            northbound: northbound.to_owned(),
            from,
            to,
            records: 0,
            samples: 0,
            ranges: Vec::new(),
        };
        let now = edge_model::now_ms();
        for item in self
            .inner
            .db
            .range(keys::record_key(from)..keys::record_key(to))
        {
            let (key, value) = item.map_err(|e| self.sled_err("read records", e))?;
            purge.records += 1;
            match decode_record(&key, &value) {
                Ok((_, batch)) => add_samples(&mut purge, &batch, now),
                Err(reason) => {
                    warn!(store = %self.inner.dir.display(), record = ?keys::record_id(&key), reason,
                        "a record of the purged backlog is unreadable: its samples are not in the purge's ledger ranges")
                }
            }
        }
        Ok(purge)
    }
}

fn add_samples(purge: &mut Purge, batch: &Batch, at_ms: u64) {
    purge.samples += batch.samples.len() as u64;
    for sample in &batch.samples {
        push_seq(
            &mut purge.ranges,
            &batch.device.0,
            sample.seq,
            LossReason::Purged,
            at_ms,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal;
    use crate::StoreOptions;
    use edge_model::{DeviceId, Sample, TagName, Value};

    fn batch(device: &str, samples: usize) -> Batch {
        Batch {
            device: DeviceId::from(device),
            samples: (0..samples)
                .map(|i| Sample::good(TagName::from("t"), Value::U16(i as u16), 1000))
                .collect(),
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Seqs 1..=3 of plc1 and 1..=2 of plc2 are acknowledged; the rest of the backlog is purged.
    async fn store_with_a_backlog(dir: &std::path::Path, northbounds: &[&str]) -> Store {
        let (store, _) =
            Store::open(dir, StoreOptions::default(), &names(northbounds)).expect("open");
        store
            .commit(vec![batch("plc1", 3), batch("plc2", 2)])
            .await
            .expect("commit");
        store
            .commit(vec![batch("plc1", 4), batch("plc2", 5), batch("plc1", 1)])
            .await
            .expect("commit");
        store.ack("mes", 2).expect("ack");
        store
    }

    #[tokio::test]
    async fn a_purge_records_the_backlog_per_device_in_the_ledger_and_its_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_a_backlog(dir.path(), &["mes"]).await;

        let preview = store.purge_preview("mes").expect("preview");
        assert_eq!(
            (preview.from, preview.to, preview.records, preview.samples),
            (2, 5, 3, 10)
        );
        assert!(store.losses().is_empty(), "a preview records nothing");
        assert_eq!(store.cursor("mes"), 2, "a preview moves nothing");

        let purge = store.purge("mes").expect("purge");
        assert_eq!(purge.records, preview.records);
        let ranges: Vec<_> = purge
            .ranges
            .iter()
            .map(|l| (l.device.as_str(), l.first_seq, l.last_seq, l.reason))
            .collect();
        assert_eq!(
            ranges,
            vec![
                ("plc1", 4, 8, LossReason::Purged),
                ("plc2", 3, 7, LossReason::Purged)
            ]
        );
        assert_eq!(store.losses(), purge.ranges);
        let stats = store.stats();
        assert_eq!(stats.lost.purged, 10);
        assert_eq!(stats.lost.total(), 10);
        assert_eq!(
            (stats.records, stats.northbounds[0].pending_records),
            (0, 0)
        );
        assert_eq!(store.cursor("mes"), 5);
        assert_eq!(journal::read(dir.path()), purge.ranges);

        // The ledger and the cursor survive a reopen; nothing is counted twice.
        drop(store);
        let (store, _) =
            Store::open(dir.path(), StoreOptions::default(), &names(&["mes"])).expect("reopen");
        assert_eq!(store.losses(), purge.ranges);
        assert_eq!(store.stats().lost.purged, 10);
        assert_eq!(store.cursor("mes"), 5);
        assert!(store.purge("mes").expect("purge again").is_empty());
        assert_eq!(store.stats().lost.purged, 10);
    }

    #[tokio::test]
    async fn a_purge_of_one_northbound_keeps_the_records_another_still_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_a_backlog(dir.path(), &["mes", "scada"]).await;
        let purge = store.purge("mes").expect("purge");
        assert_eq!((purge.from, purge.to, purge.samples), (2, 5, 10));
        assert_eq!(store.cursor("mes"), 5);
        assert_eq!(store.cursor("scada"), 0);
        let stats = store.stats();
        assert_eq!(stats.records, 5, "scada has acknowledged nothing");
        let read = store.read("scada", 0, 10).expect("read");
        assert_eq!(read.len(), 5);

        // Once scada acknowledges, the records go.
        store.ack("scada", 5).expect("ack");
        assert_eq!(store.stats().records, 0);
    }

    #[tokio::test]
    async fn a_purge_of_an_unknown_northbound_names_the_known_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_with_a_backlog(dir.path(), &["mes"]).await;
        match store.purge("scada") {
            Err(StoreError::UnknownNorthbound { name, known }) => {
                assert_eq!((name.as_str(), known), ("scada", names(&["mes"])));
            }
            other => panic!("expected UnknownNorthbound, got {other:?}"),
        }
    }
}
