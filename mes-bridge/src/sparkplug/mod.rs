//! Sparkplug B 3.0 for the SCADA tier (SPEC §7): the gateway is an edge node, its PLCs are
//! devices, their tags are metrics. Everything here is pure: the publisher hands in stored
//! batches and received commands, and gets Sparkplug messages (topic and protobuf payload) and
//! validated writes back, so the namespace, sequencing and encoding rules are unit-tested here.
//!
//! - [`EdgeNode`]: births, data, deaths, aliases, `seq` (0–255 across NBIRTH, DBIRTH, DDATA and
//!   DDEATH) and `bdSeq`; device death and rebirth from the quality of the stored samples,
//!   and rebirth when a metric of the server's type gets its first value or a new type.
//! - [`EdgeNode::decode_command`]: NCMD rebirth and DCMD writes, validated.
//! - [`PrimaryHost`]: the primary host's STATE (3.0 JSON form).
//! - [`types`]: datatypes and which protobuf field carries which value.
//! - [`proto`]: the protobuf types (prost, from the vendored .proto), for subscribers and tools.

mod command;
mod node;
pub mod proto;
pub mod types;

pub use command::{
    Command, CommandError, HostChange, HostState, PrimaryHost, StateError, TagWrite,
};
pub use node::{
    decode_payload, encode_payload, metric_quality, DeviceDef, EdgeNode, MetricDef, BD_SEQ,
    NAMESPACE, NEXT_SERVER, PROP_OFFSET, PROP_QUALITY, PROP_READ_ONLY, PROP_SCALE, PROP_UNIT,
    REBIRTH,
};
pub use types::SpType;
