//! A schedule's spec, validated: when it fires (a cron expression in a time
//! zone, or a fixed interval) and the job it submits. Every limit is checked
//! here, before anything is written; the fire times are pure functions of
//! the spec, so every replica computes the same ones.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jobctl_proto::v1::{self, CatchupPolicy, OverlapPolicy};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::{NewJob, Validator, duration_ms};

/// The catch-up window when a spec gives none.
pub const DEFAULT_CATCHUP_WINDOW_MS: u64 = 60_000;
/// The shortest interval.
pub const MIN_INTERVAL_MS: u64 = 1_000;

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// When a schedule fires.
#[derive(Clone, Debug)]
pub enum Timing {
    Cron { cron: Box<Cron>, zone: Tz },
    Interval { every_ms: u64, offset_ms: u64 },
}

/// A validated schedule spec.
#[derive(Clone, Debug)]
pub struct Spec {
    pub timing: Timing,
    /// The job template, checked against the Submit limits.
    pub template: v1::SubmitRequest,
    pub jitter_ms: u64,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    pub overlap: OverlapPolicy,
    pub catchup: CatchupPolicy,
    pub catchup_window_ms: u64,
}

/// A protobuf timestamp as ms since the epoch (not before 1970).
fn timestamp_ms(field: &'static str, t: &prost_types::Timestamp) -> Result<u64> {
    if !(0..=253_402_299_999).contains(&t.seconds) || !(0..=999_999_999).contains(&t.nanos) {
        return Err(invalid(
            field,
            "is not a valid timestamp (from 1970 to 9999)",
        ));
    }
    Ok(t.seconds.unsigned_abs() * 1000 + u64::from(t.nanos.unsigned_abs() / 1_000_000))
}

/// The field of a template's violation, as a field of the schedule spec.
fn template_field(field: &'static str) -> &'static str {
    match field {
        "queue" => "spec.template.queue",
        "kind" => "spec.template.kind",
        "payload" => "spec.template.payload",
        "priority" => "spec.template.priority",
        "max_attempts" => "spec.template.max_attempts",
        "retry.initial_backoff" => "spec.template.retry.initial_backoff",
        "retry.max_backoff" => "spec.template.retry.max_backoff",
        "retry.multiplier" => "spec.template.retry.multiplier",
        "retry.jitter" => "spec.template.retry.jitter",
        "lease_ttl" => "spec.template.lease_ttl",
        "timeout" => "spec.template.timeout",
        "retention" => "spec.template.retention",
        "idempotency_key" => "spec.template.idempotency_key",
        "labels" => "spec.template.labels",
        _ => "spec.template",
    }
}

/// The idempotency key of the job a fire time makes: the schedule's name
/// and the fire time, so a fire time makes one job whoever fires it.
pub fn fire_key(name: &str, fire_ms: u64) -> String {
    format!("schedule:{name}:{fire_ms}")
}

impl Spec {
    /// Validates a spec (`name` is the schedule's name, for the longest
    /// idempotency key its jobs will carry).
    pub fn validate(
        validator: &Validator,
        name: &str,
        raw: Option<&v1::ScheduleSpec>,
    ) -> Result<Spec> {
        let raw = raw.ok_or_else(|| invalid("spec", "is required"))?;
        let horizon = u64::try_from(validator.limits.max_horizon.as_millis()).unwrap_or(u64::MAX);
        let timing = match &raw.timing {
            None => {
                return Err(invalid(
                    "spec.timing",
                    "needs a cron expression or an interval",
                ));
            }
            Some(Timing_::Cron(c)) => {
                let zone = match c.time_zone.as_str() {
                    "" => Tz::UTC,
                    z => Tz::from_str(z).map_err(|_| {
                        invalid(
                            "spec.cron.time_zone",
                            format!(
                                "{:?} is not an IANA time zone",
                                z.chars().take(64).collect::<String>()
                            ),
                        )
                    })?,
                };
                if c.expression.len() > 256 {
                    return Err(invalid("spec.cron.expression", "is longer than 256 bytes"));
                }
                let fields = c.expression.split_whitespace().count();
                let aliased = c.expression.trim_start().starts_with('@');
                if !aliased && !(5..=6).contains(&fields) {
                    return Err(invalid(
                        "spec.cron.expression",
                        format!(
                            "has {fields} fields; a cron expression has 5, or 6 with seconds first"
                        ),
                    ));
                }
                let cron = CronParser::builder()
                    .seconds(Seconds::Optional)
                    .year(Year::Disallowed)
                    .build()
                    .parse(&c.expression)
                    .map_err(|e| invalid("spec.cron.expression", e.to_string()))?;
                Timing::Cron {
                    cron: Box::new(cron),
                    zone,
                }
            }
            Some(Timing_::Interval(i)) => {
                let every_ms = match &i.every {
                    None => return Err(invalid("spec.interval.every", "is required")),
                    Some(d) => duration_ms("spec.interval.every", d)?,
                };
                if every_ms < MIN_INTERVAL_MS {
                    return Err(invalid(
                        "spec.interval.every",
                        "must be at least one second",
                    ));
                }
                if every_ms > horizon {
                    return Err(invalid(
                        "spec.interval.every",
                        "is beyond the longest allowed delay",
                    ));
                }
                let offset_ms = match &i.offset {
                    None => 0,
                    Some(d) => duration_ms("spec.interval.offset", d)?,
                };
                if offset_ms >= every_ms {
                    return Err(invalid(
                        "spec.interval.offset",
                        "must be shorter than spec.interval.every",
                    ));
                }
                Timing::Interval {
                    every_ms,
                    offset_ms,
                }
            }
        };
        let mut template = raw
            .template
            .clone()
            .ok_or_else(|| invalid("spec.template", "is required"))?;
        if !template.idempotency_key.is_empty() {
            return Err(invalid(
                "spec.template.idempotency_key",
                "must be empty: each fire time's job gets its own key",
            ));
        }
        if template.schedule.is_some() {
            return Err(invalid(
                "spec.template.run_at",
                "must be unset: the schedule says when its jobs run",
            ));
        }
        // The template as each fire will submit it, with the longest key.
        let mut probe = template.clone();
        probe.idempotency_key = fire_key(name, u64::MAX);
        validator
            .submit(probe, BTreeMap::new())
            .map_err(|e| match e {
                Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                    field: template_field(field),
                    reason,
                },
                Error::TooLarge { field, size, limit } => Error::InvalidArgument {
                    field: template_field(field),
                    reason: format!("is {size} bytes, over the limit of {limit}"),
                },
                other => other,
            })?;
        template.idempotency_key.clear();
        let jitter_ms = match &raw.jitter {
            None => 0,
            Some(d) => duration_ms("spec.jitter", d)?,
        };
        if jitter_ms > horizon {
            return Err(invalid(
                "spec.jitter",
                "is beyond the longest allowed delay",
            ));
        }
        let start_ms = raw
            .start_time
            .as_ref()
            .map(|t| timestamp_ms("spec.start_time", t))
            .transpose()?;
        let end_ms = raw
            .end_time
            .as_ref()
            .map(|t| timestamp_ms("spec.end_time", t))
            .transpose()?;
        if let (Some(s), Some(e)) = (start_ms, end_ms)
            && e <= s
        {
            return Err(invalid("spec.end_time", "must be after spec.start_time"));
        }
        let overlap = OverlapPolicy::try_from(raw.overlap)
            .map_err(|_| invalid("spec.overlap", "is not an overlap policy"))?;
        let catchup = CatchupPolicy::try_from(raw.catchup)
            .map_err(|_| invalid("spec.catchup", "is not a catch-up policy"))?;
        let catchup_window_ms = match &raw.catchup_window {
            None if catchup == CatchupPolicy::RunAll => u64::MAX,
            None => DEFAULT_CATCHUP_WINDOW_MS,
            Some(d) => duration_ms("spec.catchup_window", d)?,
        };
        if catchup_window_ms > horizon && catchup_window_ms != u64::MAX {
            return Err(invalid(
                "spec.catchup_window",
                "is beyond the longest allowed delay",
            ));
        }
        let spec = Spec {
            timing,
            template,
            jitter_ms,
            start_ms,
            end_ms,
            overlap: match overlap {
                OverlapPolicy::Unspecified => OverlapPolicy::Skip,
                o => o,
            },
            catchup: match catchup {
                CatchupPolicy::Unspecified => CatchupPolicy::SkipMissed,
                c => c,
            },
            catchup_window_ms,
        };
        // A cron expression that names no real time (30 February) would
        // never fire: say so now.
        if let Timing::Cron { .. } = spec.timing
            && spec
                .next_after(start_ms.unwrap_or(0).saturating_sub(1))
                .is_none()
            && end_ms.is_none()
        {
            return Err(invalid("spec.cron.expression", "never matches a time"));
        }
        Ok(spec)
    }

    /// Decodes and validates a stored spec.
    pub fn decode(
        validator: &Validator,
        name: &str,
        bytes: &[u8],
    ) -> Result<(Spec, v1::ScheduleSpec)> {
        let raw = v1::ScheduleSpec::decode(bytes)
            .map_err(|e| Error::Corrupt(format!("schedule spec: {e}")))?;
        let spec = Spec::validate(validator, name, Some(&raw))?;
        Ok((spec, raw))
    }

    /// The first fire time strictly after `after_ms`, within the start and
    /// end times; None when there is none.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        let from = match self.start_ms {
            Some(s) if s > after_ms => s - 1,
            _ => after_ms,
        };
        let next = match &self.timing {
            Timing::Interval {
                every_ms,
                offset_ms,
            } => {
                // The smallest offset + k * every above `from`.
                let k = if from < *offset_ms {
                    0
                } else {
                    (from - offset_ms) / every_ms + 1
                };
                offset_ms.checked_add(k.checked_mul(*every_ms)?)?
            }
            Timing::Cron { cron, zone } => {
                // Fire times are whole seconds: search after the second
                // `from` falls in.
                let secs = i64::try_from(from / 1000).ok()?;
                let at: DateTime<Tz> =
                    zone.from_utc_datetime(&DateTime::<Utc>::from_timestamp(secs, 0)?.naive_utc());
                let next = cron.find_next_occurrence(&at, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()?
            }
        };
        match self.end_ms {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }

    /// The latest fire time at or before `until_ms` and after `after_ms`.
    pub fn last_until(&self, after_ms: u64, until_ms: u64) -> Option<u64> {
        let until = match self.end_ms {
            Some(end) => end.min(until_ms),
            None => until_ms,
        };
        let first = self.next_after(after_ms)?;
        if first > until {
            return None;
        }
        let last = match &self.timing {
            Timing::Interval {
                every_ms,
                offset_ms,
            } => offset_ms + (until - offset_ms) / every_ms * every_ms,
            Timing::Cron { cron, zone } => {
                let secs = i64::try_from(until / 1000).ok()?;
                let at: DateTime<Tz> =
                    zone.from_utc_datetime(&DateTime::<Utc>::from_timestamp(secs, 0)?.naive_utc());
                let prev = cron.find_previous_occurrence(&at, true).ok()?;
                u64::try_from(prev.timestamp_millis()).ok()?
            }
        };
        Some(last.max(first))
    }

    /// How many fire times lie in (after_ms, before_ms), counted up to
    /// `cap`.
    pub fn count_between(&self, after_ms: u64, before_ms: u64, cap: u64) -> u64 {
        if let Timing::Interval {
            every_ms,
            offset_ms,
        } = &self.timing
            && self.start_ms.is_none()
            && self.end_ms.is_none()
        {
            let Some(first) = self.next_after(after_ms) else {
                return 0;
            };
            if first >= before_ms {
                return 0;
            }
            let _ = offset_ms;
            return ((before_ms - 1 - first) / every_ms + 1).min(cap);
        }
        let mut n = 0;
        let mut at = after_ms;
        while n < cap {
            match self.next_after(at) {
                Some(t) if t < before_ms => {
                    n += 1;
                    at = t;
                }
                _ => break,
            }
        }
        n
    }

    /// The next `n` fire times after `after_ms`.
    pub fn upcoming(&self, after_ms: u64, n: usize) -> Vec<u64> {
        let mut out = Vec::with_capacity(n);
        let mut at = after_ms;
        while out.len() < n {
            match self.next_after(at) {
                Some(t) => {
                    out.push(t);
                    at = t;
                }
                None => break,
            }
        }
        out
    }

    /// The delay of the job of fire time `fire_ms` after it: the same for
    /// the same schedule and fire time in every replica.
    pub fn jitter_for(&self, id: &str, fire_ms: u64) -> u64 {
        if self.jitter_ms == 0 {
            return 0;
        }
        let mut h = Sha256::new();
        h.update(id.as_bytes());
        h.update(fire_ms.to_le_bytes());
        let d = h.finalize();
        let mut n = [0u8; 8];
        n.copy_from_slice(&d[..8]);
        u64::from_le_bytes(n) % (self.jitter_ms + 1)
    }

    /// The job fire time `fire_ms` makes (or a TriggerSchedule, with `key`).
    pub fn job(
        &self,
        validator: &Validator,
        id: &str,
        key: String,
        fire_ms: u64,
    ) -> Result<NewJob> {
        let mut template = self.template.clone();
        template.idempotency_key = key;
        let mut job = validator.submit(template, BTreeMap::new())?;
        let jitter = self.jitter_for(id, fire_ms);
        if jitter > 0 && fire_ms > 0 {
            job.run_at_ms = fire_ms + jitter;
        }
        Ok(job)
    }
}

use v1::schedule_spec::Timing as Timing_;

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

    fn cron(expression: &str, zone: &str) -> v1::ScheduleSpec {
        v1::ScheduleSpec {
            timing: Some(Timing_::Cron(v1::CronTiming {
                expression: expression.into(),
                time_zone: zone.into(),
            })),
            template: Some(v1::SubmitRequest {
                queue: "reports".into(),
                kind: "build".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ms(rfc3339: &str) -> u64 {
        u64::try_from(
            DateTime::parse_from_rfc3339(rfc3339)
                .expect("valid time")
                .timestamp_millis(),
        )
        .expect("after 1970")
    }

    fn fires_between(spec: &Spec, from: &str, to: &str) -> Vec<u64> {
        let (from, to) = (ms(from), ms(to));
        spec.upcoming(from, 1000)
            .into_iter()
            .take_while(|t| *t <= to)
            .collect()
    }

    #[test]
    fn a_time_in_the_skipped_hour_fires_once_on_the_spring_forward_day() {
        let v = validator();
        let spec = Spec::validate(&v, "r", Some(&cron("0 30 2 * * *", "America/New_York")))
            .expect("valid");
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist.
        let day = fires_between(
            &spec,
            "2026-03-08T00:00:00-05:00",
            "2026-03-08T23:59:59-04:00",
        );
        assert_eq!(day.len(), 1, "{day:?}");
        // The days around it fire at 02:30 local.
        assert_eq!(
            fires_between(
                &spec,
                "2026-03-07T00:00:00-05:00",
                "2026-03-07T23:59:59-05:00"
            ),
            vec![ms("2026-03-07T02:30:00-05:00")]
        );
        assert_eq!(
            fires_between(
                &spec,
                "2026-03-09T00:00:00-04:00",
                "2026-03-09T23:59:59-04:00"
            ),
            vec![ms("2026-03-09T02:30:00-04:00")]
        );
    }

    #[test]
    fn a_time_in_the_repeated_hour_fires_once_on_the_fall_back_day() {
        let v = validator();
        let spec =
            Spec::validate(&v, "r", Some(&cron("30 1 * * *", "America/New_York"))).expect("valid");
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
        let day = fires_between(
            &spec,
            "2026-11-01T00:00:00-04:00",
            "2026-11-01T23:59:59-05:00",
        );
        assert_eq!(day, vec![ms("2026-11-01T01:30:00-04:00")]);
    }

    #[test]
    fn six_fields_fire_every_second_and_five_every_minute() {
        let v = validator();
        let secs = Spec::validate(&v, "r", Some(&cron("* * * * * *", ""))).expect("valid");
        let t = ms("2026-01-01T00:00:00.300Z");
        assert_eq!(secs.upcoming(t, 3), vec![t + 700, t + 1700, t + 2700]);
        let mins = Spec::validate(&v, "r", Some(&cron("*/5 * * * *", "UTC"))).expect("valid");
        assert_eq!(
            mins.upcoming(t, 2),
            vec![ms("2026-01-01T00:05:00Z"), ms("2026-01-01T00:10:00Z")]
        );
        assert_eq!(
            mins.last_until(t, ms("2026-01-01T00:17:00Z")),
            Some(ms("2026-01-01T00:15:00Z"))
        );
        assert_eq!(mins.count_between(t, ms("2026-01-01T00:15:00Z"), 100), 2);
    }

    #[test]
    fn intervals_are_aligned_to_the_epoch_and_bounded_by_start_and_end() {
        let v = validator();
        let mut raw = cron("", "");
        raw.timing = Some(Timing_::Interval(v1::IntervalTiming {
            every: Some(prost_types::Duration {
                seconds: 10,
                nanos: 0,
            }),
            offset: Some(prost_types::Duration {
                seconds: 3,
                nanos: 0,
            }),
        }));
        raw.start_time = Some(prost_types::Timestamp {
            seconds: 100,
            nanos: 0,
        });
        raw.end_time = Some(prost_types::Timestamp {
            seconds: 130,
            nanos: 0,
        });
        let spec = Spec::validate(&v, "r", Some(&raw)).expect("valid");
        assert_eq!(spec.upcoming(0, 10), vec![103_000, 113_000, 123_000]);
        assert_eq!(spec.last_until(0, 125_000), Some(123_000));
        assert_eq!(spec.count_between(0, 123_000, 100), 2);
    }

    #[test]
    fn bad_specs_name_the_field() {
        let v = validator();
        let mut cases: Vec<(&str, v1::ScheduleSpec)> = vec![
            ("spec.cron.expression", cron("61 * * * *", "")),
            ("spec.cron.expression", cron("* * * *", "")),
            ("spec.cron.expression", cron("0 0 0 * * * 2030", "")),
            ("spec.cron.expression", cron("0 0 30 2 *", "")),
            ("spec.cron.time_zone", cron("* * * * *", "Mars/Olympus")),
        ];
        let mut interval = cron("", "");
        interval.timing = Some(Timing_::Interval(v1::IntervalTiming {
            every: Some(prost_types::Duration {
                seconds: 0,
                nanos: 0,
            }),
            offset: None,
        }));
        cases.push(("spec.interval.every", interval));
        let mut big = cron("* * * * *", "");
        if let Some(t) = big.template.as_mut() {
            t.payload = vec![0; 10 << 20];
        }
        cases.push(("spec.template.payload", big));
        let mut keyed = cron("* * * * *", "");
        if let Some(t) = keyed.template.as_mut() {
            t.idempotency_key = "k".into();
        }
        cases.push(("spec.template.idempotency_key", keyed));
        let mut no_template = cron("* * * * *", "");
        no_template.template = None;
        cases.push(("spec.template", no_template));
        let mut overlap = cron("* * * * *", "");
        overlap.overlap = 99;
        cases.push(("spec.overlap", overlap));
        for (field, raw) in cases {
            match Spec::validate(&v, "r", Some(&raw)) {
                Err(Error::InvalidArgument { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
