//! The in-memory index of the records in the store: id, sample count and stored size of each,
//! oldest first. It lets acknowledgement, eviction and the statistics work without reading
//! record values back from disk, at 16 bytes of memory per stored record.

use std::collections::VecDeque;

use crate::RecordId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordMeta {
    pub id: RecordId,
    pub samples: u32,
    /// Size of the stored value in bytes.
    pub bytes: u32,
}

/// What a run of records adds up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub records: u64,
    pub samples: u64,
    pub bytes: u64,
    /// Ids of the first and last record of the run, when it is not empty.
    pub first: Option<RecordId>,
    pub last: Option<RecordId>,
}

impl Span {
    fn add(&mut self, m: &RecordMeta) {
        self.records += 1;
        self.samples += u64::from(m.samples);
        self.bytes += u64::from(m.bytes);
        self.first.get_or_insert(m.id);
        self.last = Some(m.id);
    }
}

#[derive(Debug, Default)]
pub(crate) struct RecordIndex {
    metas: VecDeque<RecordMeta>,
    samples: u64,
    bytes: u64,
}

impl RecordIndex {
    /// Appends a record; ids must increase, which the store guarantees by assigning them.
    pub fn push(&mut self, meta: RecordMeta) {
        debug_assert!(self.metas.back().is_none_or(|b| b.id < meta.id));
        self.samples += u64::from(meta.samples);
        self.bytes += u64::from(meta.bytes);
        self.metas.push_back(meta);
    }

    pub fn records(&self) -> u64 {
        self.metas.len() as u64
    }

    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Sum of the stored sizes of all records: the store's logical size.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn first_id(&self) -> Option<RecordId> {
        self.metas.front().map(|m| m.id)
    }

    pub fn last_id(&self) -> Option<RecordId> {
        self.metas.back().map(|m| m.id)
    }

    /// The first record with an id of at least `id`.
    pub fn first_from(&self, id: RecordId) -> Option<RecordId> {
        self.metas.get(self.position(id)).map(|m| m.id)
    }

    fn position(&self, id: RecordId) -> usize {
        self.metas.partition_point(|m| m.id < id)
    }

    /// The records with an id of at least `from`.
    pub fn span_from(&self, from: RecordId) -> Span {
        let mut span = Span::default();
        self.metas
            .range(self.position(from)..)
            .for_each(|m| span.add(m));
        span
    }

    /// The ids of the records below `id`, oldest first.
    pub fn ids_below(&self, id: RecordId) -> impl Iterator<Item = RecordId> + '_ {
        self.metas.range(..self.position(id)).map(|m| m.id)
    }

    /// The records below `id`.
    pub fn span_below(&self, id: RecordId) -> Span {
        let mut span = Span::default();
        self.metas
            .range(..self.position(id))
            .for_each(|m| span.add(m));
        span
    }

    /// Forgets the records below `id`.
    pub fn remove_below(&mut self, id: RecordId) -> Span {
        let n = self.position(id);
        let mut span = Span::default();
        for m in self.metas.drain(..n) {
            span.add(&m);
        }
        self.samples -= span.samples;
        self.bytes -= span.bytes;
        span
    }

    /// Forgets one record; `None` when it is not in the index (already removed).
    pub fn remove(&mut self, id: RecordId) -> Option<RecordMeta> {
        let at = self.position(id);
        if self.metas.get(at)?.id != id {
            return None;
        }
        let m = self.metas.remove(at)?;
        self.samples -= u64::from(m.samples);
        self.bytes -= u64::from(m.bytes);
        Some(m)
    }

    /// The id below which records must be evicted, oldest first, to bring the logical size
    /// down to `budget` without touching any record at or above `protect_from`. Returns `None`
    /// when nothing needs to (or may) be evicted.
    pub fn eviction_bound(&self, budget: u64, protect_from: RecordId) -> Option<RecordId> {
        let mut bytes = self.bytes;
        let mut bound = None;
        for m in &self.metas {
            if bytes <= budget || m.id >= protect_from {
                break;
            }
            bytes -= u64::from(m.bytes);
            bound = Some(m.id + 1);
        }
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn index_of(metas: &[(u64, u32, u32)]) -> RecordIndex {
        let mut index = RecordIndex::default();
        for &(id, samples, bytes) in metas {
            index.push(RecordMeta { id, samples, bytes });
        }
        index
    }

    /// Records with increasing ids (gaps allowed, as corrupt records leave holes).
    fn metas_strategy() -> impl Strategy<Value = Vec<(u64, u32, u32)>> {
        proptest::collection::vec((1u64..4, 0u32..50, 1u32..2000), 0..60).prop_map(|v| {
            let mut id = 100;
            v.into_iter()
                .map(|(gap, s, b)| {
                    id += gap;
                    (id, s, b)
                })
                .collect()
        })
    }

    #[test]
    fn totals_follow_pushes_and_removals() {
        let mut index = index_of(&[(1, 10, 100), (2, 5, 50), (4, 1, 10)]);
        assert_eq!(
            (index.records(), index.samples(), index.bytes()),
            (3, 16, 160)
        );
        assert_eq!(index.remove(2).map(|m| m.samples), Some(5));
        assert_eq!(index.remove(2), None);
        assert_eq!(index.remove(3), None);
        assert_eq!(
            (index.records(), index.samples(), index.bytes()),
            (2, 11, 110)
        );
        let span = index.remove_below(4);
        assert_eq!(
            (span.records, span.samples, span.first, span.last),
            (1, 10, Some(1), Some(1))
        );
        assert_eq!(index.first_id(), Some(4));
        assert_eq!(index.last_id(), Some(4));
    }

    #[test]
    fn first_from_skips_holes() {
        let index = index_of(&[(1, 1, 1), (5, 1, 1)]);
        assert_eq!(index.first_from(0), Some(1));
        assert_eq!(index.first_from(2), Some(5));
        assert_eq!(index.first_from(6), None);
    }

    #[test]
    fn eviction_never_touches_protected_records() {
        let index = index_of(&[(1, 1, 100), (2, 1, 100), (3, 1, 1000)]);
        assert_eq!(index.eviction_bound(150, 3), Some(3));
        assert_eq!(index.eviction_bound(0, 1), None);
        assert_eq!(index.eviction_bound(1200, 3), None);
        assert_eq!(index.eviction_bound(1100, 3), Some(2));
    }

    proptest! {
        #[test]
        fn spans_below_and_from_partition_the_index(metas in metas_strategy(), at in 90u64..300) {
            let index = index_of(&metas);
            let below = index.span_below(at);
            let from = index.span_from(at);
            prop_assert_eq!(below.records + from.records, index.records());
            prop_assert_eq!(below.samples + from.samples, index.samples());
            prop_assert_eq!(below.bytes + from.bytes, index.bytes());
            prop_assert!(below.last.is_none_or(|l| l < at));
            prop_assert!(from.first.is_none_or(|f| f >= at));
            prop_assert_eq!(index.ids_below(at).count() as u64, below.records);
        }

        #[test]
        fn remove_below_removes_exactly_the_span_below(metas in metas_strategy(), at in 90u64..300) {
            let mut index = index_of(&metas);
            let expected = index.span_below(at);
            prop_assert_eq!(index.remove_below(at), expected);
            prop_assert!(index.first_id().is_none_or(|f| f >= at));
            let fresh = index_of(&metas.iter().copied().filter(|m| m.0 >= at).collect::<Vec<_>>());
            prop_assert_eq!((index.samples(), index.bytes()), (fresh.samples(), fresh.bytes()));
        }

        #[test]
        fn eviction_reaches_the_budget_unless_protected_records_forbid_it(
            metas in metas_strategy(), budget in 0u64..60_000, protect_offset in 0usize..70,
        ) {
            let index = index_of(&metas);
            let protect_from = metas.get(protect_offset).map_or(u64::MAX, |m| m.0);
            let bound = index.eviction_bound(budget, protect_from);
            let evicted = bound.map_or(Span::default(), |b| index.span_below(b));
            let left = index.bytes() - evicted.bytes;
            // Never a protected record, never more than needed.
            prop_assert!(evicted.last.is_none_or(|l| l < protect_from));
            if let Some(last) = evicted.last {
                let meta = metas.iter().find(|m| m.0 == last).copied();
                prop_assert!(meta.is_some_and(|m| left + u64::from(m.2) > budget));
            }
            // Either under budget, or everything evictable is gone.
            let unprotected_left = index.span_below(protect_from).records - evicted.records;
            prop_assert!(left <= budget || unprotected_left == 0);
        }
    }
}
