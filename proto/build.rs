//! Compiles `jobctl/v1/*.proto` with protox (pure Rust, no system `protoc`)
//! into `OUT_DIR`, along with a file descriptor set for server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "jobctl/v1/job.proto",
    "jobctl/v1/job_service.proto",
    "jobctl/v1/worker_service.proto",
    "jobctl/v1/admin_service.proto",
    "jobctl/v1/schedule_service.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("jobctl_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(std::env::var_os("CARGO_FEATURE_CLIENT").is_some())
        .build_server(std::env::var_os("CARGO_FEATURE_SERVER").is_some())
        .compile_fds(fds)?;
    Ok(())
}
