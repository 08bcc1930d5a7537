#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod backoff;
mod completer;
mod context;
mod error;
mod handler;
mod job;
mod progress;
mod rpc;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod worker;

pub use context::{CancelReason, JobContext};
pub use error::Error;
pub use handler::{
    CODE_CANCELLED, CODE_PANIC, CODE_RESULT_REJECTED, CODE_TIMEOUT, CODE_UNKNOWN_KIND,
    HandlerError, HandlerErrorKind, HandlerResult, HandlerResultExt,
};
/// Progress a handler reports: `percent` (0 to 100), `current` and `total`
/// units, and a `message`.
pub use jobctl_proto::v1::Progress;
pub use worker::{
    DEFAULT_CONCURRENCY, DEFAULT_LEASE_WAIT, DEFAULT_PROGRESS_INTERVAL, DEFAULT_QUEUE,
    DEFAULT_RPC_TIMEOUT, DEFAULT_SHUTDOWN_GRACE, Worker, WorkerBuilder,
};

/// The generated jobctl.v1 contract, for the rare need beyond this SDK.
pub use jobctl_proto as proto;
