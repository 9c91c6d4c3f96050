//! Compiles `proto/trunkline/v1/agent.proto` into tonic client and server
//! code. The .proto is parsed by `protox` (pure Rust), not `protoc`, so
//! `cargo build --workspace` works on a fresh machine without a protobuf
//! compiler installed, and nothing generated is committed that could drift
//! from the .proto.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/trunkline/v1/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
