//! What a consumer can prove from SPEC §5's `seq` alone: per device, which sequence numbers
//! arrived, which are missing, which came twice and which came after a higher one. Pure: it
//! reads messages already collected, so fault tests assert "nothing lost, in order" with it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The sequence numbers one device's telemetry carried, as a subscriber saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SeqReport {
    pub device: String,
    /// The lowest `seq` seen (`None` if no sample carried a usable one).
    pub first: Option<u64>,
    /// The highest `seq` seen.
    pub last: Option<u64>,
    /// Samples seen, duplicates included.
    pub samples: usize,
    /// Different `seq` values seen.
    pub distinct: usize,
    /// Samples whose `seq` had been seen before (at-least-once delivery allows them).
    pub duplicates: usize,
    /// Missing ranges between `first` and `last`, inclusive, in ascending order.
    pub gaps: Vec<(u64, u64)>,
    /// Samples whose `seq` was new but lower than one already seen for the device.
    pub out_of_order: usize,
    /// Samples marked `"replay": true` (on the message, the batch or the sample).
    pub replayed: usize,
    /// Telemetry messages or samples without a usable `seq`, each described for a failure
    /// message. Any entry here breaks the contract.
    pub malformed: Vec<String>,
}

impl SeqReport {
    /// How many sequence numbers are missing between `first` and `last`.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|(from, to)| to - from + 1).sum()
    }

    /// Every `seq` from `first` to `last` arrived, and every sample was well formed.
    pub fn is_complete(&self) -> bool {
        self.gaps.is_empty() && self.malformed.is_empty()
    }

    /// No new `seq` ever arrived after a higher one.
    pub fn is_ordered(&self) -> bool {
        self.out_of_order == 0
    }

    /// Every `seq` in `from..=to` arrived (whatever else did too).
    pub fn covers(&self, from: u64, to: u64) -> bool {
        match (self.first, self.last) {
            (Some(first), Some(last)) => {
                first <= from
                    && to <= last
                    && self
                        .gaps
                        .iter()
                        .all(|&(g_from, g_to)| g_to < from || to < g_from)
            }
            _ => from > to,
        }
    }
}

/// What a topic under the root carries, by SPEC §5's topic layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TelemetryTopic<'a> {
    /// `{root}/{device}/{tag}`
    Tag { device: &'a str, tag: &'a str },
    /// `{root}/{device}/_batch`
    Batch { device: &'a str },
}

/// Classifies `topic` as telemetry under `root`; `None` for everything else (gateway status,
/// MES events, commands and responses, other roots).
pub fn classify<'a>(root: &str, topic: &'a str) -> Option<TelemetryTopic<'a>> {
    let root = root.trim_end_matches('/');
    let rest = topic.strip_prefix(root)?.strip_prefix('/')?;
    let (device, tail) = rest.split_once('/')?;
    if device.is_empty() || device.starts_with('_') {
        return None;
    }
    if tail == "_batch" {
        return Some(TelemetryTopic::Batch { device });
    }
    // `_set`, `_response` and `_mes/...` segments mark commands and events, not tags.
    if tail
        .split('/')
        .any(|segment| segment.is_empty() || segment.starts_with('_'))
    {
        return None;
    }
    Some(TelemetryTopic::Tag { device, tag: tail })
}

/// Checks JSON messages `(topic, payload)` in arrival order; messages that are not telemetry
/// under `root` are ignored. Reports are keyed by device.
pub fn check(root: &str, messages: &[(String, Value)]) -> BTreeMap<String, SeqReport> {
    let mut trackers = Trackers::default();
    for (topic, payload) in messages {
        if let Some(kind) = classify(root, topic) {
            trackers.message(topic, kind, Ok(payload));
        }
    }
    trackers.finish()
}

/// Like [`check`] on raw payloads: a telemetry message that is not JSON counts as malformed
/// instead of disappearing.
pub fn check_payloads<'a, I>(root: &str, messages: I) -> BTreeMap<String, SeqReport>
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let mut trackers = Trackers::default();
    for (topic, payload) in messages {
        if let Some(kind) = classify(root, topic) {
            let parsed = serde_json::from_slice::<Value>(payload).map_err(|e| e.to_string());
            trackers.message(topic, kind, parsed.as_ref().map_err(String::as_str));
        }
    }
    trackers.finish()
}

#[derive(Default)]
struct Tracker {
    seen: BTreeSet<u64>,
    highest: Option<u64>,
    samples: usize,
    duplicates: usize,
    out_of_order: usize,
    replayed: usize,
    malformed: Vec<String>,
}

impl Tracker {
    fn sample(&mut self, seq: u64, replay: bool) {
        self.samples += 1;
        if replay {
            self.replayed += 1;
        }
        if !self.seen.insert(seq) {
            self.duplicates += 1;
        } else if self.highest.is_some_and(|h| h > seq) {
            self.out_of_order += 1;
        }
        self.highest = Some(self.highest.map_or(seq, |h| h.max(seq)));
    }
}

#[derive(Default)]
struct Trackers {
    devices: BTreeMap<String, Tracker>,
}

impl Trackers {
    fn message(&mut self, topic: &str, kind: TelemetryTopic<'_>, payload: Result<&Value, &str>) {
        let device = match kind {
            TelemetryTopic::Tag { device, .. } | TelemetryTopic::Batch { device } => device,
        };
        let tracker = self.devices.entry(device.to_owned()).or_default();
        let payload = match payload {
            Ok(payload) => payload,
            Err(e) => {
                tracker.malformed.push(format!("{topic}: not JSON ({e})"));
                return;
            }
        };
        match kind {
            TelemetryTopic::Tag { .. } => match seq_of(payload) {
                Some(seq) => tracker.sample(seq, is_replay(payload)),
                None => tracker
                    .malformed
                    .push(format!("{topic}: no unsigned integer `seq` in {payload}")),
            },
            TelemetryTopic::Batch { .. } => {
                let Some(samples) = payload.get("samples").and_then(Value::as_array) else {
                    tracker
                        .malformed
                        .push(format!("{topic}: no `samples` array in {payload}"));
                    return;
                };
                let batch_replay = is_replay(payload);
                for (index, sample) in samples.iter().enumerate() {
                    match seq_of(sample) {
                        Some(seq) => tracker.sample(seq, batch_replay || is_replay(sample)),
                        None => tracker.malformed.push(format!(
                            "{topic}: sample {index} has no unsigned integer `seq`: {sample}"
                        )),
                    }
                }
            }
        }
    }

    fn finish(self) -> BTreeMap<String, SeqReport> {
        self.devices
            .into_iter()
            .map(|(device, t)| {
                let report = SeqReport {
                    device: device.clone(),
                    first: t.seen.first().copied(),
                    last: t.seen.last().copied(),
                    samples: t.samples,
                    distinct: t.seen.len(),
                    duplicates: t.duplicates,
                    gaps: gaps(&t.seen),
                    out_of_order: t.out_of_order,
                    replayed: t.replayed,
                    malformed: t.malformed,
                };
                (device, report)
            })
            .collect()
    }
}

fn seq_of(value: &Value) -> Option<u64> {
    value.get("seq").and_then(Value::as_u64)
}

fn is_replay(value: &Value) -> bool {
    value.get("replay").and_then(Value::as_bool) == Some(true)
}

fn gaps(seen: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    let mut gaps = Vec::new();
    let mut previous: Option<u64> = None;
    for &seq in seen {
        if let Some(p) = previous {
            if seq > p + 1 {
                gaps.push((p + 1, seq - 1));
            }
        }
        previous = Some(seq);
    }
    gaps
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ROOT: &str = "acme/plant1/press/line2";

    fn tag(device: &str, seq: u64) -> (String, Value) {
        (
            format!("{ROOT}/{device}/temp"),
            json!({"value": 21.5, "quality": "good", "timestamp_ms": 1_763_800_000_123_u64, "seq": seq}),
        )
    }

    fn batch(device: &str, seqs: &[u64]) -> (String, Value) {
        let samples: Vec<Value> = seqs
            .iter()
            .map(|&seq| json!({"tag": "temp", "value": 1, "quality": "good", "timestamp_ms": 1, "seq": seq}))
            .collect();
        (
            format!("{ROOT}/{device}/_batch"),
            json!({ "samples": samples }),
        )
    }

    fn report(messages: &[(String, Value)], device: &str) -> SeqReport {
        check(ROOT, messages)
            .remove(device)
            .unwrap_or_else(|| panic!("no report for {device}"))
    }

    #[test]
    fn an_unbroken_run_is_complete_and_ordered() {
        let messages: Vec<_> = (10..20).map(|s| tag("plc1", s)).collect();
        let r = report(&messages, "plc1");
        assert_eq!(
            (r.first, r.last, r.distinct, r.samples),
            (Some(10), Some(19), 10, 10)
        );
        assert!(r.is_complete() && r.is_ordered());
        assert_eq!(r.duplicates, 0);
        assert!(r.covers(10, 19));
        assert!(!r.covers(9, 19));
    }

    #[test]
    fn a_missing_range_is_reported_as_a_gap() {
        let messages: Vec<_> = [1, 2, 3, 7, 8, 10]
            .iter()
            .map(|&s| tag("plc1", s))
            .collect();
        let r = report(&messages, "plc1");
        assert_eq!(r.gaps, vec![(4, 6), (9, 9)]);
        assert_eq!(r.missing(), 4);
        assert!(!r.is_complete());
        assert!(r.covers(1, 3) && r.covers(7, 8) && !r.covers(3, 7));
    }

    #[test]
    fn a_resent_seq_counts_as_a_duplicate_not_as_out_of_order() {
        let messages: Vec<_> = [1, 2, 3, 2, 3, 4].iter().map(|&s| tag("plc1", s)).collect();
        let r = report(&messages, "plc1");
        assert_eq!((r.duplicates, r.distinct, r.samples), (2, 4, 6));
        assert_eq!(r.out_of_order, 0);
        assert!(r.is_complete());
    }

    #[test]
    fn a_new_seq_after_a_higher_one_is_out_of_order() {
        let messages: Vec<_> = [1, 2, 5, 3, 4, 6].iter().map(|&s| tag("plc1", s)).collect();
        let r = report(&messages, "plc1");
        assert_eq!(r.out_of_order, 2);
        assert!(!r.is_ordered());
        assert!(r.is_complete(), "late samples fill the gap: {r:?}");
    }

    #[test]
    fn batch_samples_count_like_per_tag_messages() {
        let messages = vec![batch("plc1", &[1, 2, 3]), batch("plc1", &[3, 5])];
        let r = report(&messages, "plc1");
        assert_eq!((r.samples, r.distinct, r.duplicates), (5, 4, 1));
        assert_eq!(r.gaps, vec![(4, 4)]);
    }

    #[test]
    fn devices_are_checked_separately() {
        let messages = vec![tag("a", 1), tag("b", 7), tag("a", 2), batch("b", &[8, 9])];
        let reports = check(ROOT, &messages);
        assert_eq!(reports.len(), 2);
        assert_eq!((reports["a"].first, reports["a"].last), (Some(1), Some(2)));
        assert_eq!((reports["b"].first, reports["b"].last), (Some(7), Some(9)));
        assert!(reports.values().all(|r| r.is_complete() && r.is_ordered()));
        assert_eq!(reports["b"].device, "b");
    }

    #[test]
    fn replay_flags_are_counted_on_messages_batches_and_samples() {
        let mut replayed_tag = tag("plc1", 1);
        replayed_tag.1["replay"] = json!(true);
        let mut replayed_batch = batch("plc1", &[2, 3]);
        replayed_batch.1["replay"] = json!(true);
        let mut one_replayed_sample = batch("plc1", &[4, 5]);
        one_replayed_sample.1["samples"][0]["replay"] = json!(true);
        let r = report(&[replayed_tag, replayed_batch, one_replayed_sample], "plc1");
        assert_eq!(r.replayed, 4);
    }

    #[test]
    fn topics_that_are_not_telemetry_are_ignored() {
        let noise = json!({"seq": 999, "online": true});
        let messages = vec![
            (format!("{ROOT}/_gateway/gw1/status"), noise.clone()),
            (format!("{ROOT}/press1/_mes/state/change"), noise.clone()),
            (format!("{ROOT}/plc1/temp/_set"), noise.clone()),
            (format!("{ROOT}/plc1/temp/_response"), noise.clone()),
            ("other/root/plc1/temp".to_owned(), noise.clone()),
            (ROOT.to_owned(), noise),
            tag("plc1", 1),
        ];
        let reports = check(ROOT, &messages);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports["plc1"].samples, 1);
    }

    #[test]
    fn telemetry_without_a_usable_seq_is_malformed() {
        let messages = vec![
            (format!("{ROOT}/plc1/temp"), json!({"value": 1})),
            (format!("{ROOT}/plc1/temp"), json!({"value": 1, "seq": -3})),
            (format!("{ROOT}/plc1/_batch"), json!({"rows": []})),
            (
                format!("{ROOT}/plc1/_batch"),
                json!({"samples": [{"seq": "7"}, {"seq": 8}]}),
            ),
        ];
        let r = report(&messages, "plc1");
        assert_eq!(r.malformed.len(), 4, "{:#?}", r.malformed);
        assert_eq!((r.samples, r.first), (1, Some(8)));
        assert!(!r.is_complete());
    }

    #[test]
    fn check_payloads_reports_non_json_telemetry() {
        let good = br#"{"value":1,"seq":1}"#.to_vec();
        let topic = format!("{ROOT}/plc1/temp");
        let status = format!("{ROOT}/_gateway/gw1/status");
        let messages: Vec<(&str, &[u8])> = vec![
            (topic.as_str(), good.as_slice()),
            (topic.as_str(), b"not json"),
            (status.as_str(), b"not json either"),
        ];
        let reports = check_payloads(ROOT, messages);
        assert_eq!(reports["plc1"].samples, 1);
        assert_eq!(reports["plc1"].malformed.len(), 1);
    }

    #[test]
    fn classify_follows_the_spec_topic_layout() {
        assert_eq!(
            classify(ROOT, &format!("{ROOT}/plc1/temp")),
            Some(TelemetryTopic::Tag {
                device: "plc1",
                tag: "temp"
            })
        );
        assert_eq!(
            classify(&format!("{ROOT}/"), &format!("{ROOT}/plc1/_batch")),
            Some(TelemetryTopic::Batch { device: "plc1" })
        );
        assert_eq!(classify(ROOT, &format!("{ROOT}/plc1")), None);
        assert_eq!(classify(ROOT, &format!("{ROOT}plc1/temp")), None);
        assert_eq!(classify(ROOT, &format!("{ROOT}/plc1//temp")), None);
    }

    #[test]
    fn an_empty_report_covers_only_empty_ranges() {
        let r = SeqReport::default();
        assert!(r.covers(5, 4));
        assert!(!r.covers(1, 1));
    }

    /// The obvious quadratic definitions the checker must agree with.
    fn model(seqs: &[u64]) -> (usize, usize, Vec<(u64, u64)>, usize) {
        let mut distinct: Vec<u64> = seqs.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut gaps = Vec::new();
        if let (Some(&lo), Some(&hi)) = (distinct.first(), distinct.last()) {
            let mut start = None;
            for s in lo..=hi {
                match (distinct.binary_search(&s).is_ok(), start) {
                    (false, None) => start = Some(s),
                    (true, Some(from)) => {
                        gaps.push((from, s - 1));
                        start = None;
                    }
                    _ => {}
                }
            }
        }
        let out_of_order = (0..seqs.len())
            .filter(|&i| {
                !seqs[..i].contains(&seqs[i]) && seqs[..i].iter().any(|&earlier| earlier > seqs[i])
            })
            .count();
        (
            distinct.len(),
            seqs.len() - distinct.len(),
            gaps,
            out_of_order,
        )
    }

    proptest! {
        #[test]
        fn the_checker_agrees_with_the_definitions(seqs in prop::collection::vec(0u64..60, 0..120)) {
            let messages: Vec<_> = seqs.iter().map(|&s| tag("plc1", s)).collect();
            let (distinct, duplicates, gaps, out_of_order) = model(&seqs);
            let reports = check(ROOT, &messages);
            if seqs.is_empty() {
                prop_assert!(reports.is_empty());
            } else {
                let r = &reports["plc1"];
                prop_assert_eq!(r.distinct, distinct);
                prop_assert_eq!(r.duplicates, duplicates);
                prop_assert_eq!(&r.gaps, &gaps);
                prop_assert_eq!(r.out_of_order, out_of_order);
                prop_assert_eq!(r.first, seqs.iter().min().copied());
                prop_assert_eq!(r.last, seqs.iter().max().copied());
                let span = r.last.unwrap_or(0) - r.first.unwrap_or(0) + 1;
                prop_assert_eq!(span, r.distinct as u64 + r.missing());
            }
        }

        #[test]
        fn batching_does_not_change_the_report(
            seqs in prop::collection::vec(0u64..60, 1..120),
            cuts in prop::collection::vec(1usize..10, 1..30),
        ) {
            let per_tag: Vec<_> = seqs.iter().map(|&s| tag("plc1", s)).collect();
            let mut batched = Vec::new();
            let mut rest = seqs.as_slice();
            for cut in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (head, tail) = rest.split_at((*cut).min(rest.len()));
                batched.push(batch("plc1", head));
                rest = tail;
            }
            prop_assert_eq!(check(ROOT, &per_tag), check(ROOT, &batched));
        }
    }
}
