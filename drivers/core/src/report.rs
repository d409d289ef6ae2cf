//! Report by exception: decides whether a fresh reading becomes a stored sample. Without a
//! deadband every reading is reported; with one, only changes beyond it, quality changes, and a
//! heartbeat that resends an unchanged value at least every N seconds. A device task keeps one
//! state per tag for its whole life, across reconnects: a tag that failed is reported `bad`
//! once per outage, and its first good reading after it is a quality change, always reported.

use std::time::{Duration, Instant};

use edge_model::{Quality, Value};

/// The reporting rule of one tag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportRule {
    /// `None`: report every reading. `Some(d)`: report a numeric change only when it exceeds
    /// `d` (0 reports any change); non-numeric values are reported when they change.
    pub deadband: Option<f64>,
    /// Resend an unreported value at least this often (only meaningful with a deadband).
    pub heartbeat: Option<Duration>,
}

/// What was last reported for one tag.
#[derive(Debug, Clone, Default)]
pub struct ReportState {
    last: Option<(Option<Value>, Quality, Instant)>,
}

impl ReportState {
    /// Whether this reading should be reported; if so, it becomes the new reference.
    pub fn offer(
        &mut self,
        rule: &ReportRule,
        value: &Option<Value>,
        quality: Quality,
        now: Instant,
    ) -> bool {
        let report = match &self.last {
            None => true,
            Some((last_value, last_quality, at)) => {
                *last_quality != quality
                    || rule
                        .heartbeat
                        .is_some_and(|hb| now.saturating_duration_since(*at) >= hb)
                    || match rule.deadband {
                        // A failed read repeats nothing new: only a quality change or the
                        // heartbeat reports it again.
                        None => quality != Quality::Bad,
                        Some(band) => changed_beyond(last_value, value, band),
                    }
            }
        };
        if report {
            self.last = Some((value.clone(), quality, now));
        }
        report
    }

    /// The quality last reported, if any.
    pub fn last_quality(&self) -> Option<Quality> {
        self.last.as_ref().map(|(_, q, _)| *q)
    }
}

fn changed_beyond(last: &Option<Value>, new: &Option<Value>, band: f64) -> bool {
    match (last, new) {
        (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) if x.is_nan() || y.is_nan() => x.is_nan() != y.is_nan(),
            (Some(x), Some(y)) => {
                if band == 0.0 {
                    x != y
                } else {
                    (x - y).abs() > band
                }
            }
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(deadband: Option<f64>, heartbeat_s: Option<u64>) -> ReportRule {
        ReportRule {
            deadband,
            heartbeat: heartbeat_s.map(Duration::from_secs),
        }
    }

    #[test]
    fn without_a_deadband_every_good_reading_is_reported() {
        let r = rule(None, None);
        let mut s = ReportState::default();
        let t = Instant::now();
        for _ in 0..3 {
            assert!(s.offer(&r, &Some(Value::U16(5)), Quality::Good, t));
        }
    }

    #[test]
    fn a_failed_read_is_reported_once_then_only_when_the_quality_changes() {
        let r = rule(None, None);
        let mut s = ReportState::default();
        let t = Instant::now();
        assert!(s.offer(&r, &Some(Value::U16(5)), Quality::Good, t));
        assert!(s.offer(&r, &None, Quality::Bad, t));
        assert!(!s.offer(&r, &None, Quality::Bad, t));
        assert!(s.offer(&r, &Some(Value::U16(5)), Quality::Good, t));
    }

    #[test]
    fn changes_within_the_deadband_are_suppressed_and_beyond_it_reported() {
        let r = rule(Some(0.5), None);
        let mut s = ReportState::default();
        let t = Instant::now();
        assert!(s.offer(&r, &Some(Value::F32(10.0)), Quality::Good, t));
        assert!(!s.offer(&r, &Some(Value::F32(10.4)), Quality::Good, t));
        assert!(!s.offer(&r, &Some(Value::F32(10.5)), Quality::Good, t));
        assert!(s.offer(&r, &Some(Value::F32(10.6)), Quality::Good, t));
        // The reference moved to 10.6: a drift back to 10.2 is within the band.
        assert!(!s.offer(&r, &Some(Value::F32(10.2)), Quality::Good, t));
    }

    #[test]
    fn a_zero_deadband_reports_any_change_and_nothing_else() {
        let r = rule(Some(0.0), None);
        let mut s = ReportState::default();
        let t = Instant::now();
        assert!(s.offer(&r, &Some(Value::U32(1)), Quality::Good, t));
        assert!(!s.offer(&r, &Some(Value::U32(1)), Quality::Good, t));
        assert!(s.offer(&r, &Some(Value::U32(2)), Quality::Good, t));
    }

    #[test]
    fn the_heartbeat_resends_an_unchanged_value() {
        let r = rule(Some(1.0), Some(60));
        let mut s = ReportState::default();
        let t0 = Instant::now();
        assert!(s.offer(&r, &Some(Value::I16(3)), Quality::Good, t0));
        assert!(!s.offer(
            &r,
            &Some(Value::I16(3)),
            Quality::Good,
            t0 + Duration::from_secs(59)
        ));
        assert!(s.offer(
            &r,
            &Some(Value::I16(3)),
            Quality::Good,
            t0 + Duration::from_secs(60)
        ));
        assert!(!s.offer(
            &r,
            &Some(Value::I16(3)),
            Quality::Good,
            t0 + Duration::from_secs(61)
        ));
    }

    #[test]
    fn strings_and_bools_report_when_they_change() {
        let r = rule(Some(100.0), None);
        let mut s = ReportState::default();
        let t = Instant::now();
        assert!(s.offer(&r, &Some(Value::String("WO-1".into())), Quality::Good, t));
        assert!(!s.offer(&r, &Some(Value::String("WO-1".into())), Quality::Good, t));
        assert!(s.offer(&r, &Some(Value::String("WO-2".into())), Quality::Good, t));
        let mut b = ReportState::default();
        assert!(b.offer(&r, &Some(Value::Bool(false)), Quality::Good, t));
        assert!(b.offer(&r, &Some(Value::Bool(true)), Quality::Good, t));
    }

    #[test]
    fn a_quality_change_is_reported_even_within_the_deadband() {
        let r = rule(Some(10.0), None);
        let mut s = ReportState::default();
        let t = Instant::now();
        assert!(s.offer(&r, &Some(Value::F64(1.0)), Quality::Good, t));
        assert!(s.offer(&r, &Some(Value::F64(1.0)), Quality::Uncertain, t));
    }

    #[test]
    fn an_outage_of_many_failed_reconnects_reports_bad_once_and_the_recovery_once() {
        for r in [rule(None, None), rule(Some(10.0), None)] {
            let mut s = ReportState::default();
            let t = Instant::now();
            assert!(s.offer(&r, &Some(Value::F64(1.0)), Quality::Good, t));
            // Every failed attempt of the outage offers `bad` again.
            let bad: usize = (0..12)
                .map(|_| usize::from(s.offer(&r, &None, Quality::Bad, t)))
                .sum();
            assert_eq!(bad, 1, "{r:?}");
            // The same value as before the outage is news: its quality changed.
            assert!(
                s.offer(&r, &Some(Value::F64(1.0)), Quality::Good, t),
                "{r:?}"
            );
        }
    }
}
