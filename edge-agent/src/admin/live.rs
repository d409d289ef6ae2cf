//! What the console shows of the tags: the last committed value of every configured tag, and
//! a short history of each for the trend plots, all within one byte budget for the whole
//! gateway (`[admin] history_bytes`). Fed with the batches the store writer has committed, so
//! the page never shows a reading the store does not hold. Pure (no I/O, no clock).

use std::collections::{HashMap, VecDeque};

use edge_model::{Batch, Quality, Value};
use serde_json::json;

/// One history point: the reading's time and its value as a float (NaN: no number).
#[derive(Debug, Clone, Copy)]
struct Point {
    ts_ms: u64,
    value: f32,
}

/// What a history point costs in the budget.
pub const POINT_BYTES: u64 = std::mem::size_of::<Point>() as u64;
/// The most points one tag keeps, however large the budget.
const MAX_POINTS: usize = 3600;
/// The fewest: a plot needs two points for a line.
const MIN_POINTS: usize = 2;
/// The largest page of tags one request gets.
pub const MAX_PAGE: usize = 500;

/// A configured tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagDef {
    pub device: String,
    pub tag: String,
    pub unit: Option<String>,
    pub writable: bool,
}

#[derive(Debug)]
struct Entry {
    /// Index into the board's devices.
    device: usize,
    tag: String,
    unit: Option<String>,
    writable: bool,
    /// `None` until the first reading.
    value: Option<Value>,
    quality: Option<Quality>,
    source_ts_ms: Option<u64>,
    read_ts_ms: Option<u64>,
    history: VecDeque<Point>,
}

/// Which tags a page asks for.
#[derive(Debug, Clone, Default)]
pub struct TagQuery {
    /// A case-insensitive part of the device or tag name.
    pub text: Option<String>,
    pub device: Option<String>,
    pub quality: Option<Quality>,
    pub offset: usize,
    pub limit: usize,
}

/// Every tag and its recent values.
#[derive(Debug)]
pub struct TagBoard {
    entries: Vec<Entry>,
    /// Device name, then tag name, to the entry (looked up by `&str`, no allocation).
    index: HashMap<String, HashMap<String, usize>>,
    devices: Vec<String>,
    budget: u64,
    per_tag: usize,
}

impl TagBoard {
    pub fn new(budget_bytes: u64, defs: Vec<TagDef>) -> TagBoard {
        let mut b = TagBoard {
            entries: Vec::new(),
            index: HashMap::new(),
            devices: Vec::new(),
            budget: budget_bytes,
            per_tag: MIN_POINTS,
        };
        b.set_catalog(defs);
        b
    }

    /// The tags of a (reloaded) config, in its order; tags that stay keep their values and
    /// history.
    pub fn set_catalog(&mut self, defs: Vec<TagDef>) {
        let mut old: HashMap<(String, String), Entry> = HashMap::new();
        for e in self.entries.drain(..) {
            let device = self.devices.get(e.device).cloned().unwrap_or_default();
            old.insert((device, e.tag.clone()), e);
        }
        self.index.clear();
        self.devices.clear();
        self.per_tag = points_per_tag(self.budget, defs.len());
        for def in defs {
            let device = match self.devices.iter().position(|d| *d == def.device) {
                Some(i) => i,
                None => {
                    self.devices.push(def.device.clone());
                    self.devices.len() - 1
                }
            };
            let mut e = old
                .remove(&(def.device.clone(), def.tag.clone()))
                .unwrap_or_else(|| Entry {
                    device,
                    tag: def.tag.clone(),
                    unit: None,
                    writable: false,
                    value: None,
                    quality: None,
                    source_ts_ms: None,
                    read_ts_ms: None,
                    history: VecDeque::new(),
                });
            e.device = device;
            e.unit = def.unit;
            e.writable = def.writable;
            while e.history.len() > self.per_tag {
                e.history.pop_front();
            }
            e.history.shrink_to(self.per_tag);
            self.index
                .entry(def.device)
                .or_default()
                .insert(def.tag, self.entries.len());
            self.entries.push(e);
        }
    }

    /// Takes one committed batch. Samples of tags not in the catalogue are ignored.
    pub fn observe(&mut self, batch: &Batch) {
        let per_tag = self.per_tag;
        let Some(tags) = self.index.get(batch.device.0.as_str()) else {
            return;
        };
        for s in &batch.samples {
            let Some(&i) = tags.get(s.tag.0.as_str()) else {
                continue;
            };
            let Some(e) = self.entries.get_mut(i) else {
                continue;
            };
            e.value = s.value.clone();
            e.quality = Some(s.quality);
            e.source_ts_ms = s.source_ts_ms;
            e.read_ts_ms = Some(s.read_ts_ms);
            let value = match (&s.value, s.quality) {
                (_, Quality::Bad) | (None, _) => f32::NAN,
                (Some(Value::Bool(b)), _) => f32::from(u8::from(*b)),
                (Some(v), _) => v.as_f64().map_or(f32::NAN, |f| f as f32),
            };
            if e.history.capacity() == 0 {
                // The whole share at once: a growing deque would double past it.
                e.history.reserve_exact(per_tag);
            }
            if e.history.len() >= per_tag {
                e.history.pop_front();
            }
            e.history.push_back(Point {
                ts_ms: s.timestamp_ms(),
                value,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Points each tag keeps under the budget.
    pub fn points_per_tag(&self) -> usize {
        self.per_tag
    }

    /// Bytes the history holds now (at most the budget, or two points per tag).
    pub fn history_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.history.capacity() as u64 * POINT_BYTES)
            .sum()
    }

    /// One page of the tags the query selects, as the API answers it.
    pub fn page(&self, q: &TagQuery, now_ms: u64) -> serde_json::Value {
        let text = q.text.as_deref().map(str::to_lowercase);
        let device_of = |e: &Entry| self.devices.get(e.device).map_or("", String::as_str);
        let selected = self.entries.iter().filter(|e| {
            q.device.as_deref().is_none_or(|d| device_of(e) == d)
                && q.quality.is_none_or(|want| e.quality == Some(want))
                && text.as_deref().is_none_or(|t| {
                    e.tag.to_lowercase().contains(t) || device_of(e).to_lowercase().contains(t)
                })
        });
        let limit = q.limit.clamp(1, MAX_PAGE);
        let mut total = 0usize;
        let mut tags = Vec::new();
        for e in selected {
            if total >= q.offset && tags.len() < limit {
                tags.push(json!({
                    "device": device_of(e),
                    "tag": e.tag,
                    "value": e.value,
                    "unit": e.unit,
                    "quality": e.quality.map(Quality::as_str),
                    "source_ts_ms": e.source_ts_ms,
                    "read_ts_ms": e.read_ts_ms,
                    "age_ms": e.read_ts_ms.map(|t| now_ms.saturating_sub(t)),
                    "writable": e.writable,
                }));
            }
            total += 1;
        }
        json!({
            "total": total,
            "offset": q.offset,
            "limit": limit,
            "devices": self.devices,
            "tags": tags,
        })
    }

    /// The recent values of one tag, oldest first; `None` for a tag not configured.
    pub fn history(&self, device: &str, tag: &str) -> Option<serde_json::Value> {
        let i = *self.index.get(device)?.get(tag)?;
        let e = self.entries.get(i)?;
        let points: Vec<serde_json::Value> = e
            .history
            .iter()
            .map(|p| {
                let v = (!p.value.is_nan()).then_some(f64::from(p.value));
                json!([p.ts_ms, v])
            })
            .collect();
        Some(json!({
            "device": device,
            "tag": tag,
            "unit": e.unit,
            "points": points,
        }))
    }
}

/// How many points each of `tags` tags may keep within `budget` bytes.
fn points_per_tag(budget: u64, tags: usize) -> usize {
    let tags = tags.max(1) as u64;
    let n = budget / (POINT_BYTES * tags);
    usize::try_from(n)
        .unwrap_or(MAX_POINTS)
        .clamp(MIN_POINTS, MAX_POINTS)
}

#[cfg(test)]
mod tests {
    use edge_model::{DeviceId, Sample, TagName};

    use super::*;

    fn defs(devices: usize, tags: usize) -> Vec<TagDef> {
        (0..devices)
            .flat_map(|d| {
                (0..tags).map(move |t| TagDef {
                    device: format!("plc{d}"),
                    tag: format!("tag{t}"),
                    unit: (t == 0).then(|| "degC".to_owned()),
                    writable: false,
                })
            })
            .collect()
    }

    fn batch(device: &str, tag: &str, v: Option<Value>, ts: u64) -> Batch {
        let mut b = Batch::new(DeviceId(device.to_owned()));
        let s = match v {
            Some(v) => Sample::good(TagName(tag.to_owned()), v, ts),
            None => Sample::bad(TagName(tag.to_owned()), ts),
        };
        b.samples.push(s);
        b
    }

    #[test]
    fn the_history_of_every_tag_stays_within_the_one_budget() {
        // 26 points a tag: a deque grown by doubling would hold 32.
        let budget = 26 * POINT_BYTES * 1000;
        let mut board = TagBoard::new(budget, defs(10, 100));
        assert_eq!(board.points_per_tag(), 26);
        assert_eq!(
            board.points_per_tag(),
            (budget / (POINT_BYTES * 1000)) as usize
        );
        for round in 0..200u64 {
            for d in 0..10 {
                for t in 0..100 {
                    let b = batch(
                        &format!("plc{d}"),
                        &format!("tag{t}"),
                        Some(Value::F64(round as f64)),
                        round,
                    );
                    board.observe(&b);
                }
            }
        }
        assert!(
            board.history_bytes() <= budget,
            "{} > {budget}",
            board.history_bytes()
        );
        let h = board.history("plc3", "tag7").expect("configured");
        let points = h["points"].as_array().expect("points");
        assert_eq!(points.len(), board.points_per_tag());
        assert_eq!(
            points.last().expect("a point")[1],
            json!(199.0),
            "newest kept"
        );
    }

    #[test]
    fn a_search_finds_one_tag_among_ten_thousand_and_pages_are_bounded() {
        let mut board = TagBoard::new(1024 * 1024, defs(10, 1000));
        board.observe(&batch("plc7", "tag423", Some(Value::U16(5)), 10));
        let q = TagQuery {
            text: Some("TAG423".to_owned()),
            device: Some("plc7".to_owned()),
            limit: 100,
            ..TagQuery::default()
        };
        let page = board.page(&q, 110);
        assert_eq!(page["total"], json!(1));
        assert_eq!(page["tags"][0]["value"], json!(5));
        assert_eq!(page["tags"][0]["age_ms"], json!(100));
        assert_eq!(page["tags"][0]["quality"], json!("good"));
        let all = board.page(
            &TagQuery {
                offset: 9950,
                limit: 100,
                ..TagQuery::default()
            },
            0,
        );
        assert_eq!(all["total"], json!(10_000));
        assert_eq!(all["tags"].as_array().map(Vec::len), Some(50));
        let huge = board.page(
            &TagQuery {
                limit: 100_000,
                ..TagQuery::default()
            },
            0,
        );
        assert_eq!(huge["tags"].as_array().map(Vec::len), Some(MAX_PAGE));
    }

    #[test]
    fn quality_filters_and_bad_readings_leave_gaps_in_the_plot() {
        let mut board = TagBoard::new(1024 * 1024, defs(1, 3));
        board.observe(&batch("plc0", "tag0", Some(Value::F32(1.5)), 1));
        board.observe(&batch("plc0", "tag0", None, 2));
        board.observe(&batch("plc0", "tag1", Some(Value::Bool(true)), 3));
        let bad = board.page(
            &TagQuery {
                quality: Some(Quality::Bad),
                limit: 10,
                ..TagQuery::default()
            },
            5,
        );
        assert_eq!(bad["total"], json!(1));
        assert_eq!(bad["tags"][0]["tag"], json!("tag0"));
        let h = board.history("plc0", "tag0").expect("configured");
        assert_eq!(h["points"], json!([[1, 1.5], [2, null]]));
        assert_eq!(
            board.history("plc0", "tag1").expect("t")["points"],
            json!([[3, 1.0]])
        );
        assert!(board.history("plc0", "nope").is_none());
    }

    #[test]
    fn a_reloaded_catalogue_keeps_the_values_of_tags_that_stay() {
        let mut board = TagBoard::new(1024 * 1024, defs(1, 2));
        board.observe(&batch("plc0", "tag1", Some(Value::I32(-4)), 1));
        let mut next = defs(1, 2);
        next.remove(0);
        next.push(TagDef {
            device: "plc9".into(),
            tag: "new".into(),
            unit: None,
            writable: true,
        });
        board.set_catalog(next);
        assert_eq!(board.len(), 2);
        let page = board.page(
            &TagQuery {
                limit: 10,
                ..TagQuery::default()
            },
            1,
        );
        assert_eq!(page["tags"][0]["value"], json!(-4));
        assert_eq!(page["tags"][1]["tag"], json!("new"));
        assert_eq!(page["devices"], json!(["plc0", "plc9"]));
    }
}
