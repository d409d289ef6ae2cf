//! Writes from commands to devices, whatever the protocol: the checks every write passes
//! before it leaves the command (does the tag exist, is it writable, does the value fit its
//! type and range), the handle through which commands reach the device task that owns the
//! connection, and the one error type they get back. Each driver turns the checked value into
//! its own request inside its device task (Modbus registers, an OPC UA variant).

use std::sync::Arc;
use std::time::Duration;

use edge_model::{DataType, TagName, Value};
use tokio::sync::{mpsc, oneshot};

use crate::scaling::{value_from_f64, Scaling, ValueError};

/// Why a write was not carried out. `is_rejection` separates bad requests (nothing was sent)
/// from failures (the request was fine, the device or the link was not). What only one
/// protocol knows (a Modbus exception, an OPC UA status code) travels as text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("unknown tag `{0}`")]
    UnknownTag(String),
    #[error("tag `{0}` is not writable (set `writable = true` on the tag; Modbus writes coils and holding registers only)")]
    NotWritable(String),
    #[error("{0}")]
    BadValue(String),
    #[error("the device is not connected; the write was not queued")]
    Offline,
    #[error("the device's write queue is full; try again")]
    Busy,
    /// The device answered and said no: `Modbus exception IllegalDataAddress (0x02)`,
    /// `BadTypeMismatch (0x80740000)`.
    #[error("the device refused the write: {0}")]
    Refused(String),
    #[error("no answer from the device within {0:?}")]
    Timeout(Duration),
    #[error("the write failed on the connection: {0}")]
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

    /// True when the connection may be gone (no answer, a broken link): the device task
    /// reconnects.
    pub fn loses_connection(&self) -> bool {
        matches!(self, WriteError::Timeout(_) | WriteError::Transport(_))
    }
}

/// What a write to one tag is checked against before it reaches the device task.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteTag {
    pub name: TagName,
    /// Configured writable, and of a kind the protocol can write.
    pub writable: bool,
    /// The raw type the value must fit once the scaling is undone. `None` when it is known
    /// only on the connection (an OPC UA variable's DataType): the device task checks then.
    pub data_type: Option<DataType>,
    pub scaling: Scaling,
}

/// Checks a command's engineering value against the tag and returns the raw value to write:
/// the scaling undone, integers range-checked and required to be whole, strings
/// length-checked, NaN and infinities refused. A value that fails never reaches a device.
pub fn check_write(tag: &WriteTag, value: &Value) -> Result<Value, WriteError> {
    if !tag.writable {
        return Err(WriteError::NotWritable(tag.name.0.clone()));
    }
    match tag.data_type {
        Some(dt) => raw_value(tag, dt, value),
        None => Ok(value.clone()),
    }
}

fn raw_value(tag: &WriteTag, dt: DataType, value: &Value) -> Result<Value, WriteError> {
    let bad = |e: ValueError| WriteError::BadValue(format!("tag `{}`: {e}", tag.name));
    match (dt, value) {
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

/// A checked write on its way to the device task.
#[derive(Debug)]
pub struct WriteRequest {
    /// Index of the tag in the device's tag list (the handle's `tags`).
    pub tag: usize,
    /// The engineering value the command asked for; the device task converts it.
    pub value: Value,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Writes queued per device at most; beyond it a write is answered `Busy`, never queued
/// without bound.
pub const WRITE_QUEUE: usize = 32;

/// Where commands send writes for one device, whatever its protocol.
#[derive(Debug, Clone)]
pub struct WriteHandle {
    /// The device's name.
    pub name: String,
    /// The device's tags, in the device task's order.
    pub tags: Arc<[WriteTag]>,
    tx: mpsc::Sender<WriteRequest>,
}

impl WriteHandle {
    /// A handle for device `name` and the receiving end its device task serves.
    pub fn channel(
        name: String,
        tags: Vec<WriteTag>,
    ) -> (WriteHandle, mpsc::Receiver<WriteRequest>) {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let handle = WriteHandle {
            name,
            tags: tags.into(),
            tx,
        };
        (handle, rx)
    }

    pub fn tag(&self, name: &str) -> Option<&WriteTag> {
        self.tags.iter().find(|t| t.name.0 == name)
    }

    /// The checks a write must pass before anything is sent (the tag exists, may be written,
    /// and the value fits its type where that is known here), without writing: a command of
    /// several writes checks them all before the first is made.
    pub fn check(&self, tag: &str, value: &Value) -> Result<(), WriteError> {
        let t = self
            .tag(tag)
            .ok_or_else(|| WriteError::UnknownTag(tag.to_owned()))?;
        check_write(t, value).map(drop)
    }

    /// Checks and writes; answers within `limit` whatever happens.
    pub async fn write(&self, tag: &str, value: &Value, limit: Duration) -> Result<(), WriteError> {
        let index = self
            .tags
            .iter()
            .position(|t| t.name.0 == tag)
            .ok_or_else(|| WriteError::UnknownTag(tag.to_owned()))?;
        check_write(&self.tags[index], value)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .try_send(WriteRequest {
                tag: index,
                value: value.clone(),
                reply,
            })
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

    fn tag(name: &str, dt: Option<DataType>, writable: bool) -> WriteTag {
        WriteTag {
            name: TagName(name.into()),
            writable,
            data_type: dt,
            scaling: Scaling::IDENTITY,
        }
    }

    #[test]
    fn a_read_only_tag_is_never_written() {
        let e = check_write(&tag("t", Some(DataType::U16), false), &Value::U16(1));
        assert_eq!(e, Err(WriteError::NotWritable("t".into())));
        assert!(e.expect_err("read-only").is_rejection());
    }

    #[test]
    fn values_are_checked_against_the_raw_type_after_the_scaling_is_undone() {
        let mut t = tag("t", Some(DataType::U16), true);
        t.scaling = Scaling {
            scale: 0.1,
            offset: 0.0,
        };
        assert_eq!(check_write(&t, &Value::F64(21.5)), Ok(Value::U16(215)));
        assert!(check_write(&t, &Value::F64(6553.6)).is_err(), "65536 > u16");
        for v in [
            Value::F64(f64::NAN),
            Value::F32(f32::INFINITY),
            Value::Bool(true),
            Value::String("1".into()),
        ] {
            let e = check_write(&t, &v).expect_err("refused");
            assert!(e.is_rejection(), "{v}: {e:?}");
        }
    }

    #[test]
    fn integers_must_be_whole_and_in_range_and_large_ones_stay_exact() {
        let t = tag("t", Some(DataType::U16), true);
        assert!(check_write(&t, &Value::F64(1.5)).is_err());
        assert!(check_write(&t, &Value::I64(-1)).is_err());
        assert_eq!(check_write(&t, &Value::I64(65535)), Ok(Value::U16(65535)));
        let big = tag("t", Some(DataType::U64), true);
        assert_eq!(
            check_write(&big, &Value::U64(u64::MAX - 1)),
            Ok(Value::U64(u64::MAX - 1))
        );
    }

    #[test]
    fn strings_longer_than_the_tag_and_wrong_kinds_for_a_bool_are_refused() {
        let s = tag("t", Some(DataType::String(4)), true);
        assert!(check_write(&s, &Value::String("ABCDE".into())).is_err());
        assert!(check_write(&s, &Value::String("ABCD".into())).is_ok());
        assert!(check_write(&s, &Value::U16(1)).is_err());
        let b = tag("t", Some(DataType::Bool), true);
        assert!(check_write(&b, &Value::U16(1)).is_err());
        assert_eq!(check_write(&b, &Value::Bool(true)), Ok(Value::Bool(true)));
    }

    #[test]
    fn a_tag_whose_type_is_known_only_on_the_connection_passes_its_value_through() {
        let t = tag("t", None, true);
        assert_eq!(check_write(&t, &Value::F64(2.5)), Ok(Value::F64(2.5)));
    }

    #[tokio::test]
    async fn unknown_read_only_and_bad_values_are_rejected_without_reaching_the_device() {
        let (h, mut rx) = WriteHandle::channel(
            "line".into(),
            vec![
                tag("setpoint", Some(DataType::U16), true),
                tag("status", Some(DataType::U16), false),
            ],
        );
        let limit = Duration::from_millis(100);
        assert_eq!(
            h.write("nope", &Value::F64(1.0), limit).await,
            Err(WriteError::UnknownTag("nope".into()))
        );
        for (name, value) in [("status", Value::U16(1)), ("setpoint", Value::I64(-1))] {
            let e = h.write(name, &value, limit).await.expect_err(name);
            assert!(e.is_rejection(), "{name}: {e:?}");
        }
        assert!(rx.try_recv().is_err(), "nothing reached the device task");
    }

    #[tokio::test]
    async fn a_write_is_answered_by_the_device_task_or_times_out() {
        let (h, mut rx) = WriteHandle::channel("line".into(), vec![tag("setpoint", None, true)]);
        let answer = tokio::spawn(async move {
            let req = rx.recv().await.expect("request");
            assert_eq!((req.tag, &req.value), (0, &Value::F64(2.5)));
            let _ = req
                .reply
                .send(Err(WriteError::Refused("BadTypeMismatch".into())));
            rx
        });
        let r = h
            .write("setpoint", &Value::F64(2.5), Duration::from_secs(5))
            .await;
        assert_eq!(r, Err(WriteError::Refused("BadTypeMismatch".into())));
        let e = r.expect_err("refused");
        assert!(!e.is_rejection() && !e.loses_connection());
        let _rx = answer.await.expect("device side");

        let r = h
            .write("setpoint", &Value::F64(1.0), Duration::from_millis(50))
            .await;
        assert_eq!(r, Err(WriteError::Timeout(Duration::from_millis(50))));
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_and_a_stopped_task_answers_stopped() {
        let (h, rx) = WriteHandle::channel("line".into(), vec![tag("setpoint", None, true)]);
        for _ in 0..WRITE_QUEUE {
            let h = h.clone();
            // Never answered: they only fill the queue.
            tokio::spawn(async move {
                let _ = h
                    .write("setpoint", &Value::F64(1.0), Duration::from_secs(5))
                    .await;
            });
        }
        // Bounded: the spawned writes fill the queue within a few scheduler turns.
        let mut busy = None;
        for _ in 0..1000 {
            match h
                .write("setpoint", &Value::F64(1.0), Duration::from_millis(1))
                .await
            {
                Err(WriteError::Busy) => {
                    busy = Some(());
                    break;
                }
                _ => tokio::task::yield_now().await,
            }
        }
        assert!(busy.is_some(), "a full queue answers Busy");
        drop(rx);
        assert_eq!(
            h.write("setpoint", &Value::F64(1.0), Duration::from_secs(1))
                .await,
            Err(WriteError::Stopped)
        );
    }
}
