//! Payloads from the broker: UNS JSON commands (`_set`, `workorder/dispatch` and unknown
//! names, oversized ones too) through envelope parsing, command safety (retain flag,
//! `timestamp_ms` against the age limit, the skew and the connection, the policy), planning
//! and the device write checks; Sparkplug B NCMD
//! and DCMD through decoding, validation and the same write checks; the primary host's STATE.
//! Topics come with arbitrary suffixes and names; payloads are raw bytes or built from the
//! input so the fuzzer reaches the checks behind a well-formed envelope.
#![no_main]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use edge_agent::daemon::devices::device_spec;
use edge_agent::northbound::commands::command_catalog;
use edge_agent::northbound::sparkplug::device_defs;
use edge_config::{Config, Format, SecretSource};
use edge_modbus::codec::register_count;
use edge_modbus::link::Transport;
use edge_modbus::poller::TagSpec;
use edge_modbus::write::{prepare_write, WriteOp};
use edge_model::DataType;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use mes_bridge::command::{request_id_of, CommandCatalog, Parsed, MAX_COMMAND_BYTES};
use mes_bridge::gate::{admit, precheck, Arrival, CommandPolicy};
use mes_bridge::sparkplug::proto::payload::{metric, Metric};
use mes_bridge::sparkplug::proto::Payload;
use mes_bridge::sparkplug::{
    decode_payload, encode_payload, Command, EdgeNode, PrimaryHost, NAMESPACE, REBIRTH,
};
use serde_json::{Map, Value as Json};

/// Everything built once from the fixed config, as the agent builds it at start.
struct Context {
    root: String,
    catalog: CommandCatalog,
    node: EdgeNode,
    host_id: String,
    /// The device write path's view of every tag: device → tag → spec.
    specs: HashMap<String, HashMap<String, TagSpec>>,
    /// Device, machine, tag and field names, for topics and payloads that mean something.
    names: Vec<String>,
}

struct NoSecrets;

impl SecretSource for NoSecrets {
    fn env(&self, _name: &str) -> Option<String> {
        None
    }

    fn file(&self, _path: &Path) -> std::io::Result<String> {
        Err(std::io::ErrorKind::NotFound.into())
    }
}

fn context() -> &'static Context {
    static CX: OnceLock<Context> = OnceLock::new();
    CX.get_or_init(|| {
        let src = include_str!("../fixtures/commands.toml");
        let cfg = edge_config::parse(src, Path::new("/fuzz/commands.toml"), &NoSecrets)
            .unwrap_or_else(|e| panic!("the fixture config is invalid:\n{e}"));
        build(&cfg)
    })
}

/// Built with the agent's own translations of the config, so the fuzzer checks what runs.
fn build(cfg: &Config) -> Context {
    let catalog = command_catalog(cfg);
    let mut names: Vec<String> = Vec::new();
    for d in &cfg.devices {
        names.push(d.name.clone());
        names.extend(d.tags.iter().map(|t| t.name.clone()));
    }
    names.extend(cfg.machines.iter().map(|m| m.name.clone()));
    names.extend(
        [
            "request_id",
            "value",
            "timestamp_ms",
            "external_work_order_id",
            "external_product_id",
            "quantity",
            "parameters",
        ]
        .map(str::to_owned),
    );
    let sp = cfg
        .northbounds
        .iter()
        .find_map(|nb| match &nb.format {
            Format::SparkplugB(s) => Some(s.clone()),
            Format::UnsJson => None,
        })
        .expect("the fixture has a Sparkplug northbound");
    let mut node = EdgeNode::new(&sp.group_id, &sp.edge_node_id, device_defs(cfg));
    // Aliases exist once the births are made.
    let _ = node.births(0);
    let specs = cfg
        .devices
        .iter()
        .filter_map(|d| {
            let spec = device_spec(d, Transport::Tcp)?;
            let tags = spec
                .tags
                .into_iter()
                .map(|t| (t.name.0.clone(), t))
                .collect();
            Some((d.name.clone(), tags))
        })
        .collect();
    Context {
        root: cfg.gateway.uns.root(),
        catalog,
        node,
        host_id: sp
            .primary_host_id
            .expect("the fixture names a primary host"),
        specs,
        names,
    }
}

fuzz_target!(|data: &[u8]| {
    let cx = context();
    let mut u = Unstructured::new(data);
    let _ = match u.int_in_range(0..=6u8).unwrap_or(0) {
        0..=2 => uns(cx, &mut u),
        3..=5 => sparkplug(cx, &mut u),
        _ => state(cx, &mut u),
    };
});

/// A configured name most of the time, anything else sometimes.
fn name(cx: &Context, u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(3u8, 4)? {
        Ok(u.choose(&cx.names)?.clone())
    } else {
        u.arbitrary()
    }
}

fn json_scalar(cx: &Context, u: &mut Unstructured<'_>) -> Result<Json> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => Json::Null,
        1 => Json::Bool(u.arbitrary()?),
        2 => Json::from(u.arbitrary::<i64>()?),
        3 => Json::from(u.arbitrary::<u64>()?),
        4 => Json::from(u.arbitrary::<f64>()?),
        5 => Json::from(u.int_in_range(-70_000i64..=70_000)?),
        6 => Json::from(u.arbitrary::<String>()?),
        7 => Json::from(u.choose(&cx.names)?.clone()),
        8 => Json::Array(vec![Json::from(u.arbitrary::<u8>()?)]),
        _ => Json::Object(Map::new()),
    })
}

fn json_object(cx: &Context, u: &mut Unstructured<'_>, depth: u8) -> Result<Map<String, Json>> {
    let mut fields = Map::new();
    for _ in 0..u.int_in_range(0..=7u8)? {
        let key = name(cx, u)?;
        let value = if depth > 0 && u.ratio(1u8, 6)? {
            Json::Object(json_object(cx, u, depth - 1)?)
        } else {
            json_scalar(cx, u)?
        };
        fields.insert(key, value);
    }
    if u.ratio(7u8, 8)? {
        let id = if u.ratio(7u8, 8)? {
            Json::from(u.arbitrary::<String>()?)
        } else {
            json_scalar(cx, u)?
        };
        fields.insert("request_id".to_owned(), id);
    }
    Ok(fields)
}

fn uns(cx: &Context, u: &mut Unstructured<'_>) -> Result<()> {
    let root = if u.ratio(15u8, 16)? {
        cx.root.clone()
    } else {
        u.arbitrary::<String>()?
    };
    let topic = match u.int_in_range(0..=3u8)? {
        0 => format!("{root}/{}/{}/_set", name(cx, u)?, name(cx, u)?),
        1 => format!("{root}/{}/_mes/cmd/workorder/dispatch", name(cx, u)?),
        2 => format!(
            "{root}/{}/_mes/cmd/{}",
            name(cx, u)?,
            u.arbitrary::<&str>()?
        ),
        _ => format!("{root}/{}", u.arbitrary::<&str>()?),
    };
    let mut payload: Vec<u8> = if u.ratio(1u8, 3)? {
        u.arbitrary::<&[u8]>()?.to_vec()
    } else {
        serde_json::to_vec(&json_object(cx, u, 2)?).unwrap_or_default()
    };
    // Oversized: past the command limit, as a stray large message on a command topic.
    if u.ratio(1u8, 32)? {
        payload.resize(MAX_COMMAND_BYTES + u.int_in_range(1..=4096usize)?, b' ');
    }
    let (policy, arrival) = (policy(u)?, arrival(u)?);
    let _ = precheck(&policy, &arrival);
    let len = if u.ratio(1u8, 16)? {
        u.arbitrary()?
    } else {
        payload.len()
    };
    let _ = request_id_of(&payload);
    match cx.catalog.parse(&cx.root, &topic, &payload, len) {
        Parsed::Ignore => {}
        Parsed::Invalid(answer) => {
            let _ = answer.message(&topic);
        }
        Parsed::Request(request) => {
            let _ = request.key();
            // Command safety on the timestamp the envelope carried.
            if admit(&policy, &arrival, request.timestamp_ms).is_ok() {
                assert!(
                    !arrival.retained && policy.enabled,
                    "a retained or disabled command admitted"
                );
                match request.timestamp_ms {
                    Some(sent) => {
                        assert!(
                            arrival.clock_synchronised,
                            "admitted on an unsynchronised clock"
                        );
                        assert!(sent <= arrival.received_ms.saturating_add(policy.clock_skew_ms));
                        assert!(arrival.received_ms.saturating_sub(sent) <= policy.max_age_ms);
                        assert!(sent.saturating_add(policy.clock_skew_ms) >= arrival.connected_ms);
                    }
                    None => assert!(policy.allow_untimed, "an untimed command admitted"),
                }
            }
            match cx.catalog.plan(&request) {
                Ok(writes) => {
                    for w in &writes {
                        check_write(cx, &w.device, &w.tag, &w.value);
                    }
                }
                Err(e) => {
                    let answer =
                        mes_bridge::command::Answer::rejected(Some(&request.request_id), e);
                    let _ = answer.message(&topic);
                }
            }
        }
    }
    Ok(())
}

/// A northbound's command policy, anywhere in its range.
fn policy(u: &mut Unstructured<'_>) -> Result<CommandPolicy> {
    Ok(CommandPolicy {
        enabled: u.ratio(7u8, 8)?,
        max_age_ms: u.int_in_range(100..=3_600_000)?,
        clock_skew_ms: u.int_in_range(0..=60_000)?,
        allow_untimed: u.ratio(1u8, 4)?,
    })
}

/// How a command arrived: retained or live, on which connection, by a synchronised clock.
fn arrival(u: &mut Unstructured<'_>) -> Result<Arrival> {
    let received_ms: u64 = u.arbitrary()?;
    Ok(Arrival {
        retained: u.ratio(1u8, 8)?,
        received_ms,
        connected_ms: received_ms.saturating_sub(u.int_in_range(0..=120_000)?),
        clock_synchronised: u.ratio(7u8, 8)?,
    })
}

/// The device's own write checks, which every planned or decoded write goes through.
fn check_write(cx: &Context, device: &str, tag: &str, value: &edge_model::Value) {
    let Some(spec) = cx.specs.get(device).and_then(|d| d.get(tag)) else {
        return;
    };
    if let Ok(WriteOp::Registers { words, .. }) = prepare_write(spec, value) {
        let want = match spec.data_type {
            DataType::Bool => 1,
            dt => usize::from(register_count(dt)),
        };
        assert_eq!(words.len(), want, "a write of the wrong size to {tag}");
    }
}

const SP_VALUE_KINDS: u8 = 7;

fn metric_value(u: &mut Unstructured<'_>) -> Result<Option<metric::Value>> {
    Ok(Some(match u.int_in_range(0..=SP_VALUE_KINDS)? {
        0 => metric::Value::IntValue(u.arbitrary()?),
        1 => metric::Value::LongValue(u.arbitrary()?),
        2 => metric::Value::FloatValue(u.arbitrary()?),
        3 => metric::Value::DoubleValue(u.arbitrary()?),
        4 => metric::Value::BooleanValue(u.arbitrary()?),
        5 => metric::Value::StringValue(u.arbitrary()?),
        6 => metric::Value::BytesValue(u.arbitrary()?),
        _ => return Ok(None),
    }))
}

fn sp_payload(cx: &Context, u: &mut Unstructured<'_>) -> Result<Payload> {
    let mut metrics = Vec::new();
    for _ in 0..u.int_in_range(0..=5u8)? {
        let name = match u.int_in_range(0..=3u8)? {
            0 => None,
            1 => Some(REBIRTH.to_owned()),
            _ => Some(name(cx, u)?),
        };
        let alias = if u.arbitrary()? {
            Some(if u.ratio(3u8, 4)? {
                u64::from(u.int_in_range(0..=40u8)?)
            } else {
                u.arbitrary()?
            })
        } else {
            None
        };
        metrics.push(Metric {
            name,
            alias,
            datatype: if u.arbitrary()? {
                Some(u.int_in_range(0..=20u32)?)
            } else {
                None
            },
            is_null: u.arbitrary()?,
            value: metric_value(u)?,
            ..Default::default()
        });
    }
    Ok(Payload {
        timestamp: u.arbitrary()?,
        seq: u.arbitrary()?,
        metrics,
        ..Default::default()
    })
}

fn sparkplug(cx: &Context, u: &mut Unstructured<'_>) -> Result<()> {
    let group = cx.node.group_id();
    let edge = cx.node.edge_node_id();
    let topic = match u.int_in_range(0..=3u8)? {
        0 => format!("{NAMESPACE}/{group}/NCMD/{edge}"),
        1 => format!("{NAMESPACE}/{group}/DCMD/{edge}/{}", name(cx, u)?),
        2 => format!("{NAMESPACE}/{group}/{}", u.arbitrary::<&str>()?),
        _ => u.arbitrary::<String>()?,
    };
    let payload = if u.ratio(1u8, 3)? {
        u.arbitrary::<&[u8]>()?.to_vec()
    } else {
        encode_payload(&sp_payload(cx, u)?)
    };
    // Command safety on the payload timestamp, as the Sparkplug publisher applies it.
    let sent = decode_payload(&payload).ok().and_then(|p| p.timestamp);
    let (policy, arrival) = (policy(u)?, arrival(u)?);
    if admit(&policy, &arrival, sent).is_ok() {
        assert!(!arrival.retained, "a retained NCMD/DCMD admitted");
        assert!(
            sent.is_some() || policy.allow_untimed,
            "an untimed NCMD/DCMD admitted"
        );
    }
    match cx.node.decode_command(&topic, &payload) {
        Ok(Command::Rebirth { ignored }) => {
            let _ = format!("{ignored:?}");
        }
        Ok(Command::Write { device, writes }) => {
            assert!(!writes.is_empty(), "a DCMD that writes nothing");
            for w in &writes {
                assert_eq!(
                    cx.node.alias(&device, &w.tag),
                    Some(w.alias),
                    "a write's alias is not its metric's"
                );
                let _ = w.value.to_string();
                check_write(cx, &device, &w.tag, &w.value);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    Ok(())
}

fn state(cx: &Context, u: &mut Unstructured<'_>) -> Result<()> {
    let mut host = PrimaryHost::new(&cx.host_id);
    let own = host.topic().to_owned();
    for _ in 0..u.int_in_range(1..=4u8)? {
        let topic = if u.ratio(7u8, 8)? {
            own.clone()
        } else {
            u.arbitrary::<String>()?
        };
        let payload: Vec<u8> = if u.arbitrary()? {
            u.arbitrary::<&[u8]>()?.to_vec()
        } else {
            let mut m = Map::new();
            m.insert("online".to_owned(), Json::Bool(u.arbitrary()?));
            m.insert("timestamp".to_owned(), json_scalar(cx, u)?);
            serde_json::to_vec(&m).unwrap_or_default()
        };
        match host.observe(&topic, &payload) {
            Ok(_) => {}
            Err(e) => {
                let _ = e.to_string();
            }
        }
        let _ = host.is_online();
    }
    Ok(())
}
