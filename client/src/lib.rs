#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod connect;
mod error;
#[cfg(test)]
mod fake_server;
mod options;
mod schedules;
mod watch;

pub use client::{Client, DEFAULT_CONNECT_TIMEOUT, Submitted};
pub use connect::{AuthChannel, ConnectOptions, Credentials};
pub use error::{Error, Result};
pub use options::{RetryPolicy, SubmitOptions};
pub use watch::{ReconnectPolicy, Watch, is_terminal, is_terminal_state};

/// The generated protobuf messages and gRPC stubs (`jobctl_proto`), for
/// anything the [`Client`] does not wrap.
pub use jobctl_proto as proto;
pub use jobctl_proto::v1::{
    CancelResponse, EventKind, GetQueueStatsResponse, Job, JobError, JobEvent, JobState,
    ListFailedResponse, Progress,
};
