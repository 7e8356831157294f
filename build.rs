//! Generates the Talos machine API and the Talos event sink (gRPC clients and servers) from
//! bootplane's own `.proto` files under `proto/`. The files are parsed by protox, a protobuf
//! compiler written in Rust, so the build needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        [
            "proto/machine.proto",
            "proto/machine_events.proto",
            "proto/events.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
