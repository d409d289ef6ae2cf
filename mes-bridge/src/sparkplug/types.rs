//! Sparkplug datatypes and values: which datatype a configured tag is announced with, which
//! protobuf field carries each value (UInt32 in `long_value`, as Tahu and the TCK require), and
//! the reverse for commands, accepting both encodings of negative small integers that hosts use.

use edge_model::{DataType, Quality, Value};

use super::proto::payload::metric;

/// The Sparkplug B metric datatypes edge-agent uses (the spec's datatype enum, §6.4.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpType {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt8,
    UInt16,
    UInt32,
    UInt64,
    Float,
    Double,
    Boolean,
    String,
    DateTime,
    Text,
}

impl SpType {
    /// The code carried in `Metric.datatype`.
    pub fn code(self) -> u32 {
        match self {
            SpType::Int8 => 1,
            SpType::Int16 => 2,
            SpType::Int32 => 3,
            SpType::Int64 => 4,
            SpType::UInt8 => 5,
            SpType::UInt16 => 6,
            SpType::UInt32 => 7,
            SpType::UInt64 => 8,
            SpType::Float => 9,
            SpType::Double => 10,
            SpType::Boolean => 11,
            SpType::String => 12,
            SpType::DateTime => 13,
            SpType::Text => 14,
        }
    }

    /// The datatype of a code; `None` for codes edge-agent does not handle (datasets, templates,
    /// arrays, unknown).
    pub fn from_code(code: u32) -> Option<SpType> {
        Some(match code {
            1 => SpType::Int8,
            2 => SpType::Int16,
            3 => SpType::Int32,
            4 => SpType::Int64,
            5 => SpType::UInt8,
            6 => SpType::UInt16,
            7 => SpType::UInt32,
            8 => SpType::UInt64,
            9 => SpType::Float,
            10 => SpType::Double,
            11 => SpType::Boolean,
            12 => SpType::String,
            13 => SpType::DateTime,
            14 => SpType::Text,
            _ => return None,
        })
    }

    /// The datatype a tag is announced with. A scaled number is published as the engineering
    /// value `raw * scale + offset`, a double whatever the raw type.
    pub fn for_tag(data_type: DataType, scaled: bool) -> SpType {
        if scaled && data_type.is_numeric() {
            return SpType::Double;
        }
        match data_type {
            DataType::Bool => SpType::Boolean,
            DataType::I16 => SpType::Int16,
            DataType::U16 => SpType::UInt16,
            DataType::I32 => SpType::Int32,
            DataType::U32 => SpType::UInt32,
            DataType::I64 => SpType::Int64,
            DataType::U64 => SpType::UInt64,
            DataType::F32 => SpType::Float,
            DataType::F64 => SpType::Double,
            DataType::String(_) => SpType::String,
        }
    }

    /// The datatype a value is announced with when the tag keeps the server's type (an OPC UA
    /// tag without `type`): the value's own type, by the same table as [`SpType::for_tag`]. A
    /// scaled number is a double.
    pub fn of_value(value: &Value, scaled: bool) -> SpType {
        SpType::for_tag(value.data_type(), scaled)
    }

    pub fn name(self) -> &'static str {
        match self {
            SpType::Int8 => "Int8",
            SpType::Int16 => "Int16",
            SpType::Int32 => "Int32",
            SpType::Int64 => "Int64",
            SpType::UInt8 => "UInt8",
            SpType::UInt16 => "UInt16",
            SpType::UInt32 => "UInt32",
            SpType::UInt64 => "UInt64",
            SpType::Float => "Float",
            SpType::Double => "Double",
            SpType::Boolean => "Boolean",
            SpType::String => "String",
            SpType::DateTime => "DateTime",
            SpType::Text => "Text",
        }
    }
}

/// The `Quality` property's value (an Int32): 192 good, 0 bad, and 64 for uncertain, the OPC DA
/// code the 0/192 pair comes from. 500 (stale) marks a metric never read since start.
pub fn quality_code(quality: Quality) -> i32 {
    match quality {
        Quality::Good => QUALITY_GOOD,
        Quality::Uncertain => QUALITY_UNCERTAIN,
        Quality::Bad => QUALITY_BAD,
    }
}

pub const QUALITY_GOOD: i32 = 192;
pub const QUALITY_UNCERTAIN: i32 = 64;
pub const QUALITY_BAD: i32 = 0;
pub const QUALITY_STALE: i32 = 500;

/// The protobuf value of `v` announced as `t`. Numbers are converted to the announced type
/// (a scaled tag's value is already a double); `None` when `v` cannot be one (a string for a
/// number), which the caller sends as `is_null`.
pub fn encode_value(t: SpType, v: &Value) -> Option<metric::Value> {
    use metric::Value as M;
    Some(match (t, v) {
        (SpType::Boolean, Value::Bool(b)) => M::BooleanValue(*b),
        (SpType::String | SpType::Text, Value::String(s)) => M::StringValue(s.clone()),
        // Small signed integers are sign-extended to 32 bits, as Tahu's Java implementation
        // does; decoders that mask to the type's width read the same number.
        (SpType::Int8 | SpType::Int16 | SpType::Int32, v) => M::IntValue(int_of(v)? as i32 as u32),
        (SpType::UInt8 | SpType::UInt16, v) => M::IntValue(u32::try_from(uint_of(v)?).ok()?),
        (SpType::UInt32 | SpType::UInt64 | SpType::DateTime, v) => M::LongValue(uint_of(v)?),
        (SpType::Int64, v) => M::LongValue(int_of(v)? as u64),
        (SpType::Float, v) => M::FloatValue(v.as_f64()? as f32),
        (SpType::Double, v) => M::DoubleValue(v.as_f64()?),
        _ => return None,
    })
}

fn int_of(v: &Value) -> Option<i64> {
    Some(match *v {
        Value::I16(x) => x.into(),
        Value::U16(x) => x.into(),
        Value::I32(x) => x.into(),
        Value::U32(x) => x.into(),
        Value::I64(x) => x,
        Value::U64(x) => i64::try_from(x).ok()?,
        _ => return None,
    })
}

fn uint_of(v: &Value) -> Option<u64> {
    Some(match *v {
        Value::I16(x) => u64::try_from(x).ok()?,
        Value::U16(x) => x.into(),
        Value::I32(x) => u64::try_from(x).ok()?,
        Value::U32(x) => x.into(),
        Value::I64(x) => u64::try_from(x).ok()?,
        Value::U64(x) => x,
        _ => return None,
    })
}

/// Why a command's value cannot be taken as the metric's datatype.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("the metric is {expected}, but the value was sent as {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error("{value} is out of the range of {datatype}")]
    OutOfRange {
        value: String,
        datatype: &'static str,
    },
    #[error("{0} metrics cannot be written")]
    Unsupported(&'static str),
}

fn field_name(v: &metric::Value) -> &'static str {
    use metric::Value as M;
    match v {
        M::IntValue(_) => "int_value",
        M::LongValue(_) => "long_value",
        M::FloatValue(_) => "float_value",
        M::DoubleValue(_) => "double_value",
        M::BooleanValue(_) => "boolean_value",
        M::StringValue(_) => "string_value",
        M::BytesValue(_) => "bytes_value",
        M::DatasetValue(_) => "dataset_value",
        M::TemplateValue(_) => "template_value",
        M::ExtensionValue(_) => "extension_value",
    }
}

/// The edge-model value a command's metric value stands for, read as the metric's datatype.
/// The value must be in the field that datatype uses; UInt32 is accepted in `int_value` too
/// (the spec's table puts it there, Tahu in `long_value`), and negative Int8/Int16/Int32
/// either sign-extended or masked to the type's width.
pub fn decode_value(t: SpType, v: &metric::Value) -> Result<Value, ValueError> {
    use metric::Value as M;
    let wrong = || ValueError::WrongType {
        expected: t.name(),
        found: field_name(v),
    };
    let range = |value: String| ValueError::OutOfRange {
        value,
        datatype: t.name(),
    };
    match (t, v) {
        (SpType::Boolean, M::BooleanValue(b)) => Ok(Value::Bool(*b)),
        (SpType::String | SpType::Text, M::StringValue(s)) => Ok(Value::String(s.clone())),
        (SpType::Int8, M::IntValue(x)) => signed_small(*x, 8)
            .map(|n| Value::I16(n as i16))
            .ok_or_else(|| range(x.to_string())),
        (SpType::Int16, M::IntValue(x)) => signed_small(*x, 16)
            .map(|n| Value::I16(n as i16))
            .ok_or_else(|| range(x.to_string())),
        (SpType::Int32, M::IntValue(x)) => Ok(Value::I32(*x as i32)),
        (SpType::UInt8, M::IntValue(x)) if *x <= u8::MAX.into() => Ok(Value::U16(*x as u16)),
        (SpType::UInt16, M::IntValue(x)) => u16::try_from(*x)
            .map(Value::U16)
            .map_err(|_| range(x.to_string())),
        (SpType::UInt8, M::IntValue(x)) => Err(range(x.to_string())),
        (SpType::UInt32, M::IntValue(x)) => Ok(Value::U32(*x)),
        (SpType::UInt32, M::LongValue(x)) => u32::try_from(*x)
            .map(Value::U32)
            .map_err(|_| range(x.to_string())),
        (SpType::Int64, M::LongValue(x)) => Ok(Value::I64(*x as i64)),
        (SpType::UInt64, M::LongValue(x)) => Ok(Value::U64(*x)),
        (SpType::Float, M::FloatValue(x)) => Ok(Value::F32(*x)),
        (SpType::Double, M::DoubleValue(x)) => Ok(Value::F64(*x)),
        (SpType::DateTime, _) => Err(ValueError::Unsupported("DateTime")),
        _ => Err(wrong()),
    }
}

/// A signed integer of `bits` carried in a u32: sign-extended to 32 bits (Java Tahu) or masked
/// to `bits` (Python Tahu). Anything else does not fit.
fn signed_small(x: u32, bits: u32) -> Option<i32> {
    let max = (1i64 << (bits - 1)) - 1;
    let min = -(1i64 << (bits - 1));
    let as_i32 = x as i32 as i64;
    if (min..=max).contains(&as_i32) {
        return Some(as_i32 as i32);
    }
    // Masked: the low `bits` bits hold the two's complement.
    if u64::from(x) < (1u64 << bits) {
        let shift = 32 - bits;
        return Some(((x << shift) as i32) >> shift);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use metric::Value as M;
    use proptest::prelude::*;

    #[test]
    fn every_datatype_code_reads_back() {
        for code in 1..=14 {
            let t = SpType::from_code(code).expect("a basic type");
            assert_eq!(t.code(), code);
        }
        for code in [0, 15, 16, 17, 18, 19, 20, 21, 22, 34, 1000] {
            assert_eq!(SpType::from_code(code), None);
        }
    }

    #[test]
    fn tags_are_announced_with_their_own_type_and_scaled_numbers_as_doubles() {
        let cases = [
            (DataType::Bool, SpType::Boolean),
            (DataType::I16, SpType::Int16),
            (DataType::U16, SpType::UInt16),
            (DataType::I32, SpType::Int32),
            (DataType::U32, SpType::UInt32),
            (DataType::I64, SpType::Int64),
            (DataType::U64, SpType::UInt64),
            (DataType::F32, SpType::Float),
            (DataType::F64, SpType::Double),
            (DataType::String(8), SpType::String),
        ];
        for (dt, t) in cases {
            assert_eq!(SpType::for_tag(dt, false), t, "{dt}");
        }
        assert_eq!(SpType::for_tag(DataType::U16, true), SpType::Double);
        assert_eq!(SpType::for_tag(DataType::F32, true), SpType::Double);
        assert_eq!(SpType::for_tag(DataType::Bool, true), SpType::Boolean);
        assert_eq!(SpType::for_tag(DataType::String(4), true), SpType::String);
    }

    #[test]
    fn a_value_of_the_servers_type_is_announced_with_its_own_type() {
        let cases = [
            (Value::Bool(true), SpType::Boolean),
            (Value::I16(-1), SpType::Int16),
            (Value::U16(1), SpType::UInt16),
            (Value::I32(-1), SpType::Int32),
            (Value::U32(1), SpType::UInt32),
            (Value::I64(-1), SpType::Int64),
            (Value::U64(1), SpType::UInt64),
            (Value::F32(1.5), SpType::Float),
            (Value::F64(1.5), SpType::Double),
            (Value::String(String::new()), SpType::String),
            (Value::String("a long text".into()), SpType::String),
        ];
        for (v, t) in cases {
            assert_eq!(SpType::of_value(&v, false), t, "{v:?}");
        }
        assert_eq!(SpType::of_value(&Value::F64(2.5), true), SpType::Double);
        assert_eq!(SpType::of_value(&Value::I32(2), true), SpType::Double);
        assert_eq!(SpType::of_value(&Value::Bool(true), true), SpType::Boolean);
        assert_eq!(
            SpType::of_value(&Value::String("x".into()), true),
            SpType::String
        );
    }

    #[test]
    fn uint32_goes_in_long_value() {
        assert_eq!(
            encode_value(SpType::UInt32, &Value::U32(u32::MAX)),
            Some(M::LongValue(u32::MAX.into()))
        );
        assert_eq!(
            encode_value(SpType::UInt16, &Value::U16(65535)),
            Some(M::IntValue(65535))
        );
        assert_eq!(
            encode_value(SpType::UInt64, &Value::U64(u64::MAX)),
            Some(M::LongValue(u64::MAX))
        );
        assert_eq!(
            encode_value(SpType::Int64, &Value::I64(-1)),
            Some(M::LongValue(u64::MAX))
        );
    }

    #[test]
    fn negative_small_integers_are_sign_extended() {
        assert_eq!(
            encode_value(SpType::Int16, &Value::I16(-1)),
            Some(M::IntValue(0xFFFF_FFFF))
        );
        assert_eq!(
            encode_value(SpType::Int32, &Value::I32(i32::MIN)),
            Some(M::IntValue(0x8000_0000))
        );
    }

    #[test]
    fn values_that_cannot_be_the_announced_type_are_none() {
        assert_eq!(
            encode_value(SpType::UInt16, &Value::String("x".into())),
            None
        );
        assert_eq!(encode_value(SpType::Boolean, &Value::U16(1)), None);
        assert_eq!(encode_value(SpType::String, &Value::U16(1)), None);
        assert_eq!(encode_value(SpType::UInt32, &Value::I32(-5)), None);
    }

    #[test]
    fn a_scaled_value_is_a_double() {
        assert_eq!(
            encode_value(SpType::Double, &Value::F64(21.5)),
            Some(M::DoubleValue(21.5))
        );
        assert_eq!(
            encode_value(SpType::Double, &Value::U16(7)),
            Some(M::DoubleValue(7.0))
        );
    }

    #[test]
    fn commands_accept_both_encodings_of_negative_int16() {
        assert_eq!(
            decode_value(SpType::Int16, &M::IntValue(0xFFFF_FFFF)),
            Ok(Value::I16(-1))
        );
        assert_eq!(
            decode_value(SpType::Int16, &M::IntValue(0xFFFF)),
            Ok(Value::I16(-1))
        );
        assert_eq!(
            decode_value(SpType::Int16, &M::IntValue(0x8000)),
            Ok(Value::I16(i16::MIN))
        );
        assert_eq!(
            decode_value(SpType::Int16, &M::IntValue(0x7FFF)),
            Ok(Value::I16(i16::MAX))
        );
        assert!(matches!(
            decode_value(SpType::Int16, &M::IntValue(0x1_0000)),
            Err(ValueError::OutOfRange { .. })
        ));
        assert!(matches!(
            decode_value(SpType::Int16, &M::IntValue(0xFFFF_7FFF)),
            Err(ValueError::OutOfRange { .. })
        ));
    }

    #[test]
    fn commands_take_uint32_from_either_field_and_check_its_range() {
        assert_eq!(
            decode_value(SpType::UInt32, &M::IntValue(7)),
            Ok(Value::U32(7))
        );
        assert_eq!(
            decode_value(SpType::UInt32, &M::LongValue(u32::MAX.into())),
            Ok(Value::U32(u32::MAX))
        );
        assert!(matches!(
            decode_value(SpType::UInt32, &M::LongValue(1 << 32)),
            Err(ValueError::OutOfRange { .. })
        ));
    }

    #[test]
    fn a_value_in_the_wrong_field_is_the_wrong_type() {
        let e = decode_value(SpType::UInt16, &M::StringValue("12".into()));
        assert_eq!(
            e,
            Err(ValueError::WrongType {
                expected: "UInt16",
                found: "string_value"
            })
        );
        assert!(decode_value(SpType::Boolean, &M::IntValue(1)).is_err());
        assert!(decode_value(SpType::Double, &M::FloatValue(1.0)).is_err());
        assert!(decode_value(SpType::Float, &M::DoubleValue(1.0)).is_err());
        assert!(decode_value(SpType::UInt16, &M::LongValue(1)).is_err());
        assert!(matches!(
            decode_value(SpType::UInt16, &M::IntValue(65536)),
            Err(ValueError::OutOfRange { .. })
        ));
    }

    #[test]
    fn quality_codes_follow_the_opc_convention() {
        assert_eq!(quality_code(Quality::Good), 192);
        assert_eq!(quality_code(Quality::Bad), 0);
        assert_eq!(quality_code(Quality::Uncertain), 64);
    }

    fn numeric(t: SpType) -> impl Strategy<Value = Value> {
        match t {
            SpType::Int16 => any::<i16>().prop_map(Value::I16).boxed(),
            SpType::UInt16 => any::<u16>().prop_map(Value::U16).boxed(),
            SpType::Int32 => any::<i32>().prop_map(Value::I32).boxed(),
            SpType::UInt32 => any::<u32>().prop_map(Value::U32).boxed(),
            SpType::Int64 => any::<i64>().prop_map(Value::I64).boxed(),
            SpType::UInt64 => any::<u64>().prop_map(Value::U64).boxed(),
            SpType::Float => any::<f32>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::F32)
                .boxed(),
            _ => any::<f64>()
                .prop_filter("NaN never equals itself", |f| !f.is_nan())
                .prop_map(Value::F64)
                .boxed(),
        }
    }

    proptest! {
        #[test]
        fn every_value_of_a_tag_type_survives_encode_and_decode(
            t in prop::sample::select(vec![
                SpType::Int16, SpType::UInt16, SpType::Int32, SpType::UInt32,
                SpType::Int64, SpType::UInt64, SpType::Float, SpType::Double,
            ]).prop_flat_map(|t| (Just(t), numeric(t)))
        ) {
            let (t, v) = t;
            let wire = encode_value(t, &v).expect("a value of the type encodes");
            prop_assert_eq!(decode_value(t, &wire), Ok(v));
        }

        #[test]
        fn masked_and_sign_extended_int16_decode_alike(x in any::<i16>()) {
            let extended = x as i32 as u32;
            let masked = x as u16 as u32;
            prop_assert_eq!(decode_value(SpType::Int16, &M::IntValue(extended)), Ok(Value::I16(x)));
            prop_assert_eq!(decode_value(SpType::Int16, &M::IntValue(masked)), Ok(Value::I16(x)));
        }

        #[test]
        fn decoding_any_field_never_panics(
            t in 1u32..=14, x in any::<u64>(), f in any::<f64>(), kind in 0u8..6
        ) {
            let t = SpType::from_code(t).expect("basic type");
            let v = match kind {
                0 => M::IntValue(x as u32),
                1 => M::LongValue(x),
                2 => M::FloatValue(f as f32),
                3 => M::DoubleValue(f),
                4 => M::BooleanValue(x.is_multiple_of(2)),
                _ => M::StringValue(x.to_string()),
            };
            let _ = decode_value(t, &v);
        }
    }
}
