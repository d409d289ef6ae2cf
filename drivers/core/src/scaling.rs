//! Between the raw values a device holds and engineering units: linear scaling, its inverse
//! for writes, and the exact conversion of a number to a value of a given type. Pure; both
//! drivers scale with it and check command values with it.

use edge_model::{DataType, Value};

/// Why a number cannot become a value of a tag's type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    #[error("{value} is out of range for {data_type}: {}", range_text(*.data_type))]
    OutOfRange { value: f64, data_type: DataType },
    #[error("{value} is not a whole number, which {data_type} requires")]
    NotWhole { value: f64, data_type: DataType },
    #[error("{0} is not a finite number")]
    NotFinite(f64),
    #[error("scale {0} cannot be undone; a scale must be finite and not zero")]
    BadScale(f64),
    #[error("{0} values are not numbers and cannot be converted from one")]
    NotNumeric(DataType),
}

/// Linear scaling between a raw device value and engineering units:
/// `engineering = raw * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    pub scale: f64,
    pub offset: f64,
}

impl Default for Scaling {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl Scaling {
    pub const IDENTITY: Scaling = Scaling {
        scale: 1.0,
        offset: 0.0,
    };

    pub fn is_identity(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }

    /// The engineering value of a raw reading. Without scaling the raw value keeps its type;
    /// with scaling a number becomes `F64`. Bools and strings are never scaled.
    ///
    /// Published numbers carry no binary noise: an integer reading scaled by 0.01 has two
    /// decimals and is rounded to them (`510 × 0.01` is 5.1, not 5.1000000000000005); the
    /// decimals are those of the scale and the offset as written, at most 15. A float register
    /// is scaled from the shortest decimal that reads back as the same f32 (an f32 21.3 is
    /// 21.3, not 21.299999237060547), and the result is not rounded further.
    pub fn apply(&self, raw: Value) -> Value {
        if self.is_identity() {
            return raw;
        }
        let x = match raw {
            Value::F32(f) => shortest_f64(f),
            Value::F64(f) => f,
            _ => match raw.as_f64() {
                Some(x) => x,
                None => return raw,
            },
        };
        if matches!(raw, Value::Bool(_) | Value::String(_)) {
            return raw;
        }
        let y = x * self.scale + self.offset;
        if matches!(raw, Value::F32(_) | Value::F64(_)) {
            return Value::F64(y);
        }
        Value::F64(round_to(y, decimals(self.scale).max(decimals(self.offset))))
    }

    /// The raw value to write for an engineering value: `(x - offset) / scale`, rounded to the
    /// nearest whole number for integer types and checked against the range of `dt`.
    pub fn unapply(&self, engineering: f64, dt: DataType) -> Result<Value, ValueError> {
        if !engineering.is_finite() {
            return Err(ValueError::NotFinite(engineering));
        }
        if !dt.is_numeric() {
            return Err(ValueError::NotNumeric(dt));
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(ValueError::BadScale(self.scale));
        }
        let raw = (engineering - self.offset) / self.scale;
        if !raw.is_finite() {
            return Err(ValueError::NotFinite(raw));
        }
        let raw = match dt {
            DataType::F32 | DataType::F64 => raw,
            // Scaled integers rarely divide exactly (6553.5 / 0.1 is 65535.00000000001).
            _ => raw.round(),
        };
        value_from_f64(raw, dt)
    }
}

/// The bounds of an integer type as floats: `[min, max_exclusive)`. Every bound is a power of
/// two (or its negation), so each is exact in an `f64` and the comparisons are exact.
fn integer_bounds(dt: DataType) -> Option<(f64, f64)> {
    Some(match dt {
        DataType::I16 => (-32_768.0, 32_768.0),
        DataType::U16 => (0.0, 65_536.0),
        DataType::I32 => (-2_147_483_648.0, 2_147_483_648.0),
        DataType::U32 => (0.0, 4_294_967_296.0),
        DataType::I64 => (-9_223_372_036_854_775_808.0, 9_223_372_036_854_775_808.0),
        DataType::U64 => (0.0, 18_446_744_073_709_551_616.0),
        _ => return None,
    })
}

fn range_text(dt: DataType) -> String {
    match dt {
        DataType::I16 => format!("it holds whole numbers from {} to {}", i16::MIN, i16::MAX),
        DataType::U16 => format!("it holds whole numbers from 0 to {}", u16::MAX),
        DataType::I32 => format!("it holds whole numbers from {} to {}", i32::MIN, i32::MAX),
        DataType::U32 => format!("it holds whole numbers from 0 to {}", u32::MAX),
        DataType::I64 => format!("it holds whole numbers from {} to {}", i64::MIN, i64::MAX),
        DataType::U64 => format!("it holds whole numbers from 0 to {}", u64::MAX),
        DataType::F32 => format!("it holds magnitudes up to {:e}", f32::MAX),
        DataType::F64 => format!("it holds magnitudes up to {:e}", f64::MAX),
        DataType::Bool => "it holds true or false".to_owned(),
        DataType::String(n) => format!("it holds text of up to {n} bytes"),
    }
}

/// Converts a number to a value of type `dt`, refusing anything the type cannot hold exactly:
/// integers must be whole and within range, floats finite (and within range for `f32`).
pub fn value_from_f64(x: f64, dt: DataType) -> Result<Value, ValueError> {
    if !x.is_finite() {
        return Err(ValueError::NotFinite(x));
    }
    let out_of_range = ValueError::OutOfRange {
        value: x,
        data_type: dt,
    };
    if let Some((min, max_exclusive)) = integer_bounds(dt) {
        if x < min || x >= max_exclusive {
            return Err(out_of_range);
        }
        if x.fract() != 0.0 {
            return Err(ValueError::NotWhole {
                value: x,
                data_type: dt,
            });
        }
    }
    // The integer casts below are exact: x is whole and within the type's range.
    Ok(match dt {
        DataType::I16 => Value::I16(x as i16),
        DataType::U16 => Value::U16(x as u16),
        DataType::I32 => Value::I32(x as i32),
        DataType::U32 => Value::U32(x as u32),
        DataType::I64 => Value::I64(x as i64),
        DataType::U64 => Value::U64(x as u64),
        DataType::F32 => {
            let f = x as f32;
            if !f.is_finite() {
                return Err(out_of_range);
            }
            Value::F32(f)
        }
        DataType::F64 => Value::F64(x),
        DataType::Bool | DataType::String(_) => return Err(ValueError::NotNumeric(dt)),
    })
}

/// The f64 nearest to the shortest decimal that reads back as `f` (f32's own digits).
fn shortest_f64(f: f32) -> f64 {
    f.to_string().parse().unwrap_or(f64::from(f))
}

/// How many decimals `x` has as its shortest decimal form (`0.01` → 2, `1e-5` → 5, `10` → 0).
fn decimals(x: f64) -> u32 {
    let text = format!("{x:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let fraction = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i64);
    let exponent: i64 = exponent.parse().unwrap_or(0);
    (fraction - exponent).clamp(0, 15) as u32
}

/// `y` rounded to `d` decimals; unchanged where the rounding cannot be done exactly.
fn round_to(y: f64, d: u32) -> f64 {
    if d >= 15 {
        return y;
    }
    let p = 10f64.powi(d as i32);
    let r = (y * p).round() / p;
    if r.is_finite() {
        r
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(scale: f64, offset: f64, raw: Value) -> Value {
        Scaling { scale, offset }.apply(raw)
    }

    #[test]
    fn scaled_integers_are_published_with_the_decimals_of_their_scale_not_binary_noise() {
        assert_eq!(scaled(0.01, 0.0, Value::U16(510)), Value::F64(5.1));
        assert_eq!(scaled(0.01, 0.0, Value::U16(330)), Value::F64(3.3));
        assert_eq!(scaled(0.1, -40.0, Value::I16(653)), Value::F64(25.3));
        assert_eq!(scaled(0.001, 0.5, Value::U32(1)), Value::F64(0.501));
        assert_eq!(scaled(2.0, 0.0, Value::U16(21)), Value::F64(42.0));
        let Value::F64(y) = scaled(0.01, 0.0, Value::U16(510)) else {
            panic!("a number")
        };
        assert_eq!(y.to_string(), "5.1", "published as a technician writes it");
    }

    #[test]
    fn a_scaled_float_register_starts_from_the_f32_as_written() {
        assert_eq!(scaled(10.0, 0.0, Value::F32(21.3)), Value::F64(213.0));
        assert_eq!(scaled(1.0, 0.5, Value::F32(0.1)), Value::F64(0.6));
    }

    #[test]
    fn decimals_follow_the_shortest_form_of_the_number() {
        assert_eq!(decimals(0.01), 2);
        assert_eq!(decimals(0.1), 1);
        assert_eq!(decimals(1e-5), 5);
        assert_eq!(decimals(10.0), 0);
        assert_eq!(decimals(0.0), 0);
        assert_eq!(decimals(1.25), 2);
    }

    proptest! {
        /// Rounding to the scale's decimals never moves a scaled integer by more than half of
        /// its last decimal: no reading is changed, only its noise removed.
        #[test]
        fn rounding_removes_noise_and_nothing_else(raw in -100_000i32..100_000, k in 1u32..6) {
            let scale = 10f64.powi(-(k as i32));
            let Value::F64(y) = scaled(scale, 0.0, Value::I32(raw)) else { panic!("a number") };
            let exact = f64::from(raw) * scale;
            prop_assert!((y - exact).abs() <= 0.5 * scale);
            let text = y.to_string();
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len() as u32);
            prop_assert!(decimals <= k, "{} has more than {} decimals", text, k);
        }
    }
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn integers_survive_unapply_then_apply_with_a_decimal_scale(
            raw in any::<i32>(),
            offset in -1000i32..1000,
        ) {
            let scaling = Scaling { scale: 0.01, offset: f64::from(offset) };
            let Value::F64(eng) = scaling.apply(Value::I32(raw)) else {
                panic!("a scaled number is an f64");
            };
            prop_assert_eq!(scaling.unapply(eng, DataType::I32), Ok(Value::I32(raw)));
        }
    }

    #[test]
    fn scaling_applies_to_numbers_only_and_identity_keeps_the_type() {
        assert!(Scaling::IDENTITY.is_identity());
        assert_eq!(Scaling::default(), Scaling::IDENTITY);
        assert_eq!(Scaling::IDENTITY.apply(Value::U16(7)), Value::U16(7));
        let s = Scaling {
            scale: 0.1,
            offset: -40.0,
        };
        assert!(!s.is_identity());
        let Value::F64(x) = s.apply(Value::U16(650)) else {
            panic!("a scaled number is an f64");
        };
        assert!((x - 25.0).abs() < 1e-9);
        assert_eq!(s.apply(Value::Bool(true)), Value::Bool(true));
        assert_eq!(
            s.apply(Value::String("x".into())),
            Value::String("x".into())
        );
        let offset_only = Scaling {
            scale: 1.0,
            offset: 2.5,
        };
        assert_eq!(offset_only.apply(Value::I16(-1)), Value::F64(1.5));
    }

    #[test]
    fn unapply_rounds_to_the_nearest_raw_value_and_checks_the_range() {
        let s = Scaling {
            scale: 0.1,
            offset: 0.0,
        };
        assert_eq!(s.unapply(6553.5, DataType::U16), Ok(Value::U16(65535)));
        assert_eq!(s.unapply(0.0, DataType::U16), Ok(Value::U16(0)));
        assert_eq!(s.unapply(12.34, DataType::U16), Ok(Value::U16(123)));
        let err = s
            .unapply(6553.6, DataType::U16)
            .expect_err("65536 does not fit a u16");
        assert_eq!(
            err,
            ValueError::OutOfRange {
                value: 65536.0,
                data_type: DataType::U16
            }
        );
        assert!(err.to_string().contains("0 to 65535"), "{err}");
        assert!(s.unapply(-0.1, DataType::U16).is_err());
        assert_eq!(s.unapply(-3276.8, DataType::I16), Ok(Value::I16(i16::MIN)));
        assert!(s.unapply(-3276.9, DataType::I16).is_err());
        // Rounding to nearest turns -0.04 into a raw 0, which a u16 holds.
        assert_eq!(s.unapply(-0.04, DataType::U16), Ok(Value::U16(0)));
    }

    #[test]
    fn unapply_converts_floats_and_refuses_what_cannot_be_written() {
        let s = Scaling {
            scale: 2.0,
            offset: 1.0,
        };
        assert_eq!(s.unapply(4.0, DataType::F64), Ok(Value::F64(1.5)));
        assert_eq!(s.unapply(4.0, DataType::F32), Ok(Value::F32(1.5)));
        assert!(matches!(
            s.unapply(1e300, DataType::F32),
            Err(ValueError::OutOfRange { .. })
        ));
        assert_eq!(
            s.unapply(f64::NAN, DataType::F64)
                .map_err(|e| e.to_string()),
            Err("NaN is not a finite number".to_owned())
        );
        assert!(matches!(
            s.unapply(f64::INFINITY, DataType::I32),
            Err(ValueError::NotFinite(_))
        ));
        assert_eq!(
            s.unapply(1.0, DataType::Bool),
            Err(ValueError::NotNumeric(DataType::Bool))
        );
        let zero = Scaling {
            scale: 0.0,
            offset: 0.0,
        };
        assert_eq!(
            zero.unapply(1.0, DataType::U16),
            Err(ValueError::BadScale(0.0))
        );
        assert_eq!(
            Scaling::IDENTITY.unapply(7.0, DataType::I64),
            Ok(Value::I64(7))
        );
    }

    #[test]
    fn value_from_f64_needs_whole_numbers_within_range() {
        assert_eq!(
            value_from_f64(65535.0, DataType::U16),
            Ok(Value::U16(65535))
        );
        assert_eq!(
            value_from_f64(1.5, DataType::U16),
            Err(ValueError::NotWhole {
                value: 1.5,
                data_type: DataType::U16
            })
        );
        assert!(matches!(
            value_from_f64(-1.0, DataType::U32),
            Err(ValueError::OutOfRange { .. })
        ));
        assert_eq!(
            value_from_f64(-2_147_483_648.0, DataType::I32),
            Ok(Value::I32(i32::MIN))
        );
        assert!(value_from_f64(2_147_483_648.0, DataType::I32).is_err());
        assert_eq!(
            value_from_f64(4_294_967_295.0, DataType::U32),
            Ok(Value::U32(u32::MAX))
        );
        // 2^63 and 2^64 are the first floats past i64::MAX and u64::MAX.
        assert_eq!(
            value_from_f64(-9_223_372_036_854_775_808.0, DataType::I64),
            Ok(Value::I64(i64::MIN))
        );
        assert!(value_from_f64(9_223_372_036_854_775_808.0, DataType::I64).is_err());
        assert!(value_from_f64(18_446_744_073_709_551_616.0, DataType::U64).is_err());
        assert_eq!(
            value_from_f64(18_446_744_073_709_549_568.0, DataType::U64),
            Ok(Value::U64(18_446_744_073_709_549_568))
        );
        assert_eq!(
            value_from_f64(-0.0, DataType::U16),
            Ok(Value::U16(0)),
            "negative zero is zero"
        );
        assert_eq!(value_from_f64(0.25, DataType::F64), Ok(Value::F64(0.25)));
        assert!(matches!(
            value_from_f64(f64::NEG_INFINITY, DataType::F64),
            Err(ValueError::NotFinite(_))
        ));
        assert_eq!(
            value_from_f64(1.0, DataType::String(4)),
            Err(ValueError::NotNumeric(DataType::String(4)))
        );
    }

    #[test]
    fn out_of_range_messages_name_the_range_of_every_numeric_type() {
        for (dt, text) in [
            (DataType::I16, "-32768 to 32767"),
            (DataType::U16, "0 to 65535"),
            (DataType::I32, "-2147483648 to 2147483647"),
            (DataType::U32, "0 to 4294967295"),
            (DataType::I64, "-9223372036854775808 to 9223372036854775807"),
            (DataType::U64, "0 to 18446744073709551615"),
            (DataType::F32, "3.4028235e38"),
        ] {
            let err = value_from_f64(1e39, dt).expect_err("1e39 fits no type but f64");
            assert!(err.to_string().contains(text), "{dt}: {err}");
        }
    }
}
