//! Between OPC UA and the gateway's vocabulary: status codes to quality, source timestamps to
//! epoch milliseconds, variants to typed values (with the tag's configured type and scaling),
//! and, for writes, values back to a variant of exactly the variable's data type.

use edge_driver::{value_from_f64, Scaling};
use edge_model::{DataType, Quality, Value};
use opcua::types::{DataTypeId, DateTime, NodeId, StatusCode, UAString, Variant};

/// The longest text a tag holds: the `string:N` limit of the board config (edge-model's
/// `MAX_STRING_LEN`), so an OPC UA string never makes a record the store refuses.
pub const MAX_TEXT_BYTES: u16 = 2000;

/// OPC UA status code severity to the gateway's quality (SPEC §5): the two top bits say
/// Good (00), Uncertain (01) or Bad (10, 11).
pub fn quality_of(status: StatusCode) -> Quality {
    if status.is_good() {
        Quality::Good
    } else if status.is_uncertain() {
        Quality::Uncertain
    } else {
        Quality::Bad
    }
}

/// An OPC UA timestamp as epoch milliseconds UTC; `None` for a null or pre-1970 timestamp.
pub fn epoch_ms(t: &DateTime) -> Option<u64> {
    if t.is_null() {
        return None;
    }
    let ms = t.as_chrono().timestamp_millis();
    u64::try_from(ms).ok().filter(|&ms| ms > 0)
}

/// The built-in scalar types a tag can be written as (OPC UA Part 6, 5.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarType {
    Boolean,
    SByte,
    Byte,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float,
    Double,
    String,
}

impl VarType {
    /// The built-in type of a DataType attribute. Enumerations travel as Int32. Other types
    /// (structures, DateTime, ByteString, ...) cannot be written from a command.
    pub fn of_data_type(data_type: &NodeId) -> Option<VarType> {
        if data_type.namespace != 0 {
            return None;
        }
        let id = data_type.as_u32()?;
        let known = [
            (DataTypeId::Boolean, VarType::Boolean),
            (DataTypeId::SByte, VarType::SByte),
            (DataTypeId::Byte, VarType::Byte),
            (DataTypeId::Int16, VarType::Int16),
            (DataTypeId::UInt16, VarType::UInt16),
            (DataTypeId::Int32, VarType::Int32),
            (DataTypeId::UInt32, VarType::UInt32),
            (DataTypeId::Int64, VarType::Int64),
            (DataTypeId::UInt64, VarType::UInt64),
            (DataTypeId::Float, VarType::Float),
            (DataTypeId::Double, VarType::Double),
            (DataTypeId::String, VarType::String),
            (DataTypeId::Enumeration, VarType::Int32),
        ];
        known
            .into_iter()
            .find(|(t, _)| *t as u32 == id)
            .map(|(_, v)| v)
    }

    pub fn name(self) -> &'static str {
        match self {
            VarType::Boolean => "Boolean",
            VarType::SByte => "SByte",
            VarType::Byte => "Byte",
            VarType::Int16 => "Int16",
            VarType::UInt16 => "UInt16",
            VarType::Int32 => "Int32",
            VarType::UInt32 => "UInt32",
            VarType::Int64 => "Int64",
            VarType::UInt64 => "UInt64",
            VarType::Float => "Float",
            VarType::Double => "Double",
            VarType::String => "String",
        }
    }

    /// The gateway type that holds every value of this type.
    fn holder(self) -> DataType {
        match self {
            VarType::Boolean => DataType::Bool,
            VarType::SByte | VarType::Int16 => DataType::I16,
            VarType::Byte | VarType::UInt16 => DataType::U16,
            VarType::Int32 => DataType::I32,
            VarType::UInt32 => DataType::U32,
            VarType::Int64 => DataType::I64,
            VarType::UInt64 => DataType::U64,
            VarType::Float => DataType::F32,
            VarType::Double => DataType::F64,
            VarType::String => DataType::String(MAX_TEXT_BYTES),
        }
    }
}

/// The name of a data type for browse output: the built-in name, or the node id.
pub fn data_type_name(data_type: &NodeId) -> String {
    if data_type.namespace == 0 {
        if let Some(id) = data_type.as_u32() {
            if let Ok(t) = DataTypeId::try_from(id) {
                return format!("{t:?}");
            }
        }
    }
    data_type.to_string()
}

/// A variant as the gateway's value, before the tag's type and scaling. Arrays, structures and
/// byte strings have no gateway type.
pub fn value_of_variant(v: &Variant) -> Result<Value, String> {
    Ok(match v {
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(x) => Value::I16(i16::from(*x)),
        Variant::Byte(x) => Value::U16(u16::from(*x)),
        Variant::Int16(x) => Value::I16(*x),
        Variant::UInt16(x) => Value::U16(*x),
        Variant::Int32(x) => Value::I32(*x),
        Variant::UInt32(x) => Value::U32(*x),
        Variant::Int64(x) => Value::I64(*x),
        Variant::UInt64(x) => Value::U64(*x),
        Variant::Float(x) => Value::F32(*x),
        Variant::Double(x) => Value::F64(*x),
        Variant::String(s) => Value::String(ua_text(s)),
        Variant::LocalizedText(t) => Value::String(ua_text(&t.text)),
        Variant::QualifiedName(q) => Value::String(ua_text(&q.name)),
        Variant::NodeId(n) => Value::String(n.to_string()),
        Variant::Guid(g) => Value::String(g.to_string()),
        Variant::StatusCode(s) => Value::U32(s.bits()),
        Variant::DateTime(t) => Value::I64(t.as_chrono().timestamp_millis()),
        Variant::Empty => return Err("the server sent no value".to_owned()),
        Variant::Array(_) => {
            return Err(
                "arrays are not supported; read one element per tag with a scalar variable"
                    .to_owned(),
            )
        }
        other => {
            return Err(format!(
                "values of type {:?} are not supported",
                other.scalar_type_id()
            ))
        }
    })
}

fn ua_text(s: &UAString) -> String {
    s.value().clone().unwrap_or_default()
}

/// The value stored for a tag: converted to its configured type (exactly, or refused), then
/// scaled. Strings longer than the store takes are refused rather than cut.
pub fn tag_value(
    v: &Variant,
    data_type: Option<DataType>,
    scaling: Scaling,
) -> Result<Value, String> {
    let raw = value_of_variant(v)?;
    let typed = match data_type {
        None => raw,
        Some(dt) => coerce(raw, dt)?,
    };
    if let Value::String(s) = &typed {
        let limit = match data_type {
            Some(DataType::String(n)) => n,
            _ => MAX_TEXT_BYTES,
        };
        if s.len() > usize::from(limit) {
            return Err(format!(
                "the text is {} bytes long, more than the {limit} the tag holds",
                s.len()
            ));
        }
    }
    Ok(scaling.apply(typed))
}

fn coerce(raw: Value, dt: DataType) -> Result<Value, String> {
    match (dt, raw) {
        (DataType::Bool, Value::Bool(b)) => Ok(Value::Bool(b)),
        (DataType::String(_), Value::String(s)) => Ok(Value::String(s)),
        (DataType::String(_), other) => Ok(Value::String(other.to_string())),
        (dt, v) if v.data_type() == dt => Ok(v),
        (dt, Value::Bool(b)) if dt.is_numeric() => {
            value_from_f64(f64::from(u8::from(b)), dt).map_err(|e| e.to_string())
        }
        (dt, v) => match exact_integer(&v) {
            // Integers are converted through i128 so 64-bit values stay exact.
            Some(i) if !matches!(dt, DataType::F32 | DataType::F64 | DataType::Bool) => {
                integer_value(i, dt).ok_or_else(|| format!("{v} does not fit in {dt}"))
            }
            _ => match v.as_f64() {
                Some(x) => value_from_f64(x, dt).map_err(|e| e.to_string()),
                None => Err(format!("{v} cannot be read as {dt}")),
            },
        },
    }
}

fn exact_integer(v: &Value) -> Option<i128> {
    Some(match *v {
        Value::I16(x) => i128::from(x),
        Value::U16(x) => i128::from(x),
        Value::I32(x) => i128::from(x),
        Value::U32(x) => i128::from(x),
        Value::I64(x) => i128::from(x),
        Value::U64(x) => i128::from(x),
        _ => return None,
    })
}

fn integer_value(i: i128, dt: DataType) -> Option<Value> {
    Some(match dt {
        DataType::I16 => Value::I16(i16::try_from(i).ok()?),
        DataType::U16 => Value::U16(u16::try_from(i).ok()?),
        DataType::I32 => Value::I32(i32::try_from(i).ok()?),
        DataType::U32 => Value::U32(u32::try_from(i).ok()?),
        DataType::I64 => Value::I64(i64::try_from(i).ok()?),
        DataType::U64 => Value::U64(u64::try_from(i).ok()?),
        _ => return None,
    })
}

/// The variant to write for an engineering value: scaling undone, then converted to exactly
/// the variable's type, refusing anything that type cannot hold (out of range, not whole, the
/// wrong kind of value).
pub fn write_variant(target: VarType, value: &Value, scaling: Scaling) -> Result<Variant, String> {
    let holder = target.holder();
    let raw = match (holder, value) {
        (DataType::Bool, Value::Bool(b)) => Value::Bool(*b),
        (DataType::Bool, other) => {
            return Err(format!("the variable is a Boolean; got {other}"));
        }
        (DataType::String(_), Value::String(s)) => {
            if s.len() > usize::from(MAX_TEXT_BYTES) {
                return Err(format!(
                    "the text is {} bytes long; at most {MAX_TEXT_BYTES} can be written",
                    s.len()
                ));
            }
            Value::String(s.clone())
        }
        (DataType::String(_), other) => {
            return Err(format!("the variable is a String; got {other}"));
        }
        (dt, v) => {
            let Some(x) = v.as_f64() else {
                return Err(format!("the variable is a {}; got {v}", target.name()));
            };
            if scaling.is_identity() {
                match exact_integer(v) {
                    Some(i) if !matches!(dt, DataType::F32 | DataType::F64) => integer_value(i, dt)
                        .ok_or_else(|| format!("{v} is out of range for {}", target.name()))?,
                    _ => value_from_f64(x, dt).map_err(|e| e.to_string())?,
                }
            } else {
                scaling.unapply(x, dt).map_err(|e| e.to_string())?
            }
        }
    };
    variant_of(target, raw)
}

/// The held value as a variant of exactly `target` (SByte and Byte are range-checked here,
/// since their holders are wider).
fn variant_of(target: VarType, raw: Value) -> Result<Variant, String> {
    let range = |what: &str| format!("{raw} is out of range for {what}");
    Ok(match (target, &raw) {
        (VarType::Boolean, Value::Bool(b)) => Variant::Boolean(*b),
        (VarType::SByte, Value::I16(x)) => {
            Variant::SByte(i8::try_from(*x).map_err(|_| range("SByte (-128 to 127)"))?)
        }
        (VarType::Byte, Value::U16(x)) => {
            Variant::Byte(u8::try_from(*x).map_err(|_| range("Byte (0 to 255)"))?)
        }
        (VarType::Int16, Value::I16(x)) => Variant::Int16(*x),
        (VarType::UInt16, Value::U16(x)) => Variant::UInt16(*x),
        (VarType::Int32, Value::I32(x)) => Variant::Int32(*x),
        (VarType::UInt32, Value::U32(x)) => Variant::UInt32(*x),
        (VarType::Int64, Value::I64(x)) => Variant::Int64(*x),
        (VarType::UInt64, Value::U64(x)) => Variant::UInt64(*x),
        (VarType::Float, Value::F32(x)) => Variant::Float(*x),
        (VarType::Double, Value::F64(x)) => Variant::Double(*x),
        (VarType::String, Value::String(s)) => Variant::String(UAString::from(s.as_str())),
        (t, v) => return Err(format!("{v} cannot be written as {}", t.name())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NO_SCALING: Scaling = Scaling::IDENTITY;

    #[test]
    fn severity_bits_decide_the_quality() {
        assert_eq!(quality_of(StatusCode::Good), Quality::Good);
        assert_eq!(
            quality_of(StatusCode::UncertainLastUsableValue),
            Quality::Uncertain
        );
        assert_eq!(quality_of(StatusCode::BadNodeIdUnknown), Quality::Bad);
        assert_eq!(quality_of(StatusCode::BadCommunicationError), Quality::Bad);
        assert_eq!(quality_of(StatusCode::GoodClamped), Quality::Good);
    }

    #[test]
    fn source_timestamps_become_epoch_milliseconds() {
        let t = DateTime::ymd_hms(2025, 11, 22, 8, 26, 40);
        assert_eq!(epoch_ms(&t), Some(1_763_800_000_000));
        assert_eq!(epoch_ms(&DateTime::null()), None);
    }

    #[test]
    fn variants_keep_their_type_without_a_configured_one() {
        assert_eq!(
            tag_value(&Variant::Double(21.5), None, NO_SCALING),
            Ok(Value::F64(21.5))
        );
        assert_eq!(
            tag_value(&Variant::Byte(7), None, NO_SCALING),
            Ok(Value::U16(7))
        );
        assert_eq!(
            tag_value(&Variant::from("WO-1"), None, NO_SCALING),
            Ok(Value::String("WO-1".into()))
        );
        assert!(tag_value(&Variant::Empty, None, NO_SCALING).is_err());
        assert!(tag_value(&Variant::from(vec![1i32, 2]), None, NO_SCALING).is_err());
    }

    #[test]
    fn a_configured_type_converts_exactly_or_refuses() {
        assert_eq!(
            tag_value(&Variant::Int32(42), Some(DataType::U16), NO_SCALING),
            Ok(Value::U16(42))
        );
        assert!(tag_value(&Variant::Int32(-1), Some(DataType::U16), NO_SCALING).is_err());
        assert!(tag_value(&Variant::Double(1.5), Some(DataType::I32), NO_SCALING).is_err());
        assert_eq!(
            tag_value(&Variant::Float(1.5), Some(DataType::F64), NO_SCALING),
            Ok(Value::F64(1.5))
        );
        assert_eq!(
            tag_value(&Variant::UInt64(u64::MAX), Some(DataType::U64), NO_SCALING),
            Ok(Value::U64(u64::MAX))
        );
        assert!(tag_value(
            &Variant::from("abcdef"),
            Some(DataType::String(4)),
            NO_SCALING
        )
        .is_err());
        assert_eq!(
            tag_value(&Variant::Int32(3), Some(DataType::String(4)), NO_SCALING),
            Ok(Value::String("3".into()))
        );
    }

    #[test]
    fn scaling_applies_to_numbers_only() {
        let s = Scaling {
            scale: 0.1,
            offset: 1.0,
        };
        assert_eq!(
            tag_value(&Variant::UInt16(215), None, s),
            Ok(Value::F64(215.0 * 0.1 + 1.0))
        );
        assert_eq!(
            tag_value(&Variant::Boolean(true), None, s),
            Ok(Value::Bool(true))
        );
    }

    #[test]
    fn writes_take_exactly_the_variables_type() {
        assert_eq!(
            write_variant(VarType::Int16, &Value::I64(-5), NO_SCALING),
            Ok(Variant::Int16(-5))
        );
        assert_eq!(
            write_variant(VarType::Double, &Value::I64(3), NO_SCALING),
            Ok(Variant::Double(3.0))
        );
        assert_eq!(
            write_variant(VarType::Float, &Value::F64(1.5), NO_SCALING),
            Ok(Variant::Float(1.5))
        );
        assert_eq!(
            write_variant(VarType::UInt64, &Value::U64(u64::MAX), NO_SCALING),
            Ok(Variant::UInt64(u64::MAX))
        );
        assert_eq!(
            write_variant(VarType::String, &Value::String("WO-7".into()), NO_SCALING),
            Ok(Variant::from("WO-7"))
        );
    }

    #[test]
    fn writes_out_of_range_or_of_the_wrong_kind_are_refused() {
        assert!(write_variant(VarType::Byte, &Value::I64(256), NO_SCALING).is_err());
        assert!(write_variant(VarType::SByte, &Value::I64(-129), NO_SCALING).is_err());
        assert!(write_variant(VarType::UInt16, &Value::I64(-1), NO_SCALING).is_err());
        assert!(write_variant(VarType::Int32, &Value::F64(1.5), NO_SCALING).is_err());
        assert!(write_variant(VarType::Boolean, &Value::I64(1), NO_SCALING).is_err());
        assert!(write_variant(VarType::Int32, &Value::Bool(true), NO_SCALING).is_err());
        assert!(write_variant(VarType::String, &Value::I64(1), NO_SCALING).is_err());
        assert!(write_variant(VarType::Float, &Value::F64(1e300), NO_SCALING).is_err());
        assert!(write_variant(VarType::Double, &Value::F64(f64::NAN), NO_SCALING).is_err());
    }

    #[test]
    fn scaling_is_undone_before_a_write() {
        let s = Scaling {
            scale: 0.1,
            offset: 0.0,
        };
        assert_eq!(
            write_variant(VarType::UInt16, &Value::F64(21.5), s),
            Ok(Variant::UInt16(215))
        );
    }

    #[test]
    fn built_in_data_types_are_recognised() {
        assert_eq!(
            VarType::of_data_type(&DataTypeId::Double.into()),
            Some(VarType::Double)
        );
        assert_eq!(
            VarType::of_data_type(&DataTypeId::Enumeration.into()),
            Some(VarType::Int32)
        );
        assert_eq!(VarType::of_data_type(&DataTypeId::DateTime.into()), None);
        assert_eq!(VarType::of_data_type(&NodeId::new(2, 10u32)), None);
        assert_eq!(data_type_name(&DataTypeId::UInt32.into()), "UInt32");
    }

    proptest! {
        #[test]
        fn every_integer_written_as_int64_reads_back_unchanged(x in any::<i64>()) {
            let v = write_variant(VarType::Int64, &Value::I64(x), NO_SCALING);
            prop_assert_eq!(v.clone(), Ok(Variant::Int64(x)));
            prop_assert_eq!(tag_value(&Variant::Int64(x), None, NO_SCALING), Ok(Value::I64(x)));
        }

        #[test]
        fn integer_writes_succeed_exactly_when_the_value_fits(x in any::<i64>()) {
            let r = write_variant(VarType::Int16, &Value::I64(x), NO_SCALING);
            prop_assert_eq!(r.is_ok(), i16::try_from(x).is_ok());
            let r = write_variant(VarType::Byte, &Value::I64(x), NO_SCALING);
            prop_assert_eq!(r.is_ok(), u8::try_from(x).is_ok());
        }
    }
}
