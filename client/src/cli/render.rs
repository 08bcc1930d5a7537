//! Turning answers into text: the human forms and the JSON forms. Pure
//! functions of their input, so the output can be tested without a server.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jobctl_client::Submitted;
use jobctl_client::proto::v1::{
    EventKind, GetQueueStatsResponse, Job, JobError, JobEvent, JobState, Progress,
};
use serde_json::{Value, json};

/// The longest result printed in full by `status`; longer ones are cut.
const MAX_TEXT: usize = 4096;
/// How many bytes of a binary value `status` shows in hex.
const HEX_PREVIEW: usize = 32;
/// How much of the payload `status` shows.
const PAYLOAD_PREVIEW: usize = 80;
/// How much of an error message the `failed` table shows.
const TABLE_ERROR: usize = 60;

/// A state's name without the `JOB_STATE_` prefix: `SUCCEEDED`.
pub fn state_name(state: i32) -> String {
    match JobState::try_from(state) {
        Ok(state) => state
            .as_str_name()
            .trim_start_matches("JOB_STATE_")
            .to_owned(),
        Err(_) => format!("UNKNOWN({state})"),
    }
}

pub fn submitted_human(s: &Submitted) -> String {
    if s.deduplicated {
        format!("duplicate of job {}\n", s.job_id)
    } else {
        format!("submitted job {}\n", s.job_id)
    }
}

pub fn submitted_json(s: &Submitted) -> Value {
    json!({
        "job_id": s.job_id,
        "deduplicated": s.deduplicated,
        "state": state_name(s.state as i32),
    })
}

pub fn cancel_human(job_id: &str, state: i32, cancel_requested: bool) -> String {
    let name = state_name(state);
    if cancel_requested && state != JobState::Cancelled as i32 {
        format!(
            "job {job_id}: {name}, cancellation requested (its worker stops at its next heartbeat)\n"
        )
    } else {
        format!("job {job_id}: {name}\n")
    }
}

pub fn cancel_json(job_id: &str, state: i32, cancel_requested: bool) -> Value {
    json!({
        "job_id": job_id,
        "state": state_name(state),
        "cancel_requested": cancel_requested,
    })
}

pub fn requeue_human(job_id: &str, state: JobState) -> String {
    format!("requeued job {job_id}: {}\n", state_name(state as i32))
}

pub fn requeue_json(job_id: &str, state: JobState) -> Value {
    json!({ "job_id": job_id, "state": state_name(state as i32) })
}

pub fn stats_human(s: &GetQueueStatsResponse) -> String {
    format!(
        "queue      {}\nscheduled  {}\nqueued     {}\nrunning    {}\nfailed     {}\nfinished   {}\npaused     {}\n",
        s.queue, s.scheduled, s.queued, s.running, s.failed, s.finished, s.paused
    )
}

pub fn stats_json(s: &GetQueueStatsResponse) -> Value {
    json!({
        "queue": s.queue,
        "scheduled": s.scheduled,
        "queued": s.queued,
        "running": s.running,
        "failed": s.failed,
        "finished": s.finished,
        "paused": s.paused,
    })
}

/// A job as a JSON object; see `JSON_JOB_HELP` for the conventions.
pub fn job_json(job: &Job) -> Value {
    let labels: BTreeMap<&str, &str> = job
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    json!({
        "id": job.id,
        "queue": job.queue,
        "kind": job.kind,
        "state": state_name(job.state),
        "payload": base64(&job.payload),
        "priority": job.priority,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "progress": job.progress.as_ref().map(progress_json),
        "result": base64(&job.result),
        "error": job.error.as_ref().map(error_json),
        "cancel_requested": job.cancel_requested,
        "cancel_reason": job.cancel_reason,
        "labels": labels,
        "retry": job.retry.as_ref().map(|r| json!({
            "initial_backoff": r.initial_backoff.map(|d| d.to_string()),
            "max_backoff": r.max_backoff.map(|d| d.to_string()),
            "multiplier": r.multiplier,
            "jitter": r.jitter,
        })),
        "lease_ttl": job.lease_ttl.map(|d| d.to_string()),
        "timeout": job.timeout.map(|d| d.to_string()),
        "idempotency_key": job.idempotency_key,
        "worker_id": job.worker_id,
        "last_seq": job.last_seq,
        "checkpoint": job.checkpoint.as_deref().map(base64),
        "created_at": job.created_at.map(|t| t.to_string()),
        "run_at": job.run_at.map(|t| t.to_string()),
        "started_at": job.started_at.map(|t| t.to_string()),
        "finished_at": job.finished_at.map(|t| t.to_string()),
        "updated_at": job.updated_at.map(|t| t.to_string()),
        "lease_expires_at": job.lease_expires_at.map(|t| t.to_string()),
        "expires_at": job.expires_at.map(|t| t.to_string()),
        "retention": job.retention.map(|d| d.to_string()),
    })
}

fn progress_json(p: &Progress) -> Value {
    json!({
        "percent": p.percent,
        "current": p.current,
        "total": p.total,
        "message": p.message,
    })
}

fn error_json(e: &JobError) -> Value {
    json!({
        "message": e.message,
        "code": e.code,
        "details": e.details,
    })
}

/// An event kind's name without the `EVENT_KIND_` prefix: `PROGRESS`.
pub fn kind_name(kind: i32) -> String {
    match EventKind::try_from(kind) {
        Ok(kind) => kind
            .as_str_name()
            .trim_start_matches("EVENT_KIND_")
            .to_owned(),
        Err(_) => format!("UNKNOWN({kind})"),
    }
}

/// An event as one JSON line of `watch --output json` (without the newline),
/// with the conventions of [`job_json`].
pub fn event_json(e: &JobEvent) -> Value {
    json!({
        "seq": e.seq,
        "job_id": e.job_id,
        "kind": kind_name(e.kind),
        "state": state_name(e.state),
        "progress": e.progress.as_ref().map(progress_json),
        "time": e.time.map(|t| t.to_string()),
        "attempt": e.attempt,
        "error": e.error.as_ref().map(error_json),
        "result": base64(&e.result),
    })
}

/// What the progress bar says next to the bar: the state, then the
/// progress when there is some (`RUNNING  40% (4/10) rendered 4/10`).
pub fn progress_line(state: i32, progress: Option<&Progress>) -> String {
    let state = state_name(state);
    match progress {
        Some(p) if *p != Progress::default() => format!("{state:<9} {}", progress_text(p)),
        _ => state,
    }
}

/// An event as one line for people: `#2 RUNNING (attempt 1)`,
/// `#5 RUNNING 40% (4/10) rendered 4/10`, `#9 RUNNING cancel requested`,
/// `#7 SCHEDULED (attempt 1): s3 timeout [s3_timeout]`.
pub fn event_line(e: &JobEvent) -> String {
    let mut line = format!("#{} {}", e.seq, state_name(e.state));
    match EventKind::try_from(e.kind) {
        Ok(EventKind::Progress) => {
            if let Some(p) = &e.progress {
                let _ = write!(line, " {}", progress_text(p));
            }
        }
        Ok(EventKind::CancelRequested) => line.push_str(" cancel requested"),
        Ok(EventKind::StateChanged) => {
            if e.attempt > 0 {
                let _ = write!(line, " (attempt {})", e.attempt);
            }
        }
        Ok(EventKind::Unspecified) | Err(_) => {
            let _ = write!(line, " {}", kind_name(e.kind));
        }
    }
    if let Some(error) = &e.error {
        let _ = write!(line, ": {}", error_text(error));
    }
    line
}

/// [`event_line`] for logs: with the event's time in front.
pub fn plain_event_line(e: &JobEvent) -> String {
    match e.time {
        Some(time) => format!("{time} {}", event_line(e)),
        None => event_line(e),
    }
}

fn error_text(error: &JobError) -> String {
    let mut text = first_line(&error.message, MAX_TEXT);
    if !error.code.is_empty() {
        let _ = write!(text, " [{}]", error.code);
    }
    text
}

/// How a watched job ended, from its terminal event or (when the watch
/// started after it) from its status.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub job_id: String,
    pub state: i32,
    pub attempt: u32,
    pub result: Vec<u8>,
    pub error: Option<JobError>,
}

impl From<&JobEvent> for Outcome {
    fn from(e: &JobEvent) -> Self {
        Outcome {
            job_id: e.job_id.clone(),
            state: e.state,
            attempt: e.attempt,
            result: e.result.clone(),
            error: e.error.clone(),
        }
    }
}

impl From<&Job> for Outcome {
    fn from(job: &Job) -> Self {
        Outcome {
            job_id: job.id.clone(),
            state: job.state,
            attempt: job.attempt,
            result: job.result.clone(),
            error: job.error.clone(),
        }
    }
}

/// The end of a human `watch`: a summary line for stderr, and the result
/// (text, or its size and a hex preview) for stdout, empty when there is
/// none.
pub fn outcome_human(o: &Outcome) -> (String, String) {
    let mut summary = format!("job {} {}", o.job_id, state_name(o.state));
    if o.attempt > 1 {
        let _ = write!(summary, " after {} attempts", o.attempt);
    }
    if let Some(error) = &o.error {
        let _ = write!(summary, ": {}", error_text(error));
    }
    let stdout = if o.state == JobState::Succeeded as i32 {
        if o.result.is_empty() {
            summary.push_str(" (no result)");
            String::new()
        } else {
            format!("{}\n", bytes_text(&o.result, MAX_TEXT))
        }
    } else {
        String::new()
    };
    summary.push('\n');
    (summary, stdout)
}

/// A job as an aligned block of `name  value` lines.
pub fn job_human(job: &Job) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("job", job.id.clone()),
        ("state", state_name(job.state)),
        ("queue", job.queue.clone()),
        ("kind", job.kind.clone()),
        ("priority", job.priority.to_string()),
    ];
    let attempt = if job.max_attempts > 0 {
        format!("{}/{}", job.attempt, job.max_attempts)
    } else {
        job.attempt.to_string()
    };
    rows.push(("attempt", attempt));
    if let Some(progress) = &job.progress {
        rows.push(("progress", progress_text(progress)));
    }
    let cancel = match (job.cancel_requested, job.cancel_reason.is_empty()) {
        (false, _) => "no".to_owned(),
        (true, true) => "yes".to_owned(),
        (true, false) => format!("yes ({})", job.cancel_reason),
    };
    rows.push(("cancel requested", cancel));
    if !job.labels.is_empty() {
        let labels: BTreeMap<&String, &String> = job.labels.iter().collect();
        let text = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push(("labels", text));
    }
    if !job.worker_id.is_empty() {
        rows.push(("worker", job.worker_id.clone()));
    }
    for (name, time) in [
        ("created", job.created_at),
        ("run at", job.run_at),
        ("started", job.started_at),
        ("finished", job.finished_at),
        ("updated", job.updated_at),
        ("lease expires", job.lease_expires_at),
        ("expires", job.expires_at),
    ] {
        if let Some(time) = time {
            rows.push((name, time.to_string()));
        }
    }
    rows.push(("payload", bytes_text(&job.payload, PAYLOAD_PREVIEW)));
    if !job.result.is_empty() {
        rows.push(("result", bytes_text(&job.result, MAX_TEXT)));
    }
    if let Some(error) = &job.error {
        let mut text = error.message.clone();
        if !error.code.is_empty() {
            let _ = write!(text, " [{}]", error.code);
        }
        rows.push(("error", text));
        if !error.details.is_empty() {
            rows.push(("error details", cut(&error.details, MAX_TEXT)));
        }
    }
    block(&rows)
}

/// The dead letters as a table, or a line saying there are none.
pub fn failed_table(queue: &str, jobs: &[Job]) -> String {
    if jobs.is_empty() {
        return format!("no failed jobs in queue '{queue}'\n");
    }
    let header = ["ID", "KIND", "ATTEMPTS", "FAILED AT", "ERROR"].map(str::to_owned);
    let mut rows = vec![header];
    for job in jobs {
        let failed_at = job
            .finished_at
            .or(job.updated_at)
            .map(|t| t.to_string())
            .unwrap_or_default();
        let error = job
            .error
            .as_ref()
            .map(|e| first_line(&e.message, TABLE_ERROR))
            .unwrap_or_default();
        rows.push([
            job.id.clone(),
            job.kind.clone(),
            format!("{}/{}", job.attempt, job.max_attempts),
            failed_at,
            error,
        ]);
    }
    table(&rows)
}

/// Rows as columns padded to their widest cell (the last is not padded).
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `jobctl jobs list`: one line per job.
pub fn jobs_table(queue: &str, jobs: &[Job]) -> String {
    if jobs.is_empty() {
        return format!("no matching jobs in queue '{queue}' on this page\n");
    }
    let header = ["ID", "KIND", "STATE", "ATTEMPTS", "CREATED", "PROGRESS"].map(str::to_owned);
    let mut rows = vec![header];
    for job in jobs {
        rows.push([
            job.id.clone(),
            job.kind.clone(),
            state_name(job.state),
            format!("{}/{}", job.attempt, job.max_attempts),
            job.created_at.map(|t| t.to_string()).unwrap_or_default(),
            job.progress.as_ref().map(progress_text).unwrap_or_default(),
        ]);
    }
    table(&rows)
}

/// `jobctl queue list`.
pub fn queues_table(queues: &[GetQueueStatsResponse]) -> String {
    if queues.is_empty() {
        return "no queues\n".to_owned();
    }
    let header = [
        "QUEUE",
        "SCHEDULED",
        "QUEUED",
        "RUNNING",
        "FAILED",
        "FINISHED",
        "STATUS",
    ]
    .map(str::to_owned);
    let mut rows = vec![header];
    for q in queues {
        rows.push([
            q.queue.clone(),
            q.scheduled.to_string(),
            q.queued.to_string(),
            q.running.to_string(),
            q.failed.to_string(),
            q.finished.to_string(),
            if q.paused { "paused" } else { "active" }.to_owned(),
        ]);
    }
    table(&rows)
}

pub fn jobs_json(jobs: &[Job]) -> Value {
    Value::Array(jobs.iter().map(job_json).collect())
}

fn progress_text(p: &Progress) -> String {
    let mut text = if p.percent.fract() == 0.0 {
        format!("{:.0}%", p.percent)
    } else {
        format!("{:.1}%", p.percent)
    };
    if p.total > 0 {
        let _ = write!(text, " ({}/{})", p.current, p.total);
    } else if p.current > 0 {
        let _ = write!(text, " ({})", p.current);
    }
    if !p.message.is_empty() {
        let _ = write!(text, " {}", p.message);
    }
    text
}

/// Bytes for people: the text itself when it is printable UTF-8 (cut after
/// `max` characters), else the length and a hex preview.
pub fn bytes_text(bytes: &[u8], max: usize) -> String {
    if bytes.is_empty() {
        return "(empty)".to_owned();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) if is_printable(text) => {
            if text.chars().count() > max {
                format!("{} ({} bytes in all)", cut(text, max), bytes.len())
            } else {
                text.to_owned()
            }
        }
        _ => {
            let preview: String = bytes
                .iter()
                .take(HEX_PREVIEW)
                .map(|b| format!("{b:02x}"))
                .collect();
            let more = if bytes.len() > HEX_PREVIEW { "…" } else { "" };
            format!("{} bytes (binary): {preview}{more}", bytes.len())
        }
    }
}

fn is_printable(text: &str) -> bool {
    text.chars()
        .all(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
}

/// At most `max` characters of `text`, with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        cut(line, max)
    } else if line.len() < text.trim_end().len() {
        format!("{line}…")
    } else {
        line.to_owned()
    }
}

/// `name  value` lines with the values aligned; a value's further lines are
/// indented to its column.
fn block(rows: &[(&str, String)]) -> String {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 3;
    let mut out = String::new();
    for (name, value) in rows {
        let mut lines = value.lines();
        let first = lines.next().unwrap_or_default();
        let _ = writeln!(out, "{:<width$}{first}", format!("{name}:"));
        for line in lines {
            let _ = writeln!(out, "{:width$}{line}", "");
        }
    }
    out
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobctl_client::proto::v1::{JobError, RetryPolicy};
    use prost_types::{Duration, Timestamp};

    fn sample_job() -> Job {
        Job {
            id: "01JOB".into(),
            queue: "default".into(),
            kind: "export".into(),
            state: JobState::Succeeded as i32,
            payload: b"{\"rows\":3}".to_vec(),
            priority: 2,
            attempt: 2,
            max_attempts: 5,
            progress: Some(Progress {
                percent: 100.0,
                current: 3,
                total: 3,
                message: "done".into(),
            }),
            result: b"ok".to_vec(),
            error: Some(JobError {
                message: "timeout talking to s3".into(),
                code: "s3_timeout".into(),
                details: String::new(),
            }),
            cancel_requested: false,
            cancel_reason: String::new(),
            labels: [("tenant".to_owned(), "acme".to_owned())].into(),
            retry: Some(RetryPolicy {
                initial_backoff: Some(Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                max_backoff: None,
                multiplier: 2.0,
                jitter: 0.25,
            }),
            lease_ttl: Some(Duration {
                seconds: 30,
                nanos: 0,
            }),
            timeout: None,
            idempotency_key: "k".into(),
            worker_id: "w1".into(),
            last_seq: 9,
            checkpoint: Some(vec![0xff, 0x00]),
            created_at: Some(Timestamp {
                seconds: 1_893_456_000,
                nanos: 0,
            }),
            run_at: None,
            started_at: None,
            finished_at: Some(Timestamp {
                seconds: 1_893_456_001,
                nanos: 500_000_000,
            }),
            updated_at: None,
            lease_expires_at: None,
            expires_at: None,
            retention: Some(Duration {
                seconds: 604_800,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn a_job_renders_as_the_documented_json() {
        let expected = json!({
            "id": "01JOB",
            "queue": "default",
            "kind": "export",
            "state": "SUCCEEDED",
            "payload": "eyJyb3dzIjozfQ==",
            "priority": 2,
            "attempt": 2,
            "max_attempts": 5,
            "progress": {"percent": 100.0, "current": 3, "total": 3, "message": "done"},
            "result": "b2s=",
            "error": {"message": "timeout talking to s3", "code": "s3_timeout", "details": ""},
            "cancel_requested": false,
            "cancel_reason": "",
            "labels": {"tenant": "acme"},
            "retry": {"initial_backoff": "1s", "max_backoff": null, "multiplier": 2.0, "jitter": 0.25},
            "lease_ttl": "30s",
            "timeout": null,
            "idempotency_key": "k",
            "worker_id": "w1",
            "last_seq": 9,
            "checkpoint": "/wA=",
            "created_at": "2030-01-01T00:00:00Z",
            "run_at": null,
            "started_at": null,
            "finished_at": "2030-01-01T00:00:01.500Z",
            "updated_at": null,
            "lease_expires_at": null,
            "expires_at": null,
            "retention": "604800s",
        });
        assert_eq!(job_json(&sample_job()), expected);
    }

    #[test]
    fn an_empty_job_renders_with_nulls() {
        let value = job_json(&Job::default());
        assert_eq!(value["state"], "UNSPECIFIED");
        assert_eq!(value["progress"], Value::Null);
        assert_eq!(value["checkpoint"], Value::Null);
        assert_eq!(value["payload"], "");
    }

    #[test]
    fn the_human_block_shows_what_matters() {
        let text = job_human(&sample_job());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "job:               01JOB");
        assert!(lines.contains(&"state:             SUCCEEDED"), "{text}");
        assert!(lines.contains(&"attempt:           2/5"), "{text}");
        assert!(
            lines.contains(&"progress:          100% (3/3) done"),
            "{text}"
        );
        assert!(lines.contains(&"cancel requested:  no"), "{text}");
        assert!(lines.contains(&"labels:            tenant=acme"), "{text}");
        assert!(
            lines.contains(&"created:           2030-01-01T00:00:00Z"),
            "{text}"
        );
        assert!(lines.contains(&"result:            ok"), "{text}");
        assert!(
            lines.contains(&"error:             timeout talking to s3 [s3_timeout]"),
            "{text}"
        );
        assert!(!text.contains("started:"), "{text}");
    }

    #[test]
    fn binary_bytes_show_length_and_hex() {
        assert_eq!(bytes_text(&[0, 1, 0xab], 10), "3 bytes (binary): 0001ab");
        assert_eq!(
            bytes_text(&[0xff; 40], 10).len(),
            "40 bytes (binary): ".len() + 64 + "…".len()
        );
        assert_eq!(bytes_text(b"", 10), "(empty)");
        assert_eq!(bytes_text("héllo".as_bytes(), 10), "héllo");
        assert_eq!(bytes_text(b"abcdef", 3), "abc… (6 bytes in all)");
    }

    #[test]
    fn multi_line_values_stay_in_their_column() {
        let mut job = sample_job();
        job.result = b"line one\nline two".to_vec();
        let text = job_human(&job);
        assert!(
            text.contains("result:            line one\n                   line two\n"),
            "{text}"
        );
    }

    #[test]
    fn state_names_drop_their_prefix() {
        assert_eq!(state_name(JobState::Running as i32), "RUNNING");
        assert_eq!(state_name(JobState::Cancelled as i32), "CANCELLED");
        assert_eq!(state_name(42), "UNKNOWN(42)");
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, output) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), output);
        }
    }

    #[test]
    fn the_failed_table_aligns_its_columns() {
        let mut job = sample_job();
        job.state = JobState::Failed as i32;
        job.error = Some(JobError {
            message: "first line\nsecond".into(),
            ..Default::default()
        });
        let table = failed_table("default", &[job]);
        assert_eq!(
            table,
            "ID     KIND    ATTEMPTS  FAILED AT                 ERROR\n\
             01JOB  export  2/5       2030-01-01T00:00:01.500Z  first line…\n"
        );
        assert_eq!(failed_table("q", &[]), "no failed jobs in queue 'q'\n");
    }

    fn sample_event() -> JobEvent {
        JobEvent {
            seq: 5,
            job_id: "01JOB".into(),
            kind: EventKind::Progress as i32,
            state: JobState::Running as i32,
            progress: Some(Progress {
                percent: 40.0,
                current: 4,
                total: 10,
                message: "rendered 4/10".into(),
            }),
            time: Some(Timestamp {
                seconds: 1_893_456_001,
                nanos: 500_000_000,
            }),
            attempt: 1,
            error: None,
            result: Vec::new(),
        }
    }

    #[test]
    fn an_event_renders_as_one_documented_json_line() {
        let value = event_json(&sample_event());
        assert_eq!(
            value,
            json!({
                "seq": 5,
                "job_id": "01JOB",
                "kind": "PROGRESS",
                "state": "RUNNING",
                "progress": {"percent": 40.0, "current": 4, "total": 10, "message": "rendered 4/10"},
                "time": "2030-01-01T00:00:01.500Z",
                "attempt": 1,
                "error": null,
                "result": "",
            })
        );
        assert!(!value.to_string().contains('\n'));

        let done = JobEvent {
            seq: 12,
            kind: EventKind::StateChanged as i32,
            state: JobState::Failed as i32,
            progress: None,
            time: None,
            error: Some(JobError {
                message: "boom".into(),
                code: "e1".into(),
                details: "line 1\nline 2".into(),
            }),
            result: vec![0xff, 0],
            ..sample_event()
        };
        let value = event_json(&done);
        assert_eq!(value["kind"], "STATE_CHANGED");
        assert_eq!(value["state"], "FAILED");
        assert_eq!(value["progress"], Value::Null);
        assert_eq!(value["time"], Value::Null);
        assert_eq!(
            value["error"],
            json!({"message": "boom", "code": "e1", "details": "line 1\nline 2"})
        );
        assert_eq!(value["result"], "/wA=");
        assert!(!value.to_string().contains('\n'));
        assert_eq!(
            kind_name(EventKind::CancelRequested as i32),
            "CANCEL_REQUESTED"
        );
        assert_eq!(kind_name(9), "UNKNOWN(9)");
    }

    #[test]
    fn the_progress_bar_line_shows_state_percent_units_and_message() {
        let e = sample_event();
        assert_eq!(
            progress_line(e.state, e.progress.as_ref()),
            "RUNNING   40% (4/10) rendered 4/10"
        );
        let unknown_total = Progress {
            percent: 12.5,
            current: 7,
            total: 0,
            message: String::new(),
        };
        assert_eq!(
            progress_line(JobState::Running as i32, Some(&unknown_total)),
            "RUNNING   12.5% (7)"
        );
        assert_eq!(progress_line(JobState::Queued as i32, None), "QUEUED");
        assert_eq!(
            progress_line(JobState::Queued as i32, Some(&Progress::default())),
            "QUEUED"
        );
    }

    #[test]
    fn events_render_as_lines_for_people() {
        let e = sample_event();
        assert_eq!(event_line(&e), "#5 RUNNING 40% (4/10) rendered 4/10");
        assert_eq!(
            plain_event_line(&e),
            "2030-01-01T00:00:01.500Z #5 RUNNING 40% (4/10) rendered 4/10"
        );
        let started = JobEvent {
            seq: 2,
            kind: EventKind::StateChanged as i32,
            ..sample_event()
        };
        assert_eq!(event_line(&started), "#2 RUNNING (attempt 1)");
        let retry = JobEvent {
            state: JobState::Scheduled as i32,
            error: Some(JobError {
                message: "s3 timeout\nat line 3".into(),
                code: "s3".into(),
                details: String::new(),
            }),
            ..started.clone()
        };
        assert_eq!(
            event_line(&retry),
            "#2 SCHEDULED (attempt 1): s3 timeout… [s3]"
        );
        let cancel = JobEvent {
            seq: 9,
            kind: EventKind::CancelRequested as i32,
            ..sample_event()
        };
        assert_eq!(event_line(&cancel), "#9 RUNNING cancel requested");
    }

    #[test]
    fn the_outcome_puts_the_result_on_stdout_and_the_rest_on_stderr() {
        let mut o = Outcome::from(&JobEvent {
            kind: EventKind::StateChanged as i32,
            state: JobState::Succeeded as i32,
            result: b"8 thumbnails".to_vec(),
            ..sample_event()
        });
        assert_eq!(
            outcome_human(&o),
            ("job 01JOB SUCCEEDED\n".into(), "8 thumbnails\n".into())
        );
        o.result = vec![0, 1, 2];
        assert_eq!(outcome_human(&o).1, "3 bytes (binary): 000102\n");
        o.result.clear();
        assert_eq!(
            outcome_human(&o),
            ("job 01JOB SUCCEEDED (no result)\n".into(), String::new())
        );

        let failed = Outcome::from(&Job {
            id: "01JOB".into(),
            state: JobState::Failed as i32,
            attempt: 3,
            error: Some(JobError {
                message: "no such bucket".into(),
                code: "s3".into(),
                details: String::new(),
            }),
            ..Job::default()
        });
        assert_eq!(
            outcome_human(&failed),
            (
                "job 01JOB FAILED after 3 attempts: no such bucket [s3]\n".into(),
                String::new()
            )
        );
    }

    #[test]
    fn outcomes_of_other_commands() {
        let s = Submitted {
            job_id: "j".into(),
            deduplicated: true,
            state: JobState::Queued,
        };
        assert_eq!(submitted_human(&s), "duplicate of job j\n");
        assert_eq!(
            submitted_json(&s),
            json!({"job_id": "j", "deduplicated": true, "state": "QUEUED"})
        );
        assert_eq!(
            cancel_human("j", JobState::Running as i32, true),
            "job j: RUNNING, cancellation requested (its worker stops at its next heartbeat)\n"
        );
        assert_eq!(
            cancel_human("j", JobState::Cancelled as i32, false),
            "job j: CANCELLED\n"
        );
        assert_eq!(
            requeue_json("j", JobState::Queued),
            json!({"job_id": "j", "state": "QUEUED"})
        );
    }
}
