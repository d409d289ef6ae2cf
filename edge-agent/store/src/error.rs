//! What can go wrong with the store, each naming the directory and what an operator can do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the store directory {} is locked by another process: is an edge-agent already running on this data directory?", dir.display())]
    Locked { dir: PathBuf },

    #[error("cannot create the store directory {}: {source}; check that its parent exists and is writable", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },

    #[error("cannot open the store in {}: {source}; check that the directory is readable and writable and the disk is not full", dir.display())]
    Open { dir: PathBuf, source: sled::Error },

    #[error("the store in {} is unreadable ({reason}) and could not be moved aside to {}: {source}; move or delete the directory by hand, then start again", dir.display(), to.display())]
    Quarantine {
        dir: PathBuf,
        to: PathBuf,
        reason: String,
        source: std::io::Error,
    },

    #[error("no store can be opened in {}, even after moving the unreadable one aside ({reason}); check the disk", dir.display())]
    Unusable { dir: PathBuf, reason: String },

    #[error("the store in {} failed to {op}: {source}; check free space and the health of the disk", dir.display())]
    Sled {
        dir: PathBuf,
        op: &'static str,
        source: sled::Error,
    },

    /// The records were handed to sled but are not known to be on disk. Retry with
    /// [`Store::flush`](crate::Store::flush), not by committing them again (that would store
    /// them twice).
    #[error("records were written to the store in {} but could not be flushed to disk: {source}; check free space and the health of the disk", dir.display())]
    NotDurable { dir: PathBuf, source: sled::Error },

    #[error("unknown northbound `{name}`: the store was opened for {known:?}")]
    UnknownNorthbound { name: String, known: Vec<String> },

    /// A checkpoint describes the state after exactly the records below its cursor, so it is
    /// never stored with a cursor limited to what is on disk.
    #[error("northbound `{northbound}` acknowledged up to record {next}, beyond the last stored record {next_id}; nothing was recorded")]
    BeyondStored {
        northbound: String,
        next: u64,
        next_id: u64,
    },
}
