#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod error;
mod options;

pub use client::{Client, DEFAULT_CONNECT_TIMEOUT, Submitted};
pub use error::{Error, Result};
pub use options::{RetryPolicy, SubmitOptions};

/// The generated protobuf messages and gRPC stubs (`jobctl_proto`), for
/// anything the [`Client`] does not wrap.
pub use jobctl_proto as proto;
pub use jobctl_proto::v1::{
    CancelResponse, GetQueueStatsResponse, Job, JobError, JobState, ListFailedResponse, Progress,
};
