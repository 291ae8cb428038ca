//! Generates the gRPC code from `proto/` without `protoc`: protox compiles the
//! .proto files to a descriptor set in pure Rust, tonic-prost-build emits code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // Several checkouts of this repository may share one CARGO_TARGET_DIR,
    // and cargo shares a build script's output between them (same package,
    // same unit). Rerunning when cargo is started from another directory
    // keeps one checkout from compiling against another's proto.
    println!("cargo:rerun-if-env-changed=PWD");
    let fds = protox::compile(["knutepunkt/v1/vendor.proto"], ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("knutepunkt_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
