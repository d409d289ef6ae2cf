//! Writes to OPC UA variables: the handle commands use, and the errors they get back. The
//! device task converts the value to exactly the variable's data type (read from the server
//! when the session starts) and refuses it before anything is sent when it does not fit.

use std::sync::Arc;
use std::time::Duration;

use edge_model::Value;
use tokio::sync::{mpsc, oneshot};

use crate::spec::TagSpec;

/// Why a write was not carried out. `is_rejection` separates bad requests (nothing was sent)
/// from failures (the request was fine, the server or the link was not).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("unknown tag `{0}`")]
    UnknownTag(String),
    #[error("tag `{0}` is not writable (set `writable = true` on the tag)")]
    NotWritable(String),
    #[error("{0}")]
    BadValue(String),
    #[error("the server is not connected; the write was not queued")]
    Offline,
    #[error("the device's write queue is full; try again")]
    Busy,
    #[error("the server refused the write: {0}")]
    Refused(String),
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    #[error("the write failed on the connection: {0}")]
    Transport(String),
    #[error("the device task has stopped")]
    Stopped,
}

impl WriteError {
    /// True when the request itself was wrong: nothing was sent to the server.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            WriteError::UnknownTag(_) | WriteError::NotWritable(_) | WriteError::BadValue(_)
        )
    }
}

/// A write on its way to the device task.
#[derive(Debug)]
pub struct WriteRequest {
    /// Index of the tag in the device's tag list.
    pub tag: usize,
    pub value: Value,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Writes queued per device at most; beyond it a write is answered `Busy`.
pub const WRITE_QUEUE: usize = 32;

/// Where commands send writes for one OPC UA device.
#[derive(Debug, Clone)]
pub struct OpcUaHandle {
    pub name: String,
    pub tags: Arc<[TagSpec]>,
    pub(crate) tx: mpsc::Sender<WriteRequest>,
}

impl OpcUaHandle {
    pub fn tag(&self, name: &str) -> Option<&TagSpec> {
        self.tags.iter().find(|t| t.name.0 == name)
    }

    /// Validates and writes; answers within `limit` whatever happens.
    pub async fn write(&self, tag: &str, value: &Value, limit: Duration) -> Result<(), WriteError> {
        let index = self
            .tags
            .iter()
            .position(|t| t.name.0 == tag)
            .ok_or_else(|| WriteError::UnknownTag(tag.to_owned()))?;
        if !self.tags[index].writable {
            return Err(WriteError::NotWritable(tag.to_owned()));
        }
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
    use crate::spec::TagMode;
    use edge_model::TagName;

    fn handle(writable: bool) -> (OpcUaHandle, mpsc::Receiver<WriteRequest>) {
        let (tx, rx) = mpsc::channel(1);
        let tag = TagSpec {
            name: TagName("setpoint".into()),
            node: "ns=2;s=Filler.Setpoint".parse().expect("node id"),
            data_type: None,
            scale: 1.0,
            offset: 0.0,
            mode: TagMode::Polling {
                interval: Duration::from_secs(1),
                deadband: None,
                heartbeat: None,
            },
            writable,
        };
        (
            OpcUaHandle {
                name: "line".into(),
                tags: vec![tag].into(),
                tx,
            },
            rx,
        )
    }

    #[tokio::test]
    async fn unknown_and_read_only_tags_are_rejected_without_reaching_the_device() {
        let (h, mut rx) = handle(false);
        let limit = Duration::from_millis(100);
        let e = h.write("nope", &Value::F64(1.0), limit).await;
        assert_eq!(e, Err(WriteError::UnknownTag("nope".into())));
        let e = h
            .write("setpoint", &Value::F64(1.0), limit)
            .await
            .expect_err("read-only");
        assert!(e.is_rejection());
        assert!(rx.try_recv().is_err(), "nothing reached the device task");
    }

    #[tokio::test]
    async fn a_write_is_answered_by_the_device_task_or_times_out() {
        let (h, mut rx) = handle(true);
        let answer = tokio::spawn(async move {
            let req = rx.recv().await.expect("request");
            assert_eq!(req.value, Value::F64(2.5));
            let _ = req
                .reply
                .send(Err(WriteError::Refused("BadTypeMismatch".into())));
        });
        let r = h
            .write("setpoint", &Value::F64(2.5), Duration::from_secs(5))
            .await;
        assert_eq!(r, Err(WriteError::Refused("BadTypeMismatch".into())));
        answer.await.expect("device side");

        let (h, _rx) = handle(true);
        let r = h
            .write("setpoint", &Value::F64(1.0), Duration::from_millis(50))
            .await;
        assert_eq!(r, Err(WriteError::Timeout(Duration::from_millis(50))));
    }
}
