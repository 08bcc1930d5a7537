//! The contract's messages as the page's JSON. Bytes (payload, result,
//! checkpoint) are shown as text when they are UTF-8, else as hex.

use jobctl_proto::v1::{self, EventKind, JobState};
use serde_json::{Value, json};

pub fn state(n: i32) -> &'static str {
    JobState::try_from(n)
        .unwrap_or(JobState::Unspecified)
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
}

fn ms(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) if t.seconds > 0 => json!(t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
        _ => Value::Null,
    }
}

fn bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!({ "text": s }),
        Err(_) => json!({ "hex": hex::encode(b) }),
    }
}

fn progress(p: &Option<v1::Progress>) -> Value {
    match p {
        Some(p) => json!({
            "percent": p.percent,
            "current": p.current,
            "total": p.total,
            "message": p.message,
        }),
        None => Value::Null,
    }
}

fn error(e: &Option<v1::JobError>) -> Value {
    match e {
        Some(e) => json!({ "message": e.message, "code": e.code, "details": e.details }),
        None => Value::Null,
    }
}

pub fn stats(q: &v1::GetQueueStatsResponse) -> Value {
    json!({
        "queue": q.queue,
        "scheduled": q.scheduled,
        "queued": q.queued,
        "running": q.running,
        "failed": q.failed,
        "finished": q.finished,
        "paused": q.paused,
    })
}

/// What a row of a job list shows.
pub fn job_summary(j: &v1::Job) -> Value {
    json!({
        "id": j.id,
        "queue": j.queue,
        "kind": j.kind,
        "state": state(j.state),
        "attempt": j.attempt,
        "max_attempts": j.max_attempts,
        "progress": progress(&j.progress),
        "labels": j.labels,
        "created_at": ms(&j.created_at),
        "updated_at": ms(&j.updated_at),
        "cancel_requested": j.cancel_requested,
    })
}

/// The whole job, for its page.
pub fn job(j: &v1::Job) -> Value {
    let mut v = job_summary(j);
    let more = json!({
        "payload": bytes(&j.payload),
        "result": bytes(&j.result),
        "error": error(&j.error),
        "priority": j.priority,
        "cancel_reason": j.cancel_reason,
        "idempotency_key": j.idempotency_key,
        "worker_id": j.worker_id,
        "last_seq": j.last_seq,
        "checkpoint": j.checkpoint.as_deref().map(bytes),
        "run_at": ms(&j.run_at),
        "started_at": ms(&j.started_at),
        "finished_at": ms(&j.finished_at),
        "lease_expires_at": ms(&j.lease_expires_at),
        "expires_at": ms(&j.expires_at),
    });
    if let (Value::Object(v), Value::Object(more)) = (&mut v, more) {
        v.extend(more);
    }
    v
}

pub fn event(e: &v1::JobEvent) -> Value {
    let kind = EventKind::try_from(e.kind)
        .unwrap_or(EventKind::Unspecified)
        .as_str_name()
        .trim_start_matches("EVENT_KIND_");
    json!({
        "seq": e.seq,
        "kind": kind,
        "state": state(e.state),
        "progress": progress(&e.progress),
        "time": ms(&e.time),
        "attempt": e.attempt,
        "error": error(&e.error),
        "result": if e.result.is_empty() { Value::Null } else { bytes(&e.result) },
    })
}
