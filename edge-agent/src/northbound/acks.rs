//! A northbound's cursor moves, written to the store from a task of its own: the publisher
//! never waits on a store write between two MQTT events. Moves are coalesced (the newest wins)
//! and written at most every [`WRITE_EVERY`]; a move not yet written when the agent is killed
//! only means that records already delivered are delivered again after the restart
//! (duplicates with the same `seq`, never a loss). [`CursorWriter::finish`] writes the last
//! move before a clean stop.

use std::time::Duration;

use edge_store::{RecordId, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::error;

/// The shortest time between two cursor writes of one northbound.
pub const WRITE_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Move {
    cursor: RecordId,
    checkpoint: Option<Vec<u8>>,
}

/// The writer task of one northbound's cursor.
#[derive(Debug)]
pub struct CursorWriter {
    tx: watch::Sender<Option<Move>>,
    task: JoinHandle<()>,
}

impl CursorWriter {
    pub fn start(store: Store, northbound: String) -> CursorWriter {
        let (tx, mut rx) = watch::channel::<Option<Move>>(None);
        let task = tokio::spawn(async move {
            // Ends when the sender is dropped, after writing the newest move it left.
            while rx.changed().await.is_ok() {
                let Some(m) = rx.borrow_and_update().clone() else {
                    continue;
                };
                let store = store.clone();
                let name = northbound.clone();
                let written = tokio::task::spawn_blocking(move || match &m.checkpoint {
                    Some(cp) => store.ack_with_checkpoint(&name, m.cursor, cp),
                    None => store.ack(&name, m.cursor),
                })
                .await;
                match written {
                    Ok(Ok(())) => {}
                    // The records stay and are sent again after a restart: duplicates, not loss.
                    Ok(Err(e)) => {
                        error!(northbound = %northbound, error = %e, "cannot record the delivery cursor")
                    }
                    Err(e) => {
                        error!(northbound = %northbound, error = %e, "the cursor write failed")
                    }
                }
                tokio::time::sleep(WRITE_EVERY).await;
            }
        });
        CursorWriter { tx, task }
    }

    /// Every record below `cursor` is delivered; `checkpoint` is the MES bridge's state as of
    /// `cursor`, stored with it when machines are configured.
    pub fn record(&self, cursor: RecordId, checkpoint: Option<Vec<u8>>) {
        self.tx.send_replace(Some(Move { cursor, checkpoint }));
    }

    /// Writes the newest move and ends the task.
    pub async fn finish(self) {
        let CursorWriter { tx, task } = self;
        drop(tx);
        if let Err(e) = task.await {
            error!(error = %e, "the cursor writer ended abnormally");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_model::{Batch, DeviceId, Sample, TagName, Value};
    use edge_store::StoreOptions;

    fn batch() -> Batch {
        Batch {
            device: DeviceId("d".into()),
            samples: vec![Sample::good(TagName("t".into()), Value::U16(1), 1)],
        }
    }

    #[tokio::test]
    async fn the_newest_move_is_written_before_finish_returns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            Store::open(dir.path(), StoreOptions::default(), &["mes".to_owned()]).expect("store");
        for _ in 0..5 {
            store.commit(vec![batch()]).await.expect("commit");
        }
        let w = CursorWriter::start(store.clone(), "mes".into());
        for cursor in 1..=5 {
            w.record(cursor, None);
        }
        w.finish().await;
        assert_eq!(store.cursor("mes"), 5);
    }
}
