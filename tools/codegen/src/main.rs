//! Regenerates `examples/tonic/greeter.rs` from `examples/tonic/greeter.proto`.
//!
//! ```sh
//! cargo run --manifest-path tools/codegen/Cargo.toml
//! ```
//!
//! Needs `protoc` (Debian: `protobuf-compiler` and `libprotobuf-dev`). The output is committed,
//! so building seawall, its examples and its tests never needs protoc.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("examples/tonic");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&dir)
        .compile_protos(&[dir.join("greeter.proto")], &[dir.clone()])?;
    println!("wrote {}", dir.join("greeter.rs").display());
    Ok(())
}
