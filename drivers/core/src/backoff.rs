//! Retrying without a storm: a jittered exponential [`Backoff`] (the device tasks, the MQTT
//! publishers and the store writer all wait with it), and [`Reconnect`], what a device task
//! knows between attempts: how long to wait, and whether an outage is going on. Pure, no I/O.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter: each wait is drawn between half and all of the current
/// step, so peers that failed together do not retry together; the step doubles after each
/// wait, up to the maximum, and starts over at the minimum on [`Backoff::reset`].
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// A maximum below the minimum is taken as the minimum.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            step: min,
        }
    }

    /// The wait before the next attempt, after a failed one; the step then doubles.
    pub fn next_wait(&mut self) -> Duration {
        let wait = jitter(self.step);
        self.step = (self.step * 2).min(self.max);
        wait
    }

    /// The step the next wait is drawn from (the wait is between half and all of it).
    pub fn step(&self) -> Duration {
        self.step
    }

    /// The attempt succeeded: the next wait is drawn from the minimum again.
    pub fn reset(&mut self) {
        self.step = self.min;
    }
}

/// Between 50 % and 100 % of `d`.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// The retry side of a device task. An outage starts with the first failure after the device
/// last answered (or at the first failed attempt ever) and ends with its next answer, not with
/// the next connect: a PLC whose TCP stack still accepts while its program hangs, or an OPC UA
/// server that opens sessions but delivers nothing, stays one outage with a growing backoff.
#[derive(Debug, Clone)]
pub struct Reconnect {
    backoff: Backoff,
    outage: bool,
    /// A connection opened during this outage (and the device did not answer on it).
    opened_in_outage: bool,
}

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// How long to wait before the next attempt.
    pub wait: Duration,
    /// This failure begins an outage: the one to log as a warning (later ones are debug).
    pub starts_outage: bool,
}

impl Reconnect {
    pub fn new(min: Duration, max: Duration) -> Reconnect {
        Reconnect {
            backoff: Backoff::new(min, max),
            outage: false,
            opened_in_outage: false,
        }
    }

    /// A connection (or session) opened, which is not an answer: the outage and its backoff
    /// go on. True when it is worth an info line: outside an outage, or the first one of it;
    /// the connections a hung device accepts after that are debug.
    pub fn opened(&mut self) -> bool {
        let first = !self.opened_in_outage;
        self.opened_in_outage = self.outage;
        first
    }

    /// A failed attempt or a lost connection.
    pub fn failed(&mut self) -> Retry {
        let starts_outage = !self.outage;
        self.outage = true;
        Retry {
            wait: self.backoff.next_wait(),
            starts_outage,
        }
    }

    /// The device answered (with data, or with a refusal, which proves it is there): the
    /// backoff starts over. True when this ends an outage.
    pub fn answered(&mut self) -> bool {
        self.backoff.reset();
        self.opened_in_outage = false;
        std::mem::take(&mut self.outage)
    }

    pub fn in_outage(&self) -> bool {
        self.outage
    }

    /// The step the next wait is drawn from.
    pub fn step(&self) -> Duration {
        self.backoff.step()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn within_step(wait: Duration, step: Duration) -> bool {
        wait >= step / 2 && wait <= step
    }

    #[test]
    fn the_backoff_doubles_with_jitter_up_to_its_maximum() {
        let mut b = Backoff::new(100 * MS, 350 * MS);
        for step in [100, 200, 350, 350, 350] {
            let w = b.next_wait();
            assert!(within_step(w, step * MS), "{w:?} for a step of {step} ms");
        }
    }

    #[test]
    fn a_reset_starts_the_backoff_over() {
        let mut b = Backoff::new(100 * MS, 10_000 * MS);
        for _ in 0..5 {
            b.next_wait();
        }
        assert_eq!(b.step(), 3_200 * MS);
        b.reset();
        assert!(b.next_wait() <= 100 * MS);
    }

    #[test]
    fn a_maximum_below_the_minimum_is_the_minimum() {
        let mut b = Backoff::new(200 * MS, 50 * MS);
        for _ in 0..3 {
            assert!(within_step(b.next_wait(), 200 * MS));
        }
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_step() {
        for _ in 0..1000 {
            let j = jitter(1000 * MS);
            assert!(within_step(j, 1000 * MS), "{j:?}");
        }
    }

    #[test]
    fn connections_that_never_answer_keep_growing_the_backoff_to_its_maximum() {
        // A hung PLC: every attempt connects, and the first read on it times out. Connecting
        // is not an answer, so nothing but `failed` is ever called.
        let mut r = Reconnect::new(50 * MS, 400 * MS);
        let steps: Vec<Duration> = (0..6)
            .map(|_| {
                let step = r.step();
                let retry = r.failed();
                assert!(within_step(retry.wait, step));
                step
            })
            .collect();
        assert_eq!(steps, [50, 100, 200, 400, 400, 400].map(|ms| ms * MS));
    }

    #[test]
    fn an_outage_is_announced_once_and_ends_with_the_first_answer() {
        let mut r = Reconnect::new(50 * MS, 400 * MS);
        assert!(!r.in_outage());
        let starts: Vec<bool> = (0..5).map(|_| r.failed().starts_outage).collect();
        assert_eq!(starts, [true, false, false, false, false]);
        assert!(r.in_outage());
        assert!(r.answered(), "the first answer ends the outage");
        assert!(!r.answered(), "later answers end nothing");
        assert!(!r.in_outage());
    }

    #[test]
    fn only_the_first_connection_of_an_outage_is_worth_an_info_line() {
        let mut r = Reconnect::new(50 * MS, 400 * MS);
        assert!(r.opened(), "the first connection");
        r.answered();
        r.failed();
        let opened: Vec<bool> = (0..4)
            .map(|_| {
                let worth = r.opened();
                r.failed();
                worth
            })
            .collect();
        assert_eq!(opened, [true, false, false, false]);
        r.opened();
        r.answered();
        r.failed();
        assert!(r.opened(), "a new outage");
    }

    #[test]
    fn after_an_answer_the_first_reconnect_comes_quickly() {
        let mut r = Reconnect::new(50 * MS, 400 * MS);
        for _ in 0..5 {
            r.failed();
        }
        r.answered();
        // Most losses of a device that was answering are a restart or a blip.
        let retry = r.failed();
        assert!(retry.starts_outage);
        assert!(within_step(retry.wait, 50 * MS), "{:?}", retry.wait);
    }
}
