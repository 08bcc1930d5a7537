//! Exponential backoff with jitter, and which gRPC failures are worth a retry.

use std::time::Duration;

use tonic::Code;

/// Exponential backoff: `base`, doubling up to `cap`, each delay randomised
/// to between half and all of its nominal value ("equal jitter").
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// Retrying a failed RPC: 100ms doubling to 5s.
    pub(crate) fn rpc() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Pausing after an empty `Lease` answer that came back early: 50ms
    /// doubling to 2s.
    pub(crate) fn idle() -> Self {
        Self::new(Duration::from_millis(50), Duration::from_secs(2))
    }

    /// The nominal (un-jittered) delay of the next call to [`Backoff::next`].
    pub(crate) fn nominal(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay; each call doubles the nominal delay up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        let fraction = 0.5 + rand::random::<f64>() * 0.5;
        Duration::try_from_secs_f64(nominal.as_secs_f64() * fraction)
            .map_or(nominal, |d| d.min(nominal))
    }

    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How a failed call should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Worth retrying: the server or the network is having a bad moment.
    Transient,
    /// The lease is stale or the job is gone (`FAILED_PRECONDITION`,
    /// `NOT_FOUND`): nothing more may be sent about this attempt.
    LeaseLost,
    /// Refused for good; retrying the same request cannot help.
    Refused,
}

/// Classifies the status of a call about a leased job.
pub(crate) fn classify(code: Code) -> Failure {
    match code {
        Code::FailedPrecondition | Code::NotFound => Failure::LeaseLost,
        Code::InvalidArgument
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented
        | Code::OutOfRange
        | Code::ResourceExhausted => Failure::Refused,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => Failure::Transient,
    }
}

/// Whether a failed `Lease` call means the worker is misconfigured (wrong
/// credentials, a bad queue name, a server without the WorkerService), so
/// that retrying would only hide the problem.
pub(crate) fn lease_failure_is_fatal(code: Code) -> bool {
    match code {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => true,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::DeadlineExceeded
        | Code::NotFound
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_within_jitter_bounds() {
        let mut b = Backoff::rpc();
        let mut nominals = Vec::new();
        for _ in 0..10 {
            let nominal = b.nominal();
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} vs {nominal:?}");
            nominals.push(nominal.as_millis());
        }
        assert_eq!(
            nominals,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
        b.reset();
        assert_eq!(b.nominal(), Duration::from_millis(100));
    }

    #[test]
    fn backoff_never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        for _ in 0..100 {
            let _ = b.next_delay();
        }
    }

    #[test]
    fn stale_lease_and_refusals_are_not_retried() {
        assert_eq!(classify(Code::FailedPrecondition), Failure::LeaseLost);
        assert_eq!(classify(Code::NotFound), Failure::LeaseLost);
        assert_eq!(classify(Code::InvalidArgument), Failure::Refused);
        assert_eq!(classify(Code::ResourceExhausted), Failure::Refused);
        assert_eq!(classify(Code::Unavailable), Failure::Transient);
        assert_eq!(classify(Code::DeadlineExceeded), Failure::Transient);
        assert!(lease_failure_is_fatal(Code::Unauthenticated));
        assert!(!lease_failure_is_fatal(Code::Unavailable));
    }
}
