//! Production counters: how far a PLC counter advanced between two readings, robust to the
//! counter wrapping around at its width and to the PLC resetting it. Readings missed while the
//! PLC was unreachable need nothing special: the next reading is compared with the last one
//! seen, so whatever was produced in between is counted once.

use edge_model::Value;

use crate::machine::CounterWidth;

/// A counter reading as the raw unsigned value of its width: a signed counter's bits are read
/// as unsigned, so an `i16` counter passing 32767 keeps counting up to 65535 and wraps like a
/// `u16`. `None` for values that are not integers.
pub fn raw_count(value: &Value, width: CounterWidth) -> Option<u64> {
    let raw = match *value {
        Value::U16(v) => u64::from(v),
        Value::I16(v) => u64::from(v as u16),
        Value::U32(v) => u64::from(v),
        Value::I32(v) => u64::from(v as u32),
        Value::U64(v) => v,
        Value::I64(v) => v as u64,
        Value::Bool(_) | Value::F32(_) | Value::F64(_) | Value::String(_) => return None,
    };
    Some(raw & width.max())
}

/// How a counter moved from one reading to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It went up by this much (0: unchanged).
    Advance(u64),
    /// It passed its largest value and started again from zero; this many parts in all.
    Wrap(u64),
    /// It went down by more than a wrap-around can explain: the PLC reset it to zero and it
    /// has counted this many parts since.
    Reset(u64),
}

impl Step {
    /// The parts produced between the two readings.
    pub fn parts(self) -> u64 {
        match self {
            Step::Advance(n) | Step::Wrap(n) | Step::Reset(n) => n,
        }
    }
}

/// The step from raw reading `old` to raw reading `new` of a counter of `width` bits that
/// advances at most `max_step` between two readings.
///
/// A drop is ambiguous: a wrap-around (65530 → 4 on a 16-bit counter is 10 parts) or a reset
/// (40000 → 4 is a reset and 4 parts since). A drop whose wrap-around distance is at most
/// `max_step` is taken for a wrap-around, any other drop for a reset from zero.
pub fn step(old: u64, new: u64, width: CounterWidth, max_step: u64) -> Step {
    let (old, new) = (old & width.max(), new & width.max());
    if new >= old {
        return Step::Advance(new - old);
    }
    // (max + 1 - old) + new, arranged so that it cannot overflow even for 64-bit counters:
    // old > new, so old - new >= 1 and the result is at most max.
    let wrapped = width.max() - (old - new) + 1;
    if wrapped <= max_step {
        Step::Wrap(wrapped)
    } else {
        Step::Reset(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const W16: CounterWidth = CounterWidth::Bits16;
    const W32: CounterWidth = CounterWidth::Bits32;
    const W64: CounterWidth = CounterWidth::Bits64;

    fn width() -> impl Strategy<Value = CounterWidth> {
        prop_oneof![Just(W16), Just(W32), Just(W64)]
    }

    #[test]
    fn an_unchanged_counter_produced_nothing() {
        assert_eq!(step(5, 5, W16, 100), Step::Advance(0));
    }

    #[test]
    fn a_counter_going_up_counts_the_difference() {
        assert_eq!(step(5, 12, W16, 100), Step::Advance(7));
        // A large jump up is production the gateway did not see (it was offline): counted.
        assert_eq!(step(5, 60_000, W16, 100), Step::Advance(59_995));
    }

    #[test]
    fn a_wrap_around_at_each_width_counts_the_parts_across_zero() {
        assert_eq!(step(65_530, 4, W16, 100), Step::Wrap(10));
        assert_eq!(step(65_535, 0, W16, 100), Step::Wrap(1));
        assert_eq!(step(u64::from(u32::MAX), 2, W32, 100), Step::Wrap(3));
        assert_eq!(step(u64::MAX - 1, 1, W64, 100), Step::Wrap(3));
    }

    #[test]
    fn a_drop_too_large_for_a_wrap_is_a_reset_counting_from_zero() {
        assert_eq!(step(40_000, 4, W16, 10_000), Step::Reset(4));
        assert_eq!(step(100, 0, W16, 10_000), Step::Reset(0));
        assert_eq!(step(u64::MAX, 7, W64, 10_000), Step::Wrap(8));
        assert_eq!(step(1_000_000, 7, W64, 10_000), Step::Reset(7));
    }

    #[test]
    fn the_wrap_window_boundary_is_inclusive() {
        // 65_536 - 60_000 + 0 = 5_536 parts across zero.
        assert_eq!(step(60_000, 0, W16, 5_536), Step::Wrap(5_536));
        assert_eq!(step(60_000, 0, W16, 5_535), Step::Reset(0));
    }

    #[test]
    fn signed_counters_wrap_like_unsigned_ones_of_their_width() {
        let before = raw_count(&Value::I16(i16::MAX), W16).expect("integer");
        let after = raw_count(&Value::I16(i16::MIN), W16).expect("integer");
        assert_eq!(step(before, after, W16, 100), Step::Advance(1));
        let before = raw_count(&Value::I16(-1), W16).expect("integer");
        let after = raw_count(&Value::I16(2), W16).expect("integer");
        assert_eq!(step(before, after, W16, 100), Step::Wrap(3));
        assert_eq!(raw_count(&Value::I32(-1), W32), Some(u64::from(u32::MAX)));
        assert_eq!(raw_count(&Value::I64(-1), W64), Some(u64::MAX));
    }

    #[test]
    fn only_integers_are_counter_readings() {
        assert_eq!(raw_count(&Value::F64(3.0), W16), None);
        assert_eq!(raw_count(&Value::Bool(true), W16), None);
        assert_eq!(raw_count(&Value::String("3".into()), W16), None);
        assert_eq!(raw_count(&Value::U32(70_000), W16), Some(70_000 & 0xFFFF));
    }

    proptest! {
        /// Feeding the readings of a counter that advances by at most `max_step` per reading,
        /// wrapping as often as it likes, gives back exactly the parts produced.
        #[test]
        fn wrap_arounds_never_lose_or_invent_parts(
            w in width(),
            start in any::<u64>(),
            max_step in 1u64..20_000,
            advances in proptest::collection::vec(0u64..20_000, 0..200),
        ) {
            let start = start & w.max();
            let mut raw = start;
            let mut produced = 0u64;
            let mut counted = 0u64;
            for a in advances {
                let a = a.min(max_step);
                let next = raw.wrapping_add(a) & w.max();
                counted += step(raw, next, w, max_step).parts();
                produced += a;
                raw = next;
            }
            prop_assert_eq!(counted, produced);
        }

        /// A reset from any value whose wrap-around distance to the new reading exceeds the
        /// window counts the parts since zero, never the drop.
        #[test]
        fn a_reset_counts_the_parts_since_zero(
            w in width(),
            since in 0u64..1_000,
            max_step in 1u64..20_000,
            old in any::<u64>(),
        ) {
            let old = old & w.max();
            prop_assume!(old > since);
            let wrapped = w.max() - (old - since) + 1;
            prop_assume!(wrapped > max_step);
            prop_assert_eq!(step(old, since, w, max_step), Step::Reset(since));
        }

        /// Readings missed while the PLC was unreachable change nothing: comparing the last
        /// reading before with the first after counts what every reading in between would
        /// have, as long as the counter did not wrap more than the window allows.
        #[test]
        fn missed_readings_are_counted_once_when_the_counter_is_read_again(
            w in width(),
            start in any::<u64>(),
            advances in proptest::collection::vec(0u64..50, 1..100),
            keep in proptest::collection::vec(any::<bool>(), 100),
        ) {
            let max_step = 50 * 100;
            let start = start & w.max();
            let mut readings = vec![start];
            let mut raw = start;
            for a in &advances {
                raw = raw.wrapping_add(*a) & w.max();
                readings.push(raw);
            }
            let every: u64 = readings.windows(2).map(|p| step(p[0], p[1], w, max_step).parts()).sum();
            // Always keep the first and the last reading; drop any others.
            let last = readings.len() - 1;
            let seen: Vec<u64> = readings
                .iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || *i == last || keep[*i % keep.len()])
                .map(|(_, r)| *r)
                .collect();
            let some: u64 = seen.windows(2).map(|p| step(p[0], p[1], w, max_step).parts()).sum();
            prop_assert_eq!(every, advances.iter().sum::<u64>());
            prop_assert_eq!(some, every);
        }

        /// No pair of readings ever yields more parts than the counter can hold.
        #[test]
        fn a_step_never_exceeds_the_counters_range(w in width(), old in any::<u64>(), new in any::<u64>(), max_step in any::<u64>()) {
            prop_assert!(step(old, new, w, max_step).parts() <= w.max());
        }
    }
}
