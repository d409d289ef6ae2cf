//! Writes to a PLC tag: the pure part (is the tag writable, does the value fit its type and
//! range, which Modbus write carries it) and the handle through which commands reach the device
//! task that owns the connection. A value that fails validation never reaches the wire.

use std::time::Duration;

use edge_model::{DataType, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_modbus::ExceptionCode;

use crate::address::Area;
use crate::codec::{encode_registers, value_from_f64, CodecError};
use crate::poller::TagSpec;

/// Why a write was not carried out. `is_rejection` separates bad requests (nothing was tried)
/// from failures (the request was fine, the device or the link was not).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("unknown tag `{0}`")]
    UnknownTag(String),
    #[error("tag `{0}` is not writable (set `writable = true` on a coil or holding register tag)")]
    NotWritable(String),
    #[error("{0}")]
    BadValue(String),
    #[error("the device is not connected; the write was not queued")]
    Offline,
    #[error("the device's write queue is full; try again")]
    Busy,
    #[error("the device refused the write with Modbus exception {0:?}")]
    Exception(ExceptionCode),
    #[error("no answer from the device within {0:?}")]
    Timeout(Duration),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("the device task has stopped")]
    Stopped,
}

impl WriteError {
    /// True when the request itself was wrong: nothing was sent to the device.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            WriteError::UnknownTag(_) | WriteError::NotWritable(_) | WriteError::BadValue(_)
        )
    }
}

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

/// Converts an engineering value into the raw value of the tag's type: the scaling undone,
/// integers range-checked and required to be whole, strings length-checked.
pub fn raw_value(tag: &TagSpec, value: &Value) -> Result<Value, WriteError> {
    let bad = |e: CodecError| WriteError::BadValue(format!("tag `{}`: {e}", tag.name));
    match (tag.data_type, value) {
        (DataType::Bool, Value::Bool(b)) => Ok(Value::Bool(*b)),
        (DataType::Bool, other) => Err(WriteError::BadValue(format!(
            "tag `{}` is a bool; got {other}",
            tag.name
        ))),
        (DataType::String(max), Value::String(s)) => {
            if s.len() > max as usize {
                Err(WriteError::BadValue(format!(
                    "tag `{}` holds at most {max} bytes; got {}",
                    tag.name,
                    s.len()
                )))
            } else {
                Ok(Value::String(s.clone()))
            }
        }
        (DataType::String(_), other) => Err(WriteError::BadValue(format!(
            "tag `{}` is a string; got {other}",
            tag.name
        ))),
        (dt, v) => {
            let Some(x) = v.as_f64() else {
                return Err(WriteError::BadValue(format!(
                    "tag `{}` is {dt}; got {v}",
                    tag.name
                )));
            };
            // Not a number a PLC should ever be handed as a setpoint (a Sparkplug DCMD can
            // carry one; JSON cannot).
            if !x.is_finite() {
                return Err(WriteError::BadValue(format!(
                    "tag `{}`: {v} is not a finite number",
                    tag.name
                )));
            }
            // 64-bit integers beyond 2^53 do not survive a trip through f64: keep them exact
            // when no scaling applies and the variant already matches.
            if tag.scaling.is_identity() && v.data_type() == dt {
                return Ok(v.clone());
            }
            if tag.scaling.is_identity() {
                value_from_f64(x, dt).map_err(bad)
            } else {
                tag.scaling.unapply(x, dt).map_err(bad)
            }
        }
    }
}

/// The wire operation for writing `value` to `tag`, or why it must not be written.
pub fn prepare_write(tag: &TagSpec, value: &Value) -> Result<WriteOp, WriteError> {
    if !tag.writable || !tag.address.area.is_writable() {
        return Err(WriteError::NotWritable(tag.name.0.clone()));
    }
    let raw = raw_value(tag, value)?;
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

/// A write on its way to the device task.
#[derive(Debug)]
pub struct WriteRequest {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Writes queued per device at most; beyond it a write is answered `Busy`, never queued
/// without bound.
pub const WRITE_QUEUE: usize = 32;

/// Where commands send writes for one device.
#[derive(Debug, Clone)]
pub struct DeviceHandle {
    pub name: String,
    pub tags: std::sync::Arc<[TagSpec]>,
    pub(crate) tx: mpsc::Sender<WriteRequest>,
}

impl DeviceHandle {
    pub fn tag(&self, name: &str) -> Option<&TagSpec> {
        self.tags.iter().find(|t| t.name.0 == name)
    }

    /// Validates and writes; answers within `limit` whatever happens.
    pub async fn write(&self, tag: &str, value: &Value, limit: Duration) -> Result<(), WriteError> {
        let spec = self
            .tag(tag)
            .ok_or_else(|| WriteError::UnknownTag(tag.to_owned()))?;
        let op = prepare_write(spec, value)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(WriteRequest { op, reply })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => WriteError::Busy,
                mpsc::error::TrySendError::Closed(_) => WriteError::Stopped,
            })?;
        match tokio::time::timeout(limit, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WriteError::Stopped),
            Err(_) => Err(WriteError::Timeout(limit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::ByteOrder;
    use crate::codec::Scaling;
    use crate::report::ReportRule;
    use edge_model::TagName;

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
