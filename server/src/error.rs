//! The server's error type and its mapping to gRPC status codes.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// A request field is over its size limit.
    #[error("{field} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        field: &'static str,
        size: usize,
        limit: usize,
    },

    /// No such job in the caller's namespace.
    #[error("job {0:?} not found")]
    NotFound(String),

    /// The lease token is not the job's current one, or the job is not in a
    /// state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),

    /// A resume point older than the kept history.
    #[error("{0}")]
    OutOfRange(String),

    /// The idempotency key was used before for a different request.
    #[error("idempotency key {key:?} was used for a different request (job {job_id})")]
    IdempotencyConflict { key: String, job_id: String },

    /// Redis could not be reached or did not answer in time.
    #[error("redis is unavailable")]
    Unavailable(#[source] redis::RedisError),

    /// Redis answered with an error, or with a reply jobctl cannot read.
    #[error("redis error")]
    Redis(#[source] redis::RedisError),

    /// A stored record could not be read.
    #[error("corrupt record: {0}")]
    Corrupt(String),

    /// The call carries no verified identity.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),

    /// The caller's roles do not allow the call.
    #[error("{subject} may not call this: it needs the {role} role")]
    PermissionDenied {
        subject: String,
        role: crate::auth::Role,
    },

    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,

    /// Start-up failed: bad configuration, a port in use.
    #[error("{0}")]
    Startup(String),
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind as S};
        // A cluster without a master for the slot, or whose slot is still
        // moving after every retry (a failover under way), a node still
        // loading, a former master now a replica, Sentinels that name no
        // master answering as one (a failover under way): all pass.
        let passing = matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::Server(
                    S::ClusterDown
                        | S::TryAgain
                        | S::MasterDown
                        | S::BusyLoading
                        | S::ReadOnly
                        | S::Moved
                        | S::Ask
                )
        );
        if passing
            || e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_connection_refusal()
        {
            Error::Unavailable(e)
        } else {
            Error::Redis(e)
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::InvalidArgument { field, ref reason } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, reason.clone()),
            ),
            Error::TooLarge { field, .. } => Status::with_error_details(
                Code::ResourceExhausted,
                message.clone(),
                ErrorDetails::with_bad_request_violation(field, message),
            ),
            Error::NotFound(_) => Status::not_found(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::IdempotencyConflict { .. } => Status::already_exists(message),
            Error::OutOfRange(_) => Status::out_of_range(message),
            Error::Unavailable(source) => {
                tracing::warn!(error = %source, "redis unavailable");
                Status::unavailable(message)
            }
            Error::Redis(source) => {
                tracing::error!(error = %source, "redis error");
                Status::internal(message)
            }
            Error::Corrupt(_) => {
                tracing::error!(error = %message, "corrupt record");
                Status::internal(message)
            }
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied { .. } => Status::permission_denied(message),
            Error::ShuttingDown => Status::unavailable(message),
            Error::Startup(_) => Status::internal(message),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
