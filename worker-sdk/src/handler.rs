//! Handlers, how they fail, and how a handler's result becomes a `Complete`
//! or a `Fail` call.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jobctl_proto::v1::JobError;

use crate::context::{CancelReason, JobContext};

/// What a handler returns: the job's result bytes, or why it failed.
pub type HandlerResult = Result<Vec<u8>, HandlerError>;

/// A registered handler, type-erased.
pub(crate) type BoxHandler =
    Arc<dyn Fn(JobContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// The handlers of a worker, by job kind.
pub(crate) type Handlers = HashMap<String, BoxHandler>;

/// Boxes a handler function.
pub(crate) fn boxed<F, Fut>(handler: F) -> BoxHandler
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |ctx| Box::pin(handler(ctx)))
}

/// The error code sent with a cancelled attempt; the server ends the job
/// `CANCELLED`.
pub const CODE_CANCELLED: &str = "cancelled";
/// The error code of a job whose kind this worker has no handler for.
pub const CODE_UNKNOWN_KIND: &str = "unknown_kind";
/// The error code of a handler that panicked.
pub const CODE_PANIC: &str = "panic";
/// The error code of an attempt that ran past the job's deadline.
pub const CODE_TIMEOUT: &str = "timeout";
/// The error code of a result the server refused to store (too large, for
/// example).
pub const CODE_RESULT_REJECTED: &str = "result_rejected";

/// How a handler failed, which decides what happens to the job next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerErrorKind {
    /// Retry the job (after its backoff, or after the given delay) while
    /// attempts remain.
    Retry,
    /// Fail the job for good: it goes to the dead letters at once.
    Fatal,
    /// The handler stopped because it was cancelled; the job ends
    /// `CANCELLED`.
    Cancelled,
}

/// Why a handler failed: retry later, retry after a delay, fail for good, or
/// cancelled.
///
/// Errors from `std::io`, boxed errors and strings convert with `?` into a
/// retryable `HandlerError`; for other error types use
/// [`HandlerError::from_error`] or the [`HandlerResultExt`] methods:
///
/// ```
/// use jobctl_worker::{HandlerError, HandlerResultExt};
///
/// fn parse(payload: &[u8]) -> Result<u32, HandlerError> {
///     let text = std::str::from_utf8(payload).fatal()?; // bad input: never retry
///     let n = text.trim().parse::<u32>().fatal()?;
///     Ok(n)
/// }
/// assert!(parse(b"12").is_ok());
/// assert!(!parse(b"x").unwrap_err().is_retryable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    kind: HandlerErrorKind,
    message: String,
    code: Option<String>,
    details: Option<String>,
    retry_after: Option<Duration>,
    checkpoint: Option<Vec<u8>>,
}

impl HandlerError {
    fn new(kind: HandlerErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
            details: None,
            retry_after: None,
            checkpoint: None,
        }
    }

    /// A failure worth retrying, after the job's retry backoff.
    pub fn retry(message: impl Into<String>) -> Self {
        Self::new(HandlerErrorKind::Retry, message)
    }

    /// A failure worth retrying after `delay` instead of the job's backoff
    /// (a rate limit's `Retry-After`, for example).
    pub fn retry_after(message: impl Into<String>, delay: Duration) -> Self {
        Self::retry(message).with_retry_after(delay)
    }

    /// A failure that retrying cannot fix: the job fails for good.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(HandlerErrorKind::Fatal, message)
    }

    /// The handler stopped because its cancellation token fired.
    pub fn cancelled() -> Self {
        Self::new(HandlerErrorKind::Cancelled, "cancelled")
    }

    /// A retryable failure from any error: its message, and its chain of
    /// sources as the details.
    pub fn from_error<E: std::error::Error + ?Sized>(error: &E) -> Self {
        let mut details = String::new();
        let mut source = error.source();
        while let Some(cause) = source {
            if !details.is_empty() {
                details.push('\n');
            }
            let _ = write!(details, "caused by: {cause}");
            source = cause.source();
        }
        let mut e = Self::retry(error.to_string());
        if !details.is_empty() {
            e.details = Some(details);
        }
        e
    }

    /// Sets the machine-readable error code (`JobError.code`).
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// Sets free-form details, a stack trace for example (`JobError.details`).
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// Asks for the next attempt after `delay` instead of the job's backoff.
    /// Only meaningful for a retryable error.
    #[must_use]
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// A checkpoint to keep for the next attempt, sent along with the `Fail`.
    #[must_use]
    pub fn with_checkpoint(mut self, checkpoint: Vec<u8>) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }

    /// Makes the error retryable (or not) whatever it was built as.
    #[must_use]
    pub fn with_kind(mut self, kind: HandlerErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// How the handler failed.
    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }

    /// Whether the job will be retried (attempts permitting).
    pub fn is_retryable(&self) -> bool {
        self.kind == HandlerErrorKind::Retry
    }

    /// The message for humans.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The machine-readable code, if set.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The details, if set.
    pub fn details(&self) -> Option<&str> {
        self.details.as_deref()
    }

    /// The requested retry delay, if set.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The checkpoint sent with the failure, if set.
    pub fn checkpoint(&self) -> Option<&[u8]> {
        self.checkpoint.as_deref()
    }

    /// The fields of the `Fail` call this error turns into.
    pub(crate) fn into_fail(self) -> FailFields {
        let retryable = self.kind == HandlerErrorKind::Retry;
        let code = match self.kind {
            HandlerErrorKind::Cancelled => Some(CODE_CANCELLED.to_owned()),
            HandlerErrorKind::Retry | HandlerErrorKind::Fatal => self.code,
        };
        FailFields {
            error: JobError {
                message: self.message,
                code: code.unwrap_or_default(),
                details: self.details.unwrap_or_default(),
            },
            retryable,
            retry_after: if retryable { self.retry_after } else { None },
            checkpoint: self.checkpoint,
        }
    }
}

impl From<std::io::Error> for HandlerError {
    fn from(e: std::io::Error) -> Self {
        Self::from_error(&e)
    }
}

impl From<Box<dyn std::error::Error + Send + Sync>> for HandlerError {
    fn from(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self::from_error(e.as_ref())
    }
}

impl From<Box<dyn std::error::Error>> for HandlerError {
    fn from(e: Box<dyn std::error::Error>) -> Self {
        Self::from_error(e.as_ref())
    }
}

impl From<tokio::time::error::Elapsed> for HandlerError {
    fn from(e: tokio::time::error::Elapsed) -> Self {
        Self::from_error(&e).with_code(CODE_TIMEOUT)
    }
}

/// A failed [`JobContext::checkpoint_now`](crate::JobContext::checkpoint_now)
/// is retryable, except when the job was cancelled or its lease lost.
impl From<crate::Error> for HandlerError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::LeaseLost { .. } | crate::Error::JobEnded { .. } => {
                Self::from_error(&e).with_kind(HandlerErrorKind::Cancelled)
            }
            _ => Self::from_error(&e),
        }
    }
}

impl From<String> for HandlerError {
    fn from(message: String) -> Self {
        Self::retry(message)
    }
}

impl From<&str> for HandlerError {
    fn from(message: &str) -> Self {
        Self::retry(message)
    }
}

/// Turns any `Result<T, E: Error>` into a `Result<T, HandlerError>` of the
/// chosen kind, for use with `?` in handlers.
pub trait HandlerResultExt<T> {
    /// Maps an error to a retryable [`HandlerError`].
    fn retryable(self) -> Result<T, HandlerError>;
    /// Maps an error to a [`HandlerError`] that fails the job for good.
    fn fatal(self) -> Result<T, HandlerError>;
}

impl<T, E: std::error::Error> HandlerResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::from_error(&e))
    }

    fn fatal(self) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::from_error(&e).with_kind(HandlerErrorKind::Fatal))
    }
}

/// The fields of a `FailRequest` besides the job and its lease.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FailFields {
    pub(crate) error: JobError,
    pub(crate) retryable: bool,
    pub(crate) retry_after: Option<Duration>,
    pub(crate) checkpoint: Option<Vec<u8>>,
}

/// How an attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Outcome {
    Complete(Vec<u8>),
    Fail(FailFields),
}

/// Decides how an attempt ends from the handler's result and from why its
/// cancellation token fired, if it did.
///
/// A job whose cancellation was requested ends cancelled whatever error its
/// handler returned; a handler that gave up because the deadline passed is
/// retried. A handler that succeeded anyway is reported as a success.
pub(crate) fn decide(result: HandlerResult, reason: Option<&CancelReason>) -> Outcome {
    let error = match result {
        Ok(bytes) => return Outcome::Complete(bytes),
        Err(error) => error,
    };
    match reason {
        Some(CancelReason::Requested { reason }) => {
            let mut fail = error.into_fail();
            if fail.error.code == CODE_CANCELLED
                && fail.error.message == "cancelled"
                && !reason.is_empty()
            {
                fail.error.message = format!("cancelled: {reason}");
            }
            fail.error.code = CODE_CANCELLED.to_owned();
            fail.retryable = false;
            fail.retry_after = None;
            Outcome::Fail(fail)
        }
        Some(CancelReason::DeadlineExceeded) if error.kind == HandlerErrorKind::Cancelled => {
            Outcome::Fail(
                HandlerError::retry("job deadline exceeded")
                    .with_code(CODE_TIMEOUT)
                    .into_fail(),
            )
        }
        Some(_) | None => Outcome::Fail(error.into_fail()),
    }
}

/// The error reported for a handler that panicked.
pub(crate) fn panicked(payload: &(dyn std::any::Any + Send)) -> HandlerError {
    let what = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string panic payload".to_owned()
    };
    HandlerError::retry(format!("handler panicked: {what}")).with_code(CODE_PANIC)
}

/// The error reported for a job of a kind this worker cannot run.
pub(crate) fn unknown_kind<'a>(
    kind: &str,
    known: impl Iterator<Item = &'a String>,
) -> HandlerError {
    let mut known: Vec<&str> = known.map(String::as_str).collect();
    known.sort_unstable();
    HandlerError::fatal(format!("no handler registered for kind {kind:?}"))
        .with_code(CODE_UNKNOWN_KIND)
        .with_details(format!("this worker handles: {}", known.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(outcome: Outcome) -> FailFields {
        match outcome {
            Outcome::Fail(f) => f,
            Outcome::Complete(_) => panic!("expected a fail, got a complete"),
        }
    }

    #[test]
    fn retry_maps_to_a_retryable_fail() {
        let f = HandlerError::retry("smtp down")
            .with_code("smtp")
            .with_details("421")
            .into_fail();
        assert!(f.retryable);
        assert_eq!(f.error.message, "smtp down");
        assert_eq!(f.error.code, "smtp");
        assert_eq!(f.error.details, "421");
        assert_eq!(f.retry_after, None);
    }

    #[test]
    fn retry_after_carries_its_delay() {
        let f = HandlerError::retry_after("rate limited", Duration::from_secs(7)).into_fail();
        assert!(f.retryable);
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn fatal_is_not_retryable_and_drops_any_delay() {
        let f = HandlerError::fatal("bad payload")
            .with_retry_after(Duration::from_secs(1))
            .into_fail();
        assert!(!f.retryable);
        assert_eq!(f.retry_after, None);
        assert_eq!(f.error.code, "");
    }

    #[test]
    fn cancelled_is_not_retryable_and_coded_cancelled() {
        let f = HandlerError::cancelled().with_code("mine").into_fail();
        assert!(!f.retryable);
        assert_eq!(f.error.code, CODE_CANCELLED);
    }

    #[test]
    fn checkpoint_travels_with_the_fail() {
        let f = HandlerError::retry("x")
            .with_checkpoint(b"cp".to_vec())
            .into_fail();
        assert_eq!(f.checkpoint.as_deref(), Some(&b"cp"[..]));
    }

    #[test]
    fn success_completes_even_after_a_cancel_request() {
        let reason = CancelReason::Requested {
            reason: "user".into(),
        };
        assert_eq!(
            decide(Ok(b"r".to_vec()), Some(&reason)),
            Outcome::Complete(b"r".to_vec())
        );
    }

    #[test]
    fn any_error_after_a_cancel_request_ends_the_job_cancelled() {
        let reason = CancelReason::Requested {
            reason: "user".into(),
        };
        let f = fail(decide(Err(HandlerError::retry("io")), Some(&reason)));
        assert!(!f.retryable);
        assert_eq!(f.error.code, CODE_CANCELLED);
        assert_eq!(f.error.message, "io");
        let f = fail(decide(Err(HandlerError::cancelled()), Some(&reason)));
        assert_eq!(f.error.message, "cancelled: user");
    }

    #[test]
    fn a_handler_cancelling_itself_ends_the_job_cancelled() {
        let f = fail(decide(Err(HandlerError::cancelled()), None));
        assert!(!f.retryable);
        assert_eq!(f.error.code, CODE_CANCELLED);
    }

    #[test]
    fn giving_up_at_the_deadline_is_retried_as_a_timeout() {
        let f = fail(decide(
            Err(HandlerError::cancelled()),
            Some(&CancelReason::DeadlineExceeded),
        ));
        assert!(f.retryable);
        assert_eq!(f.error.code, CODE_TIMEOUT);
        let f = fail(decide(
            Err(HandlerError::fatal("boom")),
            Some(&CancelReason::DeadlineExceeded),
        ));
        assert!(!f.retryable);
        assert_eq!(f.error.message, "boom");
    }

    #[test]
    fn std_errors_convert_to_retryable_errors_with_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = HandlerError::from_error(&Outer(std::io::Error::other("inner")));
        assert!(e.is_retryable());
        assert_eq!(e.message(), "outer");
        assert_eq!(e.details(), Some("caused by: inner"));

        fn io() -> Result<(), HandlerError> {
            Err(std::io::Error::other("disk"))?;
            Ok(())
        }
        assert!(io().is_err_and(|e| e.is_retryable() && e.message() == "disk"));

        fn boxed() -> Result<(), HandlerError> {
            let r: Result<(), Box<dyn std::error::Error + Send + Sync>> = Err("nope".into());
            r?;
            Ok(())
        }
        assert!(boxed().is_err_and(|e| e.is_retryable() && e.message() == "nope"));

        fn string() -> Result<(), HandlerError> {
            Err(format!("n={}", 3))?
        }
        assert!(string().is_err_and(|e| e.message() == "n=3"));
    }

    #[test]
    fn result_ext_picks_the_kind() {
        let r: Result<u32, _> = "x".parse::<u32>();
        assert_eq!(
            r.clone().fatal().unwrap_err().kind(),
            HandlerErrorKind::Fatal
        );
        assert_eq!(r.retryable().unwrap_err().kind(), HandlerErrorKind::Retry);
    }

    #[test]
    fn panics_and_unknown_kinds_have_their_codes() {
        let p = panicked(&"oops");
        assert!(p.is_retryable());
        assert_eq!(p.message(), "handler panicked: oops");
        assert_eq!(p.code(), Some(CODE_PANIC));
        let known = ["b".to_owned(), "a".to_owned()];
        let u = unknown_kind("zzz", known.iter()).into_fail();
        assert!(!u.retryable);
        assert_eq!(u.error.code, CODE_UNKNOWN_KIND);
        assert_eq!(u.error.details, "this worker handles: a, b");
    }
}
