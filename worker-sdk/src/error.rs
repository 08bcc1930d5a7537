//! The errors of building and running a worker.

/// What can go wrong building a [`Worker`](crate::Worker), running it, or
/// talking to the server from a [`JobContext`](crate::JobContext).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint string is not a usable URI.
    #[error("invalid endpoint {endpoint:?}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// A builder setting is out of range or inconsistent.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// The server refused a call for good (for example `UNAUTHENTICATED` on
    /// `Lease`, or `RESOURCE_EXHAUSTED` for a checkpoint over the size limit).
    #[error("the server refused the {op} call")]
    Rejected {
        /// The RPC: `lease`, `heartbeat`, ...
        op: &'static str,
        /// The status the server answered with.
        #[source]
        status: tonic::Status,
    },
    /// The worker no longer holds the lease of this job: it expired or was
    /// handed to another worker. Its result will be discarded.
    #[error("lost the lease of job {job_id}")]
    LeaseLost {
        /// The job.
        job_id: String,
    },
    /// The job's attempt is over (the handler returned or the worker shut
    /// down), so nothing more can be sent about it.
    #[error("job {job_id} is no longer running on this worker")]
    JobEnded {
        /// The job.
        job_id: String,
    },
    /// Telemetry could not be set up: unusable `OTEL_*` variables, or a
    /// global subscriber installed before.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// The SIGINT/SIGTERM handlers could not be installed.
    #[error("could not install the signal handlers")]
    Signal(#[source] std::io::Error),
}
