//! What both southbound drivers share, written once: scaling between raw and engineering
//! values, report-by-exception, the per-device counters, the fixed-rate read schedule, the
//! retry backoff, and the write interface commands use whatever the protocol. A driver
//! depends on this crate and never on another driver.

pub mod backoff;
pub mod counters;
pub mod report;
pub mod scaling;
pub mod schedule;
pub mod write;

pub use backoff::{Backoff, Reconnect, Retry};
pub use counters::{DeviceCounters, HistogramSnapshot, LatencyHistogram, LATENCY_BUCKETS_US};
pub use report::{ReportRule, ReportState};
pub use scaling::{value_from_f64, Scaling, ValueError};
pub use schedule::next_tick;
pub use write::{check_write, WriteError, WriteHandle, WriteRequest, WriteTag, WRITE_QUEUE};
