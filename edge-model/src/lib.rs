//! The shared vocabulary of edge-agent: device and tag names, typed values, quality, samples and
//! batches, and the compact binary record a batch is stored as. Nothing here does I/O, so the
//! drivers, the store and the MES bridge can all speak it without depending on each other.

mod record;
mod value;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

pub use record::DecodeError;
pub use value::{DataType, DataTypeError, Value};

/// The name of a device (a PLC) as configured; unique within a gateway, used in topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub String);

/// The name of a tag within its device; used in topics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagName(pub String);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for DeviceId {
    fn from(s: &str) -> Self {
        DeviceId(s.to_owned())
    }
}

impl From<&str> for TagName {
    fn from(s: &str) -> Self {
        TagName(s.to_owned())
    }
}

/// How far a value can be trusted (SPEC §5: `good`, `uncertain`, `bad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    Good,
    Uncertain,
    Bad,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain => "uncertain",
            Quality::Bad => "bad",
        }
    }
}

impl fmt::Display for Quality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reading of one tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tag: TagName,
    /// `None` when the read failed (quality is then `Bad`).
    pub value: Option<Value>,
    pub quality: Quality,
    /// When the gateway read the value, epoch milliseconds UTC.
    pub read_ts_ms: u64,
    /// When the source says the value was produced (OPC UA source timestamp), if it says.
    pub source_ts_ms: Option<u64>,
    /// The device-wide sequence number, assigned by the store when the sample is committed
    /// (0 until then). Increases by exactly one per stored sample of a device.
    pub seq: u64,
}

impl Sample {
    /// A good reading taken now-ish; `seq` is left for the store to assign.
    pub fn good(tag: TagName, value: Value, read_ts_ms: u64) -> Sample {
        Sample {
            tag,
            value: Some(value),
            quality: Quality::Good,
            read_ts_ms,
            source_ts_ms: None,
            seq: 0,
        }
    }

    /// A failed reading: no value, quality `Bad`.
    pub fn bad(tag: TagName, read_ts_ms: u64) -> Sample {
        Sample {
            tag,
            value: None,
            quality: Quality::Bad,
            read_ts_ms,
            source_ts_ms: None,
            seq: 0,
        }
    }

    /// The timestamp a consumer sees: the source's when it gave one, else the read time.
    pub fn timestamp_ms(&self) -> u64 {
        self.source_ts_ms.unwrap_or(self.read_ts_ms)
    }
}

/// Samples of one device taken together (one scan, or one group of a scan). The unit the store
/// commits and the publisher releases.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub device: DeviceId,
    pub samples: Vec<Sample>,
}

impl Batch {
    pub fn new(device: DeviceId) -> Batch {
        Batch {
            device,
            samples: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }
}

/// Milliseconds since the Unix epoch, UTC. A clock before 1970 reads as 0.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
