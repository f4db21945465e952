//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so no system `protoc` is
//! needed, and keeps the file descriptor set for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script binary may be reused for a checkout at another path
    // (a shared CARGO_TARGET_DIR), so the path must not be baked in when it is compiled.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "coalition/v1/submission.proto",
        "coalition/v1/query.proto",
        "coalition/v1/admin.proto",
    ];
    let descriptors = protox::compile(files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("coalition_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    for file in files {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }
    Ok(())
}
