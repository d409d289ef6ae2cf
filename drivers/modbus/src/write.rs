//! Writes to a PLC tag, the Modbus part: which Modbus write carries a checked value. The
//! checks themselves (is the tag writable, does the value fit its type and range) and the
//! handle commands write through are edge-driver's; the device task calls [`prepare_write`]
//! for each write it receives. A value that fails a check never reaches the wire.

use edge_driver::{check_write, WriteError, WriteTag};
use edge_model::Value;

use crate::address::Area;
use crate::codec::encode_registers;
use crate::poller::TagSpec;

/// What goes on the wire for one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Write single coil (0x05).
    Coil { address: u16, on: bool },
    /// Write single register (0x06) for one register, write multiple registers (0x10) else.
    Registers { address: u16, words: Vec<u16> },
    /// One bit of a holding register: read (0x03), change the bit, write back (0x06).
    RegisterBit { address: u16, bit: u8, on: bool },
}

impl TagSpec {
    /// What commands' values for this tag are checked against: writable only when configured
    /// so and a coil or holding register.
    pub fn write_tag(&self) -> WriteTag {
        WriteTag {
            name: self.name.clone(),
            writable: self.writable && self.address.area.is_writable(),
            data_type: Some(self.data_type),
            scaling: self.scaling,
        }
    }
}

/// The wire operation for writing `value` to `tag`, or why it must not be written.
pub fn prepare_write(tag: &TagSpec, value: &Value) -> Result<WriteOp, WriteError> {
    let raw = check_write(&tag.write_tag(), value)?;
    let address = tag.address.offset;
    match (tag.address.area, &raw) {
        (Area::Coil, Value::Bool(on)) => Ok(WriteOp::Coil { address, on: *on }),
        (Area::HoldingRegister, Value::Bool(on)) => match tag.address.bit {
            Some(bit) => Ok(WriteOp::RegisterBit {
                address,
                bit,
                on: *on,
            }),
            None => Ok(WriteOp::Registers {
                address,
                words: vec![u16::from(*on)],
            }),
        },
        (Area::HoldingRegister, raw) => encode_registers(tag.data_type, tag.byte_order, raw)
            .map(|words| WriteOp::Registers { address, words })
            .map_err(|e| WriteError::BadValue(format!("tag `{}`: {e}", tag.name))),
        _ => Err(WriteError::NotWritable(tag.name.0.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ByteOrder;
    use edge_driver::{ReportRule, Scaling};
    use edge_model::{DataType, TagName};
    use std::time::Duration;

    fn tag(address: &str, dt: DataType, writable: bool) -> TagSpec {
        TagSpec {
            name: TagName("t".into()),
            address: address.parse().expect("address"),
            data_type: dt,
            byte_order: ByteOrder::Cdab,
            scaling: Scaling::IDENTITY,
            report: ReportRule {
                deadband: None,
                heartbeat: None,
            },
            interval: Duration::from_secs(1),
            writable,
        }
    }

    #[test]
    fn a_read_only_tag_is_never_written() {
        let t = tag("hr:1", DataType::U16, false);
        assert_eq!(
            prepare_write(&t, &Value::U16(1)),
            Err(WriteError::NotWritable("t".into()))
        );
        let ir = tag("ir:1", DataType::U16, true);
        assert!(matches!(
            prepare_write(&ir, &Value::U16(1)),
            Err(WriteError::NotWritable(_))
        ));
    }

    #[test]
    fn nan_and_infinities_are_never_written_to_a_float_tag() {
        for dt in [DataType::F32, DataType::F64] {
            let t = tag("hr:1", dt, true);
            for v in [
                Value::F32(f32::NAN),
                Value::F32(f32::INFINITY),
                Value::F64(f64::NAN),
                Value::F64(f64::NEG_INFINITY),
            ] {
                let e = prepare_write(&t, &v).expect_err("not finite");
                assert!(e.is_rejection(), "{dt} {v}: {e:?}");
            }
            assert!(prepare_write(&t, &Value::F64(1.5)).is_ok());
        }
    }

    #[test]
    fn a_value_out_of_the_types_range_is_rejected() {
        let t = tag("hr:1", DataType::U16, true);
        let e = prepare_write(&t, &Value::I64(70_000)).expect_err("out of range");
        assert!(e.is_rejection());
        assert!(prepare_write(&t, &Value::F64(1.5)).is_err(), "not whole");
        assert!(prepare_write(&t, &Value::I64(-1)).is_err());
        assert_eq!(
            prepare_write(&t, &Value::I64(65535)),
            Ok(WriteOp::Registers {
                address: 1,
                words: vec![65535]
            })
        );
    }

    #[test]
    fn wrong_kinds_of_value_are_rejected() {
        assert!(prepare_write(&tag("coil:1", DataType::Bool, true), &Value::U16(1)).is_err());
        assert!(prepare_write(&tag("hr:1", DataType::U16, true), &Value::Bool(true)).is_err());
        assert!(prepare_write(
            &tag("hr:1", DataType::U16, true),
            &Value::String("1".into())
        )
        .is_err());
        assert!(prepare_write(&tag("hr:1", DataType::String(4), true), &Value::U16(1)).is_err());
    }

    #[test]
    fn a_write_honours_the_tags_byte_order() {
        let t = tag("hr:10", DataType::F32, true);
        assert_eq!(
            prepare_write(&t, &Value::F64(123.456)),
            Ok(WriteOp::Registers {
                address: 10,
                words: vec![0xE979, 0x42F6]
            })
        );
    }

    #[test]
    fn scaling_is_undone_before_the_write() {
        let mut t = tag("hr:3", DataType::U16, true);
        t.scaling = Scaling {
            scale: 0.1,
            offset: 0.0,
        };
        assert_eq!(
            prepare_write(&t, &Value::F64(21.5)),
            Ok(WriteOp::Registers {
                address: 3,
                words: vec![215]
            })
        );
        assert!(prepare_write(&t, &Value::F64(6553.6)).is_err());
    }

    #[test]
    fn bools_go_to_coils_or_to_one_bit_of_a_register() {
        assert_eq!(
            prepare_write(&tag("coil:4", DataType::Bool, true), &Value::Bool(true)),
            Ok(WriteOp::Coil {
                address: 4,
                on: true
            })
        );
        assert_eq!(
            prepare_write(&tag("hr:4.3", DataType::Bool, true), &Value::Bool(false)),
            Ok(WriteOp::RegisterBit {
                address: 4,
                bit: 3,
                on: false
            })
        );
    }

    #[test]
    fn strings_longer_than_the_tag_are_rejected() {
        let t = tag("hr:20", DataType::String(4), true);
        assert!(prepare_write(&t, &Value::String("ABCDE".into())).is_err());
        assert!(prepare_write(&t, &Value::String("ABCD".into())).is_ok());
    }

    #[test]
    fn large_u64_values_are_kept_exact() {
        let mut t = tag("hr:0", DataType::U64, true);
        t.byte_order = ByteOrder::Abcd;
        let v = u64::MAX - 1;
        assert_eq!(
            prepare_write(&t, &Value::U64(v)),
            Ok(WriteOp::Registers {
                address: 0,
                words: vec![0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]
            })
        );
    }
}
