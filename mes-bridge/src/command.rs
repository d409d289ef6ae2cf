//! Commands from the MES (SPEC §5): `{root}/{device}/{tag}/_set` and
//! `{root}/{machine}/_mes/cmd/workorder/dispatch`, each with a `request_id`, answered on the
//! command topic plus `/_response` with `{"request_id", "status", "error"}`.
//!
//! Everything here is pure: the topic and the JSON payload are checked against the configured
//! devices and machines and turned into the PLC writes to make, in order, before anything is
//! written. What cannot be carried out is answered `rejected` and writes nothing. The caller
//! executes the writes and answers `ok` or `failed`, and remembers the answers by
//! [`Request::key`] (in the agent's store), so a duplicate `request_id` (an MQTT redelivery, a
//! retry, after a restart too) is answered again without writing twice.

use std::collections::HashMap;

use edge_model::{DataType, Value};
use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::uns::Message;

/// The largest command payload read; larger ones are rejected unread.
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// The longest `request_id` accepted, in characters.
pub const MAX_REQUEST_ID_CHARS: usize = 128;
/// The topic level after a command topic that carries its answer.
pub const RESPONSE_LEVEL: &str = "_response";

/// How the MES learns what became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every write was carried out.
    Ok,
    /// The command was wrong (or not understood): nothing was written.
    Rejected,
    /// The command was fine but could not be carried out (the PLC is offline, did not answer,
    /// or refused); the error says what was written before the failure, if anything.
    Failed,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// `None` when the command had no readable `request_id`.
    pub request_id: Option<String>,
    pub status: Status,
    pub error: Option<String>,
}

impl Answer {
    pub fn ok(request_id: &str) -> Answer {
        Answer {
            request_id: Some(request_id.to_owned()),
            status: Status::Ok,
            error: None,
        }
    }

    pub fn rejected(request_id: Option<&str>, error: impl Into<String>) -> Answer {
        Answer {
            request_id: request_id.map(str::to_owned),
            status: Status::Rejected,
            error: Some(error.into()),
        }
    }

    pub fn failed(request_id: &str, error: impl Into<String>) -> Answer {
        Answer {
            request_id: Some(request_id.to_owned()),
            status: Status::Failed,
            error: Some(error.into()),
        }
    }

    /// The response message (QoS 1, not retained) for a command received on `command_topic`.
    pub fn message(&self, command_topic: &str) -> Message {
        Message {
            topic: response_topic(command_topic),
            // A struct of strings and an enum: serialising cannot fail.
            payload: serde_json::to_vec(self).unwrap_or_default(),
            retain: false,
            keys: Default::default(),
        }
    }
}

/// Where the answer to a command on `command_topic` goes.
pub fn response_topic(command_topic: &str) -> String {
    format!("{command_topic}/{RESPONSE_LEVEL}")
}

/// A tag as commands see it: its type, scaling and whether it may be written.
#[derive(Debug, Clone, PartialEq)]
pub struct TagInfo {
    /// `None`: the type is the device's own (an OPC UA variable without a configured type);
    /// the value is taken as JSON gives it and the device converts it to the variable's type,
    /// refusing it there before anything is written when it does not fit.
    pub data_type: Option<DataType>,
    pub writable: bool,
    pub scale: f64,
    pub offset: f64,
}

/// A tag a dispatch writes: any device's, Modbus or OPC UA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub device: String,
    pub tag: String,
}

impl Target {
    pub fn new(device: &str, tag: &str) -> Target {
        Target {
            device: device.to_owned(),
            tag: tag.to_owned(),
        }
    }
}

/// Where a dispatched work order is written: tags of the machine's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchSpec {
    /// Receives `external_work_order_id` (required).
    pub work_order_tag: Target,
    /// Receives `external_product_id`; the field is required when this is set and refused
    /// when it is not.
    pub product_tag: Option<Target>,
    /// Receives `quantity` (the target); required when set, refused when not.
    pub quantity_tag: Option<Target>,
    /// Named parameters (`parameters.{name}`), written in this order.
    pub parameters: Vec<DispatchParameter>,
    /// Written `true` after everything else: the PLC takes the order and clears it.
    pub handshake_tag: Option<Target>,
}

/// One parameter a dispatch may (or must) carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchParameter {
    pub name: String,
    pub tag: Target,
    pub required: bool,
}

/// One PLC write a command asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedWrite {
    pub device: String,
    pub tag: String,
    /// The engineering value (the write path undoes the tag's scaling).
    pub value: Value,
}

/// What a command asks for, once its envelope (topic, size, JSON, `request_id`) is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandBody {
    Set {
        device: String,
        tag: String,
        fields: Map<String, Json>,
    },
    Dispatch {
        machine: String,
        fields: Map<String, Json>,
    },
    /// A command name no machine knows (`{root}/{machine}/_mes/cmd/{name}`).
    Unknown { machine: String, name: String },
}

/// A command with a valid envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub topic: String,
    pub request_id: String,
    /// `timestamp_ms`: when the sender sent it (epoch milliseconds, UTC), which command
    /// safety judges its age by (see [`crate::gate`]).
    pub timestamp_ms: Option<u64>,
    pub body: CommandBody,
}

impl Request {
    /// Identifies the request for deduplication: a request id is only a duplicate on the
    /// same command topic (two machines' MES clients may number their requests alike).
    pub fn key(&self) -> String {
        format!("{}\u{0}{}", self.topic, self.request_id)
    }
}

/// What an incoming message on the command topics is.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Not a command (an answer, or a topic that is no command): ignored.
    Ignore,
    /// A command without a usable envelope: answered at once, not remembered.
    Invalid(Answer),
    /// A command to validate (see [`CommandCatalog::plan`]).
    Request(Request),
}

/// The devices and machines commands may address.
#[derive(Debug, Clone, Default)]
pub struct CommandCatalog {
    devices: HashMap<String, HashMap<String, TagInfo>>,
    /// Machines, with their dispatch targets if they take dispatches.
    machines: HashMap<String, Option<DispatchSpec>>,
}

/// The topic filters that carry commands under `root`.
pub fn command_filters(root: &str) -> [String; 2] {
    let root = root.trim_end_matches('/');
    [format!("{root}/+/+/_set"), format!("{root}/+/_mes/cmd/#")]
}

/// The value of `request_id` in a payload, if it has a usable one (for answering a command
/// the gateway cannot take at all).
pub fn request_id_of(payload: &[u8]) -> Option<String> {
    if payload.len() > MAX_COMMAND_BYTES {
        return None;
    }
    let json: Json = serde_json::from_slice(payload).ok()?;
    request_id(json.as_object()?).ok()
}

fn request_id(fields: &Map<String, Json>) -> Result<String, String> {
    match fields.get("request_id") {
        None => Err("missing `request_id`".to_owned()),
        Some(Json::String(id)) if id.is_empty() => Err("`request_id` is empty".to_owned()),
        Some(Json::String(id)) if id.chars().count() > MAX_REQUEST_ID_CHARS => Err(format!(
            "`request_id` is longer than {MAX_REQUEST_ID_CHARS} characters"
        )),
        Some(Json::String(id)) => Ok(id.clone()),
        Some(other) => Err(format!(
            "`request_id` must be a string, found {}",
            json_kind(other)
        )),
    }
}

fn json_kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

impl CommandCatalog {
    pub fn new() -> CommandCatalog {
        CommandCatalog::default()
    }

    pub fn add_tag(&mut self, device: &str, tag: &str, info: TagInfo) {
        self.devices
            .entry(device.to_owned())
            .or_default()
            .insert(tag.to_owned(), info);
    }

    pub fn add_machine(&mut self, machine: &str, dispatch: Option<DispatchSpec>) {
        self.machines.insert(machine.to_owned(), dispatch);
    }

    /// Checks the envelope of a message received on `topic` under `root`. `len` is the
    /// payload's full length (the caller may hand over only its first bytes when it is too
    /// large to be read).
    pub fn parse(&self, root: &str, topic: &str, payload: &[u8], len: usize) -> Parsed {
        let root = root.trim_end_matches('/');
        let Some(rest) = topic.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
            return Parsed::Ignore;
        };
        let levels: Vec<&str> = rest.split('/').collect();
        let body = match levels.as_slice() {
            [.., RESPONSE_LEVEL] => return Parsed::Ignore,
            [device, tag, "_set"] => CommandBody::Set {
                device: (*device).to_owned(),
                tag: (*tag).to_owned(),
                fields: Map::new(),
            },
            [machine, "_mes", "cmd", "workorder", "dispatch"] => CommandBody::Dispatch {
                machine: (*machine).to_owned(),
                fields: Map::new(),
            },
            [machine, "_mes", "cmd", name @ ..] if !name.is_empty() => CommandBody::Unknown {
                machine: (*machine).to_owned(),
                name: name.join("/"),
            },
            _ => return Parsed::Ignore,
        };
        if len > MAX_COMMAND_BYTES || payload.len() > MAX_COMMAND_BYTES {
            return Parsed::Invalid(Answer::rejected(
                None,
                format!(
                    "the payload is {} bytes; commands may have at most {MAX_COMMAND_BYTES}",
                    len.max(payload.len())
                ),
            ));
        }
        let json: Json = match serde_json::from_slice(payload) {
            Ok(json) => json,
            Err(e) => {
                return Parsed::Invalid(Answer::rejected(
                    None,
                    format!("the payload is not JSON: {e}"),
                ))
            }
        };
        let Json::Object(fields) = json else {
            return Parsed::Invalid(Answer::rejected(
                None,
                format!(
                    "the payload must be a JSON object, found {}",
                    json_kind(&json)
                ),
            ));
        };
        let request_id = match request_id(&fields) {
            Ok(id) => id,
            Err(e) => return Parsed::Invalid(Answer::rejected(None, e)),
        };
        let timestamp_ms = match fields.get("timestamp_ms") {
            None => None,
            Some(t) => match t.as_u64() {
                Some(ms) => Some(ms),
                None => {
                    return Parsed::Invalid(Answer::rejected(
                        Some(&request_id),
                        format!(
                            "`timestamp_ms` must be the time the command was sent in epoch milliseconds (a whole number), found {}",
                            json_kind(t)
                        ),
                    ))
                }
            },
        };
        let body = match body {
            CommandBody::Set { device, tag, .. } => CommandBody::Set {
                device,
                tag,
                fields,
            },
            CommandBody::Dispatch { machine, .. } => CommandBody::Dispatch { machine, fields },
            unknown => unknown,
        };
        Parsed::Request(Request {
            topic: topic.to_owned(),
            request_id,
            timestamp_ms,
            body,
        })
    }

    /// The writes a valid request asks for, in the order they must be made; or why it is
    /// rejected.
    pub fn plan(&self, request: &Request) -> Result<Vec<PlannedWrite>, String> {
        match &request.body {
            CommandBody::Set {
                device,
                tag,
                fields,
            } => self.plan_set(device, tag, fields),
            CommandBody::Dispatch { machine, fields } => self.plan_dispatch(machine, fields),
            CommandBody::Unknown { machine, name } => {
                if self.machines.contains_key(machine) {
                    Err(format!(
                        "unknown command `{name}`; machines take `workorder/dispatch`"
                    ))
                } else {
                    Err(format!("unknown machine `{machine}`"))
                }
            }
        }
    }

    fn tag(&self, device: &str, tag: &str) -> Result<&TagInfo, String> {
        let tags = self
            .devices
            .get(device)
            .ok_or_else(|| format!("unknown device `{device}`"))?;
        tags.get(tag)
            .ok_or_else(|| format!("unknown tag `{tag}` on device `{device}`"))
    }

    fn plan_set(
        &self,
        device: &str,
        tag: &str,
        fields: &Map<String, Json>,
    ) -> Result<Vec<PlannedWrite>, String> {
        check_fields(fields, &["request_id", "value", "timestamp_ms"])?;
        let info = self.tag(device, tag)?;
        if !info.writable {
            return Err(format!("tag `{tag}` on device `{device}` is not writable"));
        }
        let json = fields
            .get("value")
            .ok_or_else(|| "missing `value`".to_owned())?;
        let value = json_value(info, json).map_err(|e| format!("`value`: {e}"))?;
        Ok(vec![PlannedWrite {
            device: device.to_owned(),
            tag: tag.to_owned(),
            value,
        }])
    }

    fn plan_dispatch(
        &self,
        machine: &str,
        fields: &Map<String, Json>,
    ) -> Result<Vec<PlannedWrite>, String> {
        let spec = match self.machines.get(machine) {
            None => return Err(format!("unknown machine `{machine}`")),
            Some(None) => {
                return Err(format!(
                    "machine `{machine}` takes no work-order dispatch (no [machine.dispatch] in the config)"
                ))
            }
            Some(Some(spec)) => spec,
        };
        check_fields(
            fields,
            &[
                "request_id",
                "external_work_order_id",
                "external_product_id",
                "quantity",
                "parameters",
                "timestamp_ms",
            ],
        )?;
        let mut writes = Vec::new();
        let mut write = |field: &str, target: &Target, json: &Json| -> Result<(), String> {
            let Target { device, tag } = target;
            let info = self.tag(device, tag)?;
            if !info.writable {
                return Err(format!("tag `{tag}` on device `{device}` is not writable"));
            }
            let value = json_value(info, json).map_err(|e| format!("`{field}`: {e}"))?;
            writes.push(PlannedWrite {
                device: device.clone(),
                tag: tag.clone(),
                value,
            });
            Ok(())
        };

        let order = fields
            .get("external_work_order_id")
            .ok_or_else(|| "missing `external_work_order_id`".to_owned())?;
        if order.as_str().is_some_and(|s| s.trim().is_empty()) {
            return Err("`external_work_order_id` is empty".to_owned());
        }
        write("external_work_order_id", &spec.work_order_tag, order)?;
        for (field, tag) in [
            ("external_product_id", &spec.product_tag),
            ("quantity", &spec.quantity_tag),
        ] {
            match (fields.get(field), tag) {
                (Some(json), Some(tag)) => {
                    if field == "quantity" && !is_positive(json) {
                        return Err("`quantity` must be a number above 0".to_owned());
                    }
                    write(field, tag, json)?;
                }
                (None, Some(_)) => return Err(format!("missing `{field}`")),
                (Some(_), None) => {
                    return Err(format!(
                        "machine `{machine}` has no PLC tag for `{field}`; leave it out"
                    ))
                }
                (None, None) => {}
            }
        }
        let empty = Map::new();
        let params = match fields.get("parameters") {
            None => &empty,
            Some(Json::Object(p)) => p,
            Some(other) => {
                return Err(format!(
                    "`parameters` must be an object, found {}",
                    json_kind(other)
                ))
            }
        };
        let known: Vec<&str> = spec.parameters.iter().map(|p| p.name.as_str()).collect();
        if let Some(unknown) = params.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(if known.is_empty() {
                format!("unknown parameter `{unknown}`: machine `{machine}` takes no parameters")
            } else {
                format!(
                    "unknown parameter `{unknown}`; machine `{machine}` takes {}",
                    known.join(", ")
                )
            });
        }
        for p in &spec.parameters {
            match params.get(&p.name) {
                Some(json) => write(&format!("parameters.{}", p.name), &p.tag, json)?,
                None if p.required => return Err(format!("missing parameter `{}`", p.name)),
                None => {}
            }
        }
        if let Some(tag) = &spec.handshake_tag {
            write("handshake", tag, &Json::Bool(true))?;
        }
        Ok(writes)
    }
}

fn is_positive(json: &Json) -> bool {
    json.as_f64().is_some_and(|x| x > 0.0)
}

/// Refuses fields the command does not know: a misspelt field would otherwise be ignored.
fn check_fields(fields: &Map<String, Json>, known: &[&str]) -> Result<(), String> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "unknown field `{k}`; this command takes {}",
            known
                .iter()
                .filter(|f| **f != "timestamp_ms")
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        None => Ok(()),
    }
}

/// A JSON value for a tag whose type is the device's own: booleans, strings and numbers as
/// they are (whole numbers exactly, scaling undone), for the device to convert and check.
fn untyped_value(tag: &TagInfo, json: &Json) -> Result<Value, String> {
    match json {
        Json::Bool(b) => Ok(Value::Bool(*b)),
        Json::String(s) => Ok(Value::String(s.clone())),
        Json::Number(n) => {
            let unscaled = tag.scale == 1.0 && tag.offset == 0.0;
            if unscaled {
                if let Some(i) = n.as_i64() {
                    return Ok(Value::I64(i));
                }
                if let Some(u) = n.as_u64() {
                    return Ok(Value::U64(u));
                }
            }
            let x = n
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("{n} is not a finite number"))?;
            Ok(Value::F64(x))
        }
        other => Err(format!(
            "expected a number, a string or true/false, found {}",
            json_kind(other)
        )),
    }
}

/// The smallest and largest values of an integer type, exactly.
fn integer_range(dt: DataType) -> Option<(i128, i128)> {
    Some(match dt {
        DataType::I16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        DataType::U16 => (0, i128::from(u16::MAX)),
        DataType::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        DataType::U32 => (0, i128::from(u32::MAX)),
        DataType::I64 => (i128::from(i64::MIN), i128::from(i64::MAX)),
        DataType::U64 => (0, i128::from(u64::MAX)),
        _ => return None,
    })
}

/// An integer of type `dt`, if `x` lies in its range.
fn integer_value(x: i128, dt: DataType) -> Result<Value, String> {
    let (min, max) = integer_range(dt).ok_or_else(|| format!("{dt} is not an integer type"))?;
    if x < min || x > max {
        return Err(format!("{x} is out of range for {dt} ({min} to {max})"));
    }
    // The casts are exact: x lies within the type's range.
    Ok(match dt {
        DataType::I16 => Value::I16(x as i16),
        DataType::U16 => Value::U16(x as u16),
        DataType::I32 => Value::I32(x as i32),
        DataType::U32 => Value::U32(x as u32),
        DataType::I64 => Value::I64(x as i64),
        _ => Value::U64(x as u64),
    })
}

/// A JSON value as the value of a tag: the right kind for its type, within its range (after
/// undoing its scaling), strings no longer than the tag holds.
pub fn json_value(tag: &TagInfo, json: &Json) -> Result<Value, String> {
    let Some(dt) = tag.data_type else {
        return untyped_value(tag, json);
    };
    match dt {
        DataType::Bool => match json {
            Json::Bool(b) => Ok(Value::Bool(*b)),
            other => Err(format!(
                "the tag is a bool; expected true or false, found {}",
                json_kind(other)
            )),
        },
        DataType::String(max) => match json {
            Json::String(s) if s.len() > usize::from(max) => Err(format!(
                "the tag holds at most {max} bytes; the string has {}",
                s.len()
            )),
            Json::String(s) => Ok(Value::String(s.clone())),
            other => Err(format!(
                "the tag is a {dt}; expected a string, found {}",
                json_kind(other)
            )),
        },
        _ => {
            let Json::Number(n) = json else {
                return Err(format!(
                    "the tag is {dt}; expected a number, found {}",
                    json_kind(json)
                ));
            };
            let unscaled = tag.scale == 1.0 && tag.offset == 0.0;
            if unscaled && integer_range(dt).is_some() {
                // Whole JSON numbers are taken exactly (an f64 loses integers above 2^53).
                if let Some(i) = n.as_i64() {
                    return integer_value(i128::from(i), dt);
                }
                if let Some(u) = n.as_u64() {
                    return integer_value(i128::from(u), dt);
                }
            }
            let x = n
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or_else(|| format!("{n} is not a finite number"))?;
            if !tag.scale.is_finite() || tag.scale == 0.0 {
                return Err("the tag's scale cannot be undone".to_owned());
            }
            let raw = (x - tag.offset) / tag.scale;
            match dt {
                DataType::F32 => {
                    if !raw.is_finite() || raw.abs() > f64::from(f32::MAX) {
                        return Err(format!("{x} is out of range for f32"));
                    }
                }
                DataType::F64 => {
                    if !raw.is_finite() {
                        return Err(format!("{x} is out of range for f64"));
                    }
                }
                _ => {
                    // Scaled integers round to the nearest raw value, as the write path does.
                    let raw = if unscaled { raw } else { raw.round() };
                    if raw.fract() != 0.0 {
                        return Err(format!("{x} is not a whole number, which {dt} requires"));
                    }
                    let (min, max) = integer_range(dt).unwrap_or((0, 0));
                    // Both bounds are powers of two (or their negation): exact as floats.
                    if raw < min as f64 || raw >= (max + 1) as f64 {
                        return Err(if unscaled {
                            format!("{x} is out of range for {dt} ({min} to {max})")
                        } else {
                            format!(
                                "{x} is out of range: the tag holds {dt} raw values from {min} to {max}, scaled by {} and offset by {}",
                                tag.scale, tag.offset
                            )
                        });
                    }
                    if unscaled {
                        return integer_value(raw as i128, dt);
                    }
                }
            }
            Ok(if unscaled && dt == DataType::F32 {
                Value::F32(x as f32)
            } else {
                Value::F64(x)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const ROOT: &str = "acme/line1";

    fn filler(tag: &str) -> Target {
        Target::new("filler", tag)
    }

    fn info(data_type: DataType, writable: bool) -> TagInfo {
        TagInfo {
            data_type: Some(data_type),
            writable,
            scale: 1.0,
            offset: 0.0,
        }
    }

    fn catalog() -> CommandCatalog {
        let mut c = CommandCatalog::new();
        c.add_tag("filler", "speed", info(DataType::U16, true));
        c.add_tag("filler", "count", info(DataType::U32, false));
        c.add_tag("filler", "next_order", info(DataType::String(16), true));
        c.add_tag("filler", "next_product", info(DataType::String(8), true));
        c.add_tag("filler", "target", info(DataType::U32, true));
        c.add_tag("filler", "fill_ml", info(DataType::F32, true));
        c.add_tag("filler", "new_order", info(DataType::Bool, true));
        c.add_tag(
            "filler",
            "temp_sp",
            TagInfo {
                data_type: Some(DataType::I16),
                writable: true,
                scale: 0.1,
                offset: 0.0,
            },
        );
        c.add_machine(
            "line",
            Some(DispatchSpec {
                work_order_tag: filler("next_order"),
                product_tag: Some(filler("next_product")),
                quantity_tag: Some(filler("target")),
                parameters: vec![
                    DispatchParameter {
                        name: "speed".into(),
                        tag: filler("speed"),
                        required: false,
                    },
                    DispatchParameter {
                        name: "fill_ml".into(),
                        tag: filler("fill_ml"),
                        required: true,
                    },
                ],
                handshake_tag: Some(filler("new_order")),
            }),
        );
        c.add_machine("watcher", None);
        c
    }

    fn parse(topic: &str, payload: &str) -> Parsed {
        catalog().parse(ROOT, topic, payload.as_bytes(), payload.len())
    }

    fn request(topic: &str, payload: serde_json::Value) -> Request {
        match parse(topic, &payload.to_string()) {
            Parsed::Request(r) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn plan(topic: &str, payload: serde_json::Value) -> Result<Vec<PlannedWrite>, String> {
        catalog().plan(&request(topic, payload))
    }

    fn rejected(p: Parsed) -> String {
        match p {
            Parsed::Invalid(Answer {
                status: Status::Rejected,
                error: Some(e),
                request_id: None,
            }) => e,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    const SET: &str = "acme/line1/filler/speed/_set";
    const DISPATCH: &str = "acme/line1/line/_mes/cmd/workorder/dispatch";

    fn dispatch() -> serde_json::Value {
        json!({"request_id": "r1", "external_work_order_id": "WO-7", "external_product_id": "P-5",
            "quantity": 1200, "parameters": {"fill_ml": 330.5, "speed": 120}})
    }

    #[test]
    fn command_topics_are_recognised_and_answers_and_other_topics_ignored() {
        assert!(matches!(
            parse(SET, r#"{"request_id":"a","value":1}"#),
            Parsed::Request(_)
        ));
        assert!(matches!(
            parse(DISPATCH, r#"{"request_id":"a"}"#),
            Parsed::Request(_)
        ));
        for topic in [
            "acme/line1/filler/speed/_set/_response",
            "acme/line1/line/_mes/cmd/workorder/dispatch/_response",
            "acme/line1/filler/speed",
            "acme/line1/line/_mes/state/current",
            "other/root/filler/speed/_set",
            "acme/line1",
            "acme/line1/line/_mes/cmd",
        ] {
            assert_eq!(parse(topic, "{}"), Parsed::Ignore, "{topic}");
        }
        assert_eq!(
            command_filters("acme/line1/"),
            [
                "acme/line1/+/+/_set".to_owned(),
                "acme/line1/+/_mes/cmd/#".to_owned()
            ]
        );
    }

    #[test]
    fn a_payload_that_is_not_a_json_object_is_rejected_without_a_request_id() {
        assert!(rejected(parse(SET, "hello")).contains("not JSON"));
        assert!(rejected(parse(SET, "")).contains("not JSON"));
        assert!(rejected(parse(SET, "[1,2]")).contains("JSON object"));
        assert!(rejected(parse(SET, "42")).contains("JSON object"));
        assert!(rejected(parse(SET, "\u{0}\u{ff}")).contains("not JSON"));
    }

    #[test]
    fn a_request_id_is_required_as_a_short_non_empty_string() {
        assert!(rejected(parse(SET, r#"{"value":1}"#)).contains("missing `request_id`"));
        assert!(rejected(parse(SET, r#"{"request_id":7,"value":1}"#)).contains("must be a string"));
        assert!(rejected(parse(SET, r#"{"request_id":"","value":1}"#)).contains("empty"));
        let long = "x".repeat(MAX_REQUEST_ID_CHARS + 1);
        assert!(rejected(parse(SET, &format!(r#"{{"request_id":"{long}"}}"#))).contains("longer"));
        let ok = "x".repeat(MAX_REQUEST_ID_CHARS);
        assert!(matches!(
            parse(SET, &format!(r#"{{"request_id":"{ok}"}}"#)),
            Parsed::Request(_)
        ));
    }

    #[test]
    fn an_oversized_payload_is_rejected_unread() {
        let big = format!(
            r#"{{"request_id":"r","value":"{}"}}"#,
            "x".repeat(MAX_COMMAND_BYTES)
        );
        assert!(rejected(parse(SET, &big)).contains("at most"));
        // The caller may pass only the first bytes of a huge payload with its real length.
        let head = &big.as_bytes()[..10];
        let p = catalog().parse(ROOT, SET, head, 5_000_000);
        assert!(rejected(p).contains("5000000 bytes"));
        assert_eq!(request_id_of(big.as_bytes()), None);
    }

    #[test]
    fn a_set_writes_one_tag_with_a_value_of_its_type() {
        assert_eq!(
            plan(SET, json!({"request_id": "r", "value": 1500})),
            Ok(vec![PlannedWrite {
                device: "filler".into(),
                tag: "speed".into(),
                value: Value::U16(1500)
            }])
        );
        assert_eq!(
            plan(
                "acme/line1/filler/next_order/_set",
                json!({"request_id": "r", "value": "WO-1"})
            ),
            Ok(vec![PlannedWrite {
                device: "filler".into(),
                tag: "next_order".into(),
                value: Value::String("WO-1".into())
            }])
        );
        assert_eq!(
            plan(
                "acme/line1/filler/new_order/_set",
                json!({"request_id": "r", "value": true})
            )
            .map(|w| w[0].value.clone()),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn a_set_to_an_unknown_device_or_tag_or_a_read_only_tag_is_rejected() {
        let e = plan(
            "acme/line1/press/speed/_set",
            json!({"request_id": "r", "value": 1}),
        );
        assert_eq!(e, Err("unknown device `press`".to_owned()));
        let e = plan(
            "acme/line1/filler/sped/_set",
            json!({"request_id": "r", "value": 1}),
        );
        assert_eq!(e, Err("unknown tag `sped` on device `filler`".to_owned()));
        let e = plan(
            "acme/line1/filler/count/_set",
            json!({"request_id": "r", "value": 1}),
        );
        assert!(e.expect_err("read-only").contains("not writable"));
    }

    #[test]
    fn a_set_needs_its_value_and_no_unknown_fields() {
        assert_eq!(
            plan(SET, json!({"request_id": "r"})),
            Err("missing `value`".to_owned())
        );
        let e = plan(SET, json!({"request_id": "r", "value": 1, "valeu": 2}));
        assert!(e
            .expect_err("unknown field")
            .contains("unknown field `valeu`"));
        assert!(plan(
            SET,
            json!({"request_id": "r", "value": 1, "timestamp_ms": 5})
        )
        .is_ok());
    }

    #[test]
    fn values_of_the_wrong_kind_are_rejected() {
        for (topic, value) in [
            (SET, json!("12")),
            (SET, json!(true)),
            (SET, json!(null)),
            (SET, json!([1])),
            ("acme/line1/filler/new_order/_set", json!(1)),
            ("acme/line1/filler/new_order/_set", json!("true")),
            ("acme/line1/filler/next_order/_set", json!(42)),
        ] {
            let e = plan(topic, json!({"request_id": "r", "value": value}));
            assert!(e.is_err(), "{topic} {value}: {e:?}");
        }
    }

    #[test]
    fn values_out_of_range_or_not_whole_are_rejected() {
        for value in [
            json!(65_536),
            json!(-1),
            json!(1.5),
            json!(1e300),
            json!(18_446_744_073_709_551_615u64),
        ] {
            let e = plan(SET, json!({"request_id": "r", "value": value}));
            assert!(e.is_err(), "{value}: {e:?}");
        }
        assert_eq!(
            plan(SET, json!({"request_id": "r", "value": 65_535.0})).map(|w| w[0].value.clone()),
            Ok(Value::U16(65_535))
        );
        let long = "x".repeat(17);
        let e = plan(
            "acme/line1/filler/next_order/_set",
            json!({"request_id": "r", "value": long}),
        );
        assert!(e.expect_err("too long").contains("at most 16 bytes"));
    }

    #[test]
    fn scaled_values_are_checked_against_the_raw_range_and_sent_in_engineering_units() {
        let topic = "acme/line1/filler/temp_sp/_set";
        assert_eq!(
            plan(topic, json!({"request_id": "r", "value": 21.5})).map(|w| w[0].value.clone()),
            Ok(Value::F64(21.5))
        );
        assert!(plan(topic, json!({"request_id": "r", "value": 3_276.7})).is_ok());
        let e = plan(topic, json!({"request_id": "r", "value": 3_276.8}));
        assert!(e.expect_err("raw 32768").contains("out of range"));
    }

    #[test]
    fn floats_must_fit_their_type() {
        let topic = "acme/line1/filler/fill_ml/_set";
        assert_eq!(
            plan(topic, json!({"request_id": "r", "value": 2})).map(|w| w[0].value.clone()),
            Ok(Value::F32(2.0))
        );
        assert!(plan(topic, json!({"request_id": "r", "value": 1e39})).is_err());
    }

    #[test]
    fn a_dispatch_writes_order_data_then_parameters_then_the_handshake() {
        let writes = plan(DISPATCH, dispatch()).expect("valid");
        let order: Vec<(&str, &Value)> =
            writes.iter().map(|w| (w.tag.as_str(), &w.value)).collect();
        assert_eq!(
            order,
            vec![
                ("next_order", &Value::String("WO-7".into())),
                ("next_product", &Value::String("P-5".into())),
                ("target", &Value::U32(1200)),
                ("speed", &Value::U16(120)),
                ("fill_ml", &Value::F32(330.5)),
                ("new_order", &Value::Bool(true)),
            ]
        );
        assert!(writes.iter().all(|w| w.device == "filler"));
    }

    #[test]
    fn optional_parameters_may_be_left_out() {
        let mut d = dispatch();
        d["parameters"] = json!({"fill_ml": 250});
        let writes = plan(DISPATCH, d).expect("valid");
        assert!(!writes.iter().any(|w| w.tag == "speed"));
    }

    #[test]
    fn every_invalid_dispatch_is_rejected_with_the_reason() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                json!({"request_id": "r"}),
                "missing `external_work_order_id`",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "", "external_product_id": "P", "quantity": 1, "parameters": {"fill_ml": 1}}),
                "empty",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": 7, "external_product_id": "P", "quantity": 1, "parameters": {"fill_ml": 1}}),
                "expected a string",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "quantity": 1, "parameters": {"fill_ml": 1}}),
                "missing `external_product_id`",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "parameters": {"fill_ml": 1}}),
                "missing `quantity`",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": "ten", "parameters": {"fill_ml": 1}}),
                "above 0",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 0, "parameters": {"fill_ml": 1}}),
                "above 0",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 5_000_000_000u64, "parameters": {"fill_ml": 1}}),
                "out of range",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 1}),
                "missing parameter `fill_ml`",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 1, "parameters": {"fill_ml": 1, "pressure": 2}}),
                "unknown parameter `pressure`",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 1, "parameters": [1]}),
                "must be an object",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 1, "parameters": {"fill_ml": "lots"}}),
                "`parameters.fill_ml`",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 1, "parameters": {"fill_ml": 1, "speed": 70_000}}),
                "`parameters.speed`",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "WO-TOO-LONG-FOR-THE-TAG", "external_product_id": "P", "quantity": 1, "parameters": {"fill_ml": 1}}),
                "at most 16 bytes",
            ),
            (
                json!({"request_id": "r", "external_work_order_id": "W", "external_product_id": "P", "quantity": 1, "parameters": {"fill_ml": 1}, "priority": 1}),
                "unknown field `priority`",
            ),
        ];
        for (payload, why) in cases {
            let e = plan(DISPATCH, payload.clone());
            assert!(
                e.as_ref().is_err_and(|e| e.contains(why)),
                "{payload}: expected an error containing {why:?}, got {e:?}"
            );
        }
    }

    #[test]
    fn dispatches_to_unknown_machines_or_machines_without_dispatch_are_rejected() {
        let e = plan("acme/line1/press/_mes/cmd/workorder/dispatch", dispatch());
        assert_eq!(e, Err("unknown machine `press`".to_owned()));
        let e = plan("acme/line1/watcher/_mes/cmd/workorder/dispatch", dispatch());
        assert!(e
            .expect_err("no dispatch")
            .contains("takes no work-order dispatch"));
        let e = plan("acme/line1/line/_mes/cmd/workorder/abort", dispatch());
        assert!(e
            .expect_err("unknown command")
            .contains("unknown command `workorder/abort`"));
        let e = plan("acme/line1/press/_mes/cmd/workorder/abort", dispatch());
        assert_eq!(e, Err("unknown machine `press`".to_owned()));
    }

    #[test]
    fn a_dispatch_writes_to_the_devices_its_targets_name_in_order() {
        let mut c = catalog();
        c.add_tag("ua", "order", info(DataType::String(32), true));
        c.add_tag(
            "ua",
            "go",
            TagInfo {
                data_type: None,
                writable: true,
                scale: 1.0,
                offset: 0.0,
            },
        );
        c.add_machine(
            "mixed",
            Some(DispatchSpec {
                work_order_tag: Target::new("ua", "order"),
                product_tag: None,
                quantity_tag: Some(filler("target")),
                parameters: vec![],
                handshake_tag: Some(Target::new("ua", "go")),
            }),
        );
        let r = request(
            "acme/line1/mixed/_mes/cmd/workorder/dispatch",
            json!({"request_id": "r", "external_work_order_id": "WO-7", "quantity": 12}),
        );
        let writes = c.plan(&r).expect("valid dispatch");
        let seen: Vec<(&str, &str, &Value)> = writes
            .iter()
            .map(|w| (w.device.as_str(), w.tag.as_str(), &w.value))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("ua", "order", &Value::String("WO-7".into())),
                ("filler", "target", &Value::U32(12)),
                ("ua", "go", &Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn a_tag_of_the_devices_own_type_takes_json_values_as_they_are_for_the_device_to_convert() {
        let untyped = |scale: f64| TagInfo {
            data_type: None,
            writable: true,
            scale,
            offset: 0.0,
        };
        assert_eq!(
            json_value(&untyped(1.0), &json!(true)),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            json_value(&untyped(1.0), &json!("WO-1")),
            Ok(Value::String("WO-1".into()))
        );
        assert_eq!(json_value(&untyped(1.0), &json!(-3)), Ok(Value::I64(-3)));
        assert_eq!(
            json_value(&untyped(1.0), &json!(u64::MAX)),
            Ok(Value::U64(u64::MAX))
        );
        assert_eq!(json_value(&untyped(1.0), &json!(2.5)), Ok(Value::F64(2.5)));
        // Scaled: the engineering value goes to the device, which undoes the scaling.
        assert_eq!(json_value(&untyped(0.1), &json!(7)), Ok(Value::F64(7.0)));
        assert!(json_value(&untyped(1.0), &json!({"a": 1}))
            .expect_err("an object is no tag value")
            .contains("found an object"));
        assert!(json_value(&untyped(1.0), &json!(null)).is_err());
    }

    #[test]
    fn fields_without_a_tag_on_the_machine_are_refused_rather_than_dropped() {
        let mut c = catalog();
        c.add_machine(
            "bare",
            Some(DispatchSpec {
                work_order_tag: filler("next_order"),
                product_tag: None,
                quantity_tag: None,
                parameters: vec![],
                handshake_tag: None,
            }),
        );
        let r = request(
            "acme/line1/bare/_mes/cmd/workorder/dispatch",
            json!({"request_id": "r", "external_work_order_id": "W", "quantity": 3}),
        );
        assert!(c
            .plan(&r)
            .expect_err("no quantity tag")
            .contains("no PLC tag for `quantity`"));
        let r = request(
            "acme/line1/bare/_mes/cmd/workorder/dispatch",
            json!({"request_id": "r", "external_work_order_id": "W", "parameters": {"x": 1}}),
        );
        assert!(c
            .plan(&r)
            .expect_err("no parameters")
            .contains("takes no parameters"));
        let r = request(
            "acme/line1/bare/_mes/cmd/workorder/dispatch",
            json!({"request_id": "r", "external_work_order_id": "W"}),
        );
        assert_eq!(c.plan(&r).map(|w| w.len()), Ok(1));
    }

    #[test]
    fn answers_are_the_contract_json_on_the_response_topic() {
        let m = Answer::ok("r1").message(SET);
        assert_eq!(m.topic, "acme/line1/filler/speed/_set/_response");
        assert!(!m.retain);
        let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("JSON");
        assert_eq!(
            v,
            json!({"request_id": "r1", "status": "ok", "error": null})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&Answer::rejected(None, "no").message(SET).payload)
                .expect("JSON");
        assert_eq!(
            v,
            json!({"request_id": null, "status": "rejected", "error": "no"})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&Answer::failed("r2", "offline").message(SET).payload)
                .expect("JSON");
        assert_eq!(v["status"], json!("failed"));
    }

    #[test]
    fn a_duplicate_is_the_same_request_id_on_the_same_topic() {
        let a = request(SET, json!({"request_id": "1", "value": 1}));
        let b = request(
            "acme/line1/filler/next_order/_set",
            json!({"request_id": "1", "value": "x"}),
        );
        assert_ne!(a.key(), b.key());
        assert_eq!(
            a.key(),
            request(SET, json!({"request_id": "1", "value": 2})).key()
        );
        assert_eq!(
            request_id_of(br#"{"request_id":"abc"}"#),
            Some("abc".into())
        );
        assert_eq!(request_id_of(b"nope"), None);
    }

    proptest! {
        #[test]
        fn no_payload_or_topic_makes_the_parser_panic(topic in "[a-z_/+#]{0,40}", payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let c = catalog();
            if let Parsed::Request(r) = c.parse(ROOT, &format!("{ROOT}/{topic}"), &payload, payload.len()) {
                let _ = c.plan(&r);
            }
        }

        #[test]
        fn every_u16_in_range_is_taken_and_every_integer_outside_is_rejected(x in any::<i64>()) {
            let r = json_value(&info(DataType::U16, true), &json!(x));
            if (0..=65_535).contains(&x) {
                prop_assert_eq!(r, Ok(Value::U16(x as u16)));
            } else {
                prop_assert!(r.is_err());
            }
        }

        #[test]
        fn integers_beyond_two_to_the_53_stay_exact(x in any::<u64>()) {
            prop_assert_eq!(json_value(&info(DataType::U64, true), &json!(x)), Ok(Value::U64(x)));
        }

        #[test]
        fn any_json_value_for_any_tag_type_never_panics(
            dt in prop_oneof![Just(DataType::Bool), Just(DataType::I16), Just(DataType::U32), Just(DataType::I64), Just(DataType::F32), Just(DataType::F64), Just(DataType::String(4))],
            scale in prop_oneof![Just(1.0), Just(0.1), Just(-2.5)],
            x in any::<f64>(),
            s in ".{0,10}",
        ) {
            let tag = TagInfo { data_type: Some(dt), writable: true, scale, offset: 1.0 };
            for j in [json!(x), json!(s), json!(x as i64), json!(null), json!({"a": 1})] {
                let _ = json_value(&tag, &j);
            }
        }
    }
}
