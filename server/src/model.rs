//! Validated requests: what the API layer hands the store. Every limit is
//! checked here, before anything is written.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobctl_proto::v1::{self, submit_request::Schedule};
use sha2::{Digest, Sha256};

use crate::config::{JobDefaults, Limits};
use crate::error::{Error, Result};
use crate::keys::{JobId, is_valid_name};

/// Lowest and highest job priority.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// A job to create, with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct NewJob {
    pub id: JobId,
    pub kind: String,
    pub payload: Vec<u8>,
    pub priority: i32,
    /// Milliseconds since the epoch; 0 for none.
    pub run_at_ms: u64,
    pub delay_ms: u64,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub lease_ttl_ms: u64,
    /// 0 for none.
    pub timeout_ms: u64,
    pub retention_ms: u64,
    pub idempotency_key: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// W3C trace context and request id of the submitter.
    pub trace_context: BTreeMap<String, String>,
    /// Identifies the request, to tell a retried submit from a conflicting
    /// one: the hex SHA-256 of everything it asks for, when it has an
    /// idempotency key (empty without one).
    pub request_hash: String,
}

impl NewJob {
    pub fn queue(&self) -> &str {
        self.id.queue()
    }
}

/// Retry backoff of a job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub multiplier: f64,
    pub jitter: f64,
}

/// Checks requests against the limits and fills in defaults.
#[derive(Clone, Debug)]
pub struct Validator {
    pub limits: Limits,
    pub defaults: JobDefaults,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// A non-negative protobuf duration in milliseconds.
/// Largest `seconds` of a valid protobuf Duration (10,000 years).
const MAX_DURATION_SECONDS: i64 = 315_576_000_000;
/// Range of `seconds` of a valid protobuf Timestamp (years 1 to 9999).
const TIMESTAMP_SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_299_999;

/// A non-negative protobuf duration in milliseconds. Only canonical
/// durations are accepted: |nanos| below one second, and seconds and nanos
/// not of opposite signs (as the protobuf spec requires).
pub fn duration_ms(field: &'static str, d: &prost_types::Duration) -> Result<u64> {
    if d.seconds.abs() > MAX_DURATION_SECONDS
        || d.nanos.abs() > 999_999_999
        || (d.seconds > 0 && d.nanos < 0)
        || (d.seconds < 0 && d.nanos > 0)
    {
        return Err(invalid(field, "is not a valid protobuf Duration"));
    }
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    let d = Duration::new(d.seconds.unsigned_abs(), d.nanos.unsigned_abs());
    u64::try_from(d.as_millis()).map_err(|_| invalid(field, "is too long"))
}

/// A protobuf timestamp as a time, if it is a valid one (nanos in
/// 0..1e9, years 1 to 9999).
fn timestamp(field: &'static str, t: &prost_types::Timestamp) -> Result<SystemTime> {
    if !TIMESTAMP_SECONDS.contains(&t.seconds) || !(0..=999_999_999).contains(&t.nanos) {
        return Err(invalid(field, "is not a valid protobuf Timestamp"));
    }
    SystemTime::try_from(*t).map_err(|_| invalid(field, "is not a valid timestamp"))
}

mod listing;

pub use listing::page_token;

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Validator {
    /// A queue name: 1 to max_name_bytes of `[A-Za-z0-9_.-]`.
    pub fn queue(&self, field: &'static str, queue: &str) -> Result<()> {
        if queue.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if queue.len() > self.limits.max_name_bytes {
            return Err(invalid(
                field,
                format!("is longer than {} bytes", self.limits.max_name_bytes),
            ));
        }
        if !is_valid_name(queue) {
            return Err(invalid(
                field,
                "may hold only A-Z, a-z, 0-9, '_', '.' and '-'",
            ));
        }
        Ok(())
    }

    /// A name of free text (kind, worker id): 1 to max_name_bytes, no control characters.
    pub fn name(&self, field: &'static str, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if name.len() > self.limits.max_name_bytes {
            return Err(invalid(
                field,
                format!("is longer than {} bytes", self.limits.max_name_bytes),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid(field, "must not hold control characters"));
        }
        Ok(())
    }

    /// A free-text message (progress message, cancel reason).
    pub fn message(&self, field: &'static str, text: &str) -> Result<()> {
        if text.len() > self.limits.max_message_bytes {
            return Err(invalid(
                field,
                format!("is longer than {} bytes", self.limits.max_message_bytes),
            ));
        }
        Ok(())
    }

    pub fn size(&self, field: &'static str, size: usize, limit: usize) -> Result<()> {
        if size > limit {
            return Err(Error::TooLarge { field, size, limit });
        }
        Ok(())
    }

    pub fn checkpoint(&self, checkpoint: Option<&Vec<u8>>) -> Result<()> {
        match checkpoint {
            Some(c) => self.size("checkpoint", c.len(), self.limits.max_checkpoint_bytes),
            None => Ok(()),
        }
    }

    pub fn progress(&self, p: &v1::Progress) -> Result<()> {
        if !(0.0..=100.0).contains(&p.percent) {
            return Err(invalid("progress.percent", "must be between 0 and 100"));
        }
        if p.total > 0 && p.current > p.total {
            return Err(invalid(
                "progress.current",
                "must not exceed progress.total",
            ));
        }
        self.message("progress.message", &p.message)
    }

    pub fn error(&self, e: &v1::JobError) -> Result<()> {
        let size = e.message.len() + e.code.len() + e.details.len();
        self.size("error", size, self.limits.max_error_bytes)
    }

    /// Validates a Submit and fills in the defaults.
    pub fn submit(
        &self,
        req: v1::SubmitRequest,
        trace_context: BTreeMap<String, String>,
    ) -> Result<NewJob> {
        let limits = &self.limits;
        let defaults = &self.defaults;
        self.queue("queue", &req.queue)?;
        self.name("kind", &req.kind)?;
        self.size("payload", req.payload.len(), limits.max_payload_bytes)?;
        if !PRIORITY_RANGE.contains(&req.priority) {
            return Err(invalid(
                "priority",
                format!(
                    "must be between {} and {}",
                    PRIORITY_RANGE.start(),
                    PRIORITY_RANGE.end()
                ),
            ));
        }
        let horizon = ms(limits.max_horizon);
        let (run_at_ms, delay_ms) = match &req.schedule {
            None => (0, 0),
            Some(Schedule::Delay(d)) => {
                let d = duration_ms("delay", d)?;
                if d > horizon {
                    return Err(invalid("delay", "is beyond the longest allowed delay"));
                }
                (0, d)
            }
            Some(Schedule::RunAt(t)) => {
                let at = timestamp("run_at", t)?;
                let at = at
                    .duration_since(UNIX_EPOCH)
                    .map_err(|_| invalid("run_at", "is before 1970"))?;
                let at = ms(at);
                let now = ms(SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default());
                if at > now.saturating_add(horizon) {
                    return Err(invalid("run_at", "is beyond the longest allowed delay"));
                }
                (at.max(1), 0)
            }
        };
        let max_attempts = match req.max_attempts {
            0 => defaults.default_max_attempts,
            n if n > limits.max_attempts => {
                return Err(invalid(
                    "max_attempts",
                    format!("must be at most {}", limits.max_attempts),
                ));
            }
            n => n,
        };
        let backoff = self.backoff(req.retry.as_ref())?;
        let lease_ttl_ms = match &req.lease_ttl {
            None => ms(defaults.default_lease_ttl),
            Some(d) => {
                let v = duration_ms("lease_ttl", d)?;
                if v < ms(limits.min_lease_ttl) || v > ms(limits.max_lease_ttl) {
                    return Err(invalid(
                        "lease_ttl",
                        format!(
                            "must be between {} and {}",
                            humantime::format_duration(limits.min_lease_ttl),
                            humantime::format_duration(limits.max_lease_ttl)
                        ),
                    ));
                }
                v
            }
        };
        let timeout_ms = match &req.timeout {
            None => 0,
            Some(d) => match duration_ms("timeout", d)? {
                0 => {
                    return Err(invalid(
                        "timeout",
                        "must be positive (leave it unset for none)",
                    ));
                }
                v if v > horizon => return Err(invalid("timeout", "is too long")),
                v => v,
            },
        };
        let retention_ms = match &req.retention {
            None => ms(defaults.default_retention),
            Some(d) => match duration_ms("retention", d)? {
                v if v > horizon => {
                    return Err(invalid(
                        "retention",
                        "is beyond the longest allowed retention",
                    ));
                }
                v => v,
            },
        };
        let idempotency_key = match req.idempotency_key.as_str() {
            "" => None,
            k if k.len() > limits.max_idempotency_key_bytes => {
                return Err(invalid(
                    "idempotency_key",
                    format!("is longer than {} bytes", limits.max_idempotency_key_bytes),
                ));
            }
            k if k.chars().any(char::is_control) => {
                return Err(invalid(
                    "idempotency_key",
                    "must not hold control characters",
                ));
            }
            k => Some(k.to_owned()),
        };
        if req.labels.len() > limits.max_labels {
            return Err(invalid(
                "labels",
                format!("more than {} labels", limits.max_labels),
            ));
        }
        for (k, v) in &req.labels {
            if k.is_empty() || k.len() > limits.max_label_key_bytes {
                return Err(invalid(
                    "labels",
                    format!("a key must be 1 to {} bytes", limits.max_label_key_bytes),
                ));
            }
            if v.len() > limits.max_label_value_bytes {
                return Err(invalid(
                    "labels",
                    format!(
                        "the value of {k:?} is longer than {} bytes",
                        limits.max_label_value_bytes
                    ),
                ));
            }
        }
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        // Only a job with an idempotency key is compared with another.
        let request_hash = if idempotency_key.is_none() {
            String::new()
        } else {
            request_hash(&req.queue, &req.kind, &req.payload, |h| {
                h.update(req.priority.to_le_bytes());
                h.update(run_at_ms.to_le_bytes());
                h.update(delay_ms.to_le_bytes());
                h.update(max_attempts.to_le_bytes());
                h.update(backoff.initial_ms.to_le_bytes());
                h.update(backoff.max_ms.to_le_bytes());
                h.update(backoff.multiplier.to_le_bytes());
                h.update(backoff.jitter.to_le_bytes());
                h.update(lease_ttl_ms.to_le_bytes());
                h.update(timeout_ms.to_le_bytes());
                h.update(retention_ms.to_le_bytes());
                for (k, v) in &labels {
                    field(h, k.as_bytes());
                    field(h, v.as_bytes());
                }
            })
        };
        Ok(NewJob {
            id: JobId::new(&req.queue),
            kind: req.kind,
            payload: req.payload,
            priority: req.priority,
            run_at_ms,
            delay_ms,
            max_attempts,
            backoff,
            lease_ttl_ms,
            timeout_ms,
            retention_ms,
            idempotency_key,
            labels,
            trace_context,
            request_hash,
        })
    }

    fn backoff(&self, retry: Option<&v1::RetryPolicy>) -> Result<Backoff> {
        let d = &self.defaults;
        let Some(r) = retry else {
            return Ok(Backoff {
                initial_ms: ms(d.default_backoff_initial),
                max_ms: ms(d.default_backoff_max).max(ms(d.default_backoff_initial)),
                multiplier: d.default_backoff_multiplier,
                jitter: d.default_backoff_jitter,
            });
        };
        let initial_ms = match &r.initial_backoff {
            Some(v) => duration_ms("retry.initial_backoff", v)?,
            None => ms(d.default_backoff_initial),
        };
        let max_ms = match &r.max_backoff {
            Some(v) => duration_ms("retry.max_backoff", v)?,
            None => ms(d.default_backoff_max).max(initial_ms),
        };
        if max_ms < initial_ms {
            return Err(invalid(
                "retry.max_backoff",
                "must not be below retry.initial_backoff",
            ));
        }
        if max_ms > ms(self.limits.max_horizon) {
            return Err(invalid("retry.max_backoff", "is too long"));
        }
        let multiplier = match r.multiplier {
            0.0 => d.default_backoff_multiplier,
            m if m.is_finite() && (1.0..=100.0).contains(&m) => m,
            _ => return Err(invalid("retry.multiplier", "must be between 1 and 100")),
        };
        if !(r.jitter.is_finite() && (0.0..=1.0).contains(&r.jitter)) {
            return Err(invalid("retry.jitter", "must be between 0 and 1"));
        }
        Ok(Backoff {
            initial_ms,
            max_ms,
            multiplier,
            jitter: r.jitter,
        })
    }
}

fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn request_hash(queue: &str, kind: &str, payload: &[u8], rest: impl FnOnce(&mut Sha256)) -> String {
    let mut h = Sha256::new();
    field(&mut h, queue.as_bytes());
    field(&mut h, kind.as_bytes());
    field(&mut h, payload);
    rest(&mut h);
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::Config;

    fn validator() -> Validator {
        let c = Config::parse_from(["jobctl-server"]);
        Validator {
            limits: c.limits,
            defaults: c.defaults,
        }
    }

    fn req() -> v1::SubmitRequest {
        v1::SubmitRequest {
            queue: "emails".into(),
            kind: "send".into(),
            payload: b"{}".to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn same_request_same_hash_different_payload_different_hash() {
        let v = validator();
        let keyed = || v1::SubmitRequest {
            idempotency_key: "order-1".into(),
            ..req()
        };
        let a = v.submit(keyed(), BTreeMap::new()).expect("valid");
        let b = v.submit(keyed(), BTreeMap::new()).expect("valid");
        assert_eq!(a.request_hash, b.request_hash);
        assert_eq!(a.request_hash.len(), 64, "hex SHA-256");
        assert_ne!(a.id, b.id);
        let mut other = keyed();
        other.payload = b"[]".to_vec();
        let c = v.submit(other, BTreeMap::new()).expect("valid");
        assert_ne!(a.request_hash, c.request_hash);
        // Without a key nothing is compared, so nothing is hashed.
        let plain = v.submit(req(), BTreeMap::new()).expect("valid");
        assert_eq!(plain.request_hash, "");
    }

    #[test]
    fn defaults_are_filled_in() {
        let job = validator().submit(req(), BTreeMap::new()).expect("valid");
        assert_eq!(job.max_attempts, 3);
        assert_eq!(job.lease_ttl_ms, 30_000);
        assert_eq!(job.backoff.initial_ms, 1000);
    }

    fn dur(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn out_of_range_fields_name_the_field() {
        let v = validator();
        type Mutation = Box<dyn Fn(&mut v1::SubmitRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("queue", Box::new(|r| r.queue = "bad queue".into())),
            ("kind", Box::new(|r| r.kind.clear())),
            ("priority", Box::new(|r| r.priority = 5000)),
            ("max_attempts", Box::new(|r| r.max_attempts = 1_000_000)),
            (
                "lease_ttl",
                Box::new(|r| {
                    r.lease_ttl = Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    })
                }),
            ),
            (
                "retry.jitter",
                Box::new(|r| {
                    r.retry = Some(v1::RetryPolicy {
                        jitter: 2.0,
                        ..Default::default()
                    })
                }),
            ),
            (
                "delay",
                Box::new(|r| r.schedule = Some(Schedule::Delay(dur(1, 2_000_000_000)))),
            ),
            (
                "delay",
                Box::new(|r| r.schedule = Some(Schedule::Delay(dur(1, -1)))),
            ),
            (
                "run_at",
                Box::new(|r| {
                    r.schedule = Some(Schedule::RunAt(prost_types::Timestamp {
                        seconds: 1,
                        nanos: -5,
                    }))
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut r = req();
            mutate(&mut r);
            match v.submit(r, BTreeMap::new()) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
