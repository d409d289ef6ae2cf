//! Typed values and the data types a tag can be configured with (SPEC §4).

use std::fmt;
use std::str::FromStr;

use serde::ser::{Serialize, Serializer};

/// A tag's configured type. `String(n)` holds at most `n` bytes of UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
    String(u16),
}

/// The longest `string:N` a tag may have: 2000 bytes, what a few Modbus reads can carry.
pub const MAX_STRING_LEN: u16 = 2000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataTypeError {
    #[error("unknown type `{0}`; expected one of bool, i16, u16, i32, u32, i64, u64, f32, f64, string:N")]
    Unknown(String),
    #[error("`{0}` needs a length from 1 to {MAX_STRING_LEN}, as in `string:16`")]
    BadStringLength(String),
}

impl FromStr for DataType {
    type Err = DataTypeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "bool" => DataType::Bool,
            "i16" => DataType::I16,
            "u16" => DataType::U16,
            "i32" => DataType::I32,
            "u32" => DataType::U32,
            "i64" => DataType::I64,
            "u64" => DataType::U64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            other => match other.strip_prefix("string:") {
                Some(n) => match n.parse::<u16>() {
                    Ok(n) if (1..=MAX_STRING_LEN).contains(&n) => DataType::String(n),
                    _ => return Err(DataTypeError::BadStringLength(other.to_owned())),
                },
                None if other == "string" => {
                    return Err(DataTypeError::BadStringLength(other.to_owned()))
                }
                None => return Err(DataTypeError::Unknown(other.to_owned())),
            },
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataType::Bool => f.write_str("bool"),
            DataType::I16 => f.write_str("i16"),
            DataType::U16 => f.write_str("u16"),
            DataType::I32 => f.write_str("i32"),
            DataType::U32 => f.write_str("u32"),
            DataType::I64 => f.write_str("i64"),
            DataType::U64 => f.write_str("u64"),
            DataType::F32 => f.write_str("f32"),
            DataType::F64 => f.write_str("f64"),
            DataType::String(n) => write!(f, "string:{n}"),
        }
    }
}

impl DataType {
    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::String(_))
    }
}

/// A typed value as read from a device (after scaling, a scaled value is `F64`).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    U64(u64),
    F32(f32),
    F64(f64),
    String(String),
}

impl Value {
    /// The value as a float, for deadband comparison and scaling; `None` for strings and bools.
    pub fn as_f64(&self) -> Option<f64> {
        Some(match *self {
            Value::I16(v) => v as f64,
            Value::U16(v) => v as f64,
            Value::I32(v) => v as f64,
            Value::U32(v) => v as f64,
            Value::I64(v) => v as f64,
            Value::U64(v) => v as f64,
            Value::F32(v) => v as f64,
            Value::F64(v) => v,
            Value::Bool(_) | Value::String(_) => return None,
        })
    }

    pub fn data_type(&self) -> DataType {
        match self {
            Value::Bool(_) => DataType::Bool,
            Value::I16(_) => DataType::I16,
            Value::U16(_) => DataType::U16,
            Value::I32(_) => DataType::I32,
            Value::U32(_) => DataType::U32,
            Value::I64(_) => DataType::I64,
            Value::U64(_) => DataType::U64,
            Value::F32(_) => DataType::F32,
            Value::F64(_) => DataType::F64,
            Value::String(s) => DataType::String(s.len().min(u16::MAX as usize) as u16),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::U64(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
            Value::String(v) => write!(f, "{v:?}"),
        }
    }
}

/// JSON form: the bare value. Non-finite floats (a PLC can hold NaN) become `null`, since JSON
/// has no NaN; the sample's quality says whether it was read.
impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Bool(v) => s.serialize_bool(*v),
            Value::I16(v) => s.serialize_i16(*v),
            Value::U16(v) => s.serialize_u16(*v),
            Value::I32(v) => s.serialize_i32(*v),
            Value::U32(v) => s.serialize_u32(*v),
            Value::I64(v) => s.serialize_i64(*v),
            Value::U64(v) => s.serialize_u64(*v),
            Value::F32(v) if v.is_finite() => s.serialize_f32(*v),
            Value::F64(v) if v.is_finite() => s.serialize_f64(*v),
            Value::F32(_) | Value::F64(_) => s.serialize_none(),
            Value::String(v) => s.serialize_str(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_configured_type_name_parses_and_prints_back() {
        for name in [
            "bool",
            "i16",
            "u16",
            "i32",
            "u32",
            "i64",
            "u64",
            "f32",
            "f64",
            "string:1",
            "string:40",
        ] {
            let dt: DataType = name.parse().expect(name);
            assert_eq!(dt.to_string(), name);
        }
    }

    #[test]
    fn string_needs_a_length_in_range() {
        assert!(matches!(
            "string".parse::<DataType>(),
            Err(DataTypeError::BadStringLength(_))
        ));
        assert!("string:0".parse::<DataType>().is_err());
        assert!("string:2001".parse::<DataType>().is_err());
        assert!(matches!(
            "float".parse::<DataType>(),
            Err(DataTypeError::Unknown(_))
        ));
    }
}
