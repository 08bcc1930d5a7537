//! The one error type of the client library.

use tonic::Code;

/// What went wrong in a call to the jobctl server.
///
/// The variants keep the gRPC status class, so callers can branch on it
/// (`Error::NotFound(_)`) or ask for the code with [`Error::code`]. Messages
/// come from the server as they are; they are lowercase and say which field
/// was wrong and why.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such job (or it belongs to another namespace, or its record expired).
    #[error("{0}")]
    NotFound(String),
    /// The request was malformed: the message names the field and the reason.
    #[error("{0}")]
    InvalidArgument(String),
    /// The idempotency key was used before with a different request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The job is not in a state that allows the call (for example re-queue
    /// of a job that is not FAILED).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A size or count limit was exceeded (payload, labels, ...).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The server, or the Redis behind it, cannot be reached right now; the
    /// call may be retried.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The call carried no valid credentials.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller's role does not allow the call.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The server address could not be parsed.
    #[error("invalid server address '{endpoint}'")]
    InvalidEndpoint {
        /// The address as given.
        endpoint: String,
        /// Why it was refused.
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection could be made to the server.
    #[error("cannot connect to '{endpoint}'")]
    Transport {
        /// The address that was dialled.
        endpoint: String,
        /// The connection error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with something this client cannot use (for
    /// example a response without its required message).
    #[error("unexpected response from server: {0}")]
    UnexpectedResponse(String),
    /// Any other gRPC status, kept whole.
    #[error("{}", describe_status(.0))]
    Other(tonic::Status),
}

/// The result type of the client library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC status code this error stands for.
    ///
    /// Connection failures report [`Code::Unavailable`], an unusable server
    /// address [`Code::InvalidArgument`] and an unusable response
    /// [`Code::Internal`].
    pub fn code(&self) -> Code {
        match self {
            Error::NotFound(_) => Code::NotFound,
            Error::InvalidArgument(_) | Error::InvalidEndpoint { .. } => Code::InvalidArgument,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Unavailable(_) | Error::Transport { .. } => Code::Unavailable,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::UnexpectedResponse(_) => Code::Internal,
            Error::Other(status) => status.code(),
        }
    }

    /// Whether the same call may succeed if tried again later (the server or
    /// its Redis was unreachable, or the call timed out).
    pub fn is_retryable(&self) -> bool {
        matches!(self.code(), Code::Unavailable | Code::DeadlineExceeded)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            Code::NotFound => Error::NotFound(status.message().to_owned()),
            Code::InvalidArgument => Error::InvalidArgument(status.message().to_owned()),
            Code::AlreadyExists => Error::AlreadyExists(status.message().to_owned()),
            Code::FailedPrecondition => Error::FailedPrecondition(status.message().to_owned()),
            Code::ResourceExhausted => Error::ResourceExhausted(status.message().to_owned()),
            Code::Unavailable => Error::Unavailable(message_with_source(&status)),
            Code::Unauthenticated => Error::Unauthenticated(status.message().to_owned()),
            Code::PermissionDenied => Error::PermissionDenied(status.message().to_owned()),
            Code::Ok
            | Code::Cancelled
            | Code::Unknown
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Internal
            | Code::DataLoss => Error::Other(status),
        }
    }
}

/// An `UNAVAILABLE` status made by the local transport (for example a refused
/// TCP connection on a lazy channel) carries its cause as a source, not in
/// its message; keep the cause, since the variant keeps only a string.
fn message_with_source(status: &tonic::Status) -> String {
    let mut message = status.message().to_owned();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        let text = err.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
        source = err.source();
    }
    if message.is_empty() {
        message.push_str("no reason given");
    }
    message
}

fn describe_status(status: &tonic::Status) -> String {
    let code = code_name(status.code());
    if status.message().is_empty() {
        format!("server returned {code}")
    } else {
        format!("{} ({code})", status.message())
    }
}

/// The lowercase name of a gRPC status code, such as `not found`.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown error",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal error",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_variants_and_back() {
        let cases = [
            Code::NotFound,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Unimplemented,
        ];
        for code in cases {
            let err = Error::from(tonic::Status::new(code, "boom"));
            assert_eq!(err.code(), code, "{err:?}");
        }
    }

    #[test]
    fn messages_are_the_servers_and_do_not_repeat_the_variant() {
        let err = Error::from(tonic::Status::not_found("job 'x' not found"));
        assert!(matches!(err, Error::NotFound(_)));
        assert_eq!(err.to_string(), "job 'x' not found");

        let err = Error::from(tonic::Status::invalid_argument("queue: must not be empty"));
        assert_eq!(err.to_string(), "queue: must not be empty");

        let err = Error::from(tonic::Status::internal("boom"));
        assert_eq!(err.to_string(), "boom (internal error)");

        let err = Error::from(tonic::Status::internal(""));
        assert_eq!(err.to_string(), "server returned internal error");
    }

    #[test]
    fn unavailable_is_retryable() {
        assert!(Error::from(tonic::Status::unavailable("redis down")).is_retryable());
        assert!(Error::from(tonic::Status::deadline_exceeded("slow")).is_retryable());
        assert!(!Error::NotFound("x".into()).is_retryable());
    }
}
