//! The high-water mark: how far ids and seqs went, kept in a small file next to sled's. sled
//! recovers its log only up to the first damaged message and says nothing about it, so without
//! a record of its own the store could not tell a rolled-back log from a short one, and would
//! give ids and seqs out a second time.
//!
//! The file holds two slots, written in turn (plain writes, synced at most once a second and
//! at close), each with a generation and a checksum: a torn or damaged slot falls back to the
//! other one. Slot B starts at half the file length, so the layout needs no header of its own.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::RecordId;

/// The file name; sled only reads `conf`, `db`, `snap.*` and `blobs/` in its directory.
pub(crate) const FILE_NAME: &str = "edge-store.mark";
const MAGIC: &[u8; 4] = b"EGM1";
/// magic, generation, payload length; the checksum follows the payload.
const HEADER: usize = 4 + 8 + 4;
const MIN_SLOT: u64 = 4096;
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What the mark says about one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct DeviceMark {
    /// The seq its next sample gets.
    pub next_seq: u64,
    /// Every sample of the device below this seq is in a record below `min_cursor`, so
    /// acknowledged by every northbound. May lag (it only needs to be a lower bound).
    pub floor_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Mark {
    /// Every record below it was on disk.
    pub next_id: RecordId,
    /// Every record below it was acknowledged by every northbound.
    pub min_cursor: RecordId,
    pub devices: BTreeMap<String, DeviceMark>,
}

impl Mark {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.devices.len() * 40);
        out.extend_from_slice(&self.next_id.to_be_bytes());
        out.extend_from_slice(&self.min_cursor.to_be_bytes());
        out.extend_from_slice(&(self.devices.len() as u32).to_be_bytes());
        for (name, d) in &self.devices {
            let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(&d.next_seq.to_be_bytes());
            out.extend_from_slice(&d.floor_seq.to_be_bytes());
        }
        out
    }

    fn decode(mut bytes: &[u8]) -> Option<Mark> {
        let next_id = take_u64(&mut bytes)?;
        let min_cursor = take_u64(&mut bytes)?;
        let n = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?);
        let mut devices = BTreeMap::new();
        for _ in 0..n {
            let len = u16::from_be_bytes(take(&mut bytes, 2)?.try_into().ok()?);
            let name = std::str::from_utf8(take(&mut bytes, usize::from(len))?).ok()?;
            let next_seq = take_u64(&mut bytes)?;
            let floor_seq = take_u64(&mut bytes)?;
            devices.insert(
                name.to_owned(),
                DeviceMark {
                    next_seq,
                    floor_seq,
                },
            );
        }
        bytes.is_empty().then_some(Mark {
            next_id,
            min_cursor,
            devices,
        })
    }
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Some(head)
}

fn take_u64(bytes: &mut &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(take(bytes, 8)?.try_into().ok()?))
}

fn slot_bytes(generation: u64, mark: &Mark) -> Vec<u8> {
    let payload = mark.encode();
    let mut out = Vec::with_capacity(HEADER + payload.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// The generation and mark of a slot, if it is intact.
fn parse_slot(bytes: &[u8]) -> Option<(u64, Mark)> {
    if bytes.get(..4)? != MAGIC {
        return None;
    }
    let generation = u64::from_be_bytes(bytes.get(4..12)?.try_into().ok()?);
    let len = u32::from_be_bytes(bytes.get(12..16)?.try_into().ok()?) as usize;
    let end = HEADER.checked_add(len)?;
    let crc = u32::from_be_bytes(bytes.get(end..end + 4)?.try_into().ok()?);
    if crc32fast::hash(&bytes[..end]) != crc {
        return None;
    }
    Some((generation, Mark::decode(&bytes[HEADER..end])?))
}

/// What reading the mark file found.
#[derive(Debug, Default)]
pub(crate) struct ReadMark {
    /// The newest intact slot.
    pub mark: Option<Mark>,
    pub generation: u64,
    /// Slots that were present but damaged (0 = A, 1 = B).
    pub damaged_slots: Vec<u8>,
    /// The file exists (so a missing mark means damage, not a store from before marks).
    pub file_found: bool,
}

/// Reads the mark of the store in `dir`; a missing or damaged file is not an error.
pub(crate) fn read(dir: &Path) -> ReadMark {
    let bytes = match std::fs::read(dir.join(FILE_NAME)) {
        Ok(b) => b,
        Err(_) => return ReadMark::default(),
    };
    let half = bytes.len() / 2;
    let slots = [
        Some(&bytes[..]),
        (half as u64 >= MIN_SLOT).then(|| &bytes[half..]),
    ];
    let mut found = ReadMark {
        file_found: true,
        ..ReadMark::default()
    };
    for (i, slot) in slots.into_iter().enumerate() {
        let Some(slot) = slot else { continue };
        match parse_slot(slot) {
            Some((generation, mark)) if found.mark.is_none() || generation > found.generation => {
                found.generation = generation;
                found.mark = Some(mark);
            }
            Some(_) => {}
            None => found.damaged_slots.push(i as u8),
        }
    }
    found
}

/// The open mark file of a running store.
#[derive(Debug)]
pub(crate) struct MarkFile {
    path: PathBuf,
    file: File,
    /// Size of one slot; the file is twice this long.
    capacity: u64,
    generation: u64,
    last_sync: Instant,
    unsynced: bool,
}

impl MarkFile {
    /// Creates (or takes over) the mark file in `dir`, writes `mark` to both slots and syncs.
    pub fn create(dir: &Path, generation: u64, mark: &Mark) -> io::Result<MarkFile> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut mf = MarkFile {
            path,
            file,
            capacity: 0,
            generation,
            last_sync: Instant::now(),
            unsynced: false,
        };
        mf.write(mark)?;
        mf.sync()?;
        Ok(mf)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the next slot; syncs when the last sync is at least [`SYNC_EVERY`] old.
    pub fn write(&mut self, mark: &Mark) -> io::Result<()> {
        self.generation += 1;
        let slot = slot_bytes(self.generation, mark);
        let needed = slot.len() as u64;
        if needed > self.capacity {
            // Both slots at once, at their new places; the old content is no longer read.
            let capacity = (needed * 2).next_power_of_two().max(MIN_SLOT);
            self.file.set_len(2 * capacity)?;
            self.file.write_all_at(&slot, 0)?;
            self.file.write_all_at(&slot, capacity)?;
            self.capacity = capacity;
            self.file.sync_all()?;
            self.last_sync = Instant::now();
            self.unsynced = false;
            return Ok(());
        }
        let offset = (self.generation % 2) * self.capacity;
        self.file.write_all_at(&slot, offset)?;
        self.unsynced = true;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }
}

impl Drop for MarkFile {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(next_id: u64) -> Mark {
        Mark {
            next_id,
            min_cursor: next_id / 2,
            devices: [
                (
                    "plc1".to_owned(),
                    DeviceMark {
                        next_seq: next_id * 3,
                        floor_seq: 7,
                    },
                ),
                (
                    "press/2".to_owned(),
                    DeviceMark {
                        next_seq: 9,
                        floor_seq: 1,
                    },
                ),
            ]
            .into(),
        }
    }

    #[test]
    fn a_mark_reads_back_as_written_and_the_newest_slot_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mf = MarkFile::create(dir.path(), 0, &mark(1)).expect("create");
        for id in 2..=5 {
            mf.write(&mark(id)).expect("write");
        }
        drop(mf);
        let read = read(dir.path());
        assert_eq!(read.mark, Some(mark(5)));
        assert!(read.damaged_slots.is_empty());
        assert_eq!(read.generation, 5);
    }

    #[test]
    fn a_damaged_slot_falls_back_to_the_other_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mf = MarkFile::create(dir.path(), 0, &mark(1)).expect("create");
        mf.write(&mark(2)).expect("write"); // generation 2: slot A
        mf.write(&mark(3)).expect("write"); // generation 3: slot B
        drop(mf);
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        let half = bytes.len() / 2;
        bytes[half + 20] ^= 0x40;
        std::fs::write(&path, &bytes).expect("write");
        let read = read(dir.path());
        assert_eq!(read.mark, Some(mark(2)));
        assert_eq!(read.damaged_slots, vec![1]);

        // Truncated to less than slot B: slot A still answers.
        std::fs::write(&path, &bytes[..100]).expect("truncate");
        assert_eq!(super::read(dir.path()).mark, Some(mark(2)));
        // Both gone: no mark, but the file was there.
        std::fs::write(&path, [0u8; 10]).expect("garbage");
        let read = super::read(dir.path());
        assert_eq!((read.mark, read.file_found), (None, true));
    }

    #[test]
    fn a_growing_mark_moves_slot_b_and_stays_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut mf = MarkFile::create(dir.path(), 0, &mark(1)).expect("create");
        let mut big = mark(2);
        for i in 0..400 {
            big.devices.insert(
                format!("device-with-a-long-name-{i:04}"),
                DeviceMark {
                    next_seq: i,
                    floor_seq: 1,
                },
            );
        }
        mf.write(&big).expect("write");
        big.next_id = 3;
        mf.write(&big).expect("write");
        drop(mf);
        assert_eq!(read(dir.path()).mark, Some(big));
    }

    #[test]
    fn no_file_is_no_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let read = read(dir.path());
        assert_eq!((read.mark, read.file_found), (None, false));
    }
}
