//! The Sparkplug B payload types, built by prost at compile time from `proto/sparkplug_b.proto`
//! (Eclipse Tahu, EPL-2.0). Consumers (SCADA hosts, the tests' subscriber) decode with these
//! same types.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));
