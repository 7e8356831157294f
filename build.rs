//! Generates the Talos machine API and the Talos event sink (gRPC clients and servers) from
//! bootplane's own `.proto` files under `proto/`. Needs `protoc` (Debian: `protobuf-compiler`),
//! or `PROTOC` set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/machine.proto",
                "proto/machine_events.proto",
                "proto/events.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
