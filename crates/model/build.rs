//! Generates the Rust types for the Kafka messages from `proto/`, the only source of truth for
//! bytes on topics. `protox` compiles the `.proto` files in pure Rust, so no system `protoc` is
//! needed on a developer's machine or in CI.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &[
    "segment_relay/v1/events.proto",
    "segment_relay/v1/status.proto",
    "segment_relay/v1/dead_letter.proto",
    "segment_relay/v1/qualifier_state.proto",
    "segment_relay/v1/delivery_log.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not when it is compiled: one compiled script may serve
    // several checkouts sharing a `target/` (worktrees), each with its own `proto/`.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    let descriptors = protox::compile(PROTO_FILES, [&proto_root])?;
    prost_build::Config::new()
        // Enums stay i32 on the struct (prost's choice: unknown values from newer writers must
        // survive decoding); typed accessors are generated alongside.
        .compile_fds(descriptors)?;
    Ok(())
}
