//! The error log of evictions. Over quota, the store evicts a little on every commit; one error
//! line per commit would flood the journal, so evictions are added up and reported at most every
//! few seconds, each report saying what was lost per device and per northbound since the last.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::RecordId;

pub(crate) const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Evictions not reported yet.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Evictions {
    pub first_id: Option<RecordId>,
    pub last_id: Option<RecordId>,
    pub records: u64,
    pub samples: u64,
    pub bytes: u64,
    /// Records and samples per device.
    pub per_device: BTreeMap<String, (u64, u64)>,
    /// Records each northbound had not yet delivered.
    pub undelivered: BTreeMap<String, u64>,
}

impl Evictions {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn add(&mut self, other: Evictions) {
        self.first_id = match (self.first_id, other.first_id) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_id = self.last_id.max(other.last_id);
        self.records += other.records;
        self.samples += other.samples;
        self.bytes += other.bytes;
        for (device, (records, samples)) in other.per_device {
            let entry = self.per_device.entry(device).or_default();
            entry.0 += records;
            entry.1 += samples;
        }
        for (nb, records) in other.undelivered {
            *self.undelivered.entry(nb).or_default() += records;
        }
    }

    /// "plc1: 10 records / 500 samples, plc2: ..."
    pub fn per_device_text(&self) -> String {
        let mut text = String::new();
        for (device, (records, samples)) in &self.per_device {
            if !text.is_empty() {
                text.push_str(", ");
            }
            let _ = write!(text, "{device}: {records} records / {samples} samples");
        }
        text
    }

    /// "mes: 10 undelivered records, ..."
    pub fn undelivered_text(&self) -> String {
        let mut text = String::new();
        for (nb, records) in &self.undelivered {
            if !text.is_empty() {
                text.push_str(", ");
            }
            let _ = write!(text, "{nb}: {records} undelivered records");
        }
        text
    }
}

/// Collects evictions and says when to report them.
#[derive(Debug, Default)]
pub(crate) struct EvictionLog {
    pending: Evictions,
    last_report: Option<Instant>,
}

impl EvictionLog {
    /// Adds an eviction; returns what to report now, if a report is due (the first eviction is
    /// reported at once, later ones at most every [`REPORT_EVERY`]).
    pub fn record(&mut self, evicted: Evictions, now: Instant) -> Option<Evictions> {
        self.pending.add(evicted);
        let due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
        if due && !self.pending.is_empty() {
            self.last_report = Some(now);
            Some(std::mem::take(&mut self.pending))
        } else {
            None
        }
    }

    /// What has not been reported yet (at shutdown).
    pub fn take_pending(&mut self) -> Option<Evictions> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eviction(first: u64, last: u64, device: &str, nb: &str) -> Evictions {
        let records = last - first + 1;
        Evictions {
            first_id: Some(first),
            last_id: Some(last),
            records,
            samples: records * 2,
            bytes: records * 100,
            per_device: [(device.to_owned(), (records, records * 2))].into(),
            undelivered: [(nb.to_owned(), records)].into(),
        }
    }

    #[test]
    fn the_first_eviction_is_reported_at_once_and_later_ones_are_added_up() {
        let mut log = EvictionLog::default();
        let t0 = Instant::now();
        let first = log.record(eviction(0, 9, "plc1", "mes"), t0);
        assert_eq!(first.map(|e| e.records), Some(10));

        assert_eq!(
            log.record(eviction(10, 14, "plc1", "mes"), t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.record(eviction(15, 19, "plc2", "mes"), t0 + Duration::from_secs(2)),
            None
        );
        let report = log
            .record(eviction(20, 20, "plc2", "scada"), t0 + REPORT_EVERY)
            .expect("due");
        assert_eq!((report.first_id, report.last_id), (Some(10), Some(20)));
        assert_eq!(
            (report.records, report.samples, report.bytes),
            (11, 22, 1100)
        );
        assert_eq!(
            report.per_device_text(),
            "plc1: 5 records / 10 samples, plc2: 6 records / 12 samples"
        );
        assert_eq!(
            report.undelivered_text(),
            "mes: 10 undelivered records, scada: 1 undelivered records"
        );
        assert_eq!(log.take_pending(), None);
    }

    #[test]
    fn what_was_not_yet_reported_can_be_taken_at_shutdown() {
        let mut log = EvictionLog::default();
        let t0 = Instant::now();
        log.record(eviction(0, 0, "plc1", "mes"), t0);
        log.record(eviction(1, 3, "plc1", "mes"), t0);
        assert_eq!(log.take_pending().map(|e| e.records), Some(3));
        assert_eq!(log.take_pending(), None);
    }
}
