//! The jobctl gRPC contract, package `jobctl.v1`.
//!
//! The `.proto` files under `proto/jobctl/v1/` are the source of truth; this
//! crate compiles them with protox at build time. Client stubs are behind the
//! `client` feature (on by default) and server traits behind `server`.

/// Generated messages and services of `jobctl.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("jobctl.v1");
}

/// The encoded `FileDescriptorSet` of every jobctl proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jobctl_descriptor.bin"));

pub use v1::JobState;
