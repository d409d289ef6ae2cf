//! The pace of a replay: a token bucket of records and of bytes per second, so that a
//! gateway back from an outage sends its backlog no faster than the plant's broker was told
//! to expect (a hundred gateways returning at once after a broker restart are not a flood).
//! Live records are not paced: they come after the backlog in the store's order, and once the
//! backlog is sent they flow as they are read. Pure (the caller gives the clock).

use std::time::{Duration, Instant};

/// Records and bytes per second a replay may use; `None`: no cap.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cap {
    pub records_per_s: Option<u32>,
    pub bytes_per_s: Option<u64>,
}

/// The bucket: up to one second of the cap may go at once.
#[derive(Debug, Clone)]
pub struct Pacer {
    cap: Cap,
    records: f64,
    bytes: f64,
    at: Option<Instant>,
}

impl Pacer {
    pub fn new(cap: Cap) -> Pacer {
        Pacer {
            cap,
            records: cap.records_per_s.map_or(0.0, f64::from),
            bytes: cap.bytes_per_s.map_or(0.0, |b| b as f64),
            at: None,
        }
    }

    pub fn is_capped(&self) -> bool {
        self.cap.records_per_s.is_some() || self.cap.bytes_per_s.is_some()
    }

    fn refill(&mut self, now: Instant) {
        let dt = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.at = Some(now);
        if let Some(r) = self.cap.records_per_s {
            self.records = (self.records + dt * f64::from(r)).min(f64::from(r));
        }
        if let Some(b) = self.cap.bytes_per_s {
            self.bytes = (self.bytes + dt * b as f64).min(b as f64);
        }
    }

    /// Whether a replayed record of `bytes` may go now (it is then counted); if not, when to
    /// ask again. A record larger than a second's bytes goes alone once the bucket is full.
    pub fn admit(&mut self, now: Instant, bytes: usize) -> Result<(), Instant> {
        self.refill(now);
        let mut wait: f64 = 0.0;
        if let Some(r) = self.cap.records_per_s {
            if self.records < 1.0 {
                wait = wait.max((1.0 - self.records) / f64::from(r));
            }
        }
        if let Some(b) = self.cap.bytes_per_s {
            let need = (bytes as f64).min(b as f64);
            if self.bytes < need {
                wait = wait.max((need - self.bytes) / b as f64);
            }
        }
        if wait > 0.0 {
            return Err(now + Duration::from_secs_f64(wait.max(0.001)));
        }
        if self.cap.records_per_s.is_some() {
            self.records -= 1.0;
        }
        if self.cap.bytes_per_s.is_some() {
            self.bytes -= bytes as f64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records admitted in `seconds` of asking every millisecond.
    fn admitted(p: &mut Pacer, start: Instant, seconds: u64, bytes: usize) -> u64 {
        let mut n = 0;
        for ms in 0..seconds * 1000 {
            if p.admit(start + Duration::from_millis(ms), bytes).is_ok() {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn a_record_cap_holds_over_time_with_one_second_of_burst() {
        let start = Instant::now();
        let mut p = Pacer::new(Cap {
            records_per_s: Some(50),
            bytes_per_s: None,
        });
        let n = admitted(&mut p, start, 10, 100);
        // 50 at once, then 50 a second.
        assert!((540..=551).contains(&n), "{n}");
    }

    #[test]
    fn a_byte_cap_holds_and_says_when_to_ask_again() {
        let start = Instant::now();
        let mut p = Pacer::new(Cap {
            records_per_s: None,
            bytes_per_s: Some(10_000),
        });
        let n = admitted(&mut p, start, 5, 1_000);
        assert!((59..=61).contains(&n), "{n}");
        let later = start + Duration::from_secs(5);
        let mut q = Pacer::new(Cap {
            records_per_s: None,
            bytes_per_s: Some(10_000),
        });
        assert!(q.admit(later, 10_000).is_ok());
        let again = q.admit(later, 5_000).expect_err("empty");
        assert_eq!(again - later, Duration::from_millis(500));
    }

    #[test]
    fn a_record_larger_than_a_second_goes_alone_and_no_cap_admits_all() {
        let start = Instant::now();
        let mut p = Pacer::new(Cap {
            records_per_s: None,
            bytes_per_s: Some(1_000),
        });
        assert!(p.admit(start, 50_000).is_ok(), "a full bucket takes it");
        assert!(p.admit(start, 1).is_err());
        let mut free = Pacer::new(Cap::default());
        assert!(!free.is_capped());
        assert_eq!(admitted(&mut free, start, 1, 1 << 20), 1000);
    }
}
