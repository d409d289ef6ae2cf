//! The fixed-rate schedule of polled reads, shared by the drivers' device tasks.

use std::time::{Duration, Instant};

/// The next tick of a fixed-rate schedule: `due + interval`, skipping ticks already missed,
/// so an overrun never makes the schedule drift or burst.
pub fn next_tick(due: Instant, interval: Duration, now: Instant) -> Instant {
    let next = due + interval;
    if next > now {
        return next;
    }
    let behind = now.duration_since(next);
    let missed = behind.as_nanos() / interval.as_nanos().max(1) + 1;
    next + interval * (missed.min(u32::MAX as u128) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_advances_by_exactly_one_interval_when_on_time() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        assert_eq!(next_tick(t0, i, t0 + Duration::from_millis(30)), t0 + i);
    }

    #[test]
    fn an_overrun_skips_missed_ticks_and_stays_on_the_grid() {
        let t0 = Instant::now();
        let i = Duration::from_millis(100);
        let next = next_tick(t0, i, t0 + Duration::from_millis(350));
        assert_eq!(next, t0 + Duration::from_millis(400));
        let exactly = next_tick(t0, i, t0 + Duration::from_millis(200));
        assert_eq!(exactly, t0 + Duration::from_millis(300));
    }
}
