//! Turns what the subscriber received into per-device deliveries of the counter tag: UNS JSON
//! telemetry (`{root}/{device}/counter` with `value` and `seq`) and Sparkplug B DDATA (the
//! counter metric, found by name or by the alias its device's last DBIRTH gave it).
//!
//! A sample's key is its counter value as a u32, whatever number type carried it: the Modbus
//! and OPC UA counters are u32 tags (a JSON integer, a Sparkplug UInt32 in `long_value`), but
//! a counter published as a double (an OPC UA Double variable, a scaled tag) is the same
//! sample when the double is that whole number. A double that is not such a number cannot be
//! a counter value and is malformed.

use std::collections::{BTreeMap, HashMap};

use mes_bridge::sparkplug::decode_payload;
use mes_bridge::sparkplug::proto::payload::metric;

use crate::ledger::Delivery;

/// The tag every chaos PLC serves.
pub const TAG: &str = "counter";

/// What could not be read; any entry means the agent published something malformed.
#[derive(Debug, Default)]
pub struct Parsed {
    /// device → deliveries, in arrival order.
    pub uns: BTreeMap<String, Vec<Delivery>>,
    pub sparkplug: BTreeMap<String, Vec<Delivery>>,
    pub malformed: Vec<String>,
    /// Sparkplug births seen (node and device), for the report.
    pub births: u64,
}

/// Reads the messages in arrival order. `uns_root` is the topic root of the UNS northbound and
/// `sp_prefix` is `spBv1.0/{group}`.
pub fn parse(messages: &[(String, Vec<u8>)], uns_root: &str, sp_prefix: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut aliases: HashMap<String, u64> = HashMap::new();
    let uns_prefix = format!("{uns_root}/");
    let sp_prefix = format!("{sp_prefix}/");
    for (topic, payload) in messages {
        if let Some(rest) = topic.strip_prefix(&uns_prefix) {
            let mut parts = rest.split('/');
            let (Some(device), Some(tag), None) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if tag != TAG {
                continue;
            }
            match uns_delivery(payload) {
                Ok(d) => parsed.uns.entry(device.to_owned()).or_default().push(d),
                Err(e) => parsed.malformed.push(format!("{topic}: {e}")),
            }
        } else if let Some(rest) = topic.strip_prefix(&sp_prefix) {
            let parts: Vec<&str> = rest.split('/').collect();
            let (kind, device) = match parts.as_slice() {
                [kind, _node, device] => (*kind, *device),
                [kind, _node] => {
                    if *kind == "NBIRTH" {
                        parsed.births += 1;
                    }
                    continue;
                }
                _ => continue,
            };
            let payload = match decode_payload(payload) {
                Ok(p) => p,
                Err(e) => {
                    parsed.malformed.push(format!("{topic}: {e}"));
                    continue;
                }
            };
            match kind {
                "DBIRTH" | "DDATA" => {
                    let birth = kind == "DBIRTH";
                    if birth {
                        parsed.births += 1;
                    }
                    for m in &payload.metrics {
                        if birth && m.name.as_deref() == Some(TAG) {
                            if let Some(alias) = m.alias {
                                aliases.insert(device.to_owned(), alias);
                            }
                        }
                        let is_counter = m.name.as_deref() == Some(TAG)
                            || (m.name.is_none() && m.alias == aliases.get(device).copied());
                        if !is_counter {
                            continue;
                        }
                        // A birth restates the current value: a delivery, outside the live order
                        // like a replayed (historical) metric.
                        let ordered = !birth && m.is_historical != Some(true);
                        let value = if m.is_null == Some(true) {
                            None
                        } else {
                            let double = match &m.value {
                                Some(metric::Value::DoubleValue(v)) => Some(*v),
                                Some(metric::Value::FloatValue(v)) => Some(f64::from(*v)),
                                _ => None,
                            };
                            match (&m.value, double.and_then(counter_of_f64)) {
                                (Some(metric::Value::IntValue(v)), _) => Some(*v),
                                (Some(metric::Value::LongValue(v)), _) => u32::try_from(*v).ok(),
                                (_, Some(v)) => Some(v),
                                (other, None) => {
                                    parsed
                                        .malformed
                                        .push(format!("{topic}: counter value {other:?}"));
                                    continue;
                                }
                            }
                        };
                        parsed
                            .sparkplug
                            .entry(device.to_owned())
                            .or_default()
                            .push(Delivery {
                                value,
                                seq: None,
                                ordered,
                            });
                    }
                }
                _ => {}
            }
        }
    }
    parsed
}

fn uns_delivery(payload: &[u8]) -> Result<Delivery, String> {
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let seq = json
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or("no seq")?;
    let good = json.get("quality").and_then(serde_json::Value::as_str) == Some("good");
    let value = match json.get("value") {
        Some(v) if good => Some(
            v.as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .or_else(|| v.as_f64().and_then(counter_of_f64))
                .ok_or_else(|| format!("counter value {v}"))?,
        ),
        _ => None,
    };
    Ok(Delivery {
        value,
        seq: Some(seq),
        ordered: true,
    })
}

/// A counter value carried as a floating-point number: only a whole number within u32.
fn counter_of_f64(v: f64) -> Option<u32> {
    (v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v)).then_some(v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mes_bridge::sparkplug::proto::payload::Metric;
    use mes_bridge::sparkplug::proto::Payload;
    use prost::Message as _;

    fn metric(name: Option<&str>, alias: u64, value: Option<u32>) -> Metric {
        Metric {
            name: name.map(str::to_owned),
            alias: Some(alias),
            is_null: value.is_none().then_some(true),
            value: value.map(metric::Value::IntValue),
            ..Metric::default()
        }
    }

    fn sp(metrics: Vec<Metric>) -> Vec<u8> {
        Payload {
            metrics,
            ..Payload::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn reads_uns_and_sparkplug_counter_samples() {
        let messages = vec![
            (
                "r/plc1/counter".to_owned(),
                br#"{"value":7,"quality":"good","seq":3}"#.to_vec(),
            ),
            (
                "r/plc1/counter".to_owned(),
                br#"{"value":null,"quality":"bad","seq":4}"#.to_vec(),
            ),
            (
                "r/plc1/other".to_owned(),
                br#"{"value":1,"seq":5}"#.to_vec(),
            ),
            ("r/plc1/counter".to_owned(), b"{".to_vec()),
            (
                "spBv1.0/g/DBIRTH/gw/plc1".to_owned(),
                sp(vec![metric(Some(TAG), 4, Some(6))]),
            ),
            (
                "spBv1.0/g/DDATA/gw/plc1".to_owned(),
                sp(vec![metric(None, 4, Some(7)), metric(None, 9, Some(1))]),
            ),
            (
                "spBv1.0/g/DDATA/gw/plc1".to_owned(),
                sp(vec![metric(None, 4, None)]),
            ),
        ];
        let parsed = parse(&messages, "r", "spBv1.0/g");
        assert_eq!(
            parsed.uns["plc1"],
            vec![
                Delivery {
                    value: Some(7),
                    seq: Some(3),
                    ordered: true
                },
                Delivery {
                    value: None,
                    seq: Some(4),
                    ordered: true
                }
            ]
        );
        assert_eq!(parsed.malformed.len(), 1, "{:?}", parsed.malformed);
        assert_eq!(
            parsed.sparkplug["plc1"],
            vec![
                Delivery {
                    value: Some(6),
                    seq: None,
                    ordered: false
                },
                Delivery {
                    value: Some(7),
                    seq: None,
                    ordered: true
                },
                Delivery {
                    value: None,
                    seq: None,
                    ordered: true
                }
            ]
        );
        assert_eq!(parsed.births, 1);
    }

    fn good_uns(value: &str, seq: u64) -> Vec<u8> {
        format!(r#"{{"value":{value},"quality":"good","seq":{seq}}}"#).into_bytes()
    }

    fn sp_value(value: metric::Value) -> Vec<u8> {
        sp(vec![Metric {
            name: Some(TAG.to_owned()),
            value: Some(value),
            ..Metric::default()
        }])
    }

    #[test]
    fn a_counter_value_has_one_key_whatever_number_type_carries_it() {
        // An OPC UA UInt32 is a JSON integer and a Sparkplug UInt32 (long_value); a Double is
        // a JSON number with a fraction part of zero and a Sparkplug double_value.
        let messages = vec![
            ("r/ua1/counter".to_owned(), good_uns("7", 1)),
            ("r/ua1/counter".to_owned(), good_uns("8.0", 2)),
            ("r/ua1/counter".to_owned(), good_uns("4294967295", 3)),
            (
                "spBv1.0/g/DDATA/gw/ua1".to_owned(),
                sp_value(metric::Value::LongValue(7)),
            ),
            (
                "spBv1.0/g/DDATA/gw/ua1".to_owned(),
                sp_value(metric::Value::DoubleValue(8.0)),
            ),
            (
                "spBv1.0/g/DDATA/gw/ua1".to_owned(),
                sp_value(metric::Value::FloatValue(9.0)),
            ),
            (
                "spBv1.0/g/DDATA/gw/ua1".to_owned(),
                sp_value(metric::Value::IntValue(10)),
            ),
        ];
        let parsed = parse(&messages, "r", "spBv1.0/g");
        assert!(parsed.malformed.is_empty(), "{:?}", parsed.malformed);
        let uns: Vec<Option<u32>> = parsed.uns["ua1"].iter().map(|d| d.value).collect();
        assert_eq!(uns, vec![Some(7), Some(8), Some(u32::MAX)]);
        let sparkplug: Vec<Option<u32>> = parsed.sparkplug["ua1"].iter().map(|d| d.value).collect();
        assert_eq!(sparkplug, vec![Some(7), Some(8), Some(9), Some(10)]);
    }

    #[test]
    fn a_double_that_is_no_counter_value_is_malformed() {
        let messages = vec![
            ("r/ua1/counter".to_owned(), good_uns("7.5", 1)),
            ("r/ua1/counter".to_owned(), good_uns("-1.0", 2)),
            ("r/ua1/counter".to_owned(), good_uns("4294967296.0", 3)),
            (
                "spBv1.0/g/DDATA/gw/ua1".to_owned(),
                sp_value(metric::Value::DoubleValue(7.5)),
            ),
            (
                "spBv1.0/g/DDATA/gw/ua1".to_owned(),
                sp_value(metric::Value::DoubleValue(f64::NAN)),
            ),
            (
                "spBv1.0/g/DDATA/gw/ua1".to_owned(),
                sp_value(metric::Value::StringValue("7".to_owned())),
            ),
        ];
        let parsed = parse(&messages, "r", "spBv1.0/g");
        assert_eq!(parsed.malformed.len(), 6, "{:?}", parsed.malformed);
        assert!(parsed.uns.is_empty() && parsed.sparkplug.is_empty());
    }
}
