//! The loss ledger: which samples the store lost, per device as seq ranges, and why. Only
//! eviction, corruption, a rolled-back log and an operator's purge lose samples; each writes
//! its ranges in the same atomic sled write as the change that loses them, so a reader of the ledger can tell a sample
//! the store dropped on purpose (or could not keep) from one that went missing elsewhere.
//!
//! Contiguous ranges of the same device and reason merge; beyond [`MAX_RANGES`] the oldest are
//! folded into a count, so the ledger stays small.

use std::collections::BTreeMap;

use crate::keys::{self, COUNTER};

/// The ledger keeps at most this many ranges; older ones only count.
pub const MAX_RANGES: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LossReason {
    /// Dropped by the disk quota.
    Evicted,
    /// Unreadable on disk (damaged files, undecodable records).
    Corrupted,
    /// Committed and on disk once, but the store's log came back without it after a restart.
    RolledBack,
    /// Removed from a northbound's backlog by an operator (`edge-agent buffer purge`).
    Purged,
}

impl LossReason {
    pub const ALL: [LossReason; 4] = [
        LossReason::Evicted,
        LossReason::Corrupted,
        LossReason::RolledBack,
        LossReason::Purged,
    ];

    /// "evicted", "corrupted", "rolled-back", "purged".
    pub fn as_str(self) -> &'static str {
        match self {
            LossReason::Evicted => "evicted",
            LossReason::Corrupted => "corrupted",
            LossReason::RolledBack => "rolled-back",
            LossReason::Purged => "purged",
        }
    }

    fn code(self) -> u8 {
        match self {
            LossReason::Evicted => 1,
            LossReason::Corrupted => 2,
            LossReason::RolledBack => 3,
            LossReason::Purged => 4,
        }
    }

    fn from_code(code: u8) -> Option<LossReason> {
        LossReason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// The persisted counter of lost samples for this reason.
    pub(crate) fn counter(self) -> &'static str {
        match self {
            LossReason::Evicted => keys::LOST_EVICTED,
            LossReason::Corrupted => keys::LOST_CORRUPTED,
            LossReason::RolledBack => keys::LOST_ROLLED_BACK,
            LossReason::Purged => keys::LOST_PURGED,
        }
    }
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Samples of one device the store lost: seqs `first_seq..=last_seq`. A range recorded for
/// corruption or a rollback may include samples that had already been delivered (the store
/// cannot tell which), never the other way round; so may a purge, which removes the samples
/// from one northbound's backlog while another may already have delivered them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub device: String,
    pub first_seq: u64,
    /// Inclusive.
    pub last_seq: u64,
    pub samples: u64,
    pub reason: LossReason,
    /// When it was recorded (the newest part, for merged ranges), ms since the epoch.
    pub at_ms: u64,
}

impl Loss {
    /// A range of every seq from `first` to `last`.
    pub(crate) fn range(
        device: &str,
        first: u64,
        last: u64,
        reason: LossReason,
        at_ms: u64,
    ) -> Loss {
        Loss {
            device: device.to_owned(),
            first_seq: first,
            last_seq: last,
            samples: last - first + 1,
            reason,
            at_ms,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let name = &self.device.as_bytes()[..self.device.len().min(u16::MAX as usize)];
        let mut v = Vec::with_capacity(2 + name.len() + 33);
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name);
        v.extend_from_slice(&self.first_seq.to_be_bytes());
        v.extend_from_slice(&self.last_seq.to_be_bytes());
        v.extend_from_slice(&self.samples.to_be_bytes());
        v.push(self.reason.code());
        v.extend_from_slice(&self.at_ms.to_be_bytes());
        v
    }

    pub(crate) fn decode(v: &[u8]) -> Option<Loss> {
        let (len, rest) = v.split_first_chunk::<2>()?;
        let len = usize::from(u16::from_be_bytes(*len));
        if rest.len() != len + 33 {
            return None;
        }
        let (name, rest) = rest.split_at(len);
        let u = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(rest.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Loss {
            device: std::str::from_utf8(name).ok()?.to_owned(),
            first_seq: u(0)?,
            last_seq: u(8)?,
            samples: u(16)?,
            reason: LossReason::from_code(rest[24])?,
            at_ms: u(25)?,
        })
    }

    pub(crate) fn contains(&self, other: &Loss) -> bool {
        self.device == other.device
            && self.first_seq <= other.first_seq
            && other.last_seq <= self.last_seq
    }
}

/// Lost samples per reason, and what the bound on the ledger folded away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LostCounts {
    pub evicted: u64,
    pub corrupted: u64,
    pub rolled_back: u64,
    pub purged: u64,
    /// Ranges removed from the ledger to keep it bounded (their samples stay counted above).
    pub folded_ranges: u64,
}

impl LostCounts {
    pub fn of(&self, reason: LossReason) -> u64 {
        match reason {
            LossReason::Evicted => self.evicted,
            LossReason::Corrupted => self.corrupted,
            LossReason::RolledBack => self.rolled_back,
            LossReason::Purged => self.purged,
        }
    }

    fn of_mut(&mut self, reason: LossReason) -> &mut u64 {
        match reason {
            LossReason::Evicted => &mut self.evicted,
            LossReason::Corrupted => &mut self.corrupted,
            LossReason::RolledBack => &mut self.rolled_back,
            LossReason::Purged => &mut self.purged,
        }
    }

    pub fn total(&self) -> u64 {
        self.evicted + self.corrupted + self.rolled_back + self.purged
    }
}

/// The ledger as kept in memory (at most [`MAX_RANGES`] entries), keyed like in sled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ledger {
    entries: BTreeMap<u64, Loss>,
    pub counts: LostCounts,
}

impl Ledger {
    pub fn load(entries: BTreeMap<u64, Loss>, counts: LostCounts) -> Ledger {
        Ledger { entries, counts }
    }

    pub fn losses(&self) -> Vec<Loss> {
        self.entries.values().cloned().collect()
    }

    /// Adds `losses` to a copy of the ledger and puts the writes that persist it into
    /// `writes`; the caller installs the copy once the write succeeded. A range already inside
    /// a recorded one (found again at a later open) is not counted twice.
    pub fn with(&self, losses: &[Loss], writes: &mut sled::Batch) -> Ledger {
        let mut next = self.clone();
        let mut key = next.entries.keys().next_back().map_or(0, |k| k + 1);
        let mut touched = Vec::new();
        for loss in losses {
            if loss.samples == 0 || next.entries.values().any(|e| e.contains(loss)) {
                continue;
            }
            *next.counts.of_mut(loss.reason) += loss.samples;
            let merge = next.entries.iter_mut().rev().find(|(_, e)| {
                e.device == loss.device
                    && e.reason == loss.reason
                    && e.last_seq.checked_add(1) == Some(loss.first_seq)
            });
            match merge {
                Some((&k, e)) => {
                    e.last_seq = loss.last_seq;
                    e.samples += loss.samples;
                    e.at_ms = e.at_ms.max(loss.at_ms);
                    touched.push(k);
                }
                None => {
                    next.entries.insert(key, loss.clone());
                    touched.push(key);
                    key += 1;
                }
            }
        }
        while next.entries.len() > MAX_RANGES {
            if let Some((k, _)) = next.entries.pop_first() {
                writes.remove(&keys::loss_key(k));
                next.counts.folded_ranges += 1;
            }
        }
        for k in touched {
            if let Some(e) = next.entries.get(&k) {
                writes.insert(&keys::loss_key(k), e.encode());
            }
        }
        for (reason, counter) in LossReason::ALL.map(|r| (r, r.counter())) {
            if next.counts.of(reason) != self.counts.of(reason) {
                writes.insert(
                    keys::named_key(COUNTER, counter),
                    &next.counts.of(reason).to_be_bytes(),
                );
            }
        }
        if next.counts.folded_ranges != self.counts.folded_ranges {
            writes.insert(
                keys::named_key(COUNTER, keys::FOLDED_LOSS_RANGES),
                &next.counts.folded_ranges.to_be_bytes(),
            );
        }
        next
    }
}

/// One record as the gap search sees it: its id, device and first and last seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordSeqs {
    pub id: u64,
    pub device: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// What is known about the samples of each device, to bound the seqs in missing records.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeqBounds {
    /// Every unacknowledged sample of the device has at least this seq (missing: [`crate::FIRST_SEQ`]).
    pub floor: BTreeMap<String, u64>,
    /// Every sample of the device has a seq below this.
    pub next: BTreeMap<String, u64>,
}

/// The seq ranges, per device, that can hold the samples of the missing records `runs`
/// (`[start, end)` id ranges, sorted, disjoint), given the readable `records` (sorted by id).
/// The samples of a device in a missing run have seqs above that device's last readable seq
/// before the run and below its first readable seq after it, and within its floor and next.
/// Each range gets the reason `reason_of(run)`.
pub(crate) fn cover_missing(
    records: &[RecordSeqs],
    runs: &[(u64, u64)],
    bounds: &SeqBounds,
    reason_of: impl Fn((u64, u64)) -> LossReason,
    at_ms: u64,
) -> Vec<Loss> {
    let mut devices: Vec<&str> = bounds
        .next
        .keys()
        .chain(bounds.floor.keys())
        .map(String::as_str)
        .chain(records.iter().map(|r| r.device.as_str()))
        .collect();
    devices.sort_unstable();
    devices.dedup();
    let mut next = bounds.next.clone();
    for r in records {
        let n = next.entry(r.device.clone()).or_insert(0);
        *n = (*n).max(r.last_seq.saturating_add(1));
    }
    let mut out = Vec::new();
    for &(start, end) in runs {
        let split_lo = records.partition_point(|r| r.id < start);
        let split_hi = records.partition_point(|r| r.id < end);
        let (before, after) = (&records[..split_lo], &records[split_hi..]);
        for &device in &devices {
            let floor = bounds
                .floor
                .get(device)
                .copied()
                .unwrap_or(crate::FIRST_SEQ);
            let lo = before
                .iter()
                .rev()
                .find(|r| r.device == device)
                .map_or(floor, |r| r.last_seq.saturating_add(1).max(floor));
            let next = next.get(device).copied().unwrap_or(0);
            let hi_excl = after
                .iter()
                .find(|r| r.device == device)
                .map_or(next, |r| r.first_seq.min(next));
            if lo < hi_excl {
                out.push(Loss::range(
                    device,
                    lo,
                    hi_excl - 1,
                    reason_of((start, end)),
                    at_ms,
                ));
            }
        }
    }
    out
}

/// The `[start, end)` runs of ids in `from..to` that `present` (sorted) lacks.
pub(crate) fn missing_runs(
    present: impl Iterator<Item = u64>,
    from: u64,
    to: u64,
) -> Vec<(u64, u64)> {
    let mut runs = Vec::new();
    let mut expect = from;
    for id in present {
        if id >= to {
            break;
        }
        if id < expect {
            continue;
        }
        if id > expect {
            runs.push((expect, id));
        }
        expect = id + 1;
    }
    if expect < to {
        runs.push((expect, to));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(id: u64, device: &str, first: u64, last: u64) -> RecordSeqs {
        RecordSeqs {
            id,
            device: device.to_owned(),
            first_seq: first,
            last_seq: last,
        }
    }

    #[test]
    fn a_loss_encodes_and_decodes() {
        let loss = Loss::range("press/1", 10, 19, LossReason::RolledBack, 1234);
        assert_eq!(Loss::decode(&loss.encode()), Some(loss.clone()));
        assert_eq!(Loss::decode(&loss.encode()[1..]), None);
        assert_eq!(LossReason::RolledBack.as_str(), "rolled-back");
        let purged = Loss::range("press/1", 1, 4, LossReason::Purged, 9);
        assert_eq!(Loss::decode(&purged.encode()), Some(purged));
        assert_eq!(LossReason::Purged.as_str(), "purged");
    }

    #[test]
    fn missing_runs_are_the_holes_and_the_tail() {
        assert_eq!(
            missing_runs([3, 4, 7, 9].into_iter(), 2, 12),
            vec![(2, 3), (5, 7), (8, 9), (10, 12)]
        );
        assert_eq!(missing_runs([1, 2, 3].into_iter(), 2, 4), vec![]);
        assert_eq!(missing_runs(std::iter::empty(), 5, 5), vec![]);
    }

    #[test]
    fn contiguous_ranges_merge_repeats_are_not_counted_twice_and_the_ledger_is_bounded() {
        let mut batch = sled::Batch::default();
        let l = Ledger::default().with(
            &[
                Loss::range("a", 1, 10, LossReason::Evicted, 1),
                Loss::range("a", 11, 20, LossReason::Evicted, 2),
                Loss::range("a", 21, 30, LossReason::Corrupted, 3),
                Loss::range("a", 5, 8, LossReason::Corrupted, 4),
            ],
            &mut batch,
        );
        assert_eq!(
            l.losses(),
            vec![
                Loss {
                    at_ms: 2,
                    ..Loss::range("a", 1, 20, LossReason::Evicted, 0)
                },
                Loss::range("a", 21, 30, LossReason::Corrupted, 3),
            ]
        );
        assert_eq!((l.counts.evicted, l.counts.corrupted), (20, 10));

        let many: Vec<Loss> = (0..MAX_RANGES as u64 + 5)
            .map(|i| Loss::range("b", i * 10, i * 10 + 1, LossReason::Evicted, i))
            .collect();
        let l = l.with(&many, &mut batch);
        assert_eq!(l.losses().len(), MAX_RANGES);
        assert_eq!(l.counts.folded_ranges, 7);
        assert_eq!(l.counts.evicted, 20 + 2 * (MAX_RANGES as u64 + 5));
        assert_eq!(
            l.losses().last().map(|e| e.first_seq),
            Some(MAX_RANGES as u64 * 10 + 40)
        );
    }

    #[test]
    fn a_rolled_back_tail_is_covered_from_the_last_readable_seq_to_the_mark() {
        let records = [
            rec(10, "a", 100, 109),
            rec(11, "b", 1, 5),
            rec(12, "a", 110, 119),
        ];
        let bounds = SeqBounds {
            floor: [("a".to_owned(), 90), ("c".to_owned(), 7)].into(),
            next: [
                ("a".to_owned(), 150),
                ("b".to_owned(), 6),
                ("c".to_owned(), 9),
            ]
            .into(),
        };
        let losses = cover_missing(
            &records,
            &[(13, 20)],
            &bounds,
            |_| LossReason::RolledBack,
            5,
        );
        assert_eq!(
            losses,
            vec![
                Loss::range("a", 120, 149, LossReason::RolledBack, 5),
                Loss::range("c", 7, 8, LossReason::RolledBack, 5),
            ]
        );
        // A hole between two records of the same device with contiguous seqs holds none of it.
        let losses = cover_missing(
            &[rec(1, "a", 1, 5), rec(3, "a", 6, 9), rec(5, "a", 20, 29)],
            &[(2, 3), (4, 5)],
            &SeqBounds::default(),
            |_| LossReason::Corrupted,
            0,
        );
        assert_eq!(
            losses,
            vec![Loss::range("a", 10, 19, LossReason::Corrupted, 0)]
        );
    }

    proptest! {
        /// Records of several devices with contiguous seqs; remove any subset; the cover of the
        /// missing ids holds every seq that was in a removed record.
        #[test]
        fn the_cover_of_missing_records_never_misses_a_sample(
            sizes in proptest::collection::vec((0usize..3, 1u64..5), 1..60),
            removed in proptest::collection::vec(any::<bool>(), 60),
            acked in 0usize..60,
        ) {
            let names = ["a", "b", "c"];
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            let mut all = Vec::new();
            for (id, (d, n)) in sizes.iter().enumerate() {
                let seq = next.entry(names[*d].to_owned()).or_insert(1);
                all.push(rec(id as u64, names[*d], *seq, *seq + n - 1));
                *seq += n;
            }
            let acked = acked.min(all.len()) as u64;
            // The floor of each device: its first seq at or after the acked records.
            let mut floor = BTreeMap::new();
            for d in names {
                let f = all.iter().find(|r| r.device == d && r.id >= acked).map(|r| r.first_seq)
                    .unwrap_or_else(|| next.get(d).copied().unwrap_or(1));
                floor.insert(d.to_owned(), f);
            }
            let kept: Vec<RecordSeqs> = all.iter().filter(|r| r.id >= acked && !removed[r.id as usize]).cloned().collect();
            let runs = missing_runs(kept.iter().map(|r| r.id), acked, all.len() as u64);
            let bounds = SeqBounds { floor, next };
            let cover = cover_missing(&kept, &runs, &bounds, |_| LossReason::Corrupted, 0);
            for r in all.iter().filter(|r| r.id >= acked && removed[r.id as usize]) {
                for seq in r.first_seq..=r.last_seq {
                    prop_assert!(cover.iter().any(|l| l.device == r.device && l.first_seq <= seq && seq <= l.last_seq),
                        "{}:{} uncovered", r.device, seq);
                }
            }
            // And no readable sample is reported lost.
            for r in &kept {
                prop_assert!(!cover.iter().any(|l| l.device == r.device && l.first_seq <= r.last_seq && r.first_seq <= l.last_seq));
            }
        }
    }
}
