//! The disk quota policy: turns readings of sled's size on disk into a budget for the logical
//! size of the records (the sum of their stored bytes). sled keeps freed space for reuse and
//! gives it back to the file system only slowly, so deleting records does not shrink the file
//! at once; evicting by logical size instead keeps eviction from chasing a number it cannot move.

/// Over quota: keep this share of the logical size (in fifths).
const BUDGET_FIFTHS: u64 = 4;
/// The budget is lifted once the disk use falls below this share of the quota (in tenths).
const RELAX_TENTHS: u64 = 7;
/// The budget never shrinks below this share of the quota: below it sled's own overhead
/// dominates, and evicting more would lose data without giving space back.
const FLOOR_DIVISOR: u64 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuotaPolicy {
    quota: u64,
    budget: Option<u64>,
    /// The disk size when the budget was last set or shrunk; it shrinks again only when the
    /// disk grows past this while the records already fit the budget.
    high_water: u64,
}

/// What one reading of the disk size changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BudgetChange {
    Set(u64),
    Shrunk { from: u64, to: u64 },
    Lifted,
}

impl QuotaPolicy {
    pub fn new(quota: u64) -> QuotaPolicy {
        QuotaPolicy {
            quota,
            budget: None,
            high_water: 0,
        }
    }

    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The logical size the records must be kept at or under, while one is in force.
    pub fn budget(&self) -> Option<u64> {
        self.budget
    }

    fn floor(&self) -> u64 {
        self.quota / FLOOR_DIVISOR
    }

    /// Takes a fresh reading of the disk size and the current logical size.
    pub fn observe(&mut self, disk: u64, logical: u64) -> Option<BudgetChange> {
        if disk > self.quota {
            match self.budget {
                None => {
                    let budget = (logical / 5 * BUDGET_FIFTHS).max(self.floor());
                    self.budget = Some(budget);
                    self.high_water = disk;
                    Some(BudgetChange::Set(budget))
                }
                Some(from) if logical <= from && disk > self.high_water => {
                    let to = (from / 5 * BUDGET_FIFTHS).max(self.floor());
                    self.high_water = disk;
                    if to == from {
                        return None;
                    }
                    self.budget = Some(to);
                    Some(BudgetChange::Shrunk { from, to })
                }
                Some(_) => None,
            }
        } else if disk < self.quota / 10 * RELAX_TENTHS && self.budget.is_some() {
            self.budget = None;
            self.high_water = 0;
            Some(BudgetChange::Lifted)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn under_quota_there_is_no_budget() {
        let mut q = QuotaPolicy::new(100 * MIB);
        assert_eq!(q.observe(100 * MIB, 90 * MIB), None);
        assert_eq!(q.budget(), None);
    }

    #[test]
    fn going_over_quota_sets_a_budget_of_four_fifths_of_the_logical_size() {
        let mut q = QuotaPolicy::new(100 * MIB);
        assert_eq!(
            q.observe(101 * MIB, 50 * MIB),
            Some(BudgetChange::Set(40 * MIB))
        );
        assert_eq!(q.budget(), Some(40 * MIB));
    }

    #[test]
    fn the_budget_shrinks_only_when_the_disk_keeps_growing_with_the_records_in_budget() {
        let mut q = QuotaPolicy::new(100 * MIB);
        q.observe(110 * MIB, 50 * MIB);
        // Records not yet evicted down to the budget: wait for that first.
        assert_eq!(q.observe(120 * MIB, 45 * MIB), None);
        // In budget, but the disk did not grow: sled is reusing its space.
        assert_eq!(q.observe(105 * MIB, 40 * MIB), None);
        assert_eq!(q.observe(110 * MIB, 40 * MIB), None);
        // In budget and the disk still grows: tighten.
        assert_eq!(
            q.observe(111 * MIB, 40 * MIB),
            Some(BudgetChange::Shrunk {
                from: 40 * MIB,
                to: 32 * MIB
            })
        );
    }

    #[test]
    fn the_budget_never_goes_below_an_eighth_of_the_quota() {
        let mut q = QuotaPolicy::new(80 * MIB);
        assert_eq!(q.observe(81 * MIB, MIB), Some(BudgetChange::Set(10 * MIB)));
        assert_eq!(q.observe(90 * MIB, MIB), None);
        assert_eq!(q.budget(), Some(10 * MIB));
    }

    #[test]
    fn the_budget_is_lifted_below_seven_tenths_of_the_quota() {
        let mut q = QuotaPolicy::new(100 * MIB);
        q.observe(110 * MIB, 50 * MIB);
        assert_eq!(q.observe(71 * MIB, 40 * MIB), None);
        assert_eq!(q.observe(69 * MIB, 40 * MIB), Some(BudgetChange::Lifted));
        assert_eq!(q.budget(), None);
        assert_eq!(
            q.observe(101 * MIB, 60 * MIB),
            Some(BudgetChange::Set(48 * MIB))
        );
    }

    proptest! {
        #[test]
        fn any_reading_sequence_keeps_the_budget_between_the_floor_and_the_logical_size(
            quota in 1u64..1_000_000_000,
            readings in proptest::collection::vec((0u64..2_000_000_000, 0u64..2_000_000_000), 0..50),
        ) {
            let mut q = QuotaPolicy::new(quota);
            let mut previous = None;
            for (disk, logical) in readings {
                let change = q.observe(disk, logical);
                if let Some(budget) = q.budget() {
                    prop_assert!(budget >= quota / FLOOR_DIVISOR);
                    match change {
                        Some(BudgetChange::Set(b)) => {
                            prop_assert_eq!(b, budget);
                            prop_assert!(disk > quota);
                            prop_assert!(b <= logical.max(quota / FLOOR_DIVISOR));
                        }
                        Some(BudgetChange::Shrunk { from, to }) => {
                            prop_assert_eq!(Some(from), previous);
                            prop_assert!(to < from && to == budget);
                        }
                        Some(BudgetChange::Lifted) => prop_assert!(false, "lifted but a budget remains"),
                        None => prop_assert_eq!(Some(budget), previous),
                    }
                } else {
                    prop_assert!(disk <= quota);
                }
                previous = q.budget();
            }
        }
    }
}
