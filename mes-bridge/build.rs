//! Builds the Rust types of the Sparkplug B protobuf from the vendored
//! `proto/sparkplug_b.proto` (Eclipse Tahu, EPL-2.0). protox parses the file in Rust, so
//! building needs no `protoc`.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = Path::new("proto/sparkplug_b.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
