//! MES events (SPEC §6) and their wire form: `{root}/{machine}/_mes/{event}` with UMH
//! analytics field names (`external_work_order_id`, `start_time_unix_ms`, `quantity`,
//! `bad_quantity`) and ISO 22400 quantities (`quantity` PQ, `good_quantity` GQ, `bad_quantity`
//! SQ).
//!
//! Every event carries an `event_id` built from the machine, the event kind and the device
//! `seq` of the stored sample that caused it: `filler:workorder/start:1234`. The same stored
//! sample always gives the same id, so an event sent again from the store after a crash or an
//! outage has the id it had the first time and consumers deduplicate by it. Every event also
//! carries `timestamp_ms` and `seq`, the source timestamp and seq of that sample.
//!
//! Seqs count per device, so when a machine reads tags of several devices, two of its samples
//! can share a seq. Events from the machine's home device keep the id above, unchanged from
//! when a machine read one device (consumers already hold those ids); events from any other
//! device name it before the seq, `filler:workorder/start:ua:1234`, and carry `"device": "ua"`
//! to say whose seq `seq` is. Device and machine names are letters, digits, `-` and `_`, so the
//! two forms cannot be mistaken for each other.

use edge_model::DeviceId;
use serde::{Deserialize, Serialize};

use crate::machine::MachineState;
use crate::uns::{Keys, Message};

/// What every event says about where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub machine: String,
    /// The device of the stored sample behind the event.
    pub device: DeviceId,
    /// Whether `device` is the machine's home device, whose ids leave the device out.
    pub home: bool,
    /// The device seq of the stored sample behind the event.
    pub seq: u64,
    /// That sample's source timestamp (epoch ms).
    pub timestamp_ms: u64,
}

/// A work order as the bridge follows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub product: Option<String>,
    /// When the order was first read (epoch ms).
    pub start_ms: u64,
    /// Parts counted for this order so far.
    pub good: u64,
    pub scrap: u64,
}

/// A machine state with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    pub state: MachineState,
    pub reason_code: u32,
    pub reason: Option<String>,
    /// The state word's value (`None` when it could not be read).
    pub raw: Option<i64>,
    /// Since when the machine is in this state (epoch ms).
    pub since_ms: u64,
}

/// One production fact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MesEvent {
    /// The work-order tag changed to a new order.
    WorkOrderStart { origin: Origin, order: Order },
    /// The work-order tag changed away from this order; `order` holds its totals.
    WorkOrderComplete {
        origin: Origin,
        order: Order,
        end_ms: u64,
    },
    /// Parts counted between two readings of the counters.
    ProductionCount {
        origin: Origin,
        order_id: Option<String>,
        product: Option<String>,
        /// The readings the parts were counted between (epoch ms).
        start_ms: u64,
        end_ms: u64,
        good: u64,
        scrap: u64,
        /// A counter was found reset by the PLC; the parts are those counted since.
        counter_reset: bool,
    },
    /// The machine's state changed; `previous` is the state it left and how long it lasted.
    StateChange {
        origin: Origin,
        state: StateInfo,
        previous: Option<(StateInfo, u64)>,
    },
    /// Retained: the state now.
    StateCurrent { origin: Origin, state: StateInfo },
    /// Retained: the work order now, with its totals so far (`None`: no order).
    WorkOrderCurrent {
        origin: Origin,
        order: Option<Order>,
    },
}

impl MesEvent {
    /// The topic levels after `{root}/{machine}/_mes/`.
    pub fn kind(&self) -> &'static str {
        match self {
            MesEvent::WorkOrderStart { .. } => "workorder/start",
            MesEvent::WorkOrderComplete { .. } => "workorder/complete",
            MesEvent::ProductionCount { .. } => "production/count",
            MesEvent::StateChange { .. } => "state/change",
            MesEvent::StateCurrent { .. } => "state/current",
            MesEvent::WorkOrderCurrent { .. } => "workorder/current",
        }
    }

    pub fn origin(&self) -> &Origin {
        match self {
            MesEvent::WorkOrderStart { origin, .. }
            | MesEvent::WorkOrderComplete { origin, .. }
            | MesEvent::ProductionCount { origin, .. }
            | MesEvent::StateChange { origin, .. }
            | MesEvent::StateCurrent { origin, .. }
            | MesEvent::WorkOrderCurrent { origin, .. } => origin,
        }
    }

    /// The idempotency key: the same for the same stored sample, whenever it is derived.
    pub fn event_id(&self) -> String {
        let o = self.origin();
        if o.home {
            format!("{}:{}:{}", o.machine, self.kind(), o.seq)
        } else {
            format!("{}:{}:{}:{}", o.machine, self.kind(), o.device, o.seq)
        }
    }

    /// `state/current` and `workorder/current` are retained: the last known value for a
    /// subscriber that arrives later.
    pub fn retained(&self) -> bool {
        matches!(
            self,
            MesEvent::StateCurrent { .. } | MesEvent::WorkOrderCurrent { .. }
        )
    }
}

/// The B2MML JobResponse state of an order in work-order events.
const JOB_RUNNING: &str = "Running";
const JOB_COMPLETED: &str = "Completed";

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    event_id: String,
    machine: &'a str,
    #[serde(flatten)]
    body: T,
    timestamp_ms: u64,
    /// Whose `seq` it is, for samples of another device than the machine's home device (left
    /// out for the home device, as before machines could read several devices).
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    seq: u64,
    #[serde(skip_serializing_if = "is_false")]
    replay: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Serialize)]
struct StartBody<'a> {
    external_work_order_id: &'a str,
    external_product_id: Option<&'a str>,
    start_time_unix_ms: u64,
    job_state: &'static str,
}

#[derive(Serialize)]
struct CompleteBody<'a> {
    external_work_order_id: &'a str,
    external_product_id: Option<&'a str>,
    start_time_unix_ms: u64,
    end_time_unix_ms: u64,
    quantity: u64,
    good_quantity: u64,
    bad_quantity: u64,
    job_state: &'static str,
}

#[derive(Serialize)]
struct CountBody<'a> {
    external_work_order_id: Option<&'a str>,
    external_product_id: Option<&'a str>,
    start_time_unix_ms: u64,
    end_time_unix_ms: u64,
    quantity: u64,
    good_quantity: u64,
    bad_quantity: u64,
    #[serde(skip_serializing_if = "is_false")]
    counter_reset: bool,
}

#[derive(Serialize)]
struct StateBody<'a> {
    state: MachineState,
    reason_code: u32,
    reason: Option<&'a str>,
    raw_value: Option<i64>,
    start_time_unix_ms: u64,
}

#[derive(Serialize)]
struct PreviousBody {
    previous_state: Option<MachineState>,
    previous_reason_code: Option<u32>,
    previous_start_time_unix_ms: Option<u64>,
    previous_duration_ms: Option<u64>,
}

#[derive(Serialize)]
struct ChangeBody<'a> {
    #[serde(flatten)]
    state: StateBody<'a>,
    #[serde(flatten)]
    previous: PreviousBody,
}

#[derive(Serialize)]
struct CurrentOrderBody<'a> {
    external_work_order_id: Option<&'a str>,
    external_product_id: Option<&'a str>,
    start_time_unix_ms: Option<u64>,
    quantity: u64,
    good_quantity: u64,
    bad_quantity: u64,
    job_state: Option<&'static str>,
}

fn state_body(s: &StateInfo) -> StateBody<'_> {
    StateBody {
        state: s.state,
        reason_code: s.reason_code,
        reason: s.reason.as_deref(),
        raw_value: s.raw,
        start_time_unix_ms: s.since_ms,
    }
}

/// Turns events into MQTT messages under one topic root.
#[derive(Debug, Clone)]
pub struct MesEncoder {
    root: String,
}

impl MesEncoder {
    /// `root` is the topic root without a trailing slash.
    pub fn new(root: &str) -> MesEncoder {
        MesEncoder {
            root: root.trim_end_matches('/').to_owned(),
        }
    }

    pub fn topic(&self, machine: &str, kind: &str) -> String {
        format!("{}/{}/_mes/{}", self.root, machine, kind)
    }

    /// The message of one event. `replay` marks events sent from a backlog.
    pub fn message(&self, event: &MesEvent, replay: bool) -> Message {
        let o = event.origin();
        let payload = match event {
            MesEvent::WorkOrderStart { order, .. } => envelope(
                event,
                replay,
                StartBody {
                    external_work_order_id: &order.id,
                    external_product_id: order.product.as_deref(),
                    start_time_unix_ms: order.start_ms,
                    job_state: JOB_RUNNING,
                },
            ),
            MesEvent::WorkOrderComplete { order, end_ms, .. } => envelope(
                event,
                replay,
                CompleteBody {
                    external_work_order_id: &order.id,
                    external_product_id: order.product.as_deref(),
                    start_time_unix_ms: order.start_ms,
                    end_time_unix_ms: *end_ms,
                    quantity: order.good.saturating_add(order.scrap),
                    good_quantity: order.good,
                    bad_quantity: order.scrap,
                    job_state: JOB_COMPLETED,
                },
            ),
            MesEvent::ProductionCount {
                order_id,
                product,
                start_ms,
                end_ms,
                good,
                scrap,
                counter_reset,
                ..
            } => envelope(
                event,
                replay,
                CountBody {
                    external_work_order_id: order_id.as_deref(),
                    external_product_id: product.as_deref(),
                    start_time_unix_ms: *start_ms,
                    end_time_unix_ms: *end_ms,
                    quantity: good.saturating_add(*scrap),
                    good_quantity: *good,
                    bad_quantity: *scrap,
                    counter_reset: *counter_reset,
                },
            ),
            MesEvent::StateChange {
                state, previous, ..
            } => envelope(
                event,
                replay,
                ChangeBody {
                    state: state_body(state),
                    previous: PreviousBody {
                        previous_state: previous.as_ref().map(|(p, _)| p.state),
                        previous_reason_code: previous.as_ref().map(|(p, _)| p.reason_code),
                        previous_start_time_unix_ms: previous.as_ref().map(|(p, _)| p.since_ms),
                        previous_duration_ms: previous.as_ref().map(|(_, d)| *d),
                    },
                },
            ),
            MesEvent::StateCurrent { state, .. } => envelope(event, replay, state_body(state)),
            MesEvent::WorkOrderCurrent { order, .. } => envelope(
                event,
                replay,
                CurrentOrderBody {
                    external_work_order_id: order.as_ref().map(|o| o.id.as_str()),
                    external_product_id: order.as_ref().and_then(|o| o.product.as_deref()),
                    start_time_unix_ms: order.as_ref().map(|o| o.start_ms),
                    quantity: order.as_ref().map_or(0, |o| o.good.saturating_add(o.scrap)),
                    good_quantity: order.as_ref().map_or(0, |o| o.good),
                    bad_quantity: order.as_ref().map_or(0, |o| o.scrap),
                    job_state: order.as_ref().map(|_| JOB_RUNNING),
                },
            ),
        };
        Message {
            topic: self.topic(&o.machine, event.kind()),
            payload,
            retain: event.retained(),
            keys: Keys {
                device: Some(o.device.0.clone()),
                seq: Some((o.seq, o.seq)),
                machine: Some(o.machine.clone()),
                event_id: Some(event.event_id()),
            },
        }
    }

    /// Appends the messages of `events` to `out`, in order.
    pub fn encode(&self, events: &[MesEvent], replay: bool, out: &mut Vec<Message>) {
        out.extend(events.iter().map(|e| self.message(e, replay)));
    }
}

fn envelope<T: Serialize>(event: &MesEvent, replay: bool, body: T) -> Vec<u8> {
    let o = event.origin();
    let env = Envelope {
        event_id: event.event_id(),
        machine: &o.machine,
        body,
        timestamp_ms: o.timestamp_ms,
        device: (!o.home).then_some(o.device.0.as_str()),
        seq: o.seq,
        replay,
    };
    // These structs hold only strings, numbers and options: serialising them cannot fail.
    serde_json::to_vec(&env).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn origin(seq: u64) -> Origin {
        Origin {
            machine: "filler".into(),
            device: DeviceId::from("plc"),
            home: true,
            seq,
            timestamp_ms: 1_000 + seq,
        }
    }

    fn order() -> Order {
        Order {
            id: "WO-1".into(),
            product: Some("P-5".into()),
            start_ms: 500,
            good: 95,
            scrap: 5,
        }
    }

    fn encode(e: &MesEvent, replay: bool) -> (Message, serde_json::Value) {
        let m = MesEncoder::new("acme/plant1/packaging/line1/").message(e, replay);
        let v = serde_json::from_slice(&m.payload).expect("JSON");
        (m, v)
    }

    #[test]
    fn a_work_order_start_speaks_umh_and_b2mml() {
        let (m, v) = encode(
            &MesEvent::WorkOrderStart {
                origin: origin(7),
                order: order(),
            },
            false,
        );
        assert_eq!(
            m.topic,
            "acme/plant1/packaging/line1/filler/_mes/workorder/start"
        );
        assert!(!m.retain);
        assert_eq!(
            v,
            json!({"event_id": "filler:workorder/start:7", "machine": "filler",
                "external_work_order_id": "WO-1", "external_product_id": "P-5",
                "start_time_unix_ms": 500, "job_state": "Running", "timestamp_ms": 1007, "seq": 7})
        );
    }

    #[test]
    fn a_work_order_completion_carries_its_totals_as_iso_22400_quantities() {
        let (m, v) = encode(
            &MesEvent::WorkOrderComplete {
                origin: origin(9),
                order: order(),
                end_ms: 900,
            },
            true,
        );
        assert_eq!(
            m.topic,
            "acme/plant1/packaging/line1/filler/_mes/workorder/complete"
        );
        assert_eq!(
            v,
            json!({"event_id": "filler:workorder/complete:9", "machine": "filler",
                "external_work_order_id": "WO-1", "external_product_id": "P-5",
                "start_time_unix_ms": 500, "end_time_unix_ms": 900, "quantity": 100,
                "good_quantity": 95, "bad_quantity": 5, "job_state": "Completed",
                "timestamp_ms": 1009, "seq": 9, "replay": true})
        );
    }

    #[test]
    fn a_production_count_names_its_order_and_interval() {
        let (m, v) = encode(
            &MesEvent::ProductionCount {
                origin: origin(3),
                order_id: Some("WO-1".into()),
                product: None,
                start_ms: 100,
                end_ms: 200,
                good: 4,
                scrap: 1,
                counter_reset: false,
            },
            false,
        );
        assert_eq!(
            m.topic,
            "acme/plant1/packaging/line1/filler/_mes/production/count"
        );
        assert_eq!(
            v,
            json!({"event_id": "filler:production/count:3", "machine": "filler",
                "external_work_order_id": "WO-1", "external_product_id": null,
                "start_time_unix_ms": 100, "end_time_unix_ms": 200, "quantity": 5,
                "good_quantity": 4, "bad_quantity": 1, "timestamp_ms": 1003, "seq": 3})
        );
        let (_, reset) = encode(
            &MesEvent::ProductionCount {
                origin: origin(4),
                order_id: None,
                product: None,
                start_ms: 100,
                end_ms: 200,
                good: 2,
                scrap: 0,
                counter_reset: true,
            },
            false,
        );
        assert_eq!(reset["counter_reset"], json!(true));
        assert_eq!(reset["external_work_order_id"], json!(null));
    }

    #[test]
    fn a_state_change_says_what_came_before_and_how_long_it_lasted() {
        let down = StateInfo {
            state: MachineState::Down,
            reason_code: 180_100,
            reason: Some("valve".into()),
            raw: Some(3),
            since_ms: 5_000,
        };
        let running = StateInfo {
            state: MachineState::Running,
            reason_code: 10_000,
            reason: None,
            raw: Some(1),
            since_ms: 2_000,
        };
        let (m, v) = encode(
            &MesEvent::StateChange {
                origin: origin(11),
                state: down.clone(),
                previous: Some((running, 3_000)),
            },
            false,
        );
        assert_eq!(
            m.topic,
            "acme/plant1/packaging/line1/filler/_mes/state/change"
        );
        assert_eq!(
            v,
            json!({"event_id": "filler:state/change:11", "machine": "filler", "state": "down",
                "reason_code": 180_100, "reason": "valve", "raw_value": 3,
                "start_time_unix_ms": 5000, "previous_state": "running",
                "previous_reason_code": 10000, "previous_start_time_unix_ms": 2000,
                "previous_duration_ms": 3000, "timestamp_ms": 1011, "seq": 11})
        );
        let (m, v) = encode(
            &MesEvent::StateCurrent {
                origin: origin(11),
                state: down,
            },
            false,
        );
        assert!(m.retain);
        assert_eq!(
            m.topic,
            "acme/plant1/packaging/line1/filler/_mes/state/current"
        );
        assert_eq!(v["event_id"], json!("filler:state/current:11"));
        assert_eq!(v["state"], json!("down"));
        assert!(v.get("previous_state").is_none());
    }

    #[test]
    fn the_first_state_change_has_no_previous_state() {
        let (_, v) = encode(
            &MesEvent::StateChange {
                origin: origin(1),
                state: StateInfo {
                    state: MachineState::Unknown,
                    reason_code: 30_000,
                    reason: None,
                    raw: None,
                    since_ms: 1,
                },
                previous: None,
            },
            false,
        );
        assert_eq!(v["previous_state"], json!(null));
        assert_eq!(v["previous_duration_ms"], json!(null));
        assert_eq!(v["raw_value"], json!(null));
    }

    #[test]
    fn the_current_work_order_is_retained_with_its_totals_or_says_there_is_none() {
        let (m, v) = encode(
            &MesEvent::WorkOrderCurrent {
                origin: origin(5),
                order: Some(order()),
            },
            false,
        );
        assert!(m.retain);
        assert_eq!(
            m.topic,
            "acme/plant1/packaging/line1/filler/_mes/workorder/current"
        );
        assert_eq!(v["external_work_order_id"], json!("WO-1"));
        assert_eq!(v["quantity"], json!(100));
        assert_eq!(v["job_state"], json!("Running"));
        let (_, none) = encode(
            &MesEvent::WorkOrderCurrent {
                origin: origin(6),
                order: None,
            },
            false,
        );
        assert_eq!(none["external_work_order_id"], json!(null));
        assert_eq!(none["quantity"], json!(0));
        assert_eq!(none["job_state"], json!(null));
    }

    #[test]
    fn samples_of_two_devices_with_the_same_seq_give_different_ids() {
        let home = MesEvent::WorkOrderStart {
            origin: origin(42),
            order: order(),
        };
        let other = MesEvent::WorkOrderStart {
            origin: Origin {
                device: DeviceId::from("ua"),
                home: false,
                ..origin(42)
            },
            order: order(),
        };
        assert_eq!(home.event_id(), "filler:workorder/start:42");
        assert_eq!(other.event_id(), "filler:workorder/start:ua:42");
        let (_, v) = encode(&other, false);
        assert_eq!(v["event_id"], json!("filler:workorder/start:ua:42"));
        assert_eq!((&v["device"], &v["seq"]), (&json!("ua"), &json!(42)));
        let (_, v) = encode(&home, false);
        assert!(v.get("device").is_none(), "home events keep their old form");
    }

    #[test]
    fn event_ids_differ_by_kind_for_the_same_sample() {
        let a = MesEvent::StateChange {
            origin: origin(1),
            state: StateInfo {
                state: MachineState::Running,
                reason_code: 10_000,
                reason: None,
                raw: Some(1),
                since_ms: 1,
            },
            previous: None,
        };
        let b = MesEvent::WorkOrderStart {
            origin: origin(1),
            order: order(),
        };
        assert_ne!(a.event_id(), b.event_id());
    }
}
