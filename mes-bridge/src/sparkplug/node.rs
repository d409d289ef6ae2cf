//! The edge node's Sparkplug session, without I/O: the metric catalogue with its aliases, the
//! latest value of every metric (births carry it), which devices are born, and the `seq` and
//! `bdSeq` counters. The publisher feeds it stored batches and sends what it returns, in order.
//!
//! A device is dead when every metric it has reported is `bad` (the poller turns every tag of an
//! unreachable PLC bad): a live batch that makes it so is followed by DDEATH, and the first live
//! batch with a good value brings a DBIRTH. Historical (replayed) batches never change the
//! device state: the outage they cover is in their `Quality` properties.
//!
//! A metric without a configured type (an OPC UA tag that keeps the server's type) has the type
//! of its values. Until one arrives it cannot be declared, so births leave it out; once the
//! newest value's type is not what the device's current DBIRTH declared (the first value, or
//! the server's variable changed type), the device is born again before any DATA for it.

use std::collections::HashMap;

use edge_model::{Batch, DataType, Quality, Sample, Value};
use prost::Message as _;

use super::proto::payload::{metric, property_value, Metric, PropertySet, PropertyValue};
use super::proto::Payload;
use super::types::{encode_value, quality_code, SpType, QUALITY_STALE};
use crate::Message;

/// The Sparkplug B topic namespace.
pub const NAMESPACE: &str = "spBv1.0";
/// The birth/death sequence metric of NBIRTH and NDEATH.
pub const BD_SEQ: &str = "bdSeq";
/// The node metric a host sets to true to ask for a rebirth (never given an alias).
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The node metric a host sets to ask for a move to another broker.
pub const NEXT_SERVER: &str = "Node Control/Next Server";

/// Property names of birth metrics.
pub const PROP_QUALITY: &str = "Quality";
pub const PROP_UNIT: &str = "engUnit";
pub const PROP_SCALE: &str = "scale";
pub const PROP_OFFSET: &str = "offset";
pub const PROP_READ_ONLY: &str = "readOnly";

/// One tag as a Sparkplug metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDef {
    /// The tag's name, the metric's name within its device.
    pub name: String,
    /// The tag's configured (raw) type; `None` when the tag keeps the server's own type (an
    /// OPC UA tag without `type`), which the node learns from the values that arrive.
    pub data_type: Option<DataType>,
    /// `raw * scale + offset` is published; a scaled number is a Double.
    pub scale: f64,
    pub offset: f64,
    /// The engineering unit, published as the `engUnit` property.
    pub unit: Option<String>,
    /// Whether DCMD may write it.
    pub writable: bool,
}

impl MetricDef {
    /// An unscaled, read-only metric without a unit.
    pub fn new(name: &str, data_type: DataType) -> MetricDef {
        MetricDef {
            data_type: Some(data_type),
            ..MetricDef::untyped(name)
        }
    }

    /// An unscaled, read-only metric without a unit whose type is the server's: it is declared
    /// once a value has arrived, with that value's type.
    pub fn untyped(name: &str) -> MetricDef {
        MetricDef {
            name: name.to_owned(),
            data_type: None,
            scale: 1.0,
            offset: 0.0,
            unit: None,
            writable: false,
        }
    }

    pub fn is_scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }

    /// The datatype the config gives the metric: its configured type, or Double for a scaled
    /// untyped one (scaling is for numbers, and a scaled number is a Double). `None` for an
    /// unscaled untyped metric, whose datatype comes with its first value.
    pub fn sp_type(&self) -> Option<SpType> {
        match self.data_type {
            Some(dt) => Some(SpType::for_tag(dt, self.is_scaled())),
            None => self.is_scaled().then_some(SpType::Double),
        }
    }

    /// The datatype of the metric once `value` has arrived: the configured one for a typed
    /// metric, whatever the value; the value's own for an untyped one.
    pub fn sp_type_with(&self, value: &Value) -> SpType {
        match self.data_type {
            Some(dt) => SpType::for_tag(dt, self.is_scaled()),
            None => SpType::of_value(value, self.is_scaled()),
        }
    }
}

/// One PLC as a Sparkplug device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceDef {
    pub name: String,
    pub metrics: Vec<MetricDef>,
}

/// The last value the node knows of one metric.
#[derive(Debug, Clone, PartialEq)]
struct Latest {
    value: Option<Value>,
    quality: Quality,
    timestamp_ms: u64,
}

#[derive(Debug)]
pub(crate) struct DeviceState {
    pub(crate) def: DeviceDef,
    /// Each metric's datatype now: the configured one, or the type of the newest value of an
    /// untyped metric (`None` while no value has arrived).
    types: Vec<Option<SpType>>,
    /// Each metric's datatype in the device's last DBIRTH (`None`: left out of it), which DATA
    /// is encoded with and DCMDs decoded with. A typed metric's from the start.
    pub(crate) announced: Vec<Option<SpType>>,
    pub(crate) first_alias: u64,
    pub(crate) tags: HashMap<String, usize>,
    latest: Vec<Option<Latest>>,
    born: bool,
    dbirth: String,
    ddata: String,
    ddeath: String,
}

impl DeviceState {
    /// Every metric reported so far is bad, and there is at least one.
    fn is_dead(&self) -> bool {
        let mut known = self.latest.iter().flatten().peekable();
        known.peek().is_some() && known.all(|l| l.quality == Quality::Bad)
    }

    /// The last DBIRTH no longer says every metric's datatype: an untyped metric has had its
    /// first value, or a value of another type, since.
    fn birth_outdated(&self) -> bool {
        self.types != self.announced
    }

    /// Whether a DBIRTH would declare anything: a device whose metrics are all untyped and
    /// without values has nothing to declare, and is not born until a value arrives.
    fn can_be_born(&self) -> bool {
        self.types.iter().any(Option::is_some)
    }
}

/// Where a metric alias points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetricRef {
    pub device: usize,
    pub metric: usize,
}

/// The Sparkplug state of the edge node (the gateway) and its devices (the PLCs).
#[derive(Debug)]
pub struct EdgeNode {
    group_id: String,
    edge_node_id: String,
    nbirth: String,
    ndeath: String,
    ncmd: String,
    pub(crate) devices: Vec<DeviceState>,
    device_index: HashMap<String, usize>,
    aliases: HashMap<u64, MetricRef>,
    seq: u8,
    bd_seq: u8,
}

impl EdgeNode {
    /// A node with these devices. Aliases are numbered from 1 across every metric of every
    /// device, in order, so they are unique in the node and stable while the config is (an
    /// untyped metric has its alias before its type is known).
    pub fn new(group_id: &str, edge_node_id: &str, devices: Vec<DeviceDef>) -> EdgeNode {
        let node_topic = |kind: &str| format!("{NAMESPACE}/{group_id}/{kind}/{edge_node_id}");
        let mut next_alias = 1u64;
        let mut aliases = HashMap::new();
        let mut device_index = HashMap::new();
        let mut states = Vec::with_capacity(devices.len());
        for (d, def) in devices.into_iter().enumerate() {
            let first_alias = next_alias;
            for m in 0..def.metrics.len() {
                aliases.insert(
                    first_alias + m as u64,
                    MetricRef {
                        device: d,
                        metric: m,
                    },
                );
            }
            next_alias += def.metrics.len() as u64;
            let tags = def
                .metrics
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name.clone(), i))
                .collect();
            let device_topic = |kind: &str| format!("{}/{}", node_topic(kind), def.name);
            device_index.insert(def.name.clone(), d);
            let types: Vec<Option<SpType>> = def.metrics.iter().map(MetricDef::sp_type).collect();
            states.push(DeviceState {
                announced: types.clone(),
                types,
                first_alias,
                tags,
                latest: vec![None; def.metrics.len()],
                born: false,
                dbirth: device_topic("DBIRTH"),
                ddata: device_topic("DDATA"),
                ddeath: device_topic("DDEATH"),
                def,
            });
        }
        EdgeNode {
            group_id: group_id.to_owned(),
            edge_node_id: edge_node_id.to_owned(),
            nbirth: node_topic("NBIRTH"),
            ndeath: node_topic("NDEATH"),
            ncmd: node_topic("NCMD"),
            devices: states,
            device_index,
            aliases,
            seq: 0,
            bd_seq: 0,
        }
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    pub fn edge_node_id(&self) -> &str {
        &self.edge_node_id
    }

    /// The topic hosts send node commands to.
    pub fn ncmd_topic(&self) -> &str {
        &self.ncmd
    }

    /// The filter covering the device command topics of this node.
    pub fn dcmd_filter(&self) -> String {
        format!("{NAMESPACE}/{}/DCMD/{}/+", self.group_id, self.edge_node_id)
    }

    pub fn ndeath_topic(&self) -> &str {
        &self.ndeath
    }

    /// How many metrics the node's devices have.
    pub fn metric_count(&self) -> usize {
        self.aliases.len()
    }

    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// The alias of a device's metric.
    pub fn alias(&self, device: &str, tag: &str) -> Option<u64> {
        let d = self.device_by_name(device)?;
        Some(d.first_alias + *d.tags.get(tag)? as u64)
    }

    pub(crate) fn device_by_name(&self, name: &str) -> Option<&DeviceState> {
        self.devices.get(*self.device_index.get(name)?)
    }

    pub(crate) fn metric_by_alias(&self, alias: u64) -> Option<MetricRef> {
        self.aliases.get(&alias).copied()
    }

    /// The bdSeq of the current MQTT connection (its will and its NBIRTH).
    pub fn bd_seq(&self) -> u8 {
        self.bd_seq
    }

    /// Sets the bdSeq for a new MQTT connection; births sent on it carry this one.
    pub fn set_bd_seq(&mut self, bd_seq: u8) {
        self.bd_seq = bd_seq;
    }

    /// The bdSeq for the connection after one that used `last` (0 when there was none);
    /// it wraps from 255 to 0.
    pub fn next_bd_seq(last: Option<u8>) -> u8 {
        last.map_or(0, |b| b.wrapping_add(1))
    }

    /// Whether a device is born in the current session (births sent, no death since).
    pub fn is_born(&self, device: &str) -> bool {
        self.device_by_name(device).is_some_and(|d| d.born)
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    /// NDEATH: the bdSeq and nothing else (no seq). The MQTT will of the connection, and what
    /// is published before an intentional disconnect.
    pub fn death(&self, now_ms: u64) -> Message {
        let payload = Payload {
            timestamp: Some(now_ms),
            metrics: vec![bd_seq_metric(self.bd_seq, now_ms)],
            ..Payload::default()
        };
        message(&self.ndeath, &payload)
    }

    /// Takes the values of a stored batch as the latest known ones, without publishing them
    /// (the backlog stored while disconnected, so that births carry the current values and
    /// declare the current type of untyped metrics). Returns how many samples name a device or
    /// tag the node does not have.
    pub fn fold(&mut self, batch: &Batch) -> usize {
        let Some(&d) = self.device_index.get(&batch.device.0) else {
            return batch.samples.len();
        };
        let Some(dev) = self.devices.get_mut(d) else {
            return batch.samples.len();
        };
        fold_into(dev, &batch.samples)
    }

    /// NBIRTH (seq 0, bdSeq, `Node Control/Rebirth`) and a DBIRTH per device with the name,
    /// alias, datatype, latest value and properties of every metric whose datatype is known.
    /// Every device with a DBIRTH is born afterwards; [`EdgeNode::deaths`] then declares the
    /// dead ones dead.
    ///
    /// A device whose metrics are all untyped and have no value yet gets no DBIRTH and stays
    /// unborn (an empty birth would declare nothing, and would have to be followed by another
    /// as soon as a value arrives): the first value brings its DBIRTH. NBIRTH is the same
    /// either way, as it carries no device metrics.
    pub fn births(&mut self, now_ms: u64) -> Vec<Message> {
        let mut out = Vec::with_capacity(self.devices.len() + 1);
        self.seq = 0;
        let seq = self.next_seq();
        let nbirth = Payload {
            timestamp: Some(now_ms),
            seq: Some(seq),
            metrics: vec![
                bd_seq_metric(self.bd_seq, now_ms),
                Metric {
                    name: Some(REBIRTH.to_owned()),
                    timestamp: Some(now_ms),
                    datatype: Some(SpType::Boolean.code()),
                    value: Some(metric::Value::BooleanValue(false)),
                    ..Metric::default()
                },
            ],
            ..Payload::default()
        };
        out.push(message(&self.nbirth, &nbirth));
        for d in 0..self.devices.len() {
            if let Some(m) = self.dbirth(d, now_ms) {
                out.push(m);
            }
        }
        out
    }

    /// DBIRTH with the datatypes known now; none (and no seq used) for a device with nothing
    /// to declare.
    fn dbirth(&mut self, d: usize, now_ms: u64) -> Option<Message> {
        if !self.devices.get(d)?.can_be_born() {
            return None;
        }
        let seq = self.next_seq();
        let dev = self.devices.get_mut(d)?;
        dev.born = true;
        dev.announced.clone_from(&dev.types);
        let metrics = (0..dev.def.metrics.len())
            .filter_map(|i| birth_metric(dev, i, now_ms))
            .collect();
        let payload = Payload {
            timestamp: Some(now_ms),
            seq: Some(seq),
            metrics,
            ..Payload::default()
        };
        Some(message(&dev.dbirth, &payload))
    }

    fn ddeath(&mut self, d: usize, now_ms: u64) -> Option<Message> {
        let seq = self.next_seq();
        let dev = self.devices.get_mut(d)?;
        dev.born = false;
        let payload = Payload {
            timestamp: Some(now_ms),
            seq: Some(seq),
            ..Payload::default()
        };
        Some(message(&dev.ddeath, &payload))
    }

    /// DDEATH for every born device whose metrics are all bad.
    pub fn deaths(&mut self, now_ms: u64) -> Vec<Message> {
        let dead: Vec<usize> = (0..self.devices.len())
            .filter(|&d| self.devices[d].born && self.devices[d].is_dead())
            .collect();
        dead.into_iter()
            .filter_map(|d| self.ddeath(d, now_ms))
            .collect()
    }

    /// A batch stored while the broker was away (or sent before a connection was lost), as
    /// DDATA with `is_historical` on every metric. The latest values are not touched: they
    /// were folded in before the births. Returns how many samples were unknown.
    ///
    /// A replayed value gives its type only to an untyped metric that has none yet (one that
    /// was not folded in), and the device is born again to declare it. It never changes a
    /// known type: that came from a newer value. A replayed value of another type than the one
    /// declared is sent as the declared type when it converts (numbers), else as null with its
    /// quality, as for a typed metric.
    pub fn historical(&mut self, batch: &Batch, now_ms: u64, out: &mut Vec<Message>) -> usize {
        let Some(&d) = self.device_index.get(&batch.device.0) else {
            return batch.samples.len();
        };
        learn_missing_types(&mut self.devices[d], &batch.samples);
        let dev = &self.devices[d];
        if !dev.born || dev.birth_outdated() {
            // Births make every device born and deaths wait for the end of a replay, so an
            // unborn device here is normally one that had nothing to declare; this keeps the
            // rule that DATA follows a DBIRTH declaring its metrics.
            out.extend(self.dbirth(d, now_ms));
        }
        self.ddata(d, &batch.samples, true, now_ms, out)
    }

    /// A batch stored while connected: DDATA, then DDEATH if it leaves every metric of the
    /// device bad; or, for a dead device, DBIRTH once a value is good again. A batch that
    /// gives an untyped metric its first value or a new type brings a DBIRTH instead of DDATA
    /// (unless it kills the device: the birth after its death declares the type). Returns how
    /// many samples were unknown.
    pub fn live(&mut self, batch: &Batch, now_ms: u64, out: &mut Vec<Message>) -> usize {
        let Some(&d) = self.device_index.get(&batch.device.0) else {
            return batch.samples.len();
        };
        let unknown = fold_into(&mut self.devices[d], &batch.samples);
        let dev = &self.devices[d];
        let dead = dev.is_dead();
        if dev.born && (dead || !dev.birth_outdated()) {
            self.ddata(d, &batch.samples, false, now_ms, out);
            if dead {
                out.extend(self.ddeath(d, now_ms));
            }
        } else if !dead {
            out.extend(self.dbirth(d, now_ms));
            // The birth carries the latest value of each metric; a tag read twice in the batch
            // needs DATA for its earlier value too.
            if has_repeated_tag(&batch.samples) {
                self.ddata(d, &batch.samples, false, now_ms, out);
            }
        }
        unknown
    }

    fn ddata(
        &mut self,
        d: usize,
        samples: &[Sample],
        historical: bool,
        now_ms: u64,
        out: &mut Vec<Message>,
    ) -> usize {
        let dev = &self.devices[d];
        let mut unknown = 0;
        let mut metrics = Vec::with_capacity(samples.len());
        for s in samples {
            let Some(&i) = dev.tags.get(&s.tag.0) else {
                unknown += 1;
                continue;
            };
            // A metric the birth left out (untyped, never valued) cannot be in DATA.
            metrics.extend(data_metric(dev, i, s, historical));
        }
        if metrics.is_empty() || !dev.born {
            return unknown;
        }
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(now_ms),
            seq: Some(seq),
            metrics,
            ..Payload::default()
        };
        out.push(message(&self.devices[d].ddata, &payload));
        unknown
    }
}

fn has_repeated_tag(samples: &[Sample]) -> bool {
    samples
        .iter()
        .enumerate()
        .any(|(i, s)| samples[..i].iter().any(|p| p.tag == s.tag))
}

/// Takes the samples as the latest values, and the type of each value as its metric's type.
fn fold_into(dev: &mut DeviceState, samples: &[Sample]) -> usize {
    let mut unknown = 0;
    for s in samples {
        let Some(&i) = dev.tags.get(&s.tag.0) else {
            unknown += 1;
            continue;
        };
        let (Some(slot), Some(def), Some(t)) = (
            dev.latest.get_mut(i),
            dev.def.metrics.get(i),
            dev.types.get_mut(i),
        ) else {
            unknown += 1;
            continue;
        };
        *slot = Some(Latest {
            value: s.value.clone(),
            quality: s.quality,
            timestamp_ms: s.timestamp_ms(),
        });
        if let Some(v) = &s.value {
            *t = Some(def.sp_type_with(v));
        }
    }
    unknown
}

/// Gives untyped metrics that have no type yet the type of their first value among `samples`.
fn learn_missing_types(dev: &mut DeviceState, samples: &[Sample]) {
    for s in samples {
        let (Some(&i), Some(v)) = (dev.tags.get(&s.tag.0), &s.value) else {
            continue;
        };
        if let (Some(t @ None), Some(def)) = (dev.types.get_mut(i), dev.def.metrics.get(i)) {
            *t = Some(def.sp_type_with(v));
        }
    }
}

fn bd_seq_metric(bd_seq: u8, now_ms: u64) -> Metric {
    Metric {
        name: Some(BD_SEQ.to_owned()),
        timestamp: Some(now_ms),
        datatype: Some(SpType::Int64.code()),
        value: Some(metric::Value::LongValue(u64::from(bd_seq))),
        ..Metric::default()
    }
}

fn property(key: &str, t: SpType, value: property_value::Value) -> (String, PropertyValue) {
    (
        key.to_owned(),
        PropertyValue {
            r#type: Some(t.code()),
            is_null: None,
            value: Some(value),
        },
    )
}

fn quality_property(code: i32) -> (String, PropertyValue) {
    property(
        PROP_QUALITY,
        SpType::Int32,
        property_value::Value::IntValue(code as u32),
    )
}

fn property_set(props: Vec<(String, PropertyValue)>) -> PropertySet {
    let (keys, values) = props.into_iter().unzip();
    PropertySet { keys, values }
}

fn birth_metric(dev: &DeviceState, i: usize, now_ms: u64) -> Option<Metric> {
    let def = dev.def.metrics.get(i)?;
    let t = (*dev.announced.get(i)?)?;
    let latest = dev.latest.get(i)?.as_ref();
    let quality = latest.map_or(QUALITY_STALE, |l| quality_code(l.quality));
    let mut props = vec![quality_property(quality)];
    if let Some(unit) = &def.unit {
        props.push(property(
            PROP_UNIT,
            SpType::String,
            property_value::Value::StringValue(unit.clone()),
        ));
    }
    if def.is_scaled() {
        props.push(property(
            PROP_SCALE,
            SpType::Double,
            property_value::Value::DoubleValue(def.scale),
        ));
        props.push(property(
            PROP_OFFSET,
            SpType::Double,
            property_value::Value::DoubleValue(def.offset),
        ));
    }
    props.push(property(
        PROP_READ_ONLY,
        SpType::Boolean,
        property_value::Value::BooleanValue(!def.writable),
    ));
    let value = latest
        .and_then(|l| l.value.as_ref())
        .and_then(|v| encode_value(t, v));
    Some(Metric {
        name: Some(def.name.clone()),
        alias: Some(dev.first_alias + i as u64),
        timestamp: Some(latest.map_or(now_ms, |l| l.timestamp_ms)),
        datatype: Some(t.code()),
        is_null: value.is_none().then_some(true),
        properties: Some(property_set(props)),
        value,
        ..Metric::default()
    })
}

/// A sample as a DATA metric, encoded as the datatype the device's birth declared; `None` for
/// a metric the birth left out.
fn data_metric(dev: &DeviceState, i: usize, s: &Sample, historical: bool) -> Option<Metric> {
    let t = (*dev.announced.get(i)?)?;
    let value = s.value.as_ref().and_then(|v| encode_value(t, v));
    // A missing Quality means good to Sparkplug hosts: only other qualities are sent.
    let properties = (s.quality != Quality::Good)
        .then(|| property_set(vec![quality_property(quality_code(s.quality))]));
    Some(Metric {
        alias: Some(dev.first_alias + i as u64),
        timestamp: Some(s.timestamp_ms()),
        is_historical: historical.then_some(true),
        is_null: value.is_none().then_some(true),
        properties,
        value,
        ..Metric::default()
    })
}

fn message(topic: &str, payload: &Payload) -> Message {
    Message {
        topic: topic.to_owned(),
        payload: payload.encode_to_vec(),
        retain: false,
        keys: Default::default(),
    }
}

/// Decodes a Sparkplug B payload (for subscribers, tests and tools).
pub fn decode_payload(bytes: &[u8]) -> Result<Payload, prost::DecodeError> {
    Payload::decode(bytes)
}

/// Encodes a Sparkplug B payload (for hosts' commands in tests and tools).
pub fn encode_payload(payload: &Payload) -> Vec<u8> {
    payload.encode_to_vec()
}

/// The value of a metric's `Quality` property, if it has one.
pub fn metric_quality(m: &Metric) -> Option<i32> {
    let props = m.properties.as_ref()?;
    let i = props.keys.iter().position(|k| k == PROP_QUALITY)?;
    match props.values.get(i)?.value.as_ref()? {
        property_value::Value::IntValue(v) => Some(*v as i32),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_model::{DeviceId, TagName};
    use proptest::prelude::*;

    fn node() -> EdgeNode {
        let mut temp = MetricDef::new("temp", DataType::U16);
        temp.scale = 0.1;
        temp.unit = Some("degC".into());
        let mut setpoint = MetricDef::new("setpoint", DataType::I16);
        setpoint.writable = true;
        EdgeNode::new(
            "plant1",
            "gw1",
            vec![
                DeviceDef {
                    name: "filler".into(),
                    metrics: vec![temp, MetricDef::new("count", DataType::U32), setpoint],
                },
                DeviceDef {
                    name: "capper".into(),
                    metrics: vec![MetricDef::new("running", DataType::Bool)],
                },
            ],
        )
    }

    fn sample(tag: &str, value: Option<Value>, quality: Quality, ts: u64) -> Sample {
        Sample {
            tag: TagName(tag.into()),
            value,
            quality,
            read_ts_ms: ts,
            source_ts_ms: None,
            seq: 0,
        }
    }

    fn batch(device: &str, samples: Vec<Sample>) -> Batch {
        Batch {
            device: DeviceId(device.into()),
            samples,
        }
    }

    fn good(tag: &str, v: Value, ts: u64) -> Sample {
        sample(tag, Some(v), Quality::Good, ts)
    }

    fn bad(tag: &str, ts: u64) -> Sample {
        sample(tag, None, Quality::Bad, ts)
    }

    fn decode(m: &Message) -> Payload {
        decode_payload(&m.payload).expect("a Sparkplug payload")
    }

    fn kind(m: &Message) -> &str {
        m.topic.split('/').nth(2).unwrap_or("")
    }

    fn seqs(msgs: &[Message]) -> Vec<Option<u64>> {
        msgs.iter().map(|m| decode(m).seq).collect()
    }

    #[test]
    fn topics_follow_the_sparkplug_namespace() {
        let mut n = node();
        let births = n.births(1);
        let topics: Vec<&str> = births.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "spBv1.0/plant1/NBIRTH/gw1",
                "spBv1.0/plant1/DBIRTH/gw1/filler",
                "spBv1.0/plant1/DBIRTH/gw1/capper",
            ]
        );
        assert_eq!(n.death(1).topic, "spBv1.0/plant1/NDEATH/gw1");
        assert_eq!(n.ncmd_topic(), "spBv1.0/plant1/NCMD/gw1");
        assert_eq!(n.dcmd_filter(), "spBv1.0/plant1/DCMD/gw1/+");
        let mut out = Vec::new();
        n.live(
            &batch("filler", vec![good("count", Value::U32(1), 2)]),
            3,
            &mut out,
        );
        assert_eq!(out[0].topic, "spBv1.0/plant1/DDATA/gw1/filler");
        assert!(births.iter().chain(&out).all(|m| !m.retain));
    }

    #[test]
    fn nbirth_has_seq_zero_the_bdseq_and_a_rebirth_metric_without_alias() {
        let mut n = node();
        n.set_bd_seq(7);
        let births = n.births(1000);
        let p = decode(&births[0]);
        assert_eq!(p.seq, Some(0));
        assert_eq!(p.timestamp, Some(1000));
        let bd = &p.metrics[0];
        assert_eq!(bd.name.as_deref(), Some("bdSeq"));
        assert_eq!(bd.datatype, Some(4));
        assert_eq!(bd.value, Some(metric::Value::LongValue(7)));
        let rebirth = &p.metrics[1];
        assert_eq!(rebirth.name.as_deref(), Some("Node Control/Rebirth"));
        assert_eq!(rebirth.alias, None);
        assert_eq!(rebirth.datatype, Some(11));
        assert_eq!(rebirth.value, Some(metric::Value::BooleanValue(false)));
    }

    #[test]
    fn the_will_is_an_ndeath_with_only_the_bdseq_and_no_seq() {
        let mut n = node();
        n.set_bd_seq(3);
        let p = decode(&n.death(5));
        assert_eq!(p.seq, None);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].name.as_deref(), Some("bdSeq"));
        assert_eq!(p.metrics[0].value, Some(metric::Value::LongValue(3)));
    }

    #[test]
    fn bdseq_starts_at_zero_and_wraps_after_255() {
        assert_eq!(EdgeNode::next_bd_seq(None), 0);
        assert_eq!(EdgeNode::next_bd_seq(Some(0)), 1);
        assert_eq!(EdgeNode::next_bd_seq(Some(254)), 255);
        assert_eq!(EdgeNode::next_bd_seq(Some(255)), 0);
    }

    #[test]
    fn dbirth_carries_name_alias_datatype_value_timestamp_and_properties() {
        let mut n = node();
        n.fold(&batch(
            "filler",
            vec![
                good("temp", Value::F64(21.5), 500),
                good("count", Value::U32(4_000_000_000), 501),
            ],
        ));
        let births = n.births(1000);
        let p = decode(&births[1]);
        assert_eq!(p.seq, Some(1));
        let temp = &p.metrics[0];
        assert_eq!(temp.name.as_deref(), Some("temp"));
        assert_eq!(temp.alias, Some(1));
        assert_eq!(temp.datatype, Some(SpType::Double.code()));
        assert_eq!(temp.value, Some(metric::Value::DoubleValue(21.5)));
        assert_eq!(temp.timestamp, Some(500));
        assert_eq!(metric_quality(temp), Some(192));
        let props = temp.properties.as_ref().expect("properties");
        assert_eq!(
            props.keys,
            ["Quality", "engUnit", "scale", "offset", "readOnly"]
        );
        assert_eq!(
            props.values[1].value,
            Some(property_value::Value::StringValue("degC".into()))
        );
        assert_eq!(
            props.values[2].value,
            Some(property_value::Value::DoubleValue(0.1))
        );
        let count = &p.metrics[1];
        assert_eq!(count.alias, Some(2));
        assert_eq!(count.datatype, Some(SpType::UInt32.code()));
        assert_eq!(
            count.value,
            Some(metric::Value::LongValue(4_000_000_000)),
            "UInt32 goes in long_value"
        );
        // Never read: null, stale, timestamped with the birth.
        let setpoint = &p.metrics[2];
        assert_eq!(setpoint.is_null, Some(true));
        assert_eq!(setpoint.value, None);
        assert_eq!(setpoint.timestamp, Some(1000));
        assert_eq!(metric_quality(setpoint), Some(500));
        let ro = setpoint.properties.as_ref().expect("properties");
        assert_eq!(
            ro.values.last().and_then(|v| v.value.clone()),
            Some(property_value::Value::BooleanValue(false)),
            "a writable metric is not read-only"
        );
        let capper = decode(&births[2]);
        assert_eq!(capper.metrics[0].alias, Some(4));
    }

    #[test]
    fn data_carries_aliases_only_no_names_and_no_datatypes() {
        let mut n = node();
        n.births(1);
        let mut out = Vec::new();
        n.live(
            &batch(
                "filler",
                vec![
                    good("temp", Value::F64(20.0), 10),
                    good("count", Value::U32(5), 11),
                ],
            ),
            12,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        let p = decode(&out[0]);
        assert_eq!(p.timestamp, Some(12));
        for m in &p.metrics {
            assert_eq!(m.name, None);
            assert_eq!(m.datatype, None);
            assert!(m.alias.is_some());
            assert_eq!(m.is_historical, None);
            assert_eq!(m.properties, None, "good quality is implied");
        }
        assert_eq!(p.metrics[0].timestamp, Some(10));
        assert_eq!(p.metrics[1].value, Some(metric::Value::LongValue(5)));
    }

    #[test]
    fn one_seq_counter_spans_births_data_and_device_deaths_and_wraps() {
        let mut n = node();
        let mut all = n.births(1);
        for i in 0..600u32 {
            n.live(
                &batch(
                    "capper",
                    vec![good("running", Value::Bool(i.is_multiple_of(2)), 2)],
                ),
                3,
                &mut all,
            );
        }
        n.live(&batch("capper", vec![bad("running", 4)]), 5, &mut all);
        assert_eq!(kind(all.last().expect("messages")), "DDEATH");
        let expected: Vec<Option<u64>> = (0..all.len()).map(|i| Some((i % 256) as u64)).collect();
        assert_eq!(seqs(&all), expected);
    }

    #[test]
    fn a_rebirth_starts_again_at_seq_zero_with_the_same_bdseq() {
        let mut n = node();
        n.set_bd_seq(9);
        let mut out = n.births(1);
        n.live(
            &batch("capper", vec![good("running", Value::Bool(true), 2)]),
            3,
            &mut out,
        );
        let again = n.births(4);
        let p = decode(&again[0]);
        assert_eq!(p.seq, Some(0));
        assert_eq!(p.metrics[0].value, Some(metric::Value::LongValue(9)));
        assert_eq!(
            decode(&again[2]).metrics[0].value,
            Some(metric::Value::BooleanValue(true))
        );
    }

    #[test]
    fn a_device_whose_tags_all_go_bad_dies_and_is_born_again_when_one_is_good() {
        let mut n = node();
        n.births(1);
        let mut out = Vec::new();
        n.live(
            &batch("capper", vec![good("running", Value::Bool(true), 2)]),
            3,
            &mut out,
        );
        out.clear();
        n.live(&batch("capper", vec![bad("running", 4)]), 5, &mut out);
        let kinds: Vec<&str> = out.iter().map(kind).collect();
        assert_eq!(kinds, ["DDATA", "DDEATH"]);
        assert_eq!(metric_quality(&decode(&out[0]).metrics[0]), Some(0));
        assert_eq!(decode(&out[0]).metrics[0].is_null, Some(true));
        assert!(!n.is_born("capper"));
        out.clear();
        // Still dead: nothing to say.
        n.live(&batch("capper", vec![bad("running", 6)]), 7, &mut out);
        assert!(out.is_empty());
        n.live(
            &batch("capper", vec![good("running", Value::Bool(false), 8)]),
            9,
            &mut out,
        );
        let kinds: Vec<&str> = out.iter().map(kind).collect();
        assert_eq!(kinds, ["DBIRTH"]);
        let p = decode(&out[0]);
        assert_eq!(p.metrics[0].value, Some(metric::Value::BooleanValue(false)));
        assert_eq!(p.metrics[0].timestamp, Some(8));
        assert!(n.is_born("capper"));
    }

    #[test]
    fn a_device_with_one_good_tag_among_bad_ones_is_alive() {
        let mut n = node();
        n.births(1);
        let mut out = Vec::new();
        n.live(
            &batch(
                "filler",
                vec![
                    bad("temp", 2),
                    good("count", Value::U32(1), 2),
                    bad("setpoint", 2),
                ],
            ),
            3,
            &mut out,
        );
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["DDATA"]);
        assert!(n.is_born("filler"));
    }

    #[test]
    fn a_device_dead_at_birth_time_is_declared_dead_by_deaths() {
        let mut n = node();
        n.fold(&batch("capper", vec![bad("running", 1)]));
        let births = n.births(2);
        assert_eq!(
            births.len(),
            3,
            "every device is born, so a backlog can be replayed"
        );
        assert_eq!(metric_quality(&decode(&births[2]).metrics[0]), Some(0));
        let deaths = n.deaths(3);
        assert_eq!(deaths.len(), 1);
        assert_eq!(deaths[0].topic, "spBv1.0/plant1/DDEATH/gw1/capper");
        let p = decode(&deaths[0]);
        assert_eq!(p.seq, Some(3));
        assert!(p.metrics.is_empty());
        assert!(n.deaths(4).is_empty(), "declared once");
    }

    #[test]
    fn replayed_batches_are_historical_and_do_not_change_the_latest_values() {
        let mut n = node();
        n.fold(&batch("filler", vec![good("count", Value::U32(9), 50)]));
        n.births(60);
        let mut out = Vec::new();
        n.historical(
            &batch("filler", vec![good("count", Value::U32(3), 20)]),
            61,
            &mut out,
        );
        let p = decode(&out[0]);
        assert_eq!(p.metrics[0].is_historical, Some(true));
        assert_eq!(p.metrics[0].value, Some(metric::Value::LongValue(3)));
        let rebirth = n.births(62);
        assert_eq!(
            decode(&rebirth[1]).metrics[1].value,
            Some(metric::Value::LongValue(9))
        );
    }

    #[test]
    fn historical_bad_samples_keep_the_device_born() {
        let mut n = node();
        n.births(1);
        let mut out = Vec::new();
        n.historical(&batch("capper", vec![bad("running", 1)]), 2, &mut out);
        assert_eq!(out.iter().map(kind).collect::<Vec<_>>(), ["DDATA"]);
        assert!(n.is_born("capper"));
    }

    #[test]
    fn unknown_devices_and_tags_are_counted_and_skipped() {
        let mut n = node();
        n.births(1);
        let mut out = Vec::new();
        assert_eq!(
            n.live(
                &batch("press", vec![good("x", Value::U16(1), 1)]),
                2,
                &mut out
            ),
            1
        );
        assert!(out.is_empty());
        assert_eq!(
            n.live(
                &batch(
                    "filler",
                    vec![
                        good("gone", Value::U16(1), 1),
                        good("count", Value::U32(1), 1)
                    ]
                ),
                2,
                &mut out
            ),
            1
        );
        assert_eq!(decode(&out[0]).metrics.len(), 1);
    }

    #[test]
    fn a_batch_reading_a_tag_twice_on_rebirth_also_sends_the_earlier_value() {
        let mut n = node();
        n.fold(&batch("capper", vec![bad("running", 1)]));
        n.births(2);
        n.deaths(3);
        let mut out = Vec::new();
        n.live(
            &batch(
                "capper",
                vec![
                    good("running", Value::Bool(true), 4),
                    good("running", Value::Bool(false), 5),
                ],
            ),
            6,
            &mut out,
        );
        assert_eq!(
            out.iter().map(kind).collect::<Vec<_>>(),
            ["DBIRTH", "DDATA"]
        );
        assert_eq!(decode(&out[1]).metrics.len(), 2);
    }

    #[test]
    fn uncertain_and_bad_values_carry_their_quality_in_data() {
        let mut n = node();
        n.births(1);
        let mut out = Vec::new();
        n.live(
            &batch(
                "filler",
                vec![
                    sample("count", Some(Value::U32(1)), Quality::Uncertain, 1),
                    good("temp", Value::F64(1.0), 1),
                ],
            ),
            2,
            &mut out,
        );
        let p = decode(&out[0]);
        assert_eq!(metric_quality(&p.metrics[0]), Some(64));
        assert_eq!(metric_quality(&p.metrics[1]), None);
    }

    #[test]
    fn aliases_are_unique_across_the_node() {
        let n = node();
        let mut seen = std::collections::HashSet::new();
        for (d, t) in [
            ("filler", "temp"),
            ("filler", "count"),
            ("filler", "setpoint"),
            ("capper", "running"),
        ] {
            assert!(seen.insert(n.alias(d, t).expect("known")));
        }
        assert_eq!(n.metric_count(), 4);
        assert_eq!(n.alias("filler", "nope"), None);
    }

    /// An OPC UA-like gateway: `mixer` has one typed metric and three that keep the server's
    /// type; every metric of `oven` keeps the server's type.
    fn opcua_node() -> EdgeNode {
        let mut recipe = MetricDef::untyped("recipe");
        recipe.writable = true;
        EdgeNode::new(
            "plant1",
            "gw1",
            vec![
                DeviceDef {
                    name: "mixer".into(),
                    metrics: vec![
                        MetricDef::new("speed", DataType::F64),
                        MetricDef::untyped("state"),
                        recipe,
                        MetricDef::untyped("total"),
                    ],
                },
                DeviceDef {
                    name: "oven".into(),
                    metrics: vec![MetricDef::untyped("temp"), MetricDef::untyped("door")],
                },
            ],
        )
    }

    fn names(p: &Payload) -> Vec<&str> {
        p.metrics.iter().filter_map(|m| m.name.as_deref()).collect()
    }

    fn named<'a>(p: &'a Payload, name: &str) -> &'a Metric {
        p.metrics
            .iter()
            .find(|m| m.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no metric {name} in {:?}", names(p)))
    }

    fn kinds(msgs: &[Message]) -> Vec<&str> {
        msgs.iter().map(kind).collect()
    }

    #[test]
    fn a_metric_def_is_typed_by_new_and_untyped_by_untyped() {
        let typed = MetricDef::new("count", DataType::U32);
        assert_eq!(typed.data_type, Some(DataType::U32));
        assert_eq!(typed.sp_type(), Some(SpType::UInt32));
        assert_eq!(
            typed.sp_type_with(&Value::String("x".into())),
            SpType::UInt32
        );
        let untyped = MetricDef::untyped("state");
        assert_eq!(untyped.data_type, None);
        assert_eq!(untyped.sp_type(), None);
        assert_eq!(untyped.sp_type_with(&Value::I32(1)), SpType::Int32);
        assert_eq!(
            (untyped.scale, untyped.offset, untyped.writable),
            (1.0, 0.0, false)
        );
    }

    #[test]
    fn an_untyped_metric_is_left_out_of_the_birth_until_its_first_value_brings_a_rebirth() {
        let mut n = opcua_node();
        let births = n.births(1);
        let mixer = decode(&births[1]);
        assert_eq!(births[1].topic, "spBv1.0/plant1/DBIRTH/gw1/mixer");
        assert_eq!(names(&mixer), ["speed"]);
        // A bad reading says nothing of the type: DATA for the declared metrics only.
        let mut out = Vec::new();
        n.live(
            &batch(
                "mixer",
                vec![good("speed", Value::F64(3.5), 2), bad("state", 2)],
            ),
            3,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
        let p = decode(&out[0]);
        assert_eq!(p.metrics.len(), 1);
        assert_eq!(p.metrics[0].alias, Some(1));
        out.clear();
        // The first value: the device is born again with it, the birth carrying the value.
        n.live(
            &batch("mixer", vec![good("state", Value::I32(2), 4)]),
            5,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DBIRTH"]);
        let p = decode(&out[0]);
        assert_eq!(names(&p), ["speed", "state"]);
        let state = named(&p, "state");
        assert_eq!(state.alias, Some(2));
        assert_eq!(state.datatype, Some(SpType::Int32.code()));
        assert_eq!(state.value, Some(metric::Value::IntValue(2)));
        assert_eq!(state.timestamp, Some(4));
        assert_eq!(metric_quality(state), Some(192));
        assert_eq!(
            named(&p, "speed").value,
            Some(metric::Value::DoubleValue(3.5)),
            "the rebirth carries every known metric's latest value"
        );
        out.clear();
        // Then DATA as for any other metric.
        n.live(
            &batch("mixer", vec![good("state", Value::I32(3), 6)]),
            7,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
        let m = &decode(&out[0]).metrics[0];
        assert_eq!((m.alias, m.datatype), (Some(2), None));
        assert_eq!(m.value, Some(metric::Value::IntValue(3)));
    }

    #[test]
    fn a_first_value_read_twice_in_a_batch_is_declared_by_the_rebirth_before_its_data() {
        let mut n = opcua_node();
        let mut out = n.births(1);
        n.live(
            &batch(
                "mixer",
                vec![
                    good("total", Value::U32(10), 2),
                    good("total", Value::U32(11), 3),
                ],
            ),
            4,
            &mut out,
        );
        assert_eq!(kinds(&out), ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA"]);
        assert!(!names(&decode(&out[1])).contains(&"total"));
        let rebirth = decode(&out[2]);
        assert_eq!(
            named(&rebirth, "total").datatype,
            Some(SpType::UInt32.code())
        );
        let data = decode(&out[3]);
        assert!(data.metrics.iter().all(|m| m.alias == Some(4)));
        assert_eq!(data.metrics.len(), 2);
        assert_eq!(seqs(&out), [Some(0), Some(1), Some(2), Some(3)]);
    }

    #[test]
    fn a_uint32_of_the_servers_type_is_announced_as_uint32_in_long_value() {
        let mut n = opcua_node();
        n.births(1);
        let mut out = Vec::new();
        n.live(
            &batch("mixer", vec![good("total", Value::U32(4_000_000_000), 2)]),
            3,
            &mut out,
        );
        let total = named(&decode(&out[0]), "total").clone();
        assert_eq!(total.datatype, Some(7));
        assert_eq!(total.value, Some(metric::Value::LongValue(4_000_000_000)));
        out.clear();
        n.live(
            &batch("mixer", vec![good("total", Value::U32(u32::MAX), 4)]),
            5,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
        assert_eq!(
            decode(&out[0]).metrics[0].value,
            Some(metric::Value::LongValue(u32::MAX.into()))
        );
    }

    #[test]
    fn strings_and_enumerations_of_an_opc_ua_device_are_announced_with_their_own_types() {
        let mut n = opcua_node();
        n.births(1);
        let mut out = Vec::new();
        // An enumeration arrives as its Int32 value; a String as a string.
        n.live(
            &batch(
                "mixer",
                vec![
                    good("state", Value::I32(-1), 2),
                    good("recipe", Value::String("PVC-20".into()), 2),
                ],
            ),
            3,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DBIRTH"], "one rebirth for both");
        let p = decode(&out[0]);
        assert_eq!(names(&p), ["speed", "state", "recipe"]);
        let state = named(&p, "state");
        assert_eq!(state.datatype, Some(3));
        assert_eq!(state.value, Some(metric::Value::IntValue(0xFFFF_FFFF)));
        let recipe = named(&p, "recipe");
        assert_eq!(recipe.datatype, Some(12));
        assert_eq!(
            recipe.value,
            Some(metric::Value::StringValue("PVC-20".into()))
        );
        out.clear();
        n.live(
            &batch(
                "mixer",
                vec![good("recipe", Value::String("PE-5".into()), 4)],
            ),
            5,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
        assert_eq!(
            decode(&out[0]).metrics[0].value,
            Some(metric::Value::StringValue("PE-5".into()))
        );
    }

    #[test]
    fn a_value_of_another_type_than_the_birth_declared_brings_a_rebirth() {
        let mut n = opcua_node();
        n.births(1);
        let mut out = Vec::new();
        n.live(
            &batch("mixer", vec![good("state", Value::I32(2), 2)]),
            3,
            &mut out,
        );
        out.clear();
        // The server's variable became a Double.
        n.live(
            &batch("mixer", vec![good("state", Value::F64(2.5), 4)]),
            5,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DBIRTH"]);
        let state = named(&decode(&out[0]), "state").clone();
        assert_eq!(state.datatype, Some(SpType::Double.code()));
        assert_eq!(state.value, Some(metric::Value::DoubleValue(2.5)));
        out.clear();
        n.live(
            &batch("mixer", vec![good("state", Value::F64(3.0), 6)]),
            7,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
        // A typed metric keeps its configured type whatever arrives.
        out.clear();
        n.live(
            &batch("mixer", vec![good("speed", Value::I32(7), 8)]),
            9,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
        assert_eq!(
            decode(&out[0]).metrics[0].value,
            Some(metric::Value::DoubleValue(7.0))
        );
        let again = n.births(10);
        let mixer = decode(&again[1]);
        assert_eq!(named(&mixer, "speed").datatype, Some(SpType::Double.code()));
        assert_eq!(named(&mixer, "state").datatype, Some(SpType::Double.code()));
    }

    #[test]
    fn aliases_stay_those_of_the_definition_order_across_rebirths() {
        let mut n = opcua_node();
        let expected = [
            ("mixer", "speed", 1),
            ("mixer", "state", 2),
            ("mixer", "recipe", 3),
            ("mixer", "total", 4),
            ("oven", "temp", 5),
            ("oven", "door", 6),
        ];
        for (d, t, alias) in expected {
            assert_eq!(n.alias(d, t), Some(alias), "{d}/{t}");
        }
        let mut all = n.births(1);
        n.live(
            &batch("mixer", vec![good("total", Value::U32(1), 2)]),
            3,
            &mut all,
        );
        n.live(
            &batch("oven", vec![good("door", Value::Bool(true), 4)]),
            5,
            &mut all,
        );
        n.live(
            &batch("mixer", vec![good("state", Value::I32(1), 6)]),
            7,
            &mut all,
        );
        n.live(
            &batch("mixer", vec![good("state", Value::String("run".into()), 8)]),
            9,
            &mut all,
        );
        all.extend(n.births(10));
        let mut births = 0;
        for m in all.iter().filter(|m| kind(m) == "DBIRTH") {
            births += 1;
            let device = m.topic.rsplit('/').next().expect("a device");
            for metric in &decode(m).metrics {
                let name = metric.name.as_deref().expect("births carry names");
                assert_eq!(metric.alias, n.alias(device, name), "{device}/{name}");
            }
        }
        assert_eq!(births, 7);
        for (d, t, alias) in expected {
            assert_eq!(n.alias(d, t), Some(alias), "{d}/{t}");
        }
    }

    #[test]
    fn a_device_whose_metrics_are_all_untyped_is_not_born_until_a_value_arrives() {
        let mut n = opcua_node();
        // NBIRTH is the same as ever, and the oven gets no (empty) DBIRTH: nothing could be
        // declared.
        let mut all = n.births(1);
        assert_eq!(kinds(&all), ["NBIRTH", "DBIRTH"]);
        assert_eq!(all[1].topic, "spBv1.0/plant1/DBIRTH/gw1/mixer");
        assert_eq!(names(&decode(&all[0])), [BD_SEQ, REBIRTH]);
        assert!(!n.is_born("oven"));
        // Never born, so never declared dead, and a bad reading says nothing.
        assert!(n.deaths(2).is_empty());
        n.live(&batch("oven", vec![bad("temp", 3)]), 3, &mut all);
        n.historical(&batch("oven", vec![bad("door", 3)]), 3, &mut all);
        assert_eq!(all.len(), 2);
        assert!(!n.is_born("oven"));
        n.live(
            &batch("oven", vec![good("temp", Value::F32(180.5), 4)]),
            5,
            &mut all,
        );
        assert_eq!(kinds(&all[2..]), ["DBIRTH"]);
        assert_eq!(all[2].topic, "spBv1.0/plant1/DBIRTH/gw1/oven");
        let p = decode(&all[2]);
        assert_eq!(names(&p), ["temp"]);
        assert_eq!(p.metrics[0].datatype, Some(SpType::Float.code()));
        assert_eq!(p.metrics[0].value, Some(metric::Value::FloatValue(180.5)));
        assert!(n.is_born("oven"));
        assert_eq!(seqs(&all), [Some(0), Some(1), Some(2)]);
        // A rebirth now includes it.
        let again = n.births(6);
        assert_eq!(kinds(&again), ["NBIRTH", "DBIRTH", "DBIRTH"]);
        assert_eq!(names(&decode(&again[2])), ["temp"]);
    }

    #[test]
    fn folded_values_give_untyped_metrics_their_types_before_the_births() {
        let mut n = opcua_node();
        n.fold(&batch(
            "mixer",
            vec![
                good("state", Value::I32(1), 10),
                good("state", Value::F64(1.5), 20),
            ],
        ));
        n.fold(&batch("oven", vec![good("door", Value::Bool(false), 30)]));
        let births = n.births(40);
        assert_eq!(kinds(&births), ["NBIRTH", "DBIRTH", "DBIRTH"]);
        let mixer = decode(&births[1]);
        assert_eq!(names(&mixer), ["speed", "state"]);
        let state = named(&mixer, "state");
        assert_eq!(
            state.datatype,
            Some(SpType::Double.code()),
            "the newest type"
        );
        assert_eq!(state.value, Some(metric::Value::DoubleValue(1.5)));
        assert_eq!(names(&decode(&births[2])), ["door"]);
        // The replay of the same backlog brings no rebirth: older values of another type are
        // sent as the declared one when they convert, else as null.
        let mut out = Vec::new();
        n.historical(
            &batch(
                "mixer",
                vec![
                    good("state", Value::I32(1), 10),
                    good("state", Value::String("x".into()), 15),
                    good("state", Value::F64(1.5), 20),
                ],
            ),
            41,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
        let p = decode(&out[0]);
        assert!(p.metrics.iter().all(|m| m.is_historical == Some(true)));
        assert_eq!(p.metrics[0].value, Some(metric::Value::DoubleValue(1.0)));
        assert_eq!(p.metrics[1].is_null, Some(true));
        assert_eq!(p.metrics[2].value, Some(metric::Value::DoubleValue(1.5)));
    }

    #[test]
    fn a_replayed_first_value_of_an_untyped_metric_brings_a_rebirth_before_its_data() {
        let mut n = opcua_node();
        let mut out = n.births(1);
        n.historical(
            &batch("mixer", vec![good("total", Value::U32(7), 0)]),
            2,
            &mut out,
        );
        n.historical(
            &batch("oven", vec![good("temp", Value::F64(20.0), 0)]),
            3,
            &mut out,
        );
        assert_eq!(
            kinds(&out),
            ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA", "DBIRTH", "DDATA"]
        );
        assert_eq!(out[4].topic, "spBv1.0/plant1/DBIRTH/gw1/oven");
        let rebirth = decode(&out[2]);
        let total = named(&rebirth, "total");
        assert_eq!(total.datatype, Some(SpType::UInt32.code()));
        // A replayed value is not the latest: the birth has none for it.
        assert_eq!(total.is_null, Some(true));
        assert_eq!(metric_quality(total), Some(500));
        let data = decode(&out[3]);
        assert_eq!(data.metrics[0].alias, Some(4));
        assert_eq!(data.metrics[0].is_historical, Some(true));
        assert_eq!(data.metrics[0].value, Some(metric::Value::LongValue(7)));
        let oven = decode(&out[5]);
        assert_eq!(
            oven.metrics[0].value,
            Some(metric::Value::DoubleValue(20.0))
        );
        let expected: Vec<Option<u64>> = (0..out.len() as u64).map(Some).collect();
        assert_eq!(seqs(&out), expected);
    }

    #[test]
    fn an_untyped_device_that_dies_is_born_again_with_the_types_it_learned() {
        let mut n = opcua_node();
        let mut out = n.births(1);
        n.live(
            &batch("oven", vec![good("temp", Value::F32(20.0), 2)]),
            2,
            &mut out,
        );
        out.clear();
        // The PLC is lost, and its last word is a bad value of a new type: DATA as the
        // declared type, then death; the type waits for the next birth.
        n.live(
            &batch(
                "oven",
                vec![sample("temp", Some(Value::I32(5)), Quality::Bad, 3)],
            ),
            3,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA", "DDEATH"]);
        let m = &decode(&out[0]).metrics[0];
        assert_eq!(m.value, Some(metric::Value::FloatValue(5.0)));
        assert_eq!(metric_quality(m), Some(0));
        assert!(!n.is_born("oven"));
        out.clear();
        n.live(&batch("oven", vec![bad("temp", 4)]), 4, &mut out);
        assert!(out.is_empty());
        n.live(
            &batch("oven", vec![good("temp", Value::I32(6), 5)]),
            5,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DBIRTH"]);
        let temp = named(&decode(&out[0]), "temp").clone();
        assert_eq!(temp.datatype, Some(SpType::Int32.code()));
        assert_eq!(temp.value, Some(metric::Value::IntValue(6)));
    }

    #[test]
    fn a_scaled_untyped_metric_is_a_double_from_the_first_birth() {
        let mut level = MetricDef::untyped("level");
        level.scale = 0.5;
        let mut n = EdgeNode::new(
            "plant1",
            "gw1",
            vec![DeviceDef {
                name: "tank".into(),
                metrics: vec![level],
            }],
        );
        let births = n.births(1);
        let p = decode(&births[1]);
        assert_eq!(p.metrics[0].datatype, Some(SpType::Double.code()));
        assert_eq!(p.metrics[0].is_null, Some(true));
        let mut out = Vec::new();
        n.live(
            &batch("tank", vec![good("level", Value::F64(4.5), 2)]),
            3,
            &mut out,
        );
        assert_eq!(kinds(&out), ["DDATA"]);
    }

    proptest! {
        #[test]
        fn seq_is_always_previous_plus_one_modulo_256_between_births(
            steps in proptest::collection::vec((0u8..4, any::<bool>()), 1..400)
        ) {
            let mut n = node();
            let mut out = n.births(0);
            for (i, (what, flag)) in steps.into_iter().enumerate() {
                let ts = i as u64;
                match what {
                    0 => n.live(&batch("capper", vec![good("running", Value::Bool(flag), ts)]), ts, &mut out),
                    1 => n.live(&batch("capper", vec![bad("running", ts)]), ts, &mut out),
                    2 => n.historical(&batch("filler", vec![good("count", Value::U32(i as u32), ts)]), ts, &mut out),
                    _ => { out.extend(n.deaths(ts)); 0 }
                };
            }
            let mut expected = 0u64;
            for m in &out {
                let p = decode(m);
                prop_assert_eq!(p.seq, Some(expected));
                expected = (expected + 1) % 256;
            }
        }

        #[test]
        fn data_carries_only_declared_metrics_in_their_declared_field_and_good_values_are_sent(
            steps in proptest::collection::vec((0u8..8, 0usize..6, 0u8..6, any::<i32>()), 1..200)
        ) {
            let tags = [
                ("mixer", "speed"), ("mixer", "state"), ("mixer", "recipe"),
                ("mixer", "total"), ("oven", "temp"), ("oven", "door"),
            ];
            let mut n = opcua_node();
            let mut out = n.births(0);
            for (i, (what, tag, kind_of, x)) in steps.into_iter().enumerate() {
                let ts = i as u64;
                let (device, tag) = tags[tag];
                let value = match kind_of {
                    0 => None,
                    1 => Some(Value::I32(x)),
                    2 => Some(Value::U32(x as u32)),
                    3 => Some(Value::F64(f64::from(x) / 8.0)),
                    4 => Some(Value::String(x.to_string())),
                    _ => Some(Value::Bool(x % 2 == 0)),
                };
                let quality = if value.is_none() || x % 7 == 0 { Quality::Bad } else { Quality::Good };
                let b = batch(device, vec![sample(tag, value, quality, ts)]);
                match what {
                    0..=3 => {
                        let before = out.len();
                        n.live(&b, ts, &mut out);
                        // A good value is published, in DATA or by the birth it brings, and as
                        // a value of its own type (a typed metric's may not convert: null).
                        if quality == Quality::Good {
                            let alias = n.alias(device, tag);
                            let typed = tag == "speed";
                            let sent = out[before..].iter().any(|m| {
                                decode(m).metrics.iter().any(|x| {
                                    x.alias == alias && (typed || x.is_null.is_none())
                                })
                            });
                            prop_assert!(sent, "a good value of {}/{} was not sent", device, tag);
                        }
                    }
                    4 => { n.fold(&b); }
                    5 => { n.historical(&b, ts, &mut out); }
                    6 => out.extend(n.deaths(ts)),
                    _ => out.extend(n.births(ts)),
                }
            }
            // What each device's current birth declared: alias → datatype.
            let mut declared: HashMap<&str, HashMap<u64, u32>> = HashMap::new();
            let mut expected_seq = 0u64;
            for m in &out {
                let p = decode(m);
                let device = m.topic.rsplit('/').next().unwrap_or("");
                match kind(m) {
                    "NBIRTH" => {
                        expected_seq = 0;
                        declared.clear();
                    }
                    "DBIRTH" => {
                        prop_assert!(!p.metrics.is_empty(), "an empty DBIRTH");
                        declared.insert(device, p.metrics.iter()
                            .map(|x| (x.alias.unwrap_or(0), x.datatype.unwrap_or(0)))
                            .collect());
                    }
                    "DDEATH" => {
                        prop_assert!(declared.remove(device).is_some(), "DDEATH of an unborn device");
                    }
                    "DDATA" => {
                        let birth = declared.get(device);
                        prop_assert!(birth.is_some(), "DDATA before a DBIRTH");
                        for x in &p.metrics {
                            let alias = x.alias.unwrap_or(0);
                            let t = birth.and_then(|b| b.get(&alias)).copied();
                            prop_assert!(t.is_some(), "alias {} not in the birth", alias);
                            let t = t.and_then(SpType::from_code);
                            let fits = match (&x.value, t) {
                                (None, _) => x.is_null == Some(true),
                                (Some(metric::Value::IntValue(_)), Some(SpType::Int32)) => true,
                                (Some(metric::Value::LongValue(_)), Some(SpType::UInt32)) => true,
                                (Some(metric::Value::DoubleValue(_)), Some(SpType::Double)) => true,
                                (Some(metric::Value::StringValue(_)), Some(SpType::String)) => true,
                                (Some(metric::Value::BooleanValue(_)), Some(SpType::Boolean)) => true,
                                _ => false,
                            };
                            prop_assert!(fits, "{:?} declared {:?}", x.value, t);
                        }
                    }
                    other => prop_assert!(false, "unexpected {}", other),
                }
                prop_assert_eq!(p.seq, Some(expected_seq));
                expected_seq = (expected_seq + 1) % 256;
            }
        }

        #[test]
        fn data_never_follows_a_ddeath_without_a_dbirth_between(
            steps in proptest::collection::vec(any::<bool>(), 1..100)
        ) {
            let mut n = node();
            let mut out = n.births(0);
            for (i, good_read) in steps.into_iter().enumerate() {
                let s = if good_read { good("running", Value::Bool(true), i as u64) } else { bad("running", i as u64) };
                n.live(&batch("capper", vec![s]), i as u64, &mut out);
            }
            let mut born = true;
            for m in out.iter().filter(|m| m.topic.ends_with("/capper")) {
                match kind(m) {
                    "DBIRTH" => born = true,
                    "DDEATH" => { prop_assert!(born); born = false; }
                    "DDATA" => prop_assert!(born),
                    other => prop_assert!(false, "unexpected {}", other),
                }
            }
        }
    }
}
