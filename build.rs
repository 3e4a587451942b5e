//! Compiles `proto/` into the gRPC stubs of `ministore::proto` (feature `grpc`).
//!
//! protox is a protobuf compiler written in Rust, so no system `protoc` is needed.
//! The encoded descriptor set is also written to `OUT_DIR` for gRPC reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    compile_proto()?;
    Ok(())
}

#[cfg(feature = "grpc")]
fn compile_proto() -> Result<(), Box<dyn std::error::Error>> {
    use protox::prost::Message;

    const PROTO: &str = "proto/ministore/v1/journal.proto";
    println!("cargo:rerun-if-changed=proto");

    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("ministore_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
