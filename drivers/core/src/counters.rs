//! What a device task counts, whatever its protocol: requests answered and failed, connects,
//! samples, and a lock-free read-latency histogram. The device task writes them; status lines,
//! health and `/metrics` read them while it runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// Counters a device task keeps for status lines, health and metrics.
#[derive(Debug, Default)]
pub struct DeviceCounters {
    /// Read requests answered with data.
    pub reads_ok: AtomicU64,
    /// Read requests (or values in them) the device refused: a Modbus exception, an OPC UA
    /// bad status.
    pub exceptions: AtomicU64,
    /// Timeouts and transport errors (each one drops the connection).
    pub transport_errors: AtomicU64,
    /// Connections established (a TCP connect, an OPC UA session), answered or not.
    pub connects: AtomicU64,
    /// Samples handed to the store.
    pub samples: AtomicU64,
    /// Scans (poll-group executions) completed while connected.
    pub scans: AtomicU64,
    /// Latency of the last read request, microseconds.
    pub last_latency_us: AtomicU64,
    /// Latency of every read request, answered or not, for `/metrics`.
    pub read_latency: LatencyHistogram,
    /// The device answers on the current connection; a connection it accepted but never
    /// answered on does not count.
    pub connected: AtomicBool,
    /// Why the device last failed (connect refused, connection lost, no answer), in words,
    /// with when (epoch ms); kept after it recovers, for the console.
    last_error: Mutex<Option<(String, u64)>>,
}

impl DeviceCounters {
    /// Records why the device failed just now.
    pub fn set_error(&self, why: impl Into<String>) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((why.into(), at));
    }

    /// The last failure and when it was (epoch ms).
    pub fn last_error(&self) -> Option<(String, u64)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Upper bounds of the read-latency buckets, microseconds: from a fast LAN PLC (about 1 ms) to
/// a read that runs into a typical timeout (1 s and above).
pub const LATENCY_BUCKETS_US: [u64; 10] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
];

/// A lock-free latency histogram with fixed buckets ([`LATENCY_BUCKETS_US`]), read by the
/// metrics endpoint while the device task writes it.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last slot holds those above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// A copy of a [`LatencyHistogram`] in Prometheus' shape: cumulative counts per bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// `(upper bound in microseconds, observations at or below it)`, ascending.
    pub cumulative: Vec<(u64, u64)>,
    pub count: u64,
    pub sum_us: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, latency_us: u64) {
        let slot = LATENCY_BUCKETS_US
            .iter()
            .position(|&bound| latency_us <= bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(b) = self.buckets.get(slot) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(latency_us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut running = 0;
        let cumulative = LATENCY_BUCKETS_US
            .iter()
            .zip(&self.buckets)
            .map(|(&bound, n)| {
                running += n.load(Ordering::Relaxed);
                (bound, running)
            })
            .collect();
        let above = self.buckets.last().map_or(0, |n| n.load(Ordering::Relaxed));
        HistogramSnapshot {
            cumulative,
            // The total from the buckets, not `count`, keeps `+Inf` consistent with the
            // bounds even when a snapshot races an observation.
            count: running + above,
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_on_a_bound_counts_in_that_bucket_and_every_larger_one() {
        let h = LatencyHistogram::default();
        h.observe(1_000);
        h.observe(1_001);
        h.observe(2_000_000);
        let s = h.snapshot();
        assert_eq!(s.cumulative.first(), Some(&(1_000, 1)));
        assert_eq!(s.cumulative.get(1), Some(&(2_500, 2)));
        assert_eq!(s.cumulative.last(), Some(&(1_000_000, 2)));
        assert_eq!(s.count, 3);
        assert_eq!(s.sum_us, 2_002_001);
    }

    proptest::proptest! {
        #[test]
        fn histogram_buckets_are_cumulative_and_the_count_matches(
            samples in proptest::collection::vec(0u64..3_000_000, 0..200)
        ) {
            let h = LatencyHistogram::default();
            for &s in &samples {
                h.observe(s);
            }
            let snap = h.snapshot();
            proptest::prop_assert_eq!(snap.count, samples.len() as u64);
            proptest::prop_assert_eq!(snap.sum_us, samples.iter().sum::<u64>());
            for w in snap.cumulative.windows(2) {
                proptest::prop_assert!(w[0].1 <= w[1].1);
            }
            for &(bound, n) in &snap.cumulative {
                let expected = samples.iter().filter(|&&s| s <= bound).count() as u64;
                proptest::prop_assert_eq!(n, expected);
            }
        }
    }
}
