//! Generates the Rust types of `proto/atbus_protocol.proto` with prost, parsing
//! the schema with protox so that no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let schema = "proto/atbus_protocol.proto";
    println!("cargo:rerun-if-changed={schema}");
    let descriptors = protox::compile([schema], ["proto"])?;
    prost_build::Config::new()
        // Decoding from a `Bytes` buffer slices payloads instead of copying them.
        .bytes(["."])
        // Ordered maps make encoding deterministic (golden vectors, simulator).
        .btree_map(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
