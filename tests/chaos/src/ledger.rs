//! The loss ledger: what each simulated PLC served, set against what each northbound's
//! subscriber received and what the agent's store says it lost on purpose.
//!
//! Every read of a chaos PLC serves a new value of its counter (1, 2, 3, ...), so a value names
//! one sample. The `uns-json` northbound also carries the agent's `seq`, assigned when a
//! sample is committed: that tells a sample the agent committed (its seq must arrive) from a
//! value that never got that far (the read's answer was lost, or the agent died before its
//! commit). Pure: the run collects, this module judges.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

/// One value a PLC served, and when (ms since the run started).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Served {
    pub value: u32,
    pub at_ms: u64,
}

/// One sample of a device as a subscriber received it, in arrival order. `value` is `None` for
/// samples without a counter value (bad quality); `seq` is `None` where the format has none.
/// `ordered` is false for what the format itself marks as outside the live order: Sparkplug
/// historical metrics (a replayed backlog) and the current values a birth restates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub value: Option<u32>,
    pub seq: Option<u64>,
    pub ordered: bool,
}

/// A range of a device's seqs the store recorded as lost (evicted over quota, corrupted, or
/// rolled back), inclusive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    pub device: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub reason: String,
}

/// A stretch of time in which a fault could legitimately keep a served value from being
/// acquired (its PLC link broken, the agent dead). `device: None` applies to every device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub device: Option<String>,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// What one device's samples did on one northbound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    pub device: String,
    pub northbound: String,
    pub served: u64,
    /// Served values that arrived (once or more).
    pub delivered: u64,
    /// Arrivals of a value or seq that had arrived before.
    pub duplicated: u64,
    /// Arrivals of a new value or seq lower than one that had already arrived.
    pub out_of_order: u64,
    /// Served values missing here whose samples the store recorded as lost, by reason.
    pub recorded_losses: BTreeMap<String, u64>,
    /// Served values never committed: lost with a read's answer or a dying agent, during a
    /// fault window.
    pub not_acquired_in_fault: u64,
    /// Served values never committed although no fault was under way.
    pub not_acquired_no_fault: u64,
    /// Committed samples (seqs, or values committed per another northbound) that never arrived
    /// and that no loss record covers.
    pub missing: u64,
    /// The same seq carrying two different values (a seq given twice).
    pub conflicts: u64,
    /// Up to a few examples of each violation, for the report.
    pub missing_examples: Vec<String>,
}

impl Row {
    /// What breaks SPEC §8 on this row.
    pub fn violations(&self) -> u64 {
        self.missing + self.out_of_order + self.conflicts + self.not_acquired_no_fault
    }
}

/// Everything the run saw about one device.
#[derive(Clone, Debug, Default)]
pub struct DeviceRecord {
    pub served: Vec<Served>,
    /// Per northbound, arrivals in order. The first northbound with seqs is the reference for
    /// which samples were committed.
    pub deliveries: BTreeMap<String, Vec<Delivery>>,
}

/// How many examples of missing values a row keeps.
const EXAMPLES: usize = 5;

/// Judges every device on every northbound. `reference` names the northbound whose deliveries
/// carry seqs (the `uns-json` one).
pub fn judge(
    devices: &BTreeMap<String, DeviceRecord>,
    northbounds: &[String],
    reference: &str,
    losses: &[Loss],
    windows: &[Window],
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (device, record) in devices {
        let lost: Vec<&Loss> = losses.iter().filter(|l| &l.device == device).collect();
        let reference_view = SeqView::new(
            record
                .deliveries
                .get(reference)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        );
        for nb in northbounds {
            let arrivals = record.deliveries.get(nb).map(Vec::as_slice).unwrap_or(&[]);
            let mut row = Row {
                device: device.clone(),
                northbound: nb.clone(),
                served: record.served.len() as u64,
                ..Row::default()
            };
            count_arrivals(arrivals, &mut row);
            let arrived: BTreeSet<u32> = arrivals.iter().filter_map(|d| d.value).collect();
            for served in &record.served {
                if arrived.contains(&served.value) {
                    row.delivered += 1;
                    continue;
                }
                match reference_view.fate(served.value, &lost) {
                    Fate::Committed => {
                        row.missing += 1;
                        if row.missing_examples.len() < EXAMPLES {
                            row.missing_examples.push(format!(
                                "missing: value {} (served at {} ms)",
                                served.value, served.at_ms
                            ));
                        }
                    }
                    Fate::Recorded(reason) => {
                        *row.recorded_losses.entry(reason.to_owned()).or_default() += 1
                    }
                    Fate::NotAcquired => {
                        if in_window(device, served.at_ms, windows) {
                            row.not_acquired_in_fault += 1;
                        } else {
                            row.not_acquired_no_fault += 1;
                            if row.missing_examples.len() < EXAMPLES {
                                row.missing_examples.push(format!(
                                    "missing: value {} not acquired outside any fault (served at {} ms)",
                                    served.value, served.at_ms
                                ));
                            }
                        }
                    }
                }
            }
            if nb == reference {
                // Committed samples without a counter value (bad quality) are checked by seq.
                let uncovered = reference_view.uncovered_gaps(&lost);
                row.missing += uncovered.iter().map(|(a, b)| b - a + 1).sum::<u64>();
                for (a, b) in uncovered.iter().take(EXAMPLES) {
                    row.missing_examples
                        .push(format!("missing: seqs {a}..={b}"));
                }
                row.conflicts = reference_view.conflicts;
                row.missing_examples
                    .extend(reference_view.conflict_examples.iter().cloned());
            }
            rows.push(row);
        }
    }
    rows
}

/// Duplicates and order, by seq where the format has one, by value otherwise.
fn count_arrivals(arrivals: &[Delivery], row: &mut Row) {
    let mut seen = HashMap::new();
    let mut highest: Option<u64> = None;
    for d in arrivals {
        let key = match (d.seq, d.value) {
            (Some(seq), _) => seq,
            (None, Some(value)) => u64::from(value),
            (None, None) => continue,
        };
        if seen.insert(key, ()).is_some() {
            row.duplicated += 1;
            continue;
        }
        if !d.ordered {
            continue;
        }
        if let Some(h) = highest.filter(|&h| key < h) {
            row.out_of_order += 1;
            if row.missing_examples.len() < EXAMPLES {
                row.missing_examples
                    .push(format!("out of order: {key} arrived after {h}"));
            }
        }
        highest = highest.max(Some(key));
    }
}

fn in_window(device: &str, at_ms: u64, windows: &[Window]) -> bool {
    windows.iter().any(|w| {
        w.device.as_deref().is_none_or(|d| d == device) && w.from_ms <= at_ms && at_ms <= w.to_ms
    })
}

enum Fate<'a> {
    /// Its sample was committed (a seq was given to it or around it) and is not covered by a
    /// loss record: it should have arrived.
    Committed,
    /// Its sample was committed and then lost on record.
    Recorded(&'a str),
    /// No seq was ever given to it.
    NotAcquired,
}

/// The reference northbound's seqs: which arrived, with which value.
struct SeqView {
    /// seq → value (None for samples without a counter value).
    by_seq: BTreeMap<u64, Option<u32>>,
    /// value → seq, for values that arrived.
    by_value: BTreeMap<u32, u64>,
    conflicts: u64,
    /// A few seqs that carried two values, with both.
    conflict_examples: Vec<String>,
}

impl SeqView {
    fn new(arrivals: &[Delivery]) -> SeqView {
        let mut by_seq = BTreeMap::new();
        let mut by_value = BTreeMap::new();
        let mut conflicts = 0;
        let mut conflict_examples = Vec::new();
        for d in arrivals {
            let Some(seq) = d.seq else { continue };
            match by_seq.get(&seq) {
                Some(previous) if *previous != d.value => {
                    conflicts += 1;
                    if conflict_examples.len() < EXAMPLES {
                        conflict_examples.push(format!(
                            "seq {seq} carried {previous:?} and then {:?}",
                            d.value
                        ));
                    }
                }
                Some(_) => {}
                None => {
                    by_seq.insert(seq, d.value);
                }
            }
            if let Some(v) = d.value {
                by_value.entry(v).or_insert(seq);
            }
        }
        SeqView {
            by_seq,
            by_value,
            conflicts,
            conflict_examples,
        }
    }

    /// What became of a value: found by its own seq, or by the seqs between the values
    /// around it (seqs start at 1).
    fn fate<'a>(&self, value: u32, lost: &[&'a Loss]) -> Fate<'a> {
        if let Some(&seq) = self.by_value.get(&value) {
            return match covering(seq, seq, lost) {
                Some(reason) => Fate::Recorded(reason),
                None => Fate::Committed,
            };
        }
        let below = self
            .by_value
            .range(..value)
            .next_back()
            .map_or(0, |(_, &s)| s);
        let above = self.by_value.range(value..).next().map(|(_, &s)| s);
        let last = match above {
            Some(s) => s - 1,
            // Past the last value that arrived: the seqs that arrived after it bound it.
            None => self.by_seq.keys().next_back().copied().unwrap_or(0),
        };
        let absent: Vec<u64> = (below + 1..=last)
            .filter(|s| !self.by_seq.contains_key(s))
            .collect();
        if absent.is_empty() {
            return Fate::NotAcquired;
        }
        // Some seq between its neighbours never arrived: the value may have been that sample.
        let mut reason = None;
        for s in absent {
            match covering(s, s, lost) {
                Some(r) => reason = Some(r),
                None => return Fate::Committed,
            }
        }
        reason.map_or(Fate::Committed, Fate::Recorded)
    }

    /// Seq ranges below the highest arrived seq that never arrived and no loss covers.
    fn uncovered_gaps(&self, lost: &[&Loss]) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut expected = 1;
        for &seq in self.by_seq.keys() {
            if seq > expected {
                let mut start = None;
                for s in expected..seq {
                    let covered = covering(s, s, lost).is_some();
                    match (covered, start) {
                        (false, None) => start = Some(s),
                        (true, Some(a)) => {
                            gaps.push((a, s - 1));
                            start = None;
                        }
                        _ => {}
                    }
                }
                if let Some(a) = start {
                    gaps.push((a, seq - 1));
                }
            }
            expected = seq + 1;
        }
        gaps
    }
}

fn covering<'a>(from: u64, to: u64, lost: &[&'a Loss]) -> Option<&'a str> {
    lost.iter()
        .find(|l| l.first_seq <= from && to <= l.last_seq)
        .map(|l| l.reason.as_str())
}

/// The ledger as a table, one row per device and northbound, then a verdict line.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<6} {:>8} {:>9} {:>6} {:>6} {:>8} {:>7} {:>8} {:>7} {:>5}",
        "device",
        "nb",
        "served",
        "delivered",
        "dup",
        "order",
        "lost-rec",
        "na-flt",
        "na-noflt",
        "missing",
        "confl"
    );
    for r in rows {
        let recorded: u64 = r.recorded_losses.values().sum();
        let _ = writeln!(
            out,
            "{:<8} {:<6} {:>8} {:>9} {:>6} {:>6} {:>8} {:>7} {:>8} {:>7} {:>5}",
            r.device,
            r.northbound,
            r.served,
            r.delivered,
            r.duplicated,
            r.out_of_order,
            recorded,
            r.not_acquired_in_fault,
            r.not_acquired_no_fault,
            r.missing,
            r.conflicts
        );
        if !r.recorded_losses.is_empty() {
            let reasons: Vec<String> = r
                .recorded_losses
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(out, "    recorded losses: {}", reasons.join(", "));
        }
        for e in &r.missing_examples {
            let _ = writeln!(out, "    {e}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(values: std::ops::RangeInclusive<u32>) -> Vec<Served> {
        values
            .map(|value| Served {
                value,
                at_ms: u64::from(value) * 100,
            })
            .collect()
    }

    fn uns(pairs: &[(u64, Option<u32>)]) -> Vec<Delivery> {
        pairs
            .iter()
            .map(|&(seq, value)| Delivery {
                value,
                seq: Some(seq),
                ordered: true,
            })
            .collect()
    }

    fn values(vs: &[u32]) -> Vec<Delivery> {
        vs.iter()
            .map(|&v| Delivery {
                value: Some(v),
                seq: None,
                ordered: true,
            })
            .collect()
    }

    fn one(record: DeviceRecord, losses: &[Loss], windows: &[Window]) -> Vec<Row> {
        let devices = BTreeMap::from([("plc1".to_owned(), record)]);
        judge(
            &devices,
            &["mes".to_owned(), "scada".to_owned()],
            "mes",
            losses,
            windows,
        )
    }

    fn record(served: Vec<Served>, mes: Vec<Delivery>, scada: Vec<Delivery>) -> DeviceRecord {
        DeviceRecord {
            served,
            deliveries: BTreeMap::from([("mes".to_owned(), mes), ("scada".to_owned(), scada)]),
        }
    }

    #[test]
    fn everything_delivered_with_duplicates_is_clean() {
        let rows = one(
            record(
                served(1..=4),
                uns(&[
                    (1, Some(1)),
                    (2, Some(2)),
                    (2, Some(2)),
                    (3, Some(3)),
                    (4, Some(4)),
                ]),
                values(&[1, 2, 3, 3, 4]),
            ),
            &[],
            &[],
        );
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(
                (r.delivered, r.duplicated, r.violations()),
                (4, 1, 0),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_committed_seq_that_never_arrives_is_missing_unless_recorded() {
        let mes = uns(&[(1, Some(1)), (2, Some(2)), (4, Some(4))]);
        let rows = one(
            record(served(1..=4), mes.clone(), values(&[1, 2, 4])),
            &[],
            &[],
        );
        // Value 3 sat between seqs 2 and 4 and seq 3 never arrived: committed and lost.
        assert_eq!(rows[0].missing, 2, "value 3 and seq 3: {:?}", rows[0]);
        assert_eq!(rows[1].missing, 1);

        let evicted = Loss {
            device: "plc1".into(),
            first_seq: 3,
            last_seq: 3,
            reason: "evicted".into(),
        };
        let rows = one(
            record(served(1..=4), mes, values(&[1, 2, 4])),
            &[evicted],
            &[],
        );
        for r in &rows {
            assert_eq!(r.violations(), 0, "{r:?}");
            assert_eq!(r.recorded_losses.get("evicted"), Some(&1));
        }
    }

    #[test]
    fn a_value_never_committed_is_excused_only_in_a_fault_window() {
        // Seqs 1, 2, 3 carry values 1, 2, 4: value 3 was served but never committed.
        let mes = uns(&[(1, Some(1)), (2, Some(2)), (3, Some(4))]);
        let scada = values(&[1, 2, 4]);
        let rows = one(record(served(1..=4), mes.clone(), scada.clone()), &[], &[]);
        assert!(rows.iter().all(|r| r.not_acquired_no_fault == 1));
        let window = Window {
            device: Some("plc1".into()),
            from_ms: 250,
            to_ms: 350,
        };
        let rows = one(record(served(1..=4), mes, scada), &[], &[window]);
        for r in &rows {
            assert_eq!((r.not_acquired_in_fault, r.violations()), (1, 0), "{r:?}");
        }
    }

    #[test]
    fn a_value_one_northbound_got_and_the_other_did_not_is_missing_there() {
        let mes = uns(&[(1, Some(1)), (2, Some(2)), (3, Some(3))]);
        let rows = one(record(served(1..=3), mes, values(&[1, 3])), &[], &[]);
        assert_eq!(rows[0].violations(), 0);
        assert_eq!(rows[1].missing, 1, "{:?}", rows[1]);
    }

    #[test]
    fn order_and_conflicts_are_caught() {
        let mes = uns(&[(1, Some(1)), (3, Some(3)), (2, Some(2)), (2, Some(9))]);
        let rows = one(record(served(1..=3), mes, values(&[1, 3, 2])), &[], &[]);
        assert_eq!(rows[0].out_of_order, 1);
        assert_eq!(rows[0].conflicts, 1);
        assert_eq!(rows[1].out_of_order, 1);
    }

    #[test]
    fn historical_and_birth_values_are_not_held_to_the_live_order() {
        let mes = uns(&[(1, Some(1)), (2, Some(2)), (3, Some(3))]);
        let mut scada = values(&[3]);
        scada[0].ordered = false;
        scada.extend(values(&[1, 2]).into_iter().map(|d| Delivery {
            ordered: false,
            ..d
        }));
        let rows = one(record(served(1..=3), mes, scada), &[], &[]);
        assert_eq!(rows[1].violations(), 0, "{:?}", rows[1]);
        assert_eq!(rows[1].delivered, 3);
    }

    #[test]
    fn bad_quality_samples_keep_the_seq_chain_and_their_gaps_count() {
        // Seq 2 is a bad-quality sample (no value); seq 4 never arrived and carried no value.
        let mes = uns(&[(1, Some(1)), (2, None), (3, Some(2)), (5, None)]);
        let rows = one(record(served(1..=2), mes, values(&[1, 2])), &[], &[]);
        assert_eq!(rows[0].missing, 1, "seq 4: {:?}", rows[0]);
        assert_eq!(rows[1].missing, 0);
    }
}
