//! A copy of the loss ledger outside sled. The ledger lives in sled, written atomically with the
//! eviction or recovery that causes it; but sled can come back from a damaged log without its
//! newer writes, and an eviction's ledger entry would go with them while the mark (rightly)
//! says the evicted records are behind every cursor. This file keeps every loss as well:
//! length-prefixed, checksummed frames appended and synced when a loss is recorded, read at
//! open and merged into the ledger (a loss already recorded is not counted twice). It is
//! rewritten from the ledger at every open and whenever it grows past a bound, so it stays
//! about the ledger's size.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::losses::Loss;

pub(crate) const FILE_NAME: &str = "edge-store.losses";
/// Past this size the file is rewritten from the ledger.
const REWRITE_ABOVE: u64 = 256 * 1024;

/// The losses in the journal of `dir`, up to its first damaged frame. Never fails: a missing or
/// unreadable file gives what could be read.
pub(crate) fn read(dir: &Path) -> Vec<Loss> {
    let Ok(bytes) = std::fs::read(dir.join(FILE_NAME)) else {
        return Vec::new();
    };
    let mut losses = Vec::new();
    let mut rest = bytes.as_slice();
    while rest.len() >= 8 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(frame) = rest.get(4..4 + len + 4) else {
            break;
        };
        let (payload, crc) = frame.split_at(len);
        if crc32fast::hash(payload).to_be_bytes() != crc {
            break;
        }
        match Loss::decode(payload) {
            Some(loss) => losses.push(loss),
            None => break,
        }
        rest = &rest[4 + len + 4..];
    }
    losses
}

fn frame(loss: &Loss, out: &mut Vec<u8>) {
    let payload = loss.encode();
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
}

/// The open journal of a running store.
#[derive(Debug)]
pub(crate) struct LossJournal {
    path: PathBuf,
    file: File,
    len: u64,
}

impl LossJournal {
    /// Replaces the journal of `dir` with `ledger` (written to a temporary file, synced, then
    /// renamed over it).
    pub fn create(dir: &Path, ledger: &[Loss]) -> io::Result<LossJournal> {
        let path = dir.join(FILE_NAME);
        let tmp = dir.join(format!("{FILE_NAME}.tmp"));
        let mut bytes = Vec::new();
        for loss in ledger {
            frame(loss, &mut bytes);
        }
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(LossJournal {
            path,
            file,
            len: bytes.len() as u64,
        })
    }

    /// Appends `added` and syncs; past the size bound, rewrites the file from `ledger` (which
    /// already holds `added`).
    pub fn append(&mut self, added: &[Loss], ledger: &[Loss]) -> io::Result<()> {
        if added.is_empty() {
            return Ok(());
        }
        if self.len > REWRITE_ABOVE {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            *self = LossJournal::create(dir, ledger)?;
            return Ok(());
        }
        let mut bytes = Vec::new();
        for loss in added {
            frame(loss, &mut bytes);
        }
        self.file.write_all(&bytes)?;
        self.file.sync_data()?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::LossReason;

    fn loss(device: &str, first: u64, last: u64) -> Loss {
        Loss {
            device: device.to_owned(),
            first_seq: first,
            last_seq: last,
            samples: last - first + 1,
            reason: LossReason::Evicted,
            at_ms: 1,
        }
    }

    #[test]
    fn appended_losses_are_read_back_up_to_a_damaged_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = LossJournal::create(dir.path(), &[loss("a", 1, 5)]).expect("create");
        j.append(&[loss("b", 3, 4)], &[]).expect("append");
        j.append(&[loss("a", 6, 9)], &[]).expect("append");
        assert_eq!(
            read(dir.path()),
            vec![loss("a", 1, 5), loss("b", 3, 4), loss("a", 6, 9)]
        );

        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(read(dir.path()), vec![loss("a", 1, 5), loss("b", 3, 4)]);
        bytes.truncate(5);
        std::fs::write(&path, &bytes).expect("write");
        assert!(read(dir.path()).is_empty());
    }

    #[test]
    fn a_journal_past_its_bound_is_rewritten_from_the_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = LossJournal::create(dir.path(), &[]).expect("create");
        let mut n = 0;
        while j.len <= REWRITE_ABOVE {
            j.append(&[loss("a", n, n)], &[]).expect("append");
            n += 1;
        }
        let ledger = vec![loss("a", 0, n)];
        j.append(&[loss("a", n, n)], &ledger).expect("append");
        assert_eq!(read(dir.path()), ledger);
    }
}
