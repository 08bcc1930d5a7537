//! What a submit says about the job: [`SubmitOptions`] and [`RetryPolicy`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use jobctl_proto::v1::{self as pb, submit_request::Schedule};

use crate::error::{Error, Result};

/// A job to submit: its queue, kind and payload, and how it should run.
///
/// Everything left unset takes the server's default.
///
/// ```
/// use std::time::Duration;
/// use jobctl_client::SubmitOptions;
///
/// let request = SubmitOptions::new("default", "send_email")
///     .payload(br#"{"to":"a@example.com"}"#.to_vec())
///     .priority(5)
///     .delay(Duration::from_secs(10))
///     .label("tenant", "acme")
///     .into_request()
///     .unwrap();
/// assert_eq!(request.queue, "default");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitOptions {
    queue: String,
    kind: String,
    payload: Vec<u8>,
    priority: i32,
    schedule: Option<When>,
    max_attempts: u32,
    retry: Option<RetryPolicy>,
    lease_ttl: Option<Duration>,
    timeout: Option<Duration>,
    idempotency_key: String,
    labels: HashMap<String, String>,
    retention: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum When {
    At(SystemTime),
    After(Duration),
}

impl SubmitOptions {
    /// A job of `kind` on `queue`, with an empty payload and server defaults.
    pub fn new(queue: impl Into<String>, kind: impl Into<String>) -> Self {
        SubmitOptions {
            queue: queue.into(),
            kind: kind.into(),
            payload: Vec::new(),
            priority: 0,
            schedule: None,
            max_attempts: 0,
            retry: None,
            lease_ttl: None,
            timeout: None,
            idempotency_key: String::new(),
            labels: HashMap::new(),
            retention: None,
        }
    }

    /// The bytes handed to the handler.
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// Higher runs first; the server accepts -1000 to 1000 (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Run no sooner than `delay` from now (by the server's clock).
    /// Replaces an earlier [`run_at`](Self::run_at).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.schedule = Some(When::After(delay));
        self
    }

    /// Run no sooner than `at`. Replaces an earlier [`delay`](Self::delay).
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.schedule = Some(When::At(at));
        self
    }

    /// Attempts in all, including the first.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The backoff between attempts.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    /// How long a lease lasts without a heartbeat.
    pub fn lease_ttl(mut self, lease_ttl: Duration) -> Self {
        self.lease_ttl = Some(lease_ttl);
        self
    }

    /// The longest a single attempt may run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Submits with the same key on the same queue give the same job.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = key.into();
        self
    }

    /// Adds a label; a second label with the same key replaces the first.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds labels; see [`label`](Self::label).
    pub fn labels<K, V>(mut self, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.labels
            .extend(labels.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// How long the job's record and history are kept after it ends.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// The wire request. Fails with [`Error::InvalidArgument`] only when a
    /// duration or time cannot be expressed in protobuf (hundreds of years);
    /// every other limit is the server's to check.
    pub fn into_request(self) -> Result<pb::SubmitRequest> {
        let schedule = match self.schedule {
            None => None,
            Some(When::At(at)) => Some(Schedule::RunAt(at.into())),
            Some(When::After(delay)) => Some(Schedule::Delay(duration("delay", delay)?)),
        };
        Ok(pb::SubmitRequest {
            queue: self.queue,
            kind: self.kind,
            payload: self.payload,
            priority: self.priority,
            schedule,
            max_attempts: self.max_attempts,
            retry: self.retry.map(RetryPolicy::into_proto).transpose()?,
            lease_ttl: optional_duration("lease_ttl", self.lease_ttl)?,
            timeout: optional_duration("timeout", self.timeout)?,
            idempotency_key: self.idempotency_key,
            labels: self.labels,
            retention: optional_duration("retention", self.retention)?,
        })
    }
}

impl TryFrom<SubmitOptions> for pb::SubmitRequest {
    type Error = Error;

    fn try_from(options: SubmitOptions) -> Result<Self> {
        options.into_request()
    }
}

/// Exponential backoff between attempts:
/// `delay(n) = min(max_backoff, initial_backoff * multiplier^(n-1))`, then
/// randomised by ± `jitter` (a fraction between 0 and 1).
///
/// `None` fields take the server's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RetryPolicy {
    /// The delay before the second attempt.
    pub initial_backoff: Option<Duration>,
    /// The longest delay between attempts.
    pub max_backoff: Option<Duration>,
    /// The factor each delay grows by.
    pub multiplier: Option<f64>,
    /// The fraction (0 to 1) by which each delay is randomised.
    pub jitter: Option<f64>,
}

impl RetryPolicy {
    /// The wire message; unset numbers are sent as 0 (the server default).
    pub fn into_proto(self) -> Result<pb::RetryPolicy> {
        Ok(pb::RetryPolicy {
            initial_backoff: optional_duration("retry.initial_backoff", self.initial_backoff)?,
            max_backoff: optional_duration("retry.max_backoff", self.max_backoff)?,
            multiplier: self.multiplier.unwrap_or(0.0),
            jitter: self.jitter.unwrap_or(0.0),
        })
    }
}

fn duration(field: &str, d: Duration) -> Result<prost_types::Duration> {
    prost_types::Duration::try_from(d)
        .map_err(|_| Error::InvalidArgument(format!("{field}: duration {d:?} is too long")))
}

fn optional_duration(field: &str, d: Option<Duration>) -> Result<Option<prost_types::Duration>> {
    d.map(|d| duration(field, d)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_leave_everything_to_the_server() {
        let req = SubmitOptions::new("q", "k").into_request().unwrap();
        assert_eq!(
            req,
            pb::SubmitRequest {
                queue: "q".into(),
                kind: "k".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn every_option_reaches_the_request() {
        let req = SubmitOptions::new("q", "k")
            .payload(b"hi".to_vec())
            .priority(-3)
            .delay(Duration::from_millis(1500))
            .max_attempts(7)
            .retry(RetryPolicy {
                initial_backoff: Some(Duration::from_secs(1)),
                max_backoff: None,
                multiplier: Some(2.0),
                jitter: None,
            })
            .lease_ttl(Duration::from_secs(30))
            .timeout(Duration::from_secs(300))
            .idempotency_key("key")
            .label("a", "1")
            .labels([("b", "2")])
            .retention(Duration::from_secs(86400))
            .into_request()
            .unwrap();
        assert_eq!(req.payload, b"hi");
        assert_eq!(req.priority, -3);
        assert_eq!(
            req.schedule,
            Some(Schedule::Delay(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            }))
        );
        assert_eq!(req.max_attempts, 7);
        let retry = req.retry.unwrap();
        assert_eq!(retry.initial_backoff.unwrap().seconds, 1);
        assert_eq!(retry.max_backoff, None);
        assert_eq!(retry.multiplier, 2.0);
        assert_eq!(retry.jitter, 0.0);
        assert_eq!(req.lease_ttl.unwrap().seconds, 30);
        assert_eq!(req.timeout.unwrap().seconds, 300);
        assert_eq!(req.idempotency_key, "key");
        assert_eq!(req.labels.len(), 2);
        assert_eq!(req.labels["b"], "2");
        assert_eq!(req.retention.unwrap().seconds, 86400);
    }

    #[test]
    fn the_last_of_delay_and_run_at_wins() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let req = SubmitOptions::new("q", "k")
            .delay(Duration::from_secs(5))
            .run_at(at)
            .into_request()
            .unwrap();
        assert_eq!(
            req.schedule,
            Some(Schedule::RunAt(prost_types::Timestamp {
                seconds: 2_000_000_000,
                nanos: 0
            }))
        );
    }

    #[test]
    fn an_unrepresentable_duration_names_its_field() {
        let err = SubmitOptions::new("q", "k")
            .lease_ttl(Duration::MAX)
            .into_request()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)));
        assert!(err.to_string().starts_with("lease_ttl: "), "{err}");
    }
}
