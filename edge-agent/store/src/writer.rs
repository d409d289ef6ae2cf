//! Group commit: one task takes the batches the drivers send, commits whatever has queued up in
//! one durable write (one flush for many batches), and retries a failed commit with backoff
//! instead of dropping anything.

use std::time::Duration;

use edge_driver::Backoff;
use edge_model::Batch;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{error, warn};

use crate::{RecordId, Store, StoreError};

/// A group stops growing at this many samples (a single larger batch still goes whole).
pub const MAX_GROUP_SAMPLES: usize = 10_000;
/// Attempts per group before the writer gives up and returns the error.
const MAX_ATTEMPTS: u32 = 5;
/// The backoff between attempts: waits of 100-200 ms, 200-400, 400-800, 800-1600 ms.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);

/// Spawns the writer. It waits for a batch, gathers what else is queued (and, when `max_delay`
/// is not zero, what arrives within `max_delay`), commits the group, and ends once the channel
/// is closed and everything received is committed. A commit that keeps failing ends it with
/// the error: the samples it held are then not stored, and the agent must stop.
pub fn spawn_writer(
    store: Store,
    rx: mpsc::Receiver<Batch>,
    max_delay: Duration,
) -> JoinHandle<Result<(), StoreError>> {
    spawn_writer_observed(store, rx, max_delay, None)
}

/// What is told of every group once it is durable (the console's live view of the tags).
/// It runs on the writer's task between commits, so it must be quick.
pub type CommitObserver = std::sync::Arc<dyn Fn(&[(RecordId, Batch)]) + Send + Sync>;

/// [`spawn_writer`], telling `observer` each committed group. A group whose records were
/// written but whose flush needed a retry is durable without being told (the view misses it;
/// the store does not).
pub fn spawn_writer_observed(
    store: Store,
    mut rx: mpsc::Receiver<Batch>,
    max_delay: Duration,
    observer: Option<CommitObserver>,
) -> JoinHandle<Result<(), StoreError>> {
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let (group, closed) = gather(&mut rx, first, max_delay).await;
            let committed = commit_with_retry(&store, group).await?;
            if let Some(observe) = &observer {
                observe(&committed);
            }
            if closed {
                break;
            }
        }
        Ok(())
    })
}

/// The group started by `first`; `true` when the channel turned out closed.
async fn gather(
    rx: &mut mpsc::Receiver<Batch>,
    first: Batch,
    max_delay: Duration,
) -> (Vec<Batch>, bool) {
    let mut samples = first.len();
    let mut group = vec![first];
    while samples < MAX_GROUP_SAMPLES {
        match rx.try_recv() {
            Ok(batch) => {
                samples += batch.len();
                group.push(batch);
            }
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => return (group, true),
        }
    }
    if max_delay.is_zero() {
        return (group, false);
    }
    let deadline = Instant::now() + max_delay;
    while samples < MAX_GROUP_SAMPLES {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(batch)) => {
                samples += batch.len();
                group.push(batch);
            }
            Ok(None) => return (group, true),
            Err(_elapsed) => break,
        }
    }
    (group, false)
}

/// The committed records, or none when the records were written but only a retried flush
/// made them durable.
async fn commit_with_retry(
    store: &Store,
    group: Vec<Batch>,
) -> Result<Vec<(RecordId, Batch)>, StoreError> {
    // `Some` until the records are written; after that only the flush is retried, so that a
    // retry never stores them twice.
    let mut unwritten = Some(group);
    let mut attempt = 1;
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        let result = match unwritten.take() {
            Some(batches) => store.commit_or_return(batches).await.map_err(|f| {
                unwritten = f.batches;
                f.error
            }),
            None => store.flush().await.map(|()| Vec::new()),
        };
        let error = match result {
            Ok(committed) => return Ok(committed),
            Err(error) => error,
        };
        if attempt >= MAX_ATTEMPTS {
            error!(store = %store.dir().display(), attempts = attempt, error = %error,
                "cannot commit samples to the store; giving up");
            return Err(error);
        }
        let wait = backoff.next_wait();
        warn!(store = %store.dir().display(), attempt, retry_in_ms = wait.as_millis() as u64,
            error = %error, "cannot commit samples to the store; retrying");
        store.note_commit_retry();
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}
