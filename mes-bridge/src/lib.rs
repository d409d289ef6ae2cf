//! Pure normalisation of stored batches into MES-tier MQTT messages (SPEC §5–§6, format
//! `uns-json`), and pure validation of the commands the MES sends back. No I/O: the publisher
//! hands in a batch and gets topics and payloads back, and hands in a command and gets the
//! PLC writes to make, so the wire format and the rules are unit-tested here and nowhere else.
//!
//! - [`uns`]: telemetry (`{root}/{device}/{tag}`, `_batch`) and the gateway status.
//! - [`rules`]: work orders, production counts and machine states from the samples of a
//!   machine's tags ([`MesBridge`]), with the checkpoint that makes replays exact.
//! - [`events`]: the MES events and their JSON (`{root}/{machine}/_mes/...`).
//! - [`counter`]: counter increments across wrap-arounds, resets and missed readings.
//! - [`command`]: `_set` and `workorder/dispatch` commands → validated, ordered writes.
//! - [`sparkplug`]: Sparkplug B 3.0 for the SCADA tier (SPEC §7, format `sparkplug-b`):
//!   births, data, deaths, sequence numbers, aliases, commands.

pub mod command;
pub mod counter;
pub mod events;
pub mod gate;
pub mod machine;
pub mod rules;
pub mod sparkplug;
pub mod uns;

pub use events::{MesEncoder, MesEvent};
pub use machine::{
    CounterSpec, CounterWidth, MachineSpec, MachineState, StateMapping, StateSpec, TagRef,
};
pub use rules::{CheckpointError, MachineStatus, MesBridge};
pub use uns::{Batching, Catalog, Keys, Message, UnsEncoder};
