//! Registers <-> typed values: the four byte orders of multi-register numbers, strings packed two
//! bytes per register, and bits within a register. Pure functions; the driver slices a read
//! reply and hands it here (scaling to engineering units is edge-driver's `Scaling`).

use std::str::Utf8Error;

use edge_model::{DataType, Value};

use crate::address::ByteOrder;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("a {data_type} value takes {expected} register(s), but {got} were given")]
    WrongRegisterCount {
        data_type: DataType,
        expected: u16,
        got: usize,
    },
    #[error("a {got} value cannot be stored in a {expected} tag")]
    TypeMismatch { expected: DataType, got: DataType },
    #[error("the string is {got} bytes long, but the tag holds at most {max} bytes")]
    StringTooLong { max: u16, got: usize },
    #[error("the string registers do not hold valid UTF-8: {0}")]
    InvalidUtf8(Utf8Error),
    #[error("bit {0} does not exist in a 16-bit register (bits are 0 to 15)")]
    BitOutOfRange(u8),
}

/// How many registers a value of `dt` occupies. A bool in a register (whole or one bit) takes one.
pub fn register_count(dt: DataType) -> u16 {
    match dt {
        DataType::Bool | DataType::I16 | DataType::U16 => 1,
        DataType::I32 | DataType::U32 | DataType::F32 => 2,
        DataType::I64 | DataType::U64 | DataType::F64 => 4,
        DataType::String(n) => n.div_ceil(2),
    }
}

/// Rearranges registers between the device's order and big-endian (`ABCD`) order. Reversing the
/// registers and swapping the bytes within each are both their own inverse and commute, so the
/// same function serves decoding and encoding.
fn reorder<const N: usize>(mut regs: [u16; N], order: ByteOrder) -> [u16; N] {
    if order.swaps_words() {
        regs.reverse();
    }
    if order.swaps_bytes() {
        for r in &mut regs {
            *r = r.swap_bytes();
        }
    }
    regs
}

/// The big-endian integer whose registers, most significant first, are `words`.
fn join<const N: usize>(words: [u16; N]) -> u64 {
    words
        .iter()
        .fold(0u64, |acc, &w| (acc << 16) | u64::from(w))
}

/// The `N` registers, most significant first, of the low `16 * N` bits of `bits`.
fn split<const N: usize>(bits: u64) -> [u16; N] {
    let mut out = [0u16; N];
    for (i, w) in out.iter_mut().enumerate() {
        let shift = 16 * (N - 1 - i);
        // Truncation is the point: each register takes its 16 bits.
        *w = (bits >> shift) as u16;
    }
    out
}

/// Copies a slice already checked to hold exactly `N` registers into an array.
fn fixed<const N: usize>(regs: &[u16]) -> [u16; N] {
    let mut out = [0u16; N];
    out.copy_from_slice(regs);
    out
}

/// Decodes the registers of one tag. `regs.len()` must equal `register_count(dt)`.
///
/// A bool uses `bit` when given (0 = least significant bit of the register as transmitted),
/// otherwise it is true when the register is not zero; byte order does not apply to bools.
/// A string is decoded in register order (byte swap applies, word swap does not), with trailing
/// NUL bytes and spaces removed.
pub fn decode_registers(
    dt: DataType,
    order: ByteOrder,
    bit: Option<u8>,
    regs: &[u16],
) -> Result<Value, CodecError> {
    let expected = register_count(dt);
    if regs.len() != usize::from(expected) {
        return Err(CodecError::WrongRegisterCount {
            data_type: dt,
            expected,
            got: regs.len(),
        });
    }
    // The casts below reinterpret the bits of an unsigned integer of exactly the type's width.
    Ok(match dt {
        DataType::Bool => {
            let reg = regs[0];
            match bit {
                Some(b) if b >= 16 => return Err(CodecError::BitOutOfRange(b)),
                Some(b) => Value::Bool((reg >> b) & 1 == 1),
                None => Value::Bool(reg != 0),
            }
        }
        DataType::U16 => Value::U16(join(reorder(fixed::<1>(regs), order)) as u16),
        DataType::I16 => Value::I16(join(reorder(fixed::<1>(regs), order)) as u16 as i16),
        DataType::U32 => Value::U32(join(reorder(fixed::<2>(regs), order)) as u32),
        DataType::I32 => Value::I32(join(reorder(fixed::<2>(regs), order)) as u32 as i32),
        DataType::F32 => Value::F32(f32::from_bits(join(reorder(fixed::<2>(regs), order)) as u32)),
        DataType::U64 => Value::U64(join(reorder(fixed::<4>(regs), order))),
        DataType::I64 => Value::I64(join(reorder(fixed::<4>(regs), order)) as i64),
        DataType::F64 => Value::F64(f64::from_bits(join(reorder(fixed::<4>(regs), order)))),
        DataType::String(n) => Value::String(decode_string(n, order, regs)?),
    })
}

fn decode_string(n: u16, order: ByteOrder, regs: &[u16]) -> Result<String, CodecError> {
    let mut bytes: Vec<u8> = regs
        .iter()
        .flat_map(|&r| {
            let r = if order.swaps_bytes() {
                r.swap_bytes()
            } else {
                r
            };
            r.to_be_bytes()
        })
        .collect();
    // An odd length leaves one byte of the last register unused.
    bytes.truncate(usize::from(n));
    while let Some(&last) = bytes.last() {
        if last == 0 || last == b' ' {
            bytes.pop();
        } else {
            break;
        }
    }
    String::from_utf8(bytes).map_err(|e| CodecError::InvalidUtf8(e.utf8_error()))
}

/// Encodes `value` into the registers of a tag of type `dt`; the value's variant must match.
///
/// A bool becomes `[1]` or `[0]`; for a bool held in one bit of a register the caller reads the
/// register and writes back `set_bit(reg, bit, on)` instead. A string of at most `n` bytes is
/// padded with NUL bytes to fill its registers.
pub fn encode_registers(
    dt: DataType,
    order: ByteOrder,
    value: &Value,
) -> Result<Vec<u16>, CodecError> {
    // The casts below reinterpret a value's bits as an unsigned integer of the same width.
    Ok(match (dt, value) {
        (DataType::Bool, Value::Bool(v)) => vec![u16::from(*v)],
        (DataType::U16, Value::U16(v)) => reorder(split::<1>(u64::from(*v)), order).to_vec(),
        (DataType::I16, Value::I16(v)) => reorder(split::<1>(u64::from(*v as u16)), order).to_vec(),
        (DataType::U32, Value::U32(v)) => reorder(split::<2>(u64::from(*v)), order).to_vec(),
        (DataType::I32, Value::I32(v)) => reorder(split::<2>(u64::from(*v as u32)), order).to_vec(),
        (DataType::F32, Value::F32(v)) => {
            reorder(split::<2>(u64::from(v.to_bits())), order).to_vec()
        }
        (DataType::U64, Value::U64(v)) => reorder(split::<4>(*v), order).to_vec(),
        (DataType::I64, Value::I64(v)) => reorder(split::<4>(*v as u64), order).to_vec(),
        (DataType::F64, Value::F64(v)) => reorder(split::<4>(v.to_bits()), order).to_vec(),
        (DataType::String(n), Value::String(s)) => encode_string(n, order, s)?,
        (expected, other) => {
            return Err(CodecError::TypeMismatch {
                expected,
                got: other.data_type(),
            })
        }
    })
}

fn encode_string(n: u16, order: ByteOrder, s: &str) -> Result<Vec<u16>, CodecError> {
    if s.len() > usize::from(n) {
        return Err(CodecError::StringTooLong {
            max: n,
            got: s.len(),
        });
    }
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(2 * usize::from(register_count(DataType::String(n))), 0);
    Ok(bytes
        .chunks_exact(2)
        .map(|pair| {
            let r = u16::from_be_bytes([pair[0], pair[1]]);
            if order.swaps_bytes() {
                r.swap_bytes()
            } else {
                r
            }
        })
        .collect())
}

/// `reg` with bit `bit` (0 = least significant) set to `on`, for writing a bool held in one bit
/// of a register by read-modify-write. A register has no bit above 15; such a bit leaves `reg`
/// unchanged (addresses are checked to name bits 0 to 15 when the config is parsed).
pub fn set_bit(reg: u16, bit: u8, on: bool) -> u16 {
    let Some(mask) = 1u16.checked_shl(u32::from(bit)) else {
        return reg;
    };
    if on {
        reg | mask
    } else {
        reg & !mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORDERS: [ByteOrder; 4] = ByteOrder::ALL;

    fn encode(dt: DataType, order: ByteOrder, v: Value) -> Vec<u16> {
        encode_registers(dt, order, &v).expect("value matches its type")
    }

    fn decode(dt: DataType, order: ByteOrder, regs: &[u16]) -> Value {
        decode_registers(dt, order, None, regs).expect("registers decode")
    }

    /// Values compared by bits, so that NaN payloads and -0.0 count.
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
            (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
            _ => a == b,
        }
    }

    /// Registers from big-endian bytes, the reference for `ABCD`; `DCBA` is the same over
    /// little-endian bytes.
    fn regs_of(bytes: &[u8]) -> Vec<u16> {
        bytes
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect()
    }

    fn numeric_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i16>().prop_map(Value::I16),
            any::<u16>().prop_map(Value::U16),
            any::<i32>().prop_map(Value::I32),
            any::<u32>().prop_map(Value::U32),
            any::<i64>().prop_map(Value::I64),
            any::<u64>().prop_map(Value::U64),
            any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))),
            any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b))),
        ]
    }

    fn order() -> impl Strategy<Value = ByteOrder> {
        prop::sample::select(ORDERS.to_vec())
    }

    proptest! {
        #[test]
        fn every_numeric_type_in_every_byte_order_survives_encode_then_decode(
            v in numeric_value(),
            order in order(),
        ) {
            let dt = v.data_type();
            let regs = encode(dt, order, v.clone());
            prop_assert_eq!(regs.len(), usize::from(register_count(dt)));
            let back = decode(dt, order, &regs);
            prop_assert!(same(&back, &v), "{:?} came back as {:?}", v, back);
        }

        #[test]
        fn every_register_pattern_survives_decode_then_encode(
            regs in prop::collection::vec(any::<u16>(), 4),
            order in order(),
        ) {
            for dt in [DataType::I16, DataType::U16, DataType::I32, DataType::U32,
                       DataType::F32, DataType::I64, DataType::U64, DataType::F64] {
                let n = usize::from(register_count(dt));
                let v = decode(dt, order, &regs[..n]);
                prop_assert_eq!(encode(dt, order, v), regs[..n].to_vec());
            }
        }

        #[test]
        fn abcd_is_big_endian_and_dcba_is_little_endian(v in numeric_value()) {
            let (be, le): (Vec<u8>, Vec<u8>) = match v {
                Value::I16(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::U16(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::I32(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::U32(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::I64(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::U64(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::F32(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::F64(x) => (x.to_be_bytes().to_vec(), x.to_le_bytes().to_vec()),
                Value::Bool(_) | Value::String(_) => return Ok(()),
            };
            let dt = v.data_type();
            prop_assert_eq!(encode(dt, ByteOrder::Abcd, v.clone()), regs_of(&be));
            prop_assert_eq!(encode(dt, ByteOrder::Dcba, v), regs_of(&le));
        }

        #[test]
        fn strings_of_any_length_survive_encode_then_decode(
            s in "[a-zA-Z0-9_äöü€-]{0,12}",
            extra in 0u16..4,
            order in order(),
        ) {
            let n = s.len() as u16 + extra;
            prop_assume!(n > 0);
            let dt = DataType::String(n);
            let regs = encode(dt, order, Value::String(s.clone()));
            prop_assert_eq!(regs.len(), usize::from(n.div_ceil(2)));
            prop_assert_eq!(decode(dt, order, &regs), Value::String(s));
        }
    }

    #[test]
    fn f32_known_vectors_match_each_byte_order() {
        let cases = [
            (ByteOrder::Abcd, [0x42F6, 0xE979]),
            (ByteOrder::Cdab, [0xE979, 0x42F6]),
            (ByteOrder::Badc, [0xF642, 0x79E9]),
            (ByteOrder::Dcba, [0x79E9, 0xF642]),
        ];
        for (order, regs) in cases {
            assert_eq!(encode(DataType::F32, order, Value::F32(123.456)), regs);
            assert_eq!(decode(DataType::F32, order, &regs), Value::F32(123.456));
        }
    }

    #[test]
    fn i32_and_u32_known_vectors_match_each_byte_order() {
        let cases = [
            (ByteOrder::Abcd, [0xFFFE, 0x1DC0]),
            (ByteOrder::Cdab, [0x1DC0, 0xFFFE]),
            (ByteOrder::Badc, [0xFEFF, 0xC01D]),
            (ByteOrder::Dcba, [0xC01D, 0xFEFF]),
        ];
        for (order, regs) in cases {
            // -123456 is 0xFFFE1DC0 in two's complement.
            assert_eq!(decode(DataType::I32, order, &regs), Value::I32(-123_456));
            assert_eq!(decode(DataType::U32, order, &regs), Value::U32(0xFFFE_1DC0));
            assert_eq!(encode(DataType::I32, order, Value::I32(-123_456)), regs);
        }
    }

    #[test]
    fn i64_known_vectors_match_each_byte_order() {
        let cases = [
            (ByteOrder::Abcd, [0x0102, 0x0304, 0x0506, 0x0708]),
            (ByteOrder::Cdab, [0x0708, 0x0506, 0x0304, 0x0102]),
            (ByteOrder::Badc, [0x0201, 0x0403, 0x0605, 0x0807]),
            (ByteOrder::Dcba, [0x0807, 0x0605, 0x0403, 0x0201]),
        ];
        for (order, regs) in cases {
            let v = Value::I64(0x0102_0304_0506_0708);
            assert_eq!(encode(DataType::I64, order, v.clone()), regs);
            assert_eq!(decode(DataType::I64, order, &regs), v);
        }
        assert_eq!(
            decode(
                DataType::I64,
                ByteOrder::Abcd,
                &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]
            ),
            Value::I64(-2)
        );
    }

    #[test]
    fn u64_known_vectors_match_each_byte_order() {
        let cases = [
            (ByteOrder::Abcd, [0xFEDC, 0xBA98, 0x7654, 0x3210]),
            (ByteOrder::Cdab, [0x3210, 0x7654, 0xBA98, 0xFEDC]),
            (ByteOrder::Badc, [0xDCFE, 0x98BA, 0x5476, 0x1032]),
            (ByteOrder::Dcba, [0x1032, 0x5476, 0x98BA, 0xDCFE]),
        ];
        for (order, regs) in cases {
            let v = Value::U64(0xFEDC_BA98_7654_3210);
            assert_eq!(encode(DataType::U64, order, v.clone()), regs);
            assert_eq!(decode(DataType::U64, order, &regs), v);
        }
    }

    #[test]
    fn f64_known_vectors_match_each_byte_order() {
        // 123.456 as an f64 is 0x405EDD2F1A9FBE77.
        let cases = [
            (ByteOrder::Abcd, [0x405E, 0xDD2F, 0x1A9F, 0xBE77]),
            (ByteOrder::Cdab, [0xBE77, 0x1A9F, 0xDD2F, 0x405E]),
            (ByteOrder::Badc, [0x5E40, 0x2FDD, 0x9F1A, 0x77BE]),
            (ByteOrder::Dcba, [0x77BE, 0x9F1A, 0x2FDD, 0x5E40]),
        ];
        for (order, regs) in cases {
            assert_eq!(encode(DataType::F64, order, Value::F64(123.456)), regs);
            assert_eq!(decode(DataType::F64, order, &regs), Value::F64(123.456));
        }
    }

    #[test]
    fn sixteen_bit_values_only_feel_the_byte_swap() {
        for (order, reg) in [
            (ByteOrder::Abcd, 0x1234),
            (ByteOrder::Cdab, 0x1234),
            (ByteOrder::Badc, 0x3412),
            (ByteOrder::Dcba, 0x3412),
        ] {
            assert_eq!(decode(DataType::U16, order, &[reg]), Value::U16(0x1234));
            assert_eq!(encode(DataType::U16, order, Value::U16(0x1234)), [reg]);
        }
        // -2 is 0xFFFE; byte-swapped it travels as 0xFEFF.
        assert_eq!(
            encode(DataType::I16, ByteOrder::Badc, Value::I16(-2)),
            [0xFEFF]
        );
        assert_eq!(
            decode(DataType::I16, ByteOrder::Badc, &[0xFEFF]),
            Value::I16(-2)
        );
        assert_eq!(
            decode(DataType::I16, ByteOrder::Abcd, &[0x8000]),
            Value::I16(i16::MIN)
        );
    }

    #[test]
    fn strings_keep_register_order_and_swap_bytes_for_badc_and_dcba() {
        // "ABCDE" in three registers: 'A''B' | 'C''D' | 'E'NUL.
        let normal = [0x4142, 0x4344, 0x4500];
        let swapped = [0x4241, 0x4443, 0x0045];
        for (order, regs) in [
            (ByteOrder::Abcd, normal),
            (ByteOrder::Cdab, normal),
            (ByteOrder::Badc, swapped),
            (ByteOrder::Dcba, swapped),
        ] {
            let dt = DataType::String(5);
            assert_eq!(encode(dt, order, Value::String("ABCDE".into())), regs);
            assert_eq!(decode(dt, order, &regs), Value::String("ABCDE".into()));
        }
        // An even length fills its registers exactly.
        let dt = DataType::String(4);
        assert_eq!(
            encode(dt, ByteOrder::Abcd, Value::String("ABCD".into())),
            [0x4142, 0x4344]
        );
        assert_eq!(
            encode(dt, ByteOrder::Badc, Value::String("ABCD".into())),
            [0x4241, 0x4443]
        );
        assert_eq!(
            decode(dt, ByteOrder::Badc, &[0x4241, 0x4443]),
            Value::String("ABCD".into())
        );
    }

    #[test]
    fn string_decode_trims_trailing_nuls_and_spaces_but_not_inner_ones() {
        let dt = DataType::String(8);
        // "A B" then a space, NUL, space, NUL, NUL.
        let regs = [0x4120, 0x4220, 0x0020, 0x0000];
        assert_eq!(
            decode(dt, ByteOrder::Abcd, &regs),
            Value::String("A B".into())
        );
        assert_eq!(
            decode(dt, ByteOrder::Abcd, &[0; 4]),
            Value::String(String::new())
        );
        // With an odd length the unused byte of the last register is ignored, whatever it holds.
        assert_eq!(
            decode(DataType::String(3), ByteOrder::Abcd, &[0x4142, 0x43FF]),
            Value::String("ABC".into())
        );
    }

    #[test]
    fn strings_pad_short_values_with_nul_and_refuse_long_ones() {
        let dt = DataType::String(6);
        assert_eq!(
            encode(dt, ByteOrder::Abcd, Value::String("Hi".into())),
            [0x4869, 0x0000, 0x0000]
        );
        assert_eq!(
            encode_registers(dt, ByteOrder::Abcd, &Value::String("Hello, world".into())),
            Err(CodecError::StringTooLong { max: 6, got: 12 })
        );
    }

    #[test]
    fn invalid_utf8_in_string_registers_is_an_error() {
        let err = decode_registers(DataType::String(2), ByteOrder::Abcd, None, &[0xFF41])
            .expect_err("0xFF is not UTF-8");
        assert!(matches!(err, CodecError::InvalidUtf8(_)));
        assert!(err.to_string().contains("UTF-8"));
    }

    #[test]
    fn a_bool_reads_one_bit_or_the_whole_register() {
        let reg = 0b1000_0000_0000_0101;
        let bit = |b| decode_registers(DataType::Bool, ByteOrder::Abcd, Some(b), &[reg]);
        assert_eq!(bit(0), Ok(Value::Bool(true)));
        assert_eq!(bit(1), Ok(Value::Bool(false)));
        assert_eq!(bit(2), Ok(Value::Bool(true)));
        assert_eq!(bit(15), Ok(Value::Bool(true)));
        assert_eq!(bit(14), Ok(Value::Bool(false)));
        assert_eq!(bit(16), Err(CodecError::BitOutOfRange(16)));
        for order in ORDERS {
            assert_eq!(decode(DataType::Bool, order, &[0]), Value::Bool(false));
            assert_eq!(decode(DataType::Bool, order, &[0x0100]), Value::Bool(true));
            assert_eq!(decode(DataType::Bool, order, &[1]), Value::Bool(true));
        }
        assert_eq!(
            encode(DataType::Bool, ByteOrder::Abcd, Value::Bool(true)),
            [1]
        );
        assert_eq!(
            encode(DataType::Bool, ByteOrder::Dcba, Value::Bool(false)),
            [0]
        );
    }

    #[test]
    fn set_bit_changes_only_the_named_bit() {
        assert_eq!(set_bit(0x0000, 0, true), 0x0001);
        assert_eq!(set_bit(0x0000, 15, true), 0x8000);
        assert_eq!(set_bit(0xFFFF, 3, false), 0xFFF7);
        assert_eq!(set_bit(0x0008, 3, true), 0x0008);
        assert_eq!(set_bit(0x0000, 3, false), 0x0000);
        assert_eq!(set_bit(0x1234, 16, true), 0x1234);
        for b in 0..16 {
            let reg = set_bit(0x5A5A, b, true);
            assert_eq!(
                decode_registers(DataType::Bool, ByteOrder::Abcd, Some(b), &[reg]),
                Ok(Value::Bool(true))
            );
            let reg = set_bit(reg, b, false);
            assert_eq!(
                decode_registers(DataType::Bool, ByteOrder::Abcd, Some(b), &[reg]),
                Ok(Value::Bool(false))
            );
        }
    }

    #[test]
    fn the_wrong_number_of_registers_is_an_error_naming_both_counts() {
        let err = decode_registers(DataType::F32, ByteOrder::Abcd, None, &[1, 2, 3])
            .expect_err("three registers for an f32");
        assert_eq!(
            err,
            CodecError::WrongRegisterCount {
                data_type: DataType::F32,
                expected: 2,
                got: 3
            }
        );
        assert!(err.to_string().contains('2') && err.to_string().contains('3'));
        assert!(decode_registers(DataType::String(5), ByteOrder::Abcd, None, &[0; 2]).is_err());
    }

    #[test]
    fn a_value_of_another_type_is_refused() {
        assert_eq!(
            encode_registers(DataType::U16, ByteOrder::Abcd, &Value::I16(1)),
            Err(CodecError::TypeMismatch {
                expected: DataType::U16,
                got: DataType::I16
            })
        );
        assert!(encode_registers(DataType::F32, ByteOrder::Abcd, &Value::F64(1.0)).is_err());
        assert!(encode_registers(DataType::String(4), ByteOrder::Abcd, &Value::U16(1)).is_err());
        assert!(encode_registers(DataType::Bool, ByteOrder::Abcd, &Value::U16(1)).is_err());
    }

    #[test]
    fn register_counts_match_the_type_widths() {
        assert_eq!(register_count(DataType::Bool), 1);
        assert_eq!(register_count(DataType::I16), 1);
        assert_eq!(register_count(DataType::U16), 1);
        assert_eq!(register_count(DataType::I32), 2);
        assert_eq!(register_count(DataType::U32), 2);
        assert_eq!(register_count(DataType::F32), 2);
        assert_eq!(register_count(DataType::I64), 4);
        assert_eq!(register_count(DataType::U64), 4);
        assert_eq!(register_count(DataType::F64), 4);
        assert_eq!(register_count(DataType::String(1)), 1);
        assert_eq!(register_count(DataType::String(2)), 1);
        assert_eq!(register_count(DataType::String(7)), 4);
        assert_eq!(register_count(DataType::String(2000)), 1000);
    }
}
