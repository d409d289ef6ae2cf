//! UNS JSON telemetry: one message per tag (`{root}/{device}/{tag}`) or one per device batch
//! (`{root}/{device}/_batch`), plus the retained gateway status. Topics are cached per tag: the
//! publisher encodes hundreds of thousands of messages a second.

use std::collections::HashMap;

use edge_model::{Batch, DeviceId, Quality, Sample, TagName, Value};
use serde::Serialize;

/// One MQTT message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// What a data message is about, for protocols that carry it beside the payload.
    pub keys: Keys,
}

/// What a data message is about, sent beside the payload as MQTT 5 user properties so that a
/// broker-to-Kafka bridge can key records by device (and deduplicate MES events) without
/// reading the JSON. Empty on status messages and command answers, and on telemetry unless
/// the encoder is asked for keys ([`UnsEncoder::with_keys`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    /// The device the message's samples were read from.
    pub device: Option<String>,
    /// The seq of the message's sample, or the first and the last of its batch.
    pub seq: Option<(u64, u64)>,
    /// The machine of an MES event.
    pub machine: Option<String>,
    /// An MES event's `event_id`.
    pub event_id: Option<String>,
}

/// How telemetry is grouped on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// One message per sample, on the tag's own topic.
    PerTag,
    /// One message per stored batch, on `{root}/{device}/_batch`.
    PerDevice,
}

/// What the encoder knows about the configured tags: engineering units, by device and tag.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    units: HashMap<(String, String), String>,
}

impl Catalog {
    pub fn new() -> Catalog {
        Catalog::default()
    }

    pub fn set_unit(&mut self, device: &str, tag: &str, unit: &str) {
        self.units
            .insert((device.to_owned(), tag.to_owned()), unit.to_owned());
    }
}

/// Encodes batches into UNS JSON messages under one topic root.
#[derive(Debug)]
pub struct UnsEncoder {
    root: String,
    batching: Batching,
    units: HashMap<String, HashMap<String, String>>,
    topics: HashMap<String, HashMap<String, String>>,
    /// Telemetry messages carry their [`Keys`].
    keys: bool,
}

#[derive(Serialize)]
struct TagPayload<'a> {
    value: Option<&'a Value>,
    quality: &'static str,
    timestamp_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    seq: u64,
    #[serde(skip_serializing_if = "is_false")]
    replay: bool,
}

#[derive(Serialize)]
struct BatchSample<'a> {
    tag: &'a str,
    value: Option<&'a Value>,
    quality: &'static str,
    timestamp_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    seq: u64,
}

#[derive(Serialize)]
struct BatchPayload<'a> {
    samples: Vec<BatchSample<'a>>,
    #[serde(skip_serializing_if = "is_false")]
    replay: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn quality_str(q: Quality) -> &'static str {
    q.as_str()
}

impl UnsEncoder {
    /// `root` is the topic root without a trailing slash (`enterprise/site/area/line`).
    pub fn new(root: &str, batching: Batching, catalog: &Catalog) -> UnsEncoder {
        let mut units: HashMap<String, HashMap<String, String>> = HashMap::new();
        for ((device, tag), unit) in &catalog.units {
            units
                .entry(device.clone())
                .or_default()
                .insert(tag.clone(), unit.clone());
        }
        UnsEncoder {
            root: root.trim_end_matches('/').to_owned(),
            batching,
            units,
            topics: HashMap::new(),
            keys: false,
        }
    }

    /// Telemetry messages carry their [`Keys`] (for an MQTT 5 northbound).
    pub fn with_keys(mut self) -> UnsEncoder {
        self.keys = true;
        self
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn batching(&self) -> Batching {
        self.batching
    }

    /// How many MQTT messages `encode` makes of this batch.
    pub fn message_count(&self, batch: &Batch) -> usize {
        match self.batching {
            Batching::PerTag => batch.samples.len(),
            Batching::PerDevice => usize::from(!batch.samples.is_empty()),
        }
    }

    /// Appends the telemetry messages for one stored batch to `out`. `replay` marks messages
    /// sent from a backlog after an outage.
    pub fn encode(&mut self, batch: &Batch, replay: bool, out: &mut Vec<Message>) {
        match self.batching {
            Batching::PerTag => {
                for sample in &batch.samples {
                    out.push(self.tag_message(&batch.device, sample, replay));
                }
            }
            Batching::PerDevice => {
                if !batch.samples.is_empty() {
                    out.push(self.batch_message(batch, replay));
                }
            }
        }
    }

    fn unit(&self, device: &DeviceId, tag: &TagName) -> Option<&str> {
        self.units
            .get(&device.0)
            .and_then(|tags| tags.get(&tag.0))
            .map(String::as_str)
    }

    fn tag_topic(&mut self, device: &DeviceId, tag: &TagName) -> String {
        if let Some(t) = self.topics.get(&device.0).and_then(|m| m.get(&tag.0)) {
            return t.clone();
        }
        let topic = format!("{}/{}/{}", self.root, device.0, tag.0);
        self.topics
            .entry(device.0.clone())
            .or_default()
            .insert(tag.0.clone(), topic.clone());
        topic
    }

    fn tag_message(&mut self, device: &DeviceId, sample: &Sample, replay: bool) -> Message {
        let topic = self.tag_topic(device, &sample.tag);
        let payload = TagPayload {
            value: sample.value.as_ref(),
            quality: quality_str(sample.quality),
            timestamp_ms: sample.timestamp_ms(),
            unit: self.unit(device, &sample.tag),
            seq: sample.seq,
            replay,
        };
        Message {
            topic,
            payload: to_json(&payload),
            retain: false,
            keys: self.keys_of(device, sample.seq, sample.seq),
        }
    }

    fn keys_of(&self, device: &DeviceId, first: u64, last: u64) -> Keys {
        if !self.keys {
            return Keys::default();
        }
        Keys {
            device: Some(device.0.clone()),
            seq: Some((first, last)),
            ..Keys::default()
        }
    }

    fn batch_message(&self, batch: &Batch, replay: bool) -> Message {
        let payload = BatchPayload {
            samples: batch
                .samples
                .iter()
                .map(|s| BatchSample {
                    tag: &s.tag.0,
                    value: s.value.as_ref(),
                    quality: quality_str(s.quality),
                    timestamp_ms: s.timestamp_ms(),
                    unit: self.unit(&batch.device, &s.tag),
                    seq: s.seq,
                })
                .collect(),
            replay,
        };
        Message {
            topic: format!("{}/{}/_batch", self.root, batch.device.0),
            payload: to_json(&payload),
            retain: false,
            keys: match (batch.samples.first(), batch.samples.last()) {
                (Some(first), Some(last)) => self.keys_of(&batch.device, first.seq, last.seq),
                _ => Keys::default(),
            },
        }
    }

    /// The retained gateway status topic, also the MQTT will's topic.
    pub fn status_topic(&self, gateway_id: &str) -> String {
        format!("{}/_gateway/{}/status", self.root, gateway_id)
    }

    /// The retained "online" status the gateway publishes on every connect.
    pub fn status_online(&self, gateway_id: &str, version: &str, started_ms: u64) -> Message {
        let payload = serde_json::json!({
            "online": true,
            "gateway_id": gateway_id,
            "version": version,
            "started_ms": started_ms,
            "timestamp_ms": edge_model::now_ms(),
        });
        Message {
            topic: self.status_topic(gateway_id),
            payload: payload.to_string().into_bytes(),
            retain: true,
            keys: Default::default(),
        }
    }

    /// The retained "offline" status: the MQTT will, and the last word of a clean stop.
    pub fn status_offline(&self, gateway_id: &str) -> Message {
        let payload = serde_json::json!({ "online": false, "gateway_id": gateway_id });
        Message {
            topic: self.status_topic(gateway_id),
            payload: payload.to_string().into_bytes(),
            retain: true,
            keys: Default::default(),
        }
    }
}

#[derive(Serialize)]
struct ExportLine<'a> {
    record: u64,
    device: &'a str,
    tag: &'a str,
    value: Option<&'a Value>,
    quality: &'static str,
    timestamp_ms: u64,
    seq: u64,
}

/// Appends one stored sample as a line of `edge-agent buffer export` to `out`: the record it
/// is stored in, its device and tag, then value, quality, timestamp and seq encoded exactly as
/// in the telemetry, and a newline.
pub fn export_line(record: u64, device: &DeviceId, sample: &Sample, out: &mut Vec<u8>) {
    let line = ExportLine {
        record,
        device: &device.0,
        tag: &sample.tag.0,
        value: sample.value.as_ref(),
        quality: quality_str(sample.quality),
        timestamp_ms: sample.timestamp_ms(),
        seq: sample.seq,
    };
    // As in `to_json`: these plain structs always serialise; a failure would only lose a line.
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        out.push(b'\n');
    }
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys, no I/O.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(tag: &str, value: Option<Value>, quality: Quality, seq: u64) -> Sample {
        Sample {
            tag: TagName(tag.into()),
            value,
            quality,
            read_ts_ms: 1_763_800_000_123,
            source_ts_ms: None,
            seq,
        }
    }

    fn encoder(batching: Batching) -> UnsEncoder {
        let mut catalog = Catalog::new();
        catalog.set_unit("filler", "temp", "degC");
        UnsEncoder::new("acme/plant1/packaging/line1", batching, &catalog)
    }

    fn parse(m: &Message) -> serde_json::Value {
        serde_json::from_slice(&m.payload).expect("payload is JSON")
    }

    #[test]
    fn per_tag_telemetry_matches_the_contract_shape() {
        let mut enc = encoder(Batching::PerTag);
        let batch = Batch {
            device: DeviceId("filler".into()),
            samples: vec![
                sample("temp", Some(Value::F32(21.5)), Quality::Good, 1234),
                sample("count", Some(Value::U32(7)), Quality::Good, 1235),
            ],
        };
        let mut out = Vec::new();
        enc.encode(&batch, false, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].topic, "acme/plant1/packaging/line1/filler/temp");
        assert_eq!(
            parse(&out[0]),
            json!({"value": 21.5, "quality": "good", "timestamp_ms": 1_763_800_000_123u64, "unit": "degC", "seq": 1234})
        );
        assert_eq!(
            parse(&out[1]),
            json!({"value": 7, "quality": "good", "timestamp_ms": 1_763_800_000_123u64, "seq": 1235})
        );
        assert!(!out[0].retain);
    }

    #[test]
    fn replayed_messages_say_so_and_live_ones_do_not() {
        let mut enc = encoder(Batching::PerTag);
        let batch = Batch {
            device: DeviceId("filler".into()),
            samples: vec![sample("temp", Some(Value::F32(1.0)), Quality::Good, 1)],
        };
        let mut out = Vec::new();
        enc.encode(&batch, true, &mut out);
        enc.encode(&batch, false, &mut out);
        assert_eq!(parse(&out[0])["replay"], json!(true));
        assert!(parse(&out[1]).get("replay").is_none());
    }

    #[test]
    fn a_bad_sample_has_a_null_value_and_bad_quality() {
        let mut enc = encoder(Batching::PerTag);
        let batch = Batch {
            device: DeviceId("filler".into()),
            samples: vec![sample("temp", None, Quality::Bad, 9)],
        };
        let mut out = Vec::new();
        enc.encode(&batch, false, &mut out);
        let v = parse(&out[0]);
        assert_eq!(v["value"], serde_json::Value::Null);
        assert_eq!(v["quality"], json!("bad"));
    }

    #[test]
    fn the_source_timestamp_wins_over_the_read_time() {
        let mut enc = encoder(Batching::PerTag);
        let mut s = sample("temp", Some(Value::F64(2.0)), Quality::Uncertain, 3);
        s.source_ts_ms = Some(42);
        let batch = Batch {
            device: DeviceId("filler".into()),
            samples: vec![s],
        };
        let mut out = Vec::new();
        enc.encode(&batch, false, &mut out);
        assert_eq!(parse(&out[0])["timestamp_ms"], json!(42));
        assert_eq!(parse(&out[0])["quality"], json!("uncertain"));
    }

    #[test]
    fn a_device_batch_is_one_message_with_every_sample_in_order() {
        let mut enc = encoder(Batching::PerDevice);
        let batch = Batch {
            device: DeviceId("filler".into()),
            samples: vec![
                sample("temp", Some(Value::F32(21.5)), Quality::Good, 10),
                sample(
                    "name",
                    Some(Value::String("WO-1".into())),
                    Quality::Good,
                    11,
                ),
            ],
        };
        assert_eq!(enc.message_count(&batch), 1);
        let mut out = Vec::new();
        enc.encode(&batch, true, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "acme/plant1/packaging/line1/filler/_batch");
        assert_eq!(
            parse(&out[0]),
            json!({"samples": [
                {"tag": "temp", "value": 21.5, "quality": "good", "timestamp_ms": 1_763_800_000_123u64, "unit": "degC", "seq": 10},
                {"tag": "name", "value": "WO-1", "quality": "good", "timestamp_ms": 1_763_800_000_123u64, "seq": 11},
            ], "replay": true})
        );
    }

    #[test]
    fn an_empty_batch_makes_no_message() {
        let mut enc = encoder(Batching::PerDevice);
        let mut out = Vec::new();
        enc.encode(&Batch::new(DeviceId("filler".into())), false, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn non_finite_floats_are_null_in_json() {
        let mut enc = encoder(Batching::PerTag);
        let batch = Batch {
            device: DeviceId("filler".into()),
            samples: vec![sample("temp", Some(Value::F32(f32::NAN)), Quality::Good, 1)],
        };
        let mut out = Vec::new();
        enc.encode(&batch, false, &mut out);
        assert_eq!(parse(&out[0])["value"], serde_json::Value::Null);
    }

    #[test]
    fn an_export_line_carries_the_record_device_and_tag_and_encodes_the_sample_as_telemetry() {
        let mut out = Vec::new();
        let device = DeviceId::from("press");
        let mut s = sample("temp", Some(Value::F32(21.5)), Quality::Uncertain, 9);
        s.source_ts_ms = Some(42);
        export_line(7, &device, &s, &mut out);
        export_line(7, &device, &sample("x", None, Quality::Bad, 10), &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        assert_eq!(
            lines[0],
            json!({"record": 7, "device": "press", "tag": "temp", "value": 21.5, "quality": "uncertain", "timestamp_ms": 42, "seq": 9})
        );
        assert_eq!(lines[1]["value"], serde_json::Value::Null);
        assert_eq!(lines[1]["quality"], json!("bad"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn gateway_status_is_retained_online_and_offline() {
        let enc = encoder(Batching::PerTag);
        let on = enc.status_online("gw1", "0.1.0", 5);
        let off = enc.status_offline("gw1");
        assert_eq!(on.topic, "acme/plant1/packaging/line1/_gateway/gw1/status");
        assert_eq!(off.topic, on.topic);
        assert!(on.retain && off.retain);
        assert_eq!(parse(&on)["online"], json!(true));
        assert_eq!(parse(&off)["online"], json!(false));
    }
}
