//! The MES rules (SPEC §6): stored batches of a machine's devices in, production facts out.
//! Pure and deterministic: the events of a batch depend only on the batch and on the bridge's
//! memory (last counter readings, current order, current state and since when), and that
//! memory can be saved as a checkpoint and restored.
//!
//! # How events survive crashes and outages without double counting
//!
//! The publisher derives events from stored records as it publishes them, in record order,
//! and sends them in the same window as the telemetry of the record: a record is acknowledged
//! (the northbound's cursor moves past it) only once the broker has acknowledged its events
//! too. With each cursor move the publisher stores, in the same atomic store write, the
//! checkpoint of the bridge's memory as of the records below the new cursor. After a crash or
//! a lost connection, publishing resumes from the cursor with the memory restored from that
//! checkpoint, so the records after the cursor are derived again from exactly the memory they
//! were derived from the first time: the same events with the same `event_id`s (the id is
//! built from the machine, the kind and the device `seq` of the sample behind the event). A
//! consumer that deduplicates by `event_id` counts every part once. Counters are cumulative in
//! the PLC, so even records lost to quota eviction only lose event detail: the next reading
//! counts what was produced meanwhile.
//!
//! # Within one batch (one scan of one device)
//!
//! A batch comes from one device and feeds only the roles of a machine that name that device
//! (a machine may take its work order from an OPC UA server and its counters from a Modbus
//! PLC). Counters are compared first, then the product and work order, then the state word.
//! Parts counted in the scan that shows a new work order were made before the PLC switched, so
//! they go to the order that ends, with its product, except parts counted after a counter reset
//! in that scan (the PLC cleared the counter for the new order), which go to the new order. A
//! product read in the scan of an order change is the new order's: the completion carries the
//! product, totals and start of the order that ended, also when the order ends without a next
//! one, and the start the new product. A product change without an order change updates the
//! running order, after the parts of its scan (made before the change) are counted. Bad
//! readings leave counters and the order as they were; a bad state word reads as `unknown`.
//!
//! The events of one scan come in this order: `production/count` for the order that ends,
//! `workorder/complete`, `workorder/start`, `production/count` for the new order (after a
//! reset), `workorder/current`, then `state/change` and `state/current`. The old order's books
//! close before anything of the new order appears, so a consumer that totals by order never sees
//! a part of one order after the start of the next. The state comes last because an MES books a
//! state period to the order running when the period began (availability per order, for OEE):
//! the state a changeover scan shows (changeover, or running) belongs to the new order, while
//! the period it ends, which `state/change` reports as `previous_*`, began under the old one.
//!
//! # Across devices
//!
//! Batches of different devices come in store order, and their events in that order; nothing
//! ties one device's scan to another's. So parts counted on one device go to the order running
//! when their batch comes, and a state word on another device than the work order changes
//! when its own batch says so. Product and work order on different devices need a rule, since
//! a PLC that switches both at once shows them in two batches:
//!
//! - product first: it updates the running order at once (`workorder/current`), but
//!   provisionally. If the next batch of the work order's device shows a new order, the product
//!   was the new order's: the completion carries the product the old order had, the start the
//!   new one. Any other batch of that device (the order unchanged, or not read) makes the change
//!   the running order's. The provisional change is part of the checkpoint.
//! - work order first: the start carries the product known when it was read; the product read
//!   next updates the running order (`workorder/current`, and its completion later).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use edge_model::{Batch, DeviceId, Quality, Sample, Value};
use serde::{Deserialize, Serialize};

use crate::counter::{raw_count, step, Step};
use crate::events::{MesEncoder, MesEvent, Order, Origin, StateInfo};
use crate::machine::{CounterSpec, MachineSpec, MachineState, TagRef};
use crate::uns::Message;

/// The checkpoint format this build writes and reads.
const CHECKPOINT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the MES checkpoint is not readable: {0}")]
    Unreadable(String),
    #[error("the MES checkpoint has format version {0}, unknown to this build")]
    UnknownVersion(u32),
}

/// What the bridge remembers of one machine between batches (and across restarts).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Memory {
    #[serde(default)]
    good: Option<CounterMemory>,
    #[serde(default)]
    scrap: Option<CounterMemory>,
    #[serde(default)]
    order: Option<Order>,
    /// The product last read (applies to the next order).
    #[serde(default)]
    product: Option<String>,
    /// A product change of the running order that the next batch of the work order's device
    /// may yet give to a new order.
    #[serde(default)]
    provisional: Option<ProductBefore>,
    #[serde(default)]
    state: Option<StateInfo>,
}

/// The product the running order had before a provisional product change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProductBefore {
    product: Option<String>,
}

/// The last good reading of a counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CounterMemory {
    /// The device and tag it was read from: a checkpoint of a counter since moved to another
    /// tag or device is not a baseline for the new one. Checkpoints written before a machine
    /// could read several devices have no device: theirs is the machine's home device.
    #[serde(default)]
    device: Option<String>,
    tag: String,
    raw: u64,
    at_ms: u64,
}

impl CounterMemory {
    fn read_from(&self, tag: &TagRef, home: &DeviceId) -> bool {
        let device = self.device.as_deref().unwrap_or(&home.0);
        device == tag.device.0 && self.tag == tag.tag.0
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Checkpoint {
    version: u32,
    machines: BTreeMap<String, Memory>,
}

#[derive(Debug, Clone)]
struct MachineRules {
    spec: MachineSpec,
    memory: Memory,
}

/// One machine now: its state, its running order (with the parts counted for it) and the
/// product last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStatus {
    pub name: String,
    pub device: String,
    pub state: Option<StateInfo>,
    pub order: Option<Order>,
    pub product: Option<String>,
}

/// The MES rules of every configured machine, with the encoder of their events.
#[derive(Debug, Clone)]
pub struct MesBridge {
    machines: Vec<MachineRules>,
    by_device: HashMap<DeviceId, Vec<usize>>,
    encoder: MesEncoder,
}

impl MesBridge {
    /// `root` is the topic root the events are published under.
    pub fn new(root: &str, specs: Vec<MachineSpec>) -> MesBridge {
        let mut by_device: HashMap<DeviceId, Vec<usize>> = HashMap::new();
        for (i, spec) in specs.iter().enumerate() {
            let devices: BTreeSet<&DeviceId> = spec.tags().map(|t| &t.device).collect();
            for device in devices {
                by_device.entry(device.clone()).or_default().push(i);
            }
        }
        MesBridge {
            machines: specs
                .into_iter()
                .map(|spec| MachineRules {
                    spec,
                    memory: Memory::default(),
                })
                .collect(),
            by_device,
            encoder: MesEncoder::new(root),
        }
    }

    /// No machine is configured: nothing to do for any batch.
    pub fn is_empty(&self) -> bool {
        self.machines.is_empty()
    }

    /// Whether batches of `device` concern any machine.
    pub fn watches(&self, device: &DeviceId) -> bool {
        self.by_device.contains_key(device)
    }

    /// What every machine is doing, as far as the batches seen so far tell.
    pub fn status(&self) -> Vec<MachineStatus> {
        self.machines
            .iter()
            .map(|m| MachineStatus {
                name: m.spec.name.clone(),
                device: m.spec.device.0.clone(),
                state: m.memory.state.clone(),
                order: m.memory.order.clone(),
                product: m.memory.product.clone(),
            })
            .collect()
    }

    /// Forgets everything learnt: the next readings are baselines.
    pub fn reset(&mut self) {
        for m in &mut self.machines {
            m.memory = Memory::default();
        }
    }

    /// The memory of every machine, to be stored with the cursor it belongs to.
    pub fn checkpoint(&self) -> Vec<u8> {
        let cp = Checkpoint {
            version: CHECKPOINT_VERSION,
            machines: self
                .machines
                .iter()
                .map(|m| (m.spec.name.clone(), m.memory.clone()))
                .collect(),
        };
        // Plain strings, numbers and options: serialising cannot fail.
        serde_json::to_vec(&cp).unwrap_or_default()
    }

    /// Takes back the memory saved by [`MesBridge::checkpoint`]. Machines the checkpoint does
    /// not know (newly configured) start fresh, and so does a counter whose tag changed. On an
    /// error nothing is changed.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), CheckpointError> {
        let cp: Checkpoint = serde_json::from_slice(bytes)
            .map_err(|e| CheckpointError::Unreadable(e.to_string()))?;
        if cp.version != CHECKPOINT_VERSION {
            return Err(CheckpointError::UnknownVersion(cp.version));
        }
        let mut machines = cp.machines;
        for m in &mut self.machines {
            let mut memory = machines.remove(&m.spec.name).unwrap_or_default();
            let home = &m.spec.device;
            memory.good = baseline(memory.good, m.spec.good.as_ref(), home);
            memory.scrap = baseline(memory.scrap, m.spec.scrap.as_ref(), home);
            m.memory = memory;
        }
        Ok(())
    }

    /// Runs the rules over one stored batch and appends the events to `out`. Returns whether
    /// the memory may have changed (the batch held a tag of some machine): only then does a
    /// new checkpoint need to be taken.
    pub fn observe(&mut self, batch: &Batch, out: &mut Vec<MesEvent>) -> bool {
        let Some(indices) = self.by_device.get(&batch.device) else {
            return false;
        };
        let mut touched = false;
        for &i in indices {
            if let Some(m) = self.machines.get_mut(i) {
                touched |= m.observe(batch, out);
            }
        }
        touched
    }

    /// [`MesBridge::observe`] and encode: appends the messages of the batch's events to `out`.
    pub fn encode(&mut self, batch: &Batch, replay: bool, out: &mut Vec<Message>) -> bool {
        if !self.watches(&batch.device) {
            return false;
        }
        let mut events = Vec::new();
        let touched = self.observe(batch, &mut events);
        self.encoder.encode(&events, replay, out);
        touched
    }
}

/// A restored counter reading, if it is still a baseline for the configured counter: read from
/// the same device and tag. It comes back naming its device, so the next checkpoint does.
fn baseline(
    memory: Option<CounterMemory>,
    spec: Option<&CounterSpec>,
    home: &DeviceId,
) -> Option<CounterMemory> {
    let spec = spec?;
    let memory = memory.filter(|c| c.read_from(&spec.tag, home))?;
    Some(CounterMemory {
        device: Some(spec.tag.device.0.clone()),
        ..memory
    })
}

/// The last sample of `tag` in the batch with good quality and a value (none if the batch is
/// of another device).
fn last_good<'b>(batch: &'b Batch, tag: Option<&TagRef>) -> Option<&'b Sample> {
    let tag = tag.filter(|t| t.device == batch.device)?;
    batch
        .samples
        .iter()
        .rev()
        .find(|s| s.tag == tag.tag && s.quality == Quality::Good && s.value.is_some())
}

/// A work order or product id as text: strings trimmed, integers in decimal; empty text and
/// the number 0 mean "none".
fn id_text(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Bool(_) | Value::F32(_) | Value::F64(_) => value.to_string(),
        integer => {
            let t = integer.to_string();
            if t == "0" {
                String::new()
            } else {
                t
            }
        }
    };
    (!text.is_empty()).then_some(text)
}

/// A state word as an integer: bools read as 0 and 1.
fn state_value(value: &Value) -> Option<i64> {
    match *value {
        Value::Bool(b) => Some(i64::from(b)),
        Value::I16(v) => Some(i64::from(v)),
        Value::U16(v) => Some(i64::from(v)),
        Value::I32(v) => Some(i64::from(v)),
        Value::U32(v) => Some(i64::from(v)),
        Value::I64(v) => Some(v),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::F32(_) | Value::F64(_) | Value::String(_) => None,
    }
}

/// Parts one counter reading adds, and where they came from.
#[derive(Debug, Clone, Copy)]
struct Counted {
    parts: u64,
    reset: bool,
    from_ms: u64,
    to_ms: u64,
    seq: u64,
}

/// The counts one event carries.
#[derive(Debug, Default)]
struct Tally {
    good: u64,
    scrap: u64,
    reset: bool,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    /// The first and the newest counter reading behind the parts.
    seq: Option<u64>,
    last_seq: Option<u64>,
}

impl Tally {
    fn add(&mut self, c: &Counted, good: bool) {
        if good {
            self.good += c.parts;
        } else {
            self.scrap += c.parts;
        }
        self.reset |= c.reset;
        self.from_ms = Some(self.from_ms.map_or(c.from_ms, |t| t.min(c.from_ms)));
        self.to_ms = Some(self.to_ms.map_or(c.to_ms, |t| t.max(c.to_ms)));
        self.seq = Some(self.seq.map_or(c.seq, |s| s.min(c.seq)));
        self.last_seq = Some(self.last_seq.map_or(c.seq, |s| s.max(c.seq)));
    }

    fn parts(&self) -> u64 {
        self.good.saturating_add(self.scrap)
    }
}

impl MachineRules {
    fn origin(&self, device: &DeviceId, seq: u64, timestamp_ms: u64) -> Origin {
        Origin {
            machine: self.spec.name.clone(),
            device: device.clone(),
            home: *device == self.spec.device,
            seq,
            timestamp_ms,
        }
    }

    fn observe(&mut self, batch: &Batch, out: &mut Vec<MesEvent>) -> bool {
        let device = &batch.device;
        // Whatever it holds, a batch of the work order's device is the one that decides a
        // product change held provisional since its last batch (see "Across devices").
        let order_device = self.spec.work_order.as_ref().map(|t| &t.device) == Some(device);
        let provisional = if order_device {
            self.memory.provisional.take()
        } else {
            None
        };
        let spec = &self.spec;
        let mine = |s: &Sample| spec.tags().any(|t| t.device == *device && t.tag == s.tag);
        if !batch.samples.iter().any(mine) {
            return provisional.is_some();
        }

        // 1. Counters.
        let good_sample = last_good(batch, spec.good.as_ref().map(|c| &c.tag));
        let scrap_sample = last_good(batch, spec.scrap.as_ref().map(|c| &c.tag));
        let good = count(spec.good.as_ref(), &mut self.memory.good, good_sample);
        let scrap = count(spec.scrap.as_ref(), &mut self.memory.scrap, scrap_sample);

        // 2. What the scan shows of the product and the work order.
        let product = last_good(batch, spec.product.as_ref())
            .map(|s| (s, s.value.as_ref().and_then(id_text)))
            .filter(|(_, p)| *p != self.memory.product);
        let order_read = last_good(batch, spec.work_order.as_ref());
        let new_order = order_read.and_then(|s| {
            let id = s.value.as_ref().and_then(id_text);
            let current = self.memory.order.as_ref().map(|o| &o.id);
            (id.as_ref() != current).then_some((s, id))
        });
        if let (Some(_), Some(before), Some(order)) =
            (&new_order, provisional, self.memory.order.as_mut())
        {
            // The product read since the work order's device last reported was the next
            // order's: the order that ends keeps the one it ran with.
            order.product = before.product;
        }

        // 3. Parts: before a change to the order (and product) that ends, after a reset in
        // the scan of an order change to the new one.
        let mut order_dirty = false;
        let mut mark = Mark::default();
        let mut before = Tally::default();
        let mut after = Tally::default();
        for (counted, is_good) in [(good, true), (scrap, false)] {
            let Some(c) = counted else { continue };
            if c.parts == 0 {
                continue;
            }
            if new_order.is_some() && c.reset {
                after.add(&c, is_good);
            } else {
                before.add(&c, is_good);
            }
        }
        if self.credit(&before, device, out) {
            order_dirty = true;
            mark.tally(&before);
        }

        // 4. The product and the work order. A product read in the scan of an order change
        // is the new order's; without an order change it is the running order's.
        if let Some((s, p)) = &product {
            self.memory.product = p.clone();
            if new_order.is_some() || self.memory.order.is_some() {
                mark.note(s.seq, s.timestamp_ms());
            }
        }
        if let Some((s, id)) = new_order {
            let ts = s.timestamp_ms();
            if let Some(order) = self.memory.order.take() {
                out.push(MesEvent::WorkOrderComplete {
                    origin: self.origin(device, s.seq, ts),
                    order,
                    end_ms: ts,
                });
            }
            if let Some(id) = id {
                let order = Order {
                    id,
                    product: self.memory.product.clone(),
                    start_ms: ts,
                    good: 0,
                    scrap: 0,
                };
                out.push(MesEvent::WorkOrderStart {
                    origin: self.origin(device, s.seq, ts),
                    order: order.clone(),
                });
                self.memory.order = Some(order);
            }
            order_dirty = true;
            mark.note(s.seq, ts);
        } else if let (Some((_, p)), Some(order)) = (product, self.memory.order.as_mut()) {
            if order_read.is_none() {
                // Nothing in this batch says the order is still the same: the product may be
                // the next order's, which the work order's device has not shown yet.
                self.memory
                    .provisional
                    .get_or_insert_with(|| ProductBefore {
                        product: order.product.clone(),
                    });
            }
            order.product = p;
            order_dirty = true;
        }
        if self.credit(&after, device, out) {
            order_dirty = true;
            mark.tally(&after);
        }
        if let (true, Some(seq), Some(ts)) = (order_dirty, mark.seq, mark.ts) {
            out.push(MesEvent::WorkOrderCurrent {
                origin: self.origin(device, seq, ts),
                order: self.memory.order.clone(),
            });
        }

        // 5. State, after the orders (the module doc says why): every reading, in order.
        if let Some(st) = self
            .spec
            .state
            .as_ref()
            .filter(|st| st.tag.device == *device)
        {
            let readings: Vec<&Sample> = batch
                .samples
                .iter()
                .filter(|s| s.tag == st.tag.tag)
                .collect();
            for s in readings {
                self.state_reading(device, s, out);
            }
        }
        true
    }

    /// Emits a count event for `tally` (if it holds parts) and adds it to the current order.
    fn credit(&mut self, tally: &Tally, device: &DeviceId, out: &mut Vec<MesEvent>) -> bool {
        let (Some(seq), Some(from), Some(to)) = (tally.seq, tally.from_ms, tally.to_ms) else {
            return false;
        };
        if tally.parts() == 0 {
            return false;
        }
        if let Some(order) = self.memory.order.as_mut() {
            order.good = order.good.saturating_add(tally.good);
            order.scrap = order.scrap.saturating_add(tally.scrap);
        }
        let order = self.memory.order.as_ref();
        out.push(MesEvent::ProductionCount {
            origin: self.origin(device, seq, to),
            order_id: order.map(|o| o.id.clone()),
            product: order
                .map(|o| o.product.clone())
                .unwrap_or_else(|| self.memory.product.clone()),
            start_ms: from,
            end_ms: to,
            good: tally.good,
            scrap: tally.scrap,
            counter_reset: tally.reset,
        });
        order.is_some()
    }

    fn state_reading(&mut self, device: &DeviceId, s: &Sample, out: &mut Vec<MesEvent>) {
        let Some(spec) = &self.spec.state else { return };
        let ts = s.timestamp_ms();
        let (state, reason_code, reason, raw) = match (&s.value, s.quality) {
            (Some(v), Quality::Good) => match state_value(v) {
                Some(raw) => match spec.lookup(raw) {
                    Some(m) => (m.state, m.reason_code, m.reason.clone(), Some(raw)),
                    None => (
                        MachineState::Unknown,
                        MachineState::Unknown.default_code(),
                        Some(format!("state value {raw} is not in the state map")),
                        Some(raw),
                    ),
                },
                None => (
                    MachineState::Unknown,
                    MachineState::Unknown.default_code(),
                    Some(format!("state value {v} is not an integer")),
                    None,
                ),
            },
            _ => (
                MachineState::Unknown,
                MachineState::Unknown.default_code(),
                Some("the state word could not be read".to_owned()),
                None,
            ),
        };
        if let Some(current) = &self.memory.state {
            if current.state == state
                && current.reason_code == reason_code
                && current.reason == reason
            {
                return;
            }
        }
        let next = StateInfo {
            state,
            reason_code,
            reason,
            raw,
            since_ms: ts,
        };
        let previous = self.memory.state.take().map(|p| {
            let lasted = ts.saturating_sub(p.since_ms);
            (p, lasted)
        });
        out.push(MesEvent::StateChange {
            origin: self.origin(device, s.seq, ts),
            state: next.clone(),
            previous,
        });
        out.push(MesEvent::StateCurrent {
            origin: self.origin(device, s.seq, ts),
            state: next.clone(),
        });
        self.memory.state = Some(next);
    }
}

/// The newest sample behind a batch's `workorder/current`: its seq makes the event id.
#[derive(Debug, Default)]
struct Mark {
    seq: Option<u64>,
    ts: Option<u64>,
}

impl Mark {
    fn note(&mut self, seq: u64, ts: u64) {
        self.seq = Some(self.seq.map_or(seq, |q| q.max(seq)));
        self.ts = Some(self.ts.map_or(ts, |t| t.max(ts)));
    }

    fn tally(&mut self, t: &Tally) {
        if let (Some(seq), Some(ts)) = (t.last_seq, t.to_ms) {
            self.note(seq, ts);
        }
    }
}

/// Compares a counter reading with the last one and moves the baseline to it.
fn count(
    spec: Option<&CounterSpec>,
    memory: &mut Option<CounterMemory>,
    sample: Option<&Sample>,
) -> Option<Counted> {
    let spec = spec?;
    let sample = sample?;
    let raw = raw_count(sample.value.as_ref()?, spec.width)?;
    let at_ms = sample.timestamp_ms();
    let previous = memory.replace(CounterMemory {
        device: Some(spec.tag.device.0.clone()),
        tag: spec.tag.tag.0.clone(),
        raw,
        at_ms,
    });
    // The first reading ever is the baseline: nothing was counted yet.
    let previous = previous?;
    let moved = step(previous.raw, raw, spec.width, spec.max_step);
    Some(Counted {
        parts: moved.parts(),
        reset: matches!(moved, Step::Reset(_)),
        from_ms: previous.at_ms,
        to_ms: at_ms,
        seq: sample.seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::{CounterWidth, StateMapping, StateSpec};
    use edge_model::TagName;
    use proptest::prelude::*;

    const MAX_STEP: u64 = 1_000;

    fn spec() -> MachineSpec {
        MachineSpec {
            name: "filler".into(),
            device: DeviceId::from("plc"),
            work_order: Some(TagRef::new("plc", "wo")),
            product: Some(TagRef::new("plc", "prod")),
            good: Some(CounterSpec {
                tag: TagRef::new("plc", "good"),
                width: CounterWidth::Bits16,
                max_step: MAX_STEP,
            }),
            scrap: Some(CounterSpec {
                tag: TagRef::new("plc", "scrap"),
                width: CounterWidth::Bits16,
                max_step: MAX_STEP,
            }),
            state: Some(StateSpec {
                tag: TagRef::new("plc", "state"),
                map: vec![
                    StateMapping {
                        value: 1,
                        state: MachineState::Running,
                        reason_code: 10_000,
                        reason: None,
                    },
                    StateMapping {
                        value: 2,
                        state: MachineState::Idle,
                        reason_code: 170_000,
                        reason: Some("no order".into()),
                    },
                    StateMapping {
                        value: 3,
                        state: MachineState::Down,
                        reason_code: 180_100,
                        reason: Some("valve".into()),
                    },
                ],
            }),
        }
    }

    fn bridge() -> MesBridge {
        MesBridge::new("acme/line1", vec![spec()])
    }

    /// A reading; its timestamp is 1000 × its seq.
    fn s(tag: &str, value: Value, seq: u64) -> Sample {
        let mut sample = Sample::good(TagName::from(tag), value, seq * 1_000);
        sample.seq = seq;
        sample
    }

    fn bad(tag: &str, seq: u64) -> Sample {
        let mut sample = Sample::bad(TagName::from(tag), seq * 1_000);
        sample.seq = seq;
        sample
    }

    fn wo(id: &str, seq: u64) -> Sample {
        s("wo", Value::String(id.into()), seq)
    }

    fn good(n: u16, seq: u64) -> Sample {
        s("good", Value::U16(n), seq)
    }

    fn scrap(n: u16, seq: u64) -> Sample {
        s("scrap", Value::U16(n), seq)
    }

    fn word(v: u16, seq: u64) -> Sample {
        s("state", Value::U16(v), seq)
    }

    fn batch(samples: Vec<Sample>) -> Batch {
        Batch {
            device: DeviceId::from("plc"),
            samples,
        }
    }

    fn run(b: &mut MesBridge, samples: Vec<Sample>) -> Vec<MesEvent> {
        let mut out = Vec::new();
        b.observe(&batch(samples), &mut out);
        out
    }

    fn kinds(events: &[MesEvent]) -> Vec<&'static str> {
        events.iter().map(MesEvent::kind).collect()
    }

    fn counts(events: &[MesEvent]) -> Vec<(Option<String>, u64, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                MesEvent::ProductionCount {
                    order_id,
                    good,
                    scrap,
                    ..
                } => Some((order_id.clone(), *good, *scrap)),
                _ => None,
            })
            .collect()
    }

    fn completed(events: &[MesEvent]) -> Vec<(String, u64, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                MesEvent::WorkOrderComplete { order, .. } => {
                    Some((order.id.clone(), order.good, order.scrap))
                }
                _ => None,
            })
            .collect()
    }

    /// Work order "A" running with counters at 10 / 0 and the machine running.
    fn started() -> MesBridge {
        let mut b = bridge();
        run(
            &mut b,
            vec![wo("A", 1), good(10, 2), scrap(0, 3), word(1, 4)],
        );
        b
    }

    #[test]
    fn the_first_readings_are_baselines_that_announce_the_order_and_the_state() {
        let mut b = bridge();
        let events = run(
            &mut b,
            vec![good(10, 1), scrap(0, 2), wo("A", 3), word(1, 4)],
        );
        assert_eq!(
            kinds(&events),
            vec![
                "workorder/start",
                "workorder/current",
                "state/change",
                "state/current"
            ]
        );
        assert!(counts(&events).is_empty(), "a baseline counts nothing");
        let MesEvent::WorkOrderStart { origin, order } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((origin.seq, origin.timestamp_ms), (3, 3_000));
        assert_eq!((order.id.as_str(), order.start_ms), ("A", 3_000));
        let MesEvent::StateChange {
            state, previous, ..
        } = &events[2]
        else {
            panic!("{events:?}")
        };
        assert_eq!(state.state, MachineState::Running);
        assert_eq!(*previous, None);
        assert_eq!(events[0].event_id(), "filler:workorder/start:3");
        assert_eq!(events[2].event_id(), "filler:state/change:4");
    }

    #[test]
    fn counter_increments_are_counted_for_the_running_order_with_their_interval() {
        let mut b = started();
        let events = run(&mut b, vec![good(14, 10), scrap(1, 11)]);
        assert_eq!(
            kinds(&events),
            vec!["production/count", "workorder/current"]
        );
        let MesEvent::ProductionCount {
            origin,
            order_id,
            start_ms,
            end_ms,
            good,
            scrap,
            counter_reset,
            ..
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!((order_id.as_deref(), *good, *scrap), (Some("A"), 4, 1));
        assert_eq!((*start_ms, *end_ms), (2_000, 11_000));
        assert!(!counter_reset);
        assert_eq!(
            origin.seq, 10,
            "the id comes from the first counter reading"
        );
        let MesEvent::WorkOrderCurrent { origin, order } = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(origin.seq, 11);
        let order = order.as_ref().expect("an order runs");
        assert_eq!((order.good, order.scrap), (4, 1));
    }

    #[test]
    fn unchanged_counters_say_nothing() {
        let mut b = started();
        assert!(run(&mut b, vec![good(10, 10), scrap(0, 11), word(1, 12)]).is_empty());
    }

    #[test]
    fn a_new_work_order_completes_the_old_one_with_its_totals_and_starts_the_new_one() {
        let mut b = started();
        run(&mut b, vec![good(20, 10), scrap(2, 11)]);
        run(&mut b, vec![good(25, 12)]);
        let events = run(&mut b, vec![wo("B", 13)]);
        assert_eq!(
            kinds(&events),
            vec!["workorder/complete", "workorder/start", "workorder/current"]
        );
        assert_eq!(completed(&events), vec![("A".into(), 15, 2)]);
        let MesEvent::WorkOrderComplete { order, end_ms, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((order.start_ms, *end_ms), (1_000, 13_000));
        let after = run(&mut b, vec![good(27, 14)]);
        assert_eq!(counts(&after), vec![(Some("B".into()), 2, 0)]);
    }

    #[test]
    fn parts_counted_in_the_scan_of_an_order_change_belong_to_the_order_that_ends() {
        let mut b = started();
        let events = run(&mut b, vec![good(13, 10), wo("B", 11)]);
        assert_eq!(
            kinds(&events),
            vec![
                "production/count",
                "workorder/complete",
                "workorder/start",
                "workorder/current"
            ]
        );
        assert_eq!(counts(&events), vec![(Some("A".into()), 3, 0)]);
        assert_eq!(completed(&events), vec![("A".into(), 3, 0)]);
    }

    #[test]
    fn parts_after_a_reset_in_the_scan_of_an_order_change_belong_to_the_new_order() {
        let mut b = started();
        run(&mut b, vec![good(500, 10)]);
        // The PLC cleared the good counter for order B and counted 2 before the scan; the
        // scrap counter went on counting for A.
        let events = run(&mut b, vec![good(2, 11), scrap(1, 12), wo("B", 13)]);
        assert_eq!(
            kinds(&events),
            vec![
                "production/count",
                "workorder/complete",
                "workorder/start",
                "production/count",
                "workorder/current"
            ]
        );
        assert_eq!(
            counts(&events),
            vec![(Some("A".into()), 0, 1), (Some("B".into()), 2, 0)]
        );
        assert_eq!(completed(&events), vec![("A".into(), 490, 1)]);
        let ids: Vec<String> = events.iter().map(MesEvent::event_id).collect();
        assert_eq!(ids[0], "filler:production/count:12");
        assert_eq!(ids[3], "filler:production/count:11");
        let MesEvent::WorkOrderCurrent { order, .. } = &events[4] else {
            panic!("{events:?}")
        };
        assert_eq!(
            order.as_ref().map(|o| (o.id.as_str(), o.good)),
            Some(("B", 2))
        );
    }

    #[test]
    fn an_empty_work_order_ends_the_order_and_later_parts_belong_to_no_order() {
        let mut b = started();
        run(&mut b, vec![good(12, 10)]);
        let events = run(&mut b, vec![wo("", 11)]);
        assert_eq!(
            kinds(&events),
            vec!["workorder/complete", "workorder/current"]
        );
        let MesEvent::WorkOrderCurrent { order, .. } = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(*order, None);
        let events = run(&mut b, vec![good(15, 12)]);
        assert_eq!(kinds(&events), vec!["production/count"]);
        assert_eq!(counts(&events), vec![(None, 3, 0)]);
        // The same empty order read again is no change.
        assert!(run(&mut b, vec![wo("  ", 13)]).is_empty());
    }

    #[test]
    fn integer_work_orders_are_ids_and_zero_means_none() {
        let mut b = bridge();
        let events = run(&mut b, vec![s("wo", Value::U32(0), 1)]);
        assert!(events.is_empty(), "{events:?}");
        let events = run(&mut b, vec![s("wo", Value::U32(4711), 2)]);
        let MesEvent::WorkOrderStart { order, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(order.id, "4711");
    }

    #[test]
    fn a_counter_wrapping_around_counts_the_parts_across_zero() {
        let mut b = bridge();
        run(&mut b, vec![wo("A", 1), good(65_530, 2)]);
        let events = run(&mut b, vec![good(4, 3)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 10, 0)]);
        let MesEvent::ProductionCount { counter_reset, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert!(!counter_reset);
    }

    #[test]
    fn a_counter_reset_counts_the_parts_since_zero_and_says_so() {
        let mut b = started();
        run(&mut b, vec![good(5_000, 10)]);
        let events = run(&mut b, vec![good(3, 11)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 3, 0)]);
        let MesEvent::ProductionCount { counter_reset, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert!(counter_reset);
        // A reset to exactly zero produced nothing: no event, but a new baseline.
        run(&mut b, vec![good(800, 12)]);
        assert!(run(&mut b, vec![good(0, 13)]).is_empty());
        assert_eq!(
            counts(&run(&mut b, vec![good(2, 14)])),
            vec![(Some("A".into()), 2, 0)]
        );
    }

    #[test]
    fn bad_readings_keep_the_baseline_and_the_next_good_one_counts_what_was_missed() {
        let mut b = started();
        let events = run(
            &mut b,
            vec![bad("good", 10), bad("scrap", 10), bad("wo", 10)],
        );
        // The order stays; only the state word's loss is news.
        assert!(counts(&events).is_empty());
        assert!(completed(&events).is_empty());
        let events = run(&mut b, vec![good(70, 11), scrap(4, 12), wo("A", 13)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 60, 4)]);
        let MesEvent::ProductionCount { start_ms, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(*start_ms, 2_000, "from the last good reading");
    }

    #[test]
    fn a_good_reading_then_a_lost_connection_in_one_scan_still_counts() {
        let mut b = started();
        let events = run(
            &mut b,
            vec![good(12, 10), bad("good", 11), bad("state", 11)],
        );
        assert_eq!(counts(&events), vec![(Some("A".into()), 2, 0)]);
    }

    #[test]
    fn a_state_change_names_the_previous_state_and_how_long_it_lasted() {
        let mut b = started();
        let events = run(&mut b, vec![word(3, 10)]);
        assert_eq!(kinds(&events), vec!["state/change", "state/current"]);
        let MesEvent::StateChange {
            state, previous, ..
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!(
            (
                state.state,
                state.reason_code,
                state.reason.as_deref(),
                state.raw
            ),
            (MachineState::Down, 180_100, Some("valve"), Some(3))
        );
        assert_eq!(state.since_ms, 10_000);
        let (prev, lasted) = previous.as_ref().expect("a previous state");
        assert_eq!(
            (prev.state, prev.since_ms, *lasted),
            (MachineState::Running, 4_000, 6_000)
        );
        let events = run(&mut b, vec![word(1, 25)]);
        let MesEvent::StateChange { previous, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            previous.as_ref().map(|(p, d)| (p.state, *d)),
            Some((MachineState::Down, 15_000))
        );
    }

    #[test]
    fn the_same_state_read_again_is_no_change() {
        let mut b = started();
        assert!(run(&mut b, vec![word(1, 10)]).is_empty());
        assert!(run(&mut b, vec![word(1, 11), word(1, 12)]).is_empty());
    }

    #[test]
    fn an_unmapped_state_value_is_unknown_and_names_the_value() {
        let mut b = started();
        let events = run(&mut b, vec![word(7, 10)]);
        let MesEvent::StateChange { state, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (state.state, state.reason_code, state.raw),
            (MachineState::Unknown, 30_000, Some(7))
        );
        assert!(state.reason.as_deref().is_some_and(|r| r.contains('7')));
        // Another unmapped value is another reason: a change.
        assert_eq!(
            kinds(&run(&mut b, vec![word(8, 11)])),
            vec!["state/change", "state/current"]
        );
    }

    #[test]
    fn an_unreadable_state_word_is_unknown_until_it_is_read_again() {
        let mut b = started();
        let events = run(&mut b, vec![bad("state", 10)]);
        let MesEvent::StateChange { state, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((state.state, state.raw), (MachineState::Unknown, None));
        assert!(run(&mut b, vec![bad("state", 11)]).is_empty());
        let events = run(&mut b, vec![word(1, 12)]);
        let MesEvent::StateChange {
            state, previous, ..
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!(state.state, MachineState::Running);
        assert_eq!(previous.as_ref().map(|(_, d)| *d), Some(2_000));
    }

    #[test]
    fn every_state_reading_of_a_scan_is_taken_in_order() {
        let mut b = started();
        let events = run(&mut b, vec![word(3, 10), word(1, 11)]);
        assert_eq!(
            kinds(&events),
            vec![
                "state/change",
                "state/current",
                "state/change",
                "state/current"
            ]
        );
    }

    #[test]
    fn a_bool_state_word_maps_false_and_true_as_zero_and_one() {
        let mut sp = spec();
        if let Some(st) = sp.state.as_mut() {
            st.map[0].value = 0;
        }
        let mut b = MesBridge::new("r", vec![sp]);
        let events = run(&mut b, vec![s("state", Value::Bool(false), 1)]);
        let MesEvent::StateChange { state, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((state.state, state.raw), (MachineState::Running, Some(0)));
    }

    #[test]
    fn a_product_read_before_the_order_goes_with_it_and_a_change_updates_the_running_order() {
        let mut b = bridge();
        let events = run(
            &mut b,
            vec![s("prod", Value::String("P-5".into()), 1), wo("A", 2)],
        );
        let MesEvent::WorkOrderStart { order, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(order.product.as_deref(), Some("P-5"));
        let events = run(&mut b, vec![s("prod", Value::String("P-6".into()), 3)]);
        assert_eq!(kinds(&events), vec!["workorder/current"]);
        let MesEvent::WorkOrderCurrent { order, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            order.as_ref().and_then(|o| o.product.as_deref()),
            Some("P-6")
        );
    }

    #[test]
    fn batches_of_other_devices_and_other_tags_touch_nothing() {
        let mut b = started();
        let before = b.checkpoint();
        let mut out = Vec::new();
        let other = Batch {
            device: DeviceId::from("press"),
            samples: vec![good(99, 10)],
        };
        assert!(!b.observe(&other, &mut out));
        assert!(!b.observe(
            &batch(vec![s("temperature", Value::F32(1.0), 11)]),
            &mut out
        ));
        assert!(out.is_empty());
        assert_eq!(b.checkpoint(), before);
        assert!(b.observe(&batch(vec![good(10, 12)]), &mut out));
    }

    #[test]
    fn two_machines_on_one_device_keep_apart() {
        let mut second = spec();
        second.name = "capper".into();
        second.work_order = None;
        second.product = None;
        second.good = Some(CounterSpec {
            tag: TagRef::new("plc", "caps"),
            width: CounterWidth::Bits32,
            max_step: 10,
        });
        second.scrap = None;
        second.state = None;
        let mut b = MesBridge::new("r", vec![spec(), second]);
        run(
            &mut b,
            vec![wo("A", 1), good(1, 2), s("caps", Value::U32(5), 3)],
        );
        let events = run(&mut b, vec![good(2, 4), s("caps", Value::U32(8), 5)]);
        let by_machine: Vec<(String, &str)> = events
            .iter()
            .map(|e| (e.origin().machine.clone(), e.kind()))
            .collect();
        assert_eq!(
            by_machine,
            vec![
                ("filler".to_owned(), "production/count"),
                ("filler".to_owned(), "workorder/current"),
                ("capper".to_owned(), "production/count"),
            ]
        );
        assert_eq!(
            counts(&events),
            vec![(Some("A".into()), 1, 0), (None, 3, 0)]
        );
    }

    #[test]
    fn encoding_puts_the_events_on_the_machines_topics() {
        let mut b = bridge();
        let mut out = Vec::new();
        assert!(b.encode(&batch(vec![wo("A", 1), word(1, 2)]), true, &mut out));
        let topics: Vec<&str> = out.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            vec![
                "acme/line1/filler/_mes/workorder/start",
                "acme/line1/filler/_mes/workorder/current",
                "acme/line1/filler/_mes/state/change",
                "acme/line1/filler/_mes/state/current",
            ]
        );
        assert!(out[1].retain && out[3].retain && !out[0].retain);
        let v: serde_json::Value = serde_json::from_slice(&out[0].payload).expect("JSON");
        assert_eq!(v["replay"], serde_json::json!(true));
        let other = Batch {
            device: DeviceId::from("press"),
            samples: vec![good(1, 3)],
        };
        assert!(!b.encode(&other, false, &mut out));
    }

    #[test]
    fn a_checkpoint_brings_back_orders_counters_and_states() {
        let mut b = started();
        run(&mut b, vec![good(30, 10), word(3, 11)]);
        let cp = b.checkpoint();
        let mut restored = bridge();
        restored.restore(&cp).expect("restore");
        let mut original = b.clone();
        let next = vec![good(35, 12), wo("B", 13), word(1, 14)];
        assert_eq!(run(&mut restored, next.clone()), run(&mut original, next));
    }

    #[test]
    fn a_counter_moved_to_another_tag_starts_from_a_new_baseline() {
        let b = started();
        let cp = b.checkpoint();
        let mut moved = spec();
        if let Some(g) = moved.good.as_mut() {
            g.tag = TagRef::new("plc", "good2");
        }
        let mut restored = MesBridge::new("acme/line1", vec![moved]);
        restored.restore(&cp).expect("restore");
        let events = run(
            &mut restored,
            vec![s("good2", Value::U16(500), 10), scrap(1, 11)],
        );
        assert_eq!(counts(&events), vec![(Some("A".into()), 0, 1)]);
    }

    #[test]
    fn unreadable_or_foreign_checkpoints_are_refused_and_change_nothing() {
        let mut b = started();
        let before = b.checkpoint();
        assert!(matches!(
            b.restore(b"garbage"),
            Err(CheckpointError::Unreadable(_))
        ));
        assert_eq!(
            b.restore(br#"{"version": 99, "machines": {}}"#),
            Err(CheckpointError::UnknownVersion(99))
        );
        assert_eq!(b.checkpoint(), before);
        // A machine the checkpoint does not know starts fresh.
        b.restore(br#"{"version": 1, "machines": {}}"#)
            .expect("restore");
        assert_eq!(b.checkpoint(), bridge().checkpoint());
    }

    #[test]
    fn reset_forgets_everything() {
        let mut b = started();
        b.reset();
        assert_eq!(b.checkpoint(), bridge().checkpoint());
    }

    /// The filler with an OPC UA PLC added: work order, product and state word come from the
    /// server `ua` (strings and an enumeration, which OPC UA delivers as Int32), the counters
    /// from the Modbus PLC `plc` (UInt32 and UInt64), which stays the home device.
    fn mixed() -> MachineSpec {
        let mut sp = spec();
        sp.work_order = Some(TagRef::new("ua", "wo"));
        sp.product = Some(TagRef::new("ua", "prod"));
        sp.good = Some(CounterSpec {
            tag: TagRef::new("plc", "good"),
            width: CounterWidth::Bits32,
            max_step: MAX_STEP,
        });
        sp.scrap = Some(CounterSpec {
            tag: TagRef::new("plc", "scrap"),
            width: CounterWidth::Bits64,
            max_step: MAX_STEP,
        });
        if let Some(st) = sp.state.as_mut() {
            st.tag = TagRef::new("ua", "state");
        }
        sp
    }

    fn on(device: &str, samples: Vec<Sample>) -> Batch {
        Batch {
            device: DeviceId::from(device),
            samples,
        }
    }

    fn run_on(b: &mut MesBridge, device: &str, samples: Vec<Sample>) -> Vec<MesEvent> {
        let mut out = Vec::new();
        b.observe(&on(device, samples), &mut out);
        out
    }

    fn ids(events: &[MesEvent]) -> Vec<String> {
        events.iter().map(MesEvent::event_id).collect()
    }

    fn text(tag: &str, v: &str, seq: u64) -> Sample {
        s(tag, Value::String(v.into()), seq)
    }

    #[test]
    fn a_machine_takes_its_work_order_and_state_from_one_device_and_its_counters_from_another() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        let events = run_on(
            &mut b,
            "ua",
            vec![
                text("prod", "P-5", 1),
                text("wo", "WO-1", 2),
                s("state", Value::I32(1), 3),
            ],
        );
        assert_eq!(
            kinds(&events),
            vec![
                "workorder/start",
                "workorder/current",
                "state/change",
                "state/current"
            ]
        );
        let MesEvent::WorkOrderStart { order, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (order.id.as_str(), order.product.as_deref()),
            ("WO-1", Some("P-5"))
        );
        // The counters' first readings are baselines.
        let baseline = vec![s("good", Value::U32(10), 1), s("scrap", Value::U64(0), 2)];
        assert!(run_on(&mut b, "plc", baseline).is_empty());
        let events = run_on(
            &mut b,
            "plc",
            vec![s("good", Value::U32(14), 3), s("scrap", Value::U64(1), 4)],
        );
        assert_eq!(counts(&events), vec![(Some("WO-1".into()), 4, 1)]);
        let MesEvent::ProductionCount { product, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(product.as_deref(), Some("P-5"));
        let events = run_on(&mut b, "ua", vec![s("state", Value::I32(3), 4)]);
        let MesEvent::StateChange { state, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(state.state, MachineState::Down);
        let events = run_on(&mut b, "ua", vec![text("wo", "WO-2", 5)]);
        assert_eq!(completed(&events), vec![("WO-1".into(), 4, 1)]);
    }

    #[test]
    fn a_batch_feeds_only_the_roles_on_its_own_device() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        run_on(
            &mut b,
            "ua",
            vec![text("wo", "A", 1), s("state", Value::I32(1), 2)],
        );
        run_on(&mut b, "plc", vec![s("good", Value::U32(10), 1)]);
        let before = b.checkpoint();
        let mut out = Vec::new();
        // Tags named like the machine's roles, but on the wrong device.
        assert!(!b.observe(
            &on(
                "plc",
                vec![text("wo", "B", 2), s("state", Value::U16(3), 3)]
            ),
            &mut out
        ));
        assert!(!b.observe(&on("ua", vec![s("good", Value::U32(99), 3)]), &mut out));
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(b.checkpoint(), before);
        assert!(b.watches(&DeviceId::from("ua")) && b.watches(&DeviceId::from("plc")));
        assert!(!b.watches(&DeviceId::from("press")));
    }

    #[test]
    fn samples_of_two_devices_with_the_same_seq_give_different_event_ids() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        run_on(&mut b, "ua", vec![text("wo", "A", 6)]);
        run_on(&mut b, "plc", vec![s("good", Value::U32(1), 6)]);
        let from_ua = run_on(&mut b, "ua", vec![s("state", Value::I32(1), 7)]);
        let from_plc = run_on(&mut b, "plc", vec![s("good", Value::U32(3), 7)]);
        // The home device's ids keep the form they always had; the other device is named.
        assert_eq!(
            ids(&from_plc),
            vec!["filler:production/count:7", "filler:workorder/current:7"]
        );
        assert_eq!(
            ids(&from_ua),
            vec!["filler:state/change:ua:7", "filler:state/current:ua:7"]
        );
        let origin = from_ua[0].origin();
        assert_eq!(
            (origin.device.0.as_str(), origin.home, origin.seq),
            ("ua", false, 7)
        );
        assert!(from_plc[0].origin().home);
    }

    #[test]
    fn events_of_batches_from_different_devices_follow_the_batch_order() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        let batches = [
            on("plc", vec![s("good", Value::U32(0), 1)]),
            on("ua", vec![text("wo", "A", 1)]),
            on("plc", vec![s("good", Value::U32(2), 2)]),
            on("ua", vec![s("state", Value::I32(2), 2)]),
            on("plc", vec![s("good", Value::U32(5), 3)]),
            on("ua", vec![text("wo", "B", 3)]),
        ];
        let events = all_events(&mut b, &batches);
        let seen: Vec<(String, &str)> = events
            .iter()
            .map(|e| (e.origin().device.0.clone(), e.kind()))
            .collect();
        let expected = [
            ("ua", "workorder/start"),
            ("ua", "workorder/current"),
            ("plc", "production/count"),
            ("plc", "workorder/current"),
            ("ua", "state/change"),
            ("ua", "state/current"),
            ("plc", "production/count"),
            ("plc", "workorder/current"),
            ("ua", "workorder/complete"),
            ("ua", "workorder/start"),
            ("ua", "workorder/current"),
        ];
        let expected: Vec<(String, &str)> = expected
            .iter()
            .map(|(d, k)| ((*d).to_owned(), *k))
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(completed(&events), vec![("A".into(), 5, 0)]);
    }

    #[test]
    fn a_uint32_counter_wraps_around_at_two_to_the_32() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        run_on(&mut b, "ua", vec![text("wo", "A", 1)]);
        run_on(&mut b, "plc", vec![s("good", Value::U32(u32::MAX - 2), 1)]);
        let events = run_on(&mut b, "plc", vec![s("good", Value::U32(4), 2)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 7, 0)]);
        let MesEvent::ProductionCount { counter_reset, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert!(!counter_reset);
    }

    #[test]
    fn a_uint64_counter_counts_beyond_the_32_bit_range() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        run_on(&mut b, "ua", vec![text("wo", "A", 1)]);
        run_on(
            &mut b,
            "plc",
            vec![s("scrap", Value::U64(5_000_000_000), 1)],
        );
        let events = run_on(
            &mut b,
            "plc",
            vec![s("scrap", Value::U64(5_000_000_007), 2)],
        );
        assert_eq!(counts(&events), vec![(Some("A".into()), 0, 7)]);
        run_on(&mut b, "plc", vec![s("scrap", Value::U64(u64::MAX - 1), 3)]);
        let events = run_on(&mut b, "plc", vec![s("scrap", Value::U64(1), 4)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 0, 3)]);
    }

    #[test]
    fn an_opc_ua_enumeration_arrives_as_int32_and_maps_through_the_state_map() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        let events = run_on(&mut b, "ua", vec![s("state", Value::I32(3), 1)]);
        let MesEvent::StateChange { state, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (state.state, state.reason_code, state.raw),
            (MachineState::Down, 180_100, Some(3))
        );
        let events = run_on(&mut b, "ua", vec![s("state", Value::I32(-1), 2)]);
        let MesEvent::StateChange { state, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!((state.state, state.raw), (MachineState::Unknown, Some(-1)));
    }

    #[test]
    fn opc_ua_strings_are_work_orders_and_products_and_an_empty_string_is_none() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        let events = run_on(
            &mut b,
            "ua",
            vec![text("prod", " P-5 ", 1), text("wo", " WO-1 ", 2)],
        );
        let MesEvent::WorkOrderStart { order, .. } = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (order.id.as_str(), order.product.as_deref()),
            ("WO-1", Some("P-5"))
        );
        let events = run_on(&mut b, "ua", vec![text("wo", "", 3)]);
        assert_eq!(
            kinds(&events),
            vec!["workorder/complete", "workorder/current"]
        );
    }

    #[test]
    fn a_checkpoint_of_a_machine_on_several_devices_brings_back_every_devices_memory() {
        let mut b = MesBridge::new("acme/line1", vec![mixed()]);
        run_on(
            &mut b,
            "ua",
            vec![text("wo", "A", 1), s("state", Value::I32(1), 2)],
        );
        run_on(&mut b, "plc", vec![s("good", Value::U32(10), 1)]);
        let mut restored = MesBridge::new("acme/line1", vec![mixed()]);
        restored.restore(&b.checkpoint()).expect("restore");
        let next = [
            on("plc", vec![s("good", Value::U32(12), 2)]),
            on("ua", vec![text("wo", "B", 3)]),
        ];
        assert_eq!(all_events(&mut restored, &next), all_events(&mut b, &next));
    }

    #[test]
    fn a_checkpoint_from_before_machines_read_several_devices_restores_on_the_home_device() {
        // Written by the previous build: counters name their tag only.
        let old = br#"{"version":1,"machines":{"filler":{
            "good":{"tag":"good","raw":10,"at_ms":2000},
            "scrap":{"tag":"scrap","raw":0,"at_ms":3000},
            "order":{"id":"A","product":null,"start_ms":1000,"good":0,"scrap":0},
            "product":null,
            "state":{"state":"running","reason_code":10000,"reason":null,"raw":1,"since_ms":4000}}}}"#;
        let mut b = bridge();
        b.restore(old).expect("restore");
        assert_eq!(b.checkpoint(), started().checkpoint());
        let events = run(&mut b, vec![good(14, 10), scrap(1, 11), word(1, 12)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 4, 1)]);
        // On the mixed machine the counters are still on the home device `plc`.
        let mut m = MesBridge::new("acme/line1", vec![mixed()]);
        m.restore(old).expect("restore");
        let events = run_on(&mut m, "plc", vec![s("good", Value::U32(12), 10)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 2, 0)]);
    }

    #[test]
    fn a_counter_moved_to_another_device_starts_from_a_new_baseline() {
        let cp = started().checkpoint();
        let mut moved = spec();
        if let Some(g) = moved.good.as_mut() {
            g.tag = TagRef::new("ua", "good");
        }
        let mut restored = MesBridge::new("acme/line1", vec![moved]);
        restored.restore(&cp).expect("restore");
        assert!(run_on(&mut restored, "ua", vec![s("good", Value::U16(500), 10)]).is_empty());
        let events = run_on(&mut restored, "ua", vec![s("good", Value::U16(503), 11)]);
        assert_eq!(counts(&events), vec![(Some("A".into()), 3, 0)]);
    }

    fn prod(id: &str, seq: u64) -> Sample {
        text("prod", id, seq)
    }

    /// Work order "A" of product "P-1" running with counters at 10 / 0 and the machine
    /// running, then 10 good and 2 scrap parts counted for it.
    fn producing() -> MesBridge {
        let mut b = bridge();
        run(
            &mut b,
            vec![
                prod("P-1", 1),
                wo("A", 2),
                good(10, 3),
                scrap(0, 4),
                word(1, 5),
            ],
        );
        run(&mut b, vec![good(20, 6), scrap(2, 7)]);
        b
    }

    fn starts(events: &[MesEvent]) -> Vec<(String, Option<String>, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                MesEvent::WorkOrderStart { order, .. } => {
                    Some((order.id.clone(), order.product.clone(), order.start_ms))
                }
                _ => None,
            })
            .collect()
    }

    fn completions(events: &[MesEvent]) -> Vec<(Order, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                MesEvent::WorkOrderComplete { order, end_ms, .. } => Some((order.clone(), *end_ms)),
                _ => None,
            })
            .collect()
    }

    fn count_products(events: &[MesEvent]) -> Vec<(Option<String>, Option<String>)> {
        events
            .iter()
            .filter_map(|e| match e {
                MesEvent::ProductionCount {
                    order_id, product, ..
                } => Some((order_id.clone(), product.clone())),
                _ => None,
            })
            .collect()
    }

    fn current(events: &[MesEvent]) -> Option<(String, Option<String>)> {
        events.iter().rev().find_map(|e| match e {
            MesEvent::WorkOrderCurrent { order, .. } => {
                order.as_ref().map(|o| (o.id.clone(), o.product.clone()))
            }
            _ => None,
        })
    }

    #[test]
    fn a_changeover_completes_the_old_order_with_its_product_and_totals_and_starts_the_new_one_with_the_new_product(
    ) {
        let mut b = producing();
        // One scan shows the last parts of A, the new product and the new order.
        let events = run(&mut b, vec![good(23, 10), prod("P-2", 11), wo("B", 12)]);
        assert_eq!(
            completions(&events),
            vec![(
                Order {
                    id: "A".into(),
                    product: Some("P-1".into()),
                    start_ms: 2_000,
                    good: 13,
                    scrap: 2,
                },
                12_000
            )]
        );
        assert_eq!(
            starts(&events),
            vec![("B".into(), Some("P-2".into()), 12_000)]
        );
        assert_eq!(
            count_products(&events),
            vec![(Some("A".into()), Some("P-1".into()))],
            "the last parts of A were made as P-1"
        );
        assert_eq!(current(&events), Some(("B".into(), Some("P-2".into()))));
    }

    #[test]
    fn the_last_completion_names_the_product_of_the_order_that_ended() {
        let mut b = producing();
        // The PLC clears order and product together at the end of the shift.
        let events = run(&mut b, vec![prod("", 10), wo("", 11)]);
        assert_eq!(
            kinds(&events),
            vec!["workorder/complete", "workorder/current"]
        );
        let ended = completions(&events);
        assert_eq!(
            ended
                .iter()
                .map(|(o, _)| (o.id.as_str(), o.product.as_deref(), o.good, o.scrap))
                .collect::<Vec<_>>(),
            vec![("A", Some("P-1"), 10, 2)]
        );
        // Parts made with neither order nor product name neither.
        let events = run(&mut b, vec![good(21, 12)]);
        assert_eq!(count_products(&events), vec![(None, None)]);
    }

    #[test]
    fn in_one_scan_the_old_order_is_counted_and_completed_before_the_new_one_starts_and_the_state_changes_last(
    ) {
        let mut b = producing();
        // The PLC cleared the good counter for B and counted 2; scrap went on for A; the
        // machine shows changeover.
        let events = run(
            &mut b,
            vec![
                good(2, 10),
                scrap(3, 11),
                prod("P-2", 12),
                wo("B", 13),
                word(2, 14),
            ],
        );
        assert_eq!(
            kinds(&events),
            vec![
                "production/count",
                "workorder/complete",
                "workorder/start",
                "production/count",
                "workorder/current",
                "state/change",
                "state/current"
            ]
        );
        assert_eq!(
            count_products(&events),
            vec![
                (Some("A".into()), Some("P-1".into())),
                (Some("B".into()), Some("P-2".into()))
            ]
        );
        assert_eq!(completed(&events), vec![("A".into(), 10, 3)]);
    }

    #[test]
    fn a_product_change_without_an_order_change_updates_the_running_order_after_its_scans_parts() {
        let mut b = producing();
        let events = run(&mut b, vec![good(25, 10), prod("P-9", 11), wo("A", 12)]);
        assert_eq!(
            kinds(&events),
            vec!["production/count", "workorder/current"]
        );
        assert_eq!(
            count_products(&events),
            vec![(Some("A".into()), Some("P-1".into()))]
        );
        assert_eq!(current(&events), Some(("A".into(), Some("P-9".into()))));
        let events = run(&mut b, vec![wo("B", 13)]);
        let ended = completions(&events);
        assert_eq!(ended[0].0.product.as_deref(), Some("P-9"));
        assert_eq!(
            starts(&events),
            vec![("B".into(), Some("P-9".into()), 13_000)]
        );
    }

    /// The filler reading its product from the OPC UA server `ua` and its work order (and
    /// everything else) from the PLC `plc`.
    fn product_elsewhere() -> MesBridge {
        let mut sp = spec();
        sp.product = Some(TagRef::new("ua", "prod"));
        let mut b = MesBridge::new("acme/line1", vec![sp]);
        run_on(&mut b, "ua", vec![prod("P-1", 1)]);
        run(&mut b, vec![wo("A", 1), good(10, 2)]);
        run(&mut b, vec![wo("A", 3), good(15, 4)]);
        b
    }

    #[test]
    fn a_product_from_another_device_read_just_before_an_order_change_goes_to_the_new_order() {
        let mut b = product_elsewhere();
        // Until the PLC is read again, the product shows on the running order.
        let events = run_on(&mut b, "ua", vec![prod("P-2", 2)]);
        assert_eq!(current(&events), Some(("A".into(), Some("P-2".into()))));
        let events = run(&mut b, vec![wo("B", 5), good(16, 6)]);
        let ended = completions(&events);
        assert_eq!(
            ended
                .iter()
                .map(|(o, _)| (o.id.as_str(), o.product.as_deref(), o.good))
                .collect::<Vec<_>>(),
            vec![("A", Some("P-1"), 6)]
        );
        assert_eq!(
            count_products(&events),
            vec![(Some("A".into()), Some("P-1".into()))]
        );
        assert_eq!(
            starts(&events),
            vec![("B".into(), Some("P-2".into()), 5_000)]
        );
    }

    #[test]
    fn a_product_from_another_device_is_the_running_orders_once_the_order_device_shows_no_change() {
        let mut b = product_elsewhere();
        run_on(&mut b, "ua", vec![prod("P-2", 2)]);
        // The PLC's next scan still shows A: the product changed during A.
        run(&mut b, vec![wo("A", 5), good(16, 6)]);
        let events = run(&mut b, vec![wo("B", 7)]);
        assert_eq!(completions(&events)[0].0.product.as_deref(), Some("P-2"));
        assert_eq!(
            starts(&events),
            vec![("B".into(), Some("P-2".into()), 7_000)]
        );
        // Any batch of the PLC settles it, even one without the machine's tags.
        run_on(&mut b, "ua", vec![prod("P-3", 3)]);
        let mut out = Vec::new();
        assert!(b.observe(&batch(vec![s("temperature", Value::F32(1.0), 8)]), &mut out));
        assert!(out.is_empty());
        let events = run(&mut b, vec![wo("C", 9)]);
        assert_eq!(completions(&events)[0].0.product.as_deref(), Some("P-3"));
    }

    #[test]
    fn an_order_change_read_before_the_product_from_another_device_starts_with_the_old_product_and_the_product_reading_corrects_it(
    ) {
        let mut b = product_elsewhere();
        let events = run(&mut b, vec![wo("B", 5)]);
        assert_eq!(completions(&events)[0].0.product.as_deref(), Some("P-1"));
        // The start has gone out with the product known when it was read.
        assert_eq!(
            starts(&events),
            vec![("B".into(), Some("P-1".into()), 5_000)]
        );
        let events = run_on(&mut b, "ua", vec![prod("P-2", 2)]);
        assert_eq!(current(&events), Some(("B".into(), Some("P-2".into()))));
        run(&mut b, vec![wo("B", 6)]);
        let events = run(&mut b, vec![wo("C", 7)]);
        assert_eq!(completions(&events)[0].0.product.as_deref(), Some("P-2"));
    }

    #[test]
    fn a_provisional_product_survives_a_restart_from_the_checkpoint() {
        let mut b = product_elsewhere();
        run_on(&mut b, "ua", vec![prod("P-2", 2)]);
        let mut restored = MesBridge::new("acme/line1", vec![b.machines[0].spec.clone()]);
        restored.restore(&b.checkpoint()).expect("restore");
        let next = vec![wo("B", 5)];
        let events = run(&mut restored, next.clone());
        assert_eq!(events, run(&mut b, next));
        assert_eq!(completions(&events)[0].0.product.as_deref(), Some("P-1"));
    }

    /// One scan of a simulated line: what the PLC shows, and what it really produced.
    #[derive(Debug, Clone)]
    enum Act {
        /// Produce this many good and scrap parts.
        Produce(u16, u16),
        /// The PLC clears both counters.
        Reset,
        /// A new order.
        Order(u8),
        /// A new state value (1 to 4).
        State(u16),
        /// The PLC is unreachable for this scan.
        Offline,
    }

    fn act() -> impl Strategy<Value = Act> {
        prop_oneof![
            6 => (0u16..40, 0u16..5).prop_map(|(g, s)| Act::Produce(g, s)),
            1 => Just(Act::Reset),
            1 => (0u8..4).prop_map(Act::Order),
            2 => (1u16..5).prop_map(Act::State),
            1 => Just(Act::Offline),
        ]
    }

    /// Turns acts into batches, starting the counters at `start` (near the wrap).
    fn scans(acts: &[Act], start: u16) -> (Vec<Batch>, u64, u64) {
        let (mut g, mut sc) = (start, start);
        let (mut made_good, mut made_scrap) = (0u64, 0u64);
        let mut order = 0u8;
        let mut st = 1u16;
        let mut seq = 0u64;
        let mut next = || {
            seq += 1;
            seq
        };
        let mut out = Vec::new();
        for a in acts {
            let mut samples = Vec::new();
            match a {
                Act::Produce(dg, ds) => {
                    g = g.wrapping_add(*dg);
                    sc = sc.wrapping_add(*ds);
                    made_good += u64::from(*dg);
                    made_scrap += u64::from(*ds);
                }
                Act::Reset => {
                    g = 0;
                    sc = 0;
                }
                Act::Order(o) => order = *o,
                Act::State(v) => st = *v,
                Act::Offline => {}
            }
            if matches!(a, Act::Offline) {
                for tag in ["good", "scrap", "wo", "state"] {
                    samples.push(bad(tag, next()));
                }
            } else {
                samples.push(good(g, next()));
                samples.push(scrap(sc, next()));
                let id = if order == 0 {
                    String::new()
                } else {
                    format!("WO-{order}")
                };
                samples.push(wo(&id, next()));
                samples.push(word(st, next()));
            }
            out.push(batch(samples));
        }
        (out, made_good, made_scrap)
    }

    fn all_events(b: &mut MesBridge, batches: &[Batch]) -> Vec<MesEvent> {
        let mut out = Vec::new();
        for batch in batches {
            b.observe(batch, &mut out);
        }
        out
    }

    proptest! {
        /// Every part made after the first scan is counted exactly once, whatever wraps,
        /// order changes and outages happen; and the order totals add up to the counts.
        /// (Resets are left out here: parts made between a reset's last reading and the
        /// reset are unknowable, see the reset test.)
        #[test]
        fn every_part_is_counted_once_and_order_totals_add_up(
            acts in proptest::collection::vec(act().prop_filter("no resets", |a| !matches!(a, Act::Reset)), 1..80),
            start in prop_oneof![Just(0u16), Just(65_500u16), any::<u16>()],
        ) {
            let first_is_reading = !matches!(acts[0], Act::Offline);
            prop_assume!(first_is_reading);
            let (batches, made_good, made_scrap) = scans(&acts, start);
            // The first scan is the baseline: what it shows was made before the gateway looked.
            let (first_good, first_scrap) = match acts[0] {
                Act::Produce(g, s) => (u64::from(g), u64::from(s)),
                _ => (0, 0),
            };
            let events = all_events(&mut bridge(), &batches);
            let (mut good, mut scrap) = (0u64, 0u64);
            let mut per_order: HashMap<Option<String>, (u64, u64)> = HashMap::new();
            for (order, g, s) in counts(&events) {
                good += g;
                scrap += s;
                let e = per_order.entry(order).or_default();
                e.0 += g;
                e.1 += s;
            }
            prop_assert_eq!(good, made_good - first_good);
            prop_assert_eq!(scrap, made_scrap - first_scrap);
            let mut totals: HashMap<Option<String>, (u64, u64)> = HashMap::new();
            for (id, g, s) in completed(&events) {
                let e = totals.entry(Some(id)).or_default();
                e.0 += g;
                e.1 += s;
            }
            if let Some(MesEvent::WorkOrderCurrent { order: Some(o), .. }) = events.iter().rev().find(|e| matches!(e, MesEvent::WorkOrderCurrent { .. })) {
                let e = totals.entry(Some(o.id.clone())).or_default();
                e.0 += o.good;
                e.1 += o.scrap;
            }
            per_order.remove(&None);
            totals.retain(|_, t| *t != (0, 0));
            per_order.retain(|_, t| *t != (0, 0));
            prop_assert_eq!(per_order, totals);
        }

        /// PLC resets of the counters lose no part and invent none, as long as a reset cannot
        /// pass for a wrap-around (the counters stay far from their largest value here).
        #[test]
        fn counter_resets_neither_lose_nor_invent_parts(acts in proptest::collection::vec(act(), 1..80)) {
            prop_assume!(matches!(acts[0], Act::Produce(..) | Act::Order(_) | Act::State(_)));
            let (batches, made_good, made_scrap) = scans(&acts, 0);
            let (first_good, first_scrap) = match acts[0] {
                Act::Produce(g, s) => (u64::from(g), u64::from(s)),
                _ => (0, 0),
            };
            let events = all_events(&mut bridge(), &batches);
            let good: u64 = counts(&events).iter().map(|c| c.1).sum();
            let scrap: u64 = counts(&events).iter().map(|c| c.2).sum();
            prop_assert_eq!(good, made_good - first_good);
            prop_assert_eq!(scrap, made_scrap - first_scrap);
        }

        /// Stopping anywhere, keeping only the checkpoint, and going on from there gives the
        /// very events an uninterrupted run gives; going on twice from the same checkpoint
        /// (a replay after a crash) gives them twice, ids included.
        #[test]
        fn a_restart_from_a_checkpoint_derives_the_same_events_with_the_same_ids(
            acts in proptest::collection::vec(act(), 1..60),
            start in any::<u16>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let (batches, _, _) = scans(&acts, start);
            let cut = cut.index(batches.len() + 1);
            let whole = all_events(&mut bridge(), &batches);

            let mut first = bridge();
            let mut head = all_events(&mut first, &batches[..cut]);
            let checkpoint = first.checkpoint();
            let mut resumed = bridge();
            resumed.restore(&checkpoint).expect("restore");
            let tail = all_events(&mut resumed, &batches[cut..]);
            let mut replayed = bridge();
            replayed.restore(&checkpoint).expect("restore");
            let again = all_events(&mut replayed, &batches[cut..]);
            prop_assert_eq!(&tail, &again);
            head.extend(tail);
            prop_assert_eq!(&head, &whole);
            let ids: Vec<String> = whole.iter().map(MesEvent::event_id).collect();
            let mut unique = ids.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), ids.len(), "event ids are unique");
        }

        /// When the PLC shows order `WO-n` with product `P-n` in the same scan, every start,
        /// completion, current order and count names the product of its own order, whatever
        /// wraps, resets, outages and restarts happen.
        #[test]
        fn every_order_event_names_the_product_of_its_own_order(
            acts in proptest::collection::vec(act(), 1..60),
            start in any::<u16>(),
            cut in any::<proptest::sample::Index>(),
        ) {
            let (mut batches, _, _) = scans(&acts, start);
            for b in &mut batches {
                let Some(mut p) = b.samples.iter().find(|s| s.tag.0 == "wo").cloned() else {
                    continue;
                };
                p.tag = TagName::from("prod");
                p.seq += 1_000_000;
                if let Some(Value::String(id)) = &p.value {
                    p.value = Some(Value::String(id.replace("WO-", "P-")));
                }
                b.samples.insert(0, p);
            }
            let cut = cut.index(batches.len() + 1);
            let mut first = bridge();
            let mut events = all_events(&mut first, &batches[..cut]);
            let mut resumed = bridge();
            resumed.restore(&first.checkpoint()).expect("restore");
            events.extend(all_events(&mut resumed, &batches[cut..]));
            let product_of = |id: &str| Some(id.replace("WO-", "P-"));
            for e in &events {
                match e {
                    MesEvent::WorkOrderStart { order, .. }
                    | MesEvent::WorkOrderComplete { order, .. }
                    | MesEvent::WorkOrderCurrent { order: Some(order), .. } => {
                        prop_assert_eq!(&order.product, &product_of(&order.id), "{:?}", e);
                    }
                    MesEvent::ProductionCount { order_id, product, .. } => {
                        prop_assert_eq!(product, &order_id.as_deref().and_then(product_of), "{:?}", e);
                    }
                    _ => {}
                }
            }
        }

        /// Whatever the stream, a state change's previous duration is the time between the
        /// two changes, and durations add up to the time from the first change to the last.
        #[test]
        fn state_durations_add_up_to_the_time_covered(acts in proptest::collection::vec(act(), 1..60)) {
            let (batches, _, _) = scans(&acts, 0);
            let events = all_events(&mut bridge(), &batches);
            let changes: Vec<(u64, Option<u64>)> = events
                .iter()
                .filter_map(|e| match e {
                    MesEvent::StateChange { state, previous, .. } => Some((state.since_ms, previous.as_ref().map(|(_, d)| *d))),
                    _ => None,
                })
                .collect();
            for pair in changes.windows(2) {
                prop_assert_eq!(pair[1].1, Some(pair[1].0 - pair[0].0));
            }
            if let (Some(first), Some(last)) = (changes.first(), changes.last()) {
                let total: u64 = changes.iter().skip(1).filter_map(|c| c.1).sum();
                prop_assert_eq!(total, last.0 - first.0);
            }
        }
    }
}
