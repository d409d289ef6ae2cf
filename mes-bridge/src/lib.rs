//! Pure normalisation of stored batches into MES-tier MQTT messages (SPEC §5, format
//! `uns-json`). No I/O: the publisher hands in a batch and gets topics and payloads back, so the
//! wire format is unit-tested here and nowhere else.

pub mod uns;

pub use uns::{Batching, Catalog, Message, UnsEncoder};
