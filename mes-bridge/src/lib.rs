//! Pure normalisation of stored batches into northbound MQTT messages: UNS JSON for the MES
//! tier (SPEC §5, format `uns-json`) and Sparkplug B 3.0 for the SCADA tier (SPEC §7, format
//! `sparkplug-b`). No I/O: the publishers hand in batches and get topics and payloads back, so
//! the wire formats are unit-tested here and nowhere else.

pub mod sparkplug;
pub mod uns;

pub use uns::{Batching, Catalog, Message, UnsEncoder};
