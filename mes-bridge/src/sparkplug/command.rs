//! What hosts send the edge node, decoded and validated without I/O: NCMD (`Node
//! Control/Rebirth`), DCMD (writes to device metrics, checked against the catalogue: known
//! metric, writable, value in the field and range of the metric's datatype, which for a metric
//! of the server's type is the one its last DBIRTH declared), and the primary
//! host's STATE messages (Sparkplug 3.0 JSON form). A command that fails any check is an error
//! as a whole: nothing of it is written.

use edge_model::Value;
use serde::Deserialize;

use super::node::{EdgeNode, NAMESPACE, NEXT_SERVER, REBIRTH};
use super::proto::payload::{metric, Metric};
use super::proto::Payload;
use super::types::{decode_value, ValueError};

/// A command this node carries out.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// NCMD `Node Control/Rebirth` = true: publish every birth again. `ignored` names other
    /// metrics of the same NCMD this node has no use for.
    Rebirth { ignored: Vec<String> },
    /// NCMD `Node Control/Next Server` = true: leave this MQTT server for the next one of the
    /// node's list (the publisher knows whether it has one).
    NextServer,
    /// DCMD: values for writable tags of one device, every one already validated against the
    /// metric's datatype.
    Write {
        device: String,
        writes: Vec<TagWrite>,
    },
}

/// One tag write of a DCMD.
#[derive(Debug, Clone, PartialEq)]
pub struct TagWrite {
    pub tag: String,
    pub alias: u64,
    /// The engineering value (a scaled tag's scaling is undone by the device write path).
    pub value: Value,
}

/// Why a command is refused; nothing of it is carried out.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("`{0}` is not a command topic of this edge node")]
    NotOurs(String),
    #[error("unknown device `{0}`")]
    UnknownDevice(String),
    #[error("the payload is not a Sparkplug B payload: {0}")]
    Malformed(String),
    #[error("the command has no metrics")]
    Empty,
    #[error("device `{device}` has no metric {metric}")]
    UnknownMetric { device: String, metric: String },
    #[error("metric alias {alias} is `{aliased}`, but the command names `{named}`")]
    NameAliasMismatch {
        alias: u64,
        aliased: String,
        named: String,
    },
    #[error("metric `{tag}` of device `{device}` is read-only")]
    NotWritable { device: String, tag: String },
    #[error(
        "metric `{tag}` of device `{device}` takes its type from the server, and no value has \
         arrived yet to tell it: the metric is in no DBIRTH, so the command's value cannot be read"
    )]
    TypeUnknown { device: String, tag: String },
    #[error("metric `{tag}`: a null value cannot be written")]
    Null { tag: String },
    #[error("metric `{tag}`: the command carries no value")]
    NoValue { tag: String },
    #[error("metric `{tag}` is {announced}, but the command says datatype {sent}")]
    WrongDatatype {
        tag: String,
        announced: &'static str,
        sent: u32,
    },
    #[error("metric `{tag}`: {error}")]
    BadValue { tag: String, error: ValueError },
    #[error("metric `{0}` appears twice in one command")]
    Repeated(String),
    #[error("the node command has nothing this edge node does: {0:?}")]
    NothingToDo(Vec<String>),
}

impl EdgeNode {
    /// Decodes and validates an NCMD or DCMD received on `topic`.
    pub fn decode_command(&self, topic: &str, payload: &[u8]) -> Result<Command, CommandError> {
        let not_ours = || CommandError::NotOurs(topic.to_owned());
        let mut levels = topic.split('/');
        let (Some(ns), Some(group), Some(kind), Some(edge)) =
            (levels.next(), levels.next(), levels.next(), levels.next())
        else {
            return Err(not_ours());
        };
        let device = levels.next();
        if levels.next().is_some()
            || ns != NAMESPACE
            || group != self.group_id()
            || edge != self.edge_node_id()
        {
            return Err(not_ours());
        }
        let payload = super::node::decode_payload(payload)
            .map_err(|e| CommandError::Malformed(e.to_string()))?;
        match (kind, device) {
            ("NCMD", None) => node_command(&payload),
            ("DCMD", Some(device)) => self.device_command(device, &payload),
            _ => Err(not_ours()),
        }
    }

    fn device_command(&self, device: &str, payload: &Payload) -> Result<Command, CommandError> {
        let dev = self
            .device_by_name(device)
            .ok_or_else(|| CommandError::UnknownDevice(device.to_owned()))?;
        if payload.metrics.is_empty() {
            return Err(CommandError::Empty);
        }
        let mut writes: Vec<TagWrite> = Vec::with_capacity(payload.metrics.len());
        for m in &payload.metrics {
            let i = self.metric_of(device, m)?;
            let (Some(def), Some(&announced)) = (dev.def.metrics.get(i), dev.announced.get(i))
            else {
                return Err(unknown(device, m));
            };
            let alias = dev.first_alias + i as u64;
            if writes.iter().any(|w| w.alias == alias) {
                return Err(CommandError::Repeated(def.name.clone()));
            }
            if !def.writable {
                return Err(CommandError::NotWritable {
                    device: device.to_owned(),
                    tag: def.name.clone(),
                });
            }
            // An untyped metric is decoded as the type its last DBIRTH declared, the one the
            // host encodes with; before any, nothing says how to read the value.
            let Some(t) = announced else {
                return Err(CommandError::TypeUnknown {
                    device: device.to_owned(),
                    tag: def.name.clone(),
                });
            };
            if let Some(sent) = m.datatype.filter(|&d| d != t.code()) {
                return Err(CommandError::WrongDatatype {
                    tag: def.name.clone(),
                    announced: t.name(),
                    sent,
                });
            }
            if m.is_null == Some(true) {
                return Err(CommandError::Null {
                    tag: def.name.clone(),
                });
            }
            let Some(v) = &m.value else {
                return Err(CommandError::NoValue {
                    tag: def.name.clone(),
                });
            };
            let value = decode_value(t, v).map_err(|error| CommandError::BadValue {
                tag: def.name.clone(),
                error,
            })?;
            writes.push(TagWrite {
                tag: def.name.clone(),
                alias,
                value,
            });
        }
        Ok(Command::Write {
            device: device.to_owned(),
            writes,
        })
    }

    /// The index of the metric a command's metric means: by alias (DATA and CMD carry the
    /// alias only) or, from hosts that do not use aliases, by name; both must agree.
    fn metric_of(&self, device: &str, m: &Metric) -> Result<usize, CommandError> {
        let dev = self
            .device_by_name(device)
            .ok_or_else(|| CommandError::UnknownDevice(device.to_owned()))?;
        match (m.alias, m.name.as_deref()) {
            (Some(alias), named) => {
                let r = self
                    .metric_by_alias(alias)
                    .filter(|r| {
                        self.devices
                            .get(r.device)
                            .is_some_and(|d| d.def.name == device)
                    })
                    .ok_or_else(|| unknown(device, m))?;
                if let (Some(named), Some(def)) = (named, dev.def.metrics.get(r.metric)) {
                    if named != def.name {
                        return Err(CommandError::NameAliasMismatch {
                            alias,
                            aliased: def.name.clone(),
                            named: named.to_owned(),
                        });
                    }
                }
                Ok(r.metric)
            }
            (None, Some(name)) => dev
                .tags
                .get(name)
                .copied()
                .ok_or_else(|| unknown(device, m)),
            (None, None) => Err(unknown(device, m)),
        }
    }
}

fn unknown(device: &str, m: &Metric) -> CommandError {
    let metric = match (m.alias, &m.name) {
        (_, Some(name)) => format!("`{name}`"),
        (Some(alias), None) => format!("with alias {alias}"),
        (None, None) => "without name or alias".to_owned(),
    };
    CommandError::UnknownMetric {
        device: device.to_owned(),
        metric,
    }
}

fn node_command(payload: &Payload) -> Result<Command, CommandError> {
    if payload.metrics.is_empty() {
        return Err(CommandError::Empty);
    }
    let mut rebirth = false;
    let mut ignored = Vec::new();
    for m in &payload.metrics {
        let name = m.name.as_deref().unwrap_or("");
        match (name, &m.value) {
            (REBIRTH, Some(metric::Value::BooleanValue(true))) => rebirth = true,
            (NEXT_SERVER, Some(metric::Value::BooleanValue(true))) => {
                return Ok(Command::NextServer)
            }
            _ => ignored.push(if name.is_empty() {
                format!("alias {}", m.alias.unwrap_or(0))
            } else {
                name.to_owned()
            }),
        }
    }
    if rebirth {
        Ok(Command::Rebirth { ignored })
    } else {
        Err(CommandError::NothingToDo(ignored))
    }
}

/// A primary host's STATE message (Sparkplug 3.0: JSON, retained, on `spBv1.0/STATE/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct HostState {
    pub online: bool,
    /// UTC milliseconds; a message older than the last one seen is ignored.
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("a STATE payload must be JSON {{\"online\": bool, \"timestamp\": ms}}: {0}")]
    Malformed(String),
}

/// What a STATE message changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostChange {
    /// The host is (still, or now) online.
    Online,
    /// The host is (still, or now) offline.
    Offline,
    /// Another host's STATE, or one older than the last seen: ignored.
    Ignored,
}

/// Follows the primary host's STATE messages.
#[derive(Debug, Clone)]
pub struct PrimaryHost {
    topic: String,
    last_timestamp: Option<u64>,
    online: bool,
}

impl PrimaryHost {
    pub fn new(host_id: &str) -> PrimaryHost {
        PrimaryHost {
            topic: format!("{NAMESPACE}/STATE/{host_id}"),
            last_timestamp: None,
            online: false,
        }
    }

    /// Forgets what the host said: on another server of a server set, the host's STATE there
    /// is its own (its timestamps are not comparable with this server's).
    pub fn forget(&mut self) {
        self.last_timestamp = None;
        self.online = false;
    }

    /// The STATE topic to subscribe to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether the last STATE that counted said online.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Takes a STATE message: it counts when the topic is this host's and its timestamp is not
    /// older than the last one that counted.
    pub fn observe(&mut self, topic: &str, payload: &[u8]) -> Result<HostChange, StateError> {
        if topic != self.topic {
            return Ok(HostChange::Ignored);
        }
        let state: HostState =
            serde_json::from_slice(payload).map_err(|e| StateError::Malformed(e.to_string()))?;
        if self
            .last_timestamp
            .is_some_and(|last| state.timestamp < last)
        {
            return Ok(HostChange::Ignored);
        }
        self.last_timestamp = Some(state.timestamp);
        self.online = state.online;
        Ok(if state.online {
            HostChange::Online
        } else {
            HostChange::Offline
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparkplug::node::{encode_payload, DeviceDef, MetricDef};
    use crate::sparkplug::types::SpType;
    use edge_model::{Batch, DataType, DeviceId, Sample, TagName};
    use proptest::prelude::*;

    fn node() -> EdgeNode {
        let mut setpoint = MetricDef::new("setpoint", DataType::I16);
        setpoint.writable = true;
        let mut speed = MetricDef::new("speed", DataType::U16);
        speed.writable = true;
        speed.scale = 0.1;
        let mut name = MetricDef::new("recipe", DataType::String(8));
        name.writable = true;
        let mut big = MetricDef::new("total", DataType::U32);
        big.writable = true;
        EdgeNode::new(
            "plant1",
            "gw1",
            vec![
                DeviceDef {
                    name: "filler".into(),
                    metrics: vec![
                        MetricDef::new("count", DataType::U32),
                        setpoint,
                        speed,
                        name,
                        big,
                    ],
                },
                DeviceDef {
                    name: "capper".into(),
                    metrics: vec![MetricDef::new("running", DataType::Bool)],
                },
            ],
        )
    }

    const DCMD: &str = "spBv1.0/plant1/DCMD/gw1/filler";
    const NCMD: &str = "spBv1.0/plant1/NCMD/gw1";

    fn by_alias(alias: u64, value: metric::Value) -> Metric {
        Metric {
            alias: Some(alias),
            value: Some(value),
            ..Metric::default()
        }
    }

    fn cmd(metrics: Vec<Metric>) -> Vec<u8> {
        encode_payload(&Payload {
            timestamp: Some(1),
            metrics,
            ..Payload::default()
        })
    }

    #[test]
    fn a_dcmd_by_alias_becomes_a_validated_write() {
        let n = node();
        let alias = n.alias("filler", "setpoint").expect("alias");
        let got = n.decode_command(
            DCMD,
            &cmd(vec![by_alias(
                alias,
                metric::Value::IntValue((-5i32) as u32),
            )]),
        );
        assert_eq!(
            got,
            Ok(Command::Write {
                device: "filler".into(),
                writes: vec![TagWrite {
                    tag: "setpoint".into(),
                    alias,
                    value: Value::I16(-5)
                }]
            })
        );
    }

    #[test]
    fn a_dcmd_by_name_works_for_hosts_without_aliases() {
        let n = node();
        let m = Metric {
            name: Some("speed".into()),
            datatype: Some(10),
            value: Some(metric::Value::DoubleValue(12.5)),
            ..Metric::default()
        };
        match n.decode_command(DCMD, &cmd(vec![m])) {
            Ok(Command::Write { writes, .. }) => {
                assert_eq!(writes[0].tag, "speed");
                assert_eq!(writes[0].value, Value::F64(12.5));
            }
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn a_read_only_metric_is_refused() {
        let n = node();
        let alias = n.alias("filler", "count").expect("alias");
        assert_eq!(
            n.decode_command(
                DCMD,
                &cmd(vec![by_alias(alias, metric::Value::LongValue(1))])
            ),
            Err(CommandError::NotWritable {
                device: "filler".into(),
                tag: "count".into()
            })
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused() {
        let n = node();
        let alias = n.alias("filler", "setpoint").expect("alias");
        let e = n
            .decode_command(
                DCMD,
                &cmd(vec![by_alias(
                    alias,
                    metric::Value::StringValue("5".into()),
                )]),
            )
            .expect_err("a string for an Int16");
        assert!(matches!(e, CommandError::BadValue { .. }), "{e}");
        let mut m = by_alias(alias, metric::Value::IntValue(5));
        m.datatype = Some(12);
        assert!(matches!(
            n.decode_command(DCMD, &cmd(vec![m])),
            Err(CommandError::WrongDatatype { sent: 12, .. })
        ));
    }

    #[test]
    fn a_value_out_of_the_datatypes_range_is_refused() {
        let n = node();
        let alias = n.alias("filler", "total").expect("alias");
        assert!(matches!(
            n.decode_command(
                DCMD,
                &cmd(vec![by_alias(alias, metric::Value::LongValue(1 << 40))])
            ),
            Err(CommandError::BadValue { .. })
        ));
    }

    #[test]
    fn one_bad_metric_refuses_the_whole_command() {
        let n = node();
        let good = by_alias(
            n.alias("filler", "setpoint").expect("alias"),
            metric::Value::IntValue(1),
        );
        let bad = by_alias(
            n.alias("filler", "count").expect("alias"),
            metric::Value::LongValue(1),
        );
        assert!(n.decode_command(DCMD, &cmd(vec![good, bad])).is_err());
    }

    #[test]
    fn another_devices_alias_is_unknown_here() {
        let n = node();
        let alias = n.alias("capper", "running").expect("alias");
        assert!(matches!(
            n.decode_command(
                DCMD,
                &cmd(vec![by_alias(alias, metric::Value::BooleanValue(true))])
            ),
            Err(CommandError::UnknownMetric { .. })
        ));
        assert!(matches!(
            n.decode_command(
                DCMD,
                &cmd(vec![by_alias(999, metric::Value::BooleanValue(true))])
            ),
            Err(CommandError::UnknownMetric { .. })
        ));
    }

    #[test]
    fn nulls_missing_values_repeats_and_name_alias_conflicts_are_refused() {
        let n = node();
        let alias = n.alias("filler", "setpoint").expect("alias");
        let null = Metric {
            alias: Some(alias),
            is_null: Some(true),
            ..Metric::default()
        };
        assert!(matches!(
            n.decode_command(DCMD, &cmd(vec![null])),
            Err(CommandError::Null { .. })
        ));
        let none = Metric {
            alias: Some(alias),
            ..Metric::default()
        };
        assert!(matches!(
            n.decode_command(DCMD, &cmd(vec![none])),
            Err(CommandError::NoValue { .. })
        ));
        let twice = vec![
            by_alias(alias, metric::Value::IntValue(1)),
            by_alias(alias, metric::Value::IntValue(2)),
        ];
        assert!(matches!(
            n.decode_command(DCMD, &cmd(twice)),
            Err(CommandError::Repeated(_))
        ));
        let mut conflict = by_alias(alias, metric::Value::IntValue(1));
        conflict.name = Some("speed".into());
        assert!(matches!(
            n.decode_command(DCMD, &cmd(vec![conflict])),
            Err(CommandError::NameAliasMismatch { .. })
        ));
        assert_eq!(
            n.decode_command(DCMD, &cmd(vec![])),
            Err(CommandError::Empty)
        );
    }

    #[test]
    fn commands_for_other_nodes_devices_or_topics_are_refused() {
        let n = node();
        let p = cmd(vec![by_alias(1, metric::Value::IntValue(1))]);
        for topic in [
            "spBv1.0/plant2/DCMD/gw1/filler",
            "spBv1.0/plant1/DCMD/gw2/filler",
            "spBv1.0/plant1/DDATA/gw1/filler",
            "spBv1.0/plant1/NCMD/gw1/filler",
            "spBv1.0/plant1/DCMD/gw1",
            "spBv1.0/plant1/DCMD/gw1/filler/extra",
            "spAv1.0/plant1/DCMD/gw1/filler",
            "",
        ] {
            assert!(
                matches!(n.decode_command(topic, &p), Err(CommandError::NotOurs(_))),
                "{topic}"
            );
        }
        assert_eq!(
            n.decode_command("spBv1.0/plant1/DCMD/gw1/press", &p),
            Err(CommandError::UnknownDevice("press".into()))
        );
        assert!(matches!(
            n.decode_command(DCMD, &[0xFF, 0xFF, 0xFF]),
            Err(CommandError::Malformed(_))
        ));
    }

    #[test]
    fn ncmd_rebirth_true_asks_for_a_rebirth() {
        let n = node();
        let m = Metric {
            name: Some(REBIRTH.into()),
            datatype: Some(11),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        };
        assert_eq!(
            n.decode_command(NCMD, &cmd(vec![m.clone()])),
            Ok(Command::Rebirth { ignored: vec![] })
        );
        let other = Metric {
            name: Some("Node Control/Reboot".into()),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        };
        assert_eq!(
            n.decode_command(NCMD, &cmd(vec![m, other.clone()])),
            Ok(Command::Rebirth {
                ignored: vec!["Node Control/Reboot".into()]
            })
        );
        assert!(matches!(
            n.decode_command(NCMD, &cmd(vec![other])),
            Err(CommandError::NothingToDo(_))
        ));
        let no = Metric {
            name: Some(REBIRTH.into()),
            value: Some(metric::Value::BooleanValue(false)),
            ..Metric::default()
        };
        assert!(n.decode_command(NCMD, &cmd(vec![no])).is_err());
        let next = Metric {
            name: Some(NEXT_SERVER.into()),
            value: Some(metric::Value::BooleanValue(true)),
            ..Metric::default()
        };
        assert_eq!(
            n.decode_command(NCMD, &cmd(vec![next])),
            Ok(Command::NextServer)
        );
    }

    #[test]
    fn the_primary_host_is_online_only_by_its_own_newest_state() {
        let mut h = PrimaryHost::new("scada");
        assert_eq!(h.topic(), "spBv1.0/STATE/scada");
        assert!(!h.is_online());
        let on = br#"{"online": true, "timestamp": 100}"#;
        assert_eq!(
            h.observe("spBv1.0/STATE/other", on),
            Ok(HostChange::Ignored)
        );
        assert!(!h.is_online());
        assert_eq!(
            h.observe(h.topic().to_owned().as_str(), on),
            Ok(HostChange::Online)
        );
        assert!(h.is_online());
        let old_off = br#"{"online": false, "timestamp": 99}"#;
        assert_eq!(
            h.observe("spBv1.0/STATE/scada", old_off),
            Ok(HostChange::Ignored)
        );
        assert!(h.is_online());
        let off = br#"{"online": false, "timestamp": 100}"#;
        assert_eq!(
            h.observe("spBv1.0/STATE/scada", off),
            Ok(HostChange::Offline)
        );
        assert!(!h.is_online());
    }

    #[test]
    fn the_obsolete_state_form_is_malformed() {
        let mut h = PrimaryHost::new("scada");
        assert!(h.observe("spBv1.0/STATE/scada", b"ONLINE").is_err());
        assert!(h
            .observe("spBv1.0/STATE/scada", br#"{"online": true}"#)
            .is_err());
        assert!(!h.is_online());
    }

    /// A device of an OPC UA server whose writable metrics keep the server's type.
    fn opcua_node() -> EdgeNode {
        let mut mode = MetricDef::untyped("mode");
        mode.writable = true;
        let mut recipe = MetricDef::untyped("recipe");
        recipe.writable = true;
        EdgeNode::new(
            "plant1",
            "gw1",
            vec![DeviceDef {
                name: "mixer".into(),
                metrics: vec![
                    MetricDef::new("speed", DataType::F64),
                    mode,
                    recipe,
                    MetricDef::untyped("state"),
                ],
            }],
        )
    }

    const MIXER: &str = "spBv1.0/plant1/DCMD/gw1/mixer";

    fn arrives(n: &mut EdgeNode, tag: &str, value: Value) -> Vec<crate::Message> {
        let mut out = Vec::new();
        let batch = Batch {
            device: DeviceId("mixer".into()),
            samples: vec![Sample::good(TagName(tag.into()), value, 2)],
        };
        n.live(&batch, 3, &mut out);
        out
    }

    #[test]
    fn a_dcmd_to_an_untyped_metric_is_refused_until_a_value_gives_it_a_type() {
        let mut n = opcua_node();
        n.births(1);
        let alias = n.alias("mixer", "recipe").expect("alias");
        let write = cmd(vec![by_alias(
            alias,
            metric::Value::StringValue("PE-5".into()),
        )]);
        let e = n.decode_command(MIXER, &write).expect_err("no type yet");
        assert_eq!(
            e,
            CommandError::TypeUnknown {
                device: "mixer".into(),
                tag: "recipe".into()
            }
        );
        assert!(e.to_string().contains("`recipe`"), "{e}");
        let births = arrives(&mut n, "recipe", Value::String("PVC-20".into()));
        assert!(births[0].topic.contains("/DBIRTH/"));
        assert_eq!(
            n.decode_command(MIXER, &write),
            Ok(Command::Write {
                device: "mixer".into(),
                writes: vec![TagWrite {
                    tag: "recipe".into(),
                    alias,
                    value: Value::String("PE-5".into())
                }]
            })
        );
    }

    #[test]
    fn a_dcmd_to_an_untyped_metric_is_decoded_as_the_type_its_birth_declared() {
        let mut n = opcua_node();
        n.births(1);
        let alias = n.alias("mixer", "mode").expect("alias");
        arrives(&mut n, "mode", Value::I32(1));
        let decode = |n: &EdgeNode, v: metric::Value| {
            n.decode_command(MIXER, &cmd(vec![by_alias(alias, v)]))
                .map(|c| match c {
                    Command::Write { writes, .. } => writes[0].value.clone(),
                    other => panic!("expected a write, got {other:?}"),
                })
        };
        assert_eq!(
            decode(&n, metric::Value::IntValue((-3i32) as u32)),
            Ok(Value::I32(-3))
        );
        assert!(matches!(
            decode(&n, metric::Value::DoubleValue(1.0)),
            Err(CommandError::BadValue { .. })
        ));
        // The server's variable became a UInt32: reborn, and read as one.
        arrives(&mut n, "mode", Value::U32(2));
        assert_eq!(
            decode(&n, metric::Value::LongValue(4_000_000_000)),
            Ok(Value::U32(4_000_000_000))
        );
        let mut m = by_alias(alias, metric::Value::IntValue(1));
        m.datatype = Some(SpType::Int32.code());
        assert!(matches!(
            n.decode_command(MIXER, &cmd(vec![m])),
            Err(CommandError::WrongDatatype { sent: 3, .. })
        ));
    }

    #[test]
    fn a_read_only_untyped_metric_is_refused_as_read_only_before_and_after_its_type() {
        let mut n = opcua_node();
        let alias = n.alias("mixer", "state").expect("alias");
        let write = cmd(vec![by_alias(alias, metric::Value::IntValue(1))]);
        let read_only = Err(CommandError::NotWritable {
            device: "mixer".into(),
            tag: "state".into(),
        });
        assert_eq!(n.decode_command(MIXER, &write), read_only);
        n.births(1);
        arrives(&mut n, "state", Value::I32(1));
        assert_eq!(n.decode_command(MIXER, &write), read_only);
    }

    proptest! {
        #[test]
        fn arbitrary_command_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let n = node();
            let _ = n.decode_command(DCMD, &bytes);
            let _ = n.decode_command(NCMD, &bytes);
        }

        #[test]
        fn arbitrary_metrics_never_panic_and_never_write_read_only_tags(
            alias in 0u64..10, kind in 0u8..6, x in any::<u64>(), datatype in proptest::option::of(0u32..20)
        ) {
            let n = node();
            let value = match kind {
                0 => metric::Value::IntValue(x as u32),
                1 => metric::Value::LongValue(x),
                2 => metric::Value::FloatValue(x as f32),
                3 => metric::Value::DoubleValue(x as f64),
                4 => metric::Value::BooleanValue(x % 2 == 1),
                _ => metric::Value::StringValue(x.to_string()),
            };
            let mut m = by_alias(alias, value);
            m.datatype = datatype;
            if let Ok(Command::Write { writes, .. }) = n.decode_command(DCMD, &cmd(vec![m])) {
                for w in writes {
                    prop_assert_ne!(w.tag.as_str(), "count");
                }
            }
        }
    }
}
