//! The durable sample store of edge-agent. Every batch a driver produces is committed here
//! (on disk, with a record id and per-device seqs) before anything is published; each
//! northbound reads from its own cursor and releases records by acknowledging them, so delivery
//! is at-least-once and in order across crashes. The model is Vector's disk buffer.
//!
//! One sled tree holds everything (see `keys`), so every change is one atomic `apply_batch`.

mod answers;
mod error;
mod evictions;
mod index;
mod journal;
mod keys;
mod losses;
mod mark;
mod quota;
mod salvage;
mod store;
mod writer;

pub use answers::{Remembered, ANSWER_AGE, MAX_ANSWERS};
pub use error::StoreError;
pub use losses::{Loss, LossReason, LostCounts, MAX_RANGES as MAX_LOSS_RANGES};
pub use store::{
    Checkpoint, NorthboundStats, Purge, RecordId, Recovery, Store, StoreOptions, StoreStats,
    FIRST_SEQ,
};
pub use writer::{spawn_writer, spawn_writer_observed, CommitObserver, MAX_GROUP_SAMPLES};
