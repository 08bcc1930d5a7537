//! How job records, events and script replies are laid out in Redis.
//!
//! Scalar fields are decimal strings (the scripts compute with them);
//! structured ones (progress, error, labels, trace context) are protobuf
//! bytes the scripts only carry.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use jobctl_proto::v1;
use prost::Message;
use redis::Value;

use crate::error::{Error, Result};
use crate::keys::JobId;
use crate::model::NewJob;

/// A string map as protobuf bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct StringMap {
    #[prost(btree_map = "string, string", tag = "1")]
    entries: BTreeMap<String, String>,
}

pub fn encode_map(map: &BTreeMap<String, String>) -> Vec<u8> {
    StringMap {
        entries: map.clone(),
    }
    .encode_to_vec()
}

pub(super) fn decode_map(bytes: &[u8]) -> Result<HashMap<String, String>> {
    let map = StringMap::decode(bytes).map_err(|e| Error::Corrupt(format!("string map: {e}")))?;
    Ok(map.entries.into_iter().collect())
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))
}

/// Milliseconds since the epoch as a protobuf timestamp; None for 0.
pub fn timestamp(ms: u64) -> Option<prost_types::Timestamp> {
    (ms > 0).then(|| (UNIX_EPOCH + Duration::from_millis(ms)).into())
}

fn duration(ms: u64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_millis(ms)).ok()
}

/// The largest piece of a payload stored in pieces (Redis's default
/// hash-max-listpack-value).
pub const PAYLOAD_CHUNK: usize = 64;
/// Payloads of up to this many pieces are stored in pieces (`pn` pieces in
/// the fields `p1`...); longer and shorter ones whole, in `p`.
pub const PAYLOAD_CHUNKS: usize = 16;
/// The fields of the pieces.
pub const PAYLOAD_FIELDS: [&str; PAYLOAD_CHUNKS] = [
    "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13", "p14", "p15",
    "p16",
];

/// The options a job keeps for life, in its record's field `o` as
/// `pr,ma,lt,to,rt,bi,bm,bx,bj` (see prelude.lua's `options`): one field
/// instead of nine keeps the record small and each script's lookups short.
#[derive(Debug, Default, PartialEq)]
pub struct Options {
    pub priority: i32,
    pub max_attempts: u32,
    pub lease_ttl_ms: u64,
    pub timeout_ms: u64,
    pub retention_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub backoff_multiplier: f64,
    pub backoff_jitter: f64,
}

impl Options {
    pub fn of(job: &NewJob) -> Self {
        Options {
            priority: job.priority,
            max_attempts: job.max_attempts,
            lease_ttl_ms: job.lease_ttl_ms,
            timeout_ms: job.timeout_ms,
            retention_ms: job.retention_ms,
            backoff_initial_ms: job.backoff.initial_ms,
            backoff_max_ms: job.backoff.max_ms,
            backoff_multiplier: job.backoff.multiplier,
            backoff_jitter: job.backoff.jitter,
        }
    }

    /// Reads the field; missing or malformed parts are 0.
    pub fn parse(bytes: &[u8]) -> Self {
        let mut parts = bytes.split(|b| *b == b',');
        let mut next = || parts.next().unwrap_or_default();
        Options {
            priority: number(next()),
            max_attempts: number(next()),
            lease_ttl_ms: number(next()),
            timeout_ms: number(next()),
            retention_ms: number(next()),
            backoff_initial_ms: number(next()),
            backoff_max_ms: number(next()),
            backoff_multiplier: number(next()),
            backoff_jitter: number(next()),
        }
    }
}

impl std::fmt::Display for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{},{},{},{},{},{},{},{},{}",
            self.priority,
            self.max_attempts,
            self.lease_ttl_ms,
            self.timeout_ms,
            self.retention_ms,
            self.backoff_initial_ms,
            self.backoff_max_ms,
            self.backoff_multiplier,
            self.backoff_jitter
        )
    }
}

/// A job record as read with HGETALL.
pub struct Record(HashMap<String, Vec<u8>>);

impl Record {
    pub fn new(fields: HashMap<String, Vec<u8>>) -> Option<Self> {
        (!fields.is_empty()).then_some(Record(fields))
    }

    fn bytes(&self, f: &str) -> Option<&[u8]> {
        self.0.get(f).map(Vec::as_slice)
    }

    fn string(&self, f: &str) -> String {
        self.bytes(f)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    }

    fn num<T: std::str::FromStr + Default>(&self, f: &str) -> T {
        number(self.bytes(f).unwrap_or_default())
    }

    /// The payload, whole or from its pieces.
    fn payload(&self) -> Vec<u8> {
        if let Some(p) = self.bytes("p") {
            return p.to_vec();
        }
        let pieces: usize = self.num("pn");
        PAYLOAD_FIELDS
            .iter()
            .take(pieces)
            .filter_map(|f| self.bytes(f))
            .flatten()
            .copied()
            .collect()
    }

    /// The record as the contract's `Job`.
    pub fn into_job(self, id: String) -> Result<v1::Job> {
        let progress = match self.bytes("pg") {
            Some(b) => Some(decode::<v1::Progress>("progress", b)?),
            None => None,
        };
        let error = match self.bytes("err") {
            Some(b) => Some(decode::<v1::JobError>("error", b)?),
            None => None,
        };
        let labels = match self.bytes("lb") {
            Some(b) => decode_map(b)?,
            None => HashMap::new(),
        };
        let o = Options::parse(self.bytes("o").unwrap_or_default());
        let created: u64 = self.num("ct");
        // ra is written only once it differs from ct; ua not by a lease or
        // a completion, whose own times say it (prelude.lua).
        let run_at = match self.num("ra") {
            0 => created,
            ms => ms,
        };
        let updated = ["ua", "sa", "fa"]
            .iter()
            .map(|f| self.num::<u64>(f))
            .fold(created, u64::max);
        Ok(v1::Job {
            queue: JobId::parse(&id)
                .map(|id| id.queue().to_owned())
                .unwrap_or_default(),
            id,
            kind: self.string("k"),
            state: self.num("st"),
            payload: self.payload(),
            priority: o.priority,
            attempt: self.num("a"),
            max_attempts: o.max_attempts,
            progress,
            result: self.bytes("res").map(<[u8]>::to_vec).unwrap_or_default(),
            error,
            cancel_requested: self.bytes("cr") == Some(b"1"),
            cancel_reason: self.string("crr"),
            labels,
            retry: Some(v1::RetryPolicy {
                initial_backoff: duration(o.backoff_initial_ms),
                max_backoff: duration(o.backoff_max_ms),
                multiplier: o.backoff_multiplier,
                jitter: o.backoff_jitter,
            }),
            lease_ttl: duration(o.lease_ttl_ms),
            timeout: (o.timeout_ms > 0).then(|| duration(o.timeout_ms)).flatten(),
            idempotency_key: self.string("ik"),
            worker_id: self.string("w"),
            last_seq: self.num("seq"),
            checkpoint: self.bytes("cp").map(<[u8]>::to_vec),
            created_at: timestamp(created),
            run_at: timestamp(run_at),
            started_at: timestamp(self.num("sa")),
            finished_at: timestamp(self.num("fa")),
            updated_at: timestamp(updated),
            lease_expires_at: timestamp(self.num("le")),
            expires_at: timestamp(self.num("ex")),
            retention: duration(o.retention_ms),
        })
    }
}

/// Reads script replies without trusting their shape.
pub struct Reply<'a>(pub &'a [Value]);

impl<'a> Reply<'a> {
    pub fn of(value: &'a Value) -> Result<Self> {
        match value {
            Value::Array(items) => Ok(Reply(items)),
            other => Err(Error::Corrupt(format!("unexpected script reply {other:?}"))),
        }
    }

    pub fn bytes(&self, i: usize) -> Option<&'a [u8]> {
        match self.0.get(i)? {
            Value::BulkString(b) => Some(b),
            Value::SimpleString(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    pub fn str(&self, i: usize) -> &'a str {
        self.bytes(i)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }

    pub fn int(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(Value::Int(n)) => *n,
            _ => self.str(i).parse().unwrap_or_default(),
        }
    }

    /// A non-negative number of milliseconds.
    pub fn millis(&self, i: usize) -> Duration {
        Duration::from_millis(u64::try_from(self.int(i)).unwrap_or_default())
    }

    /// A leased job from one entry of the lease script's reply.
    pub fn leased_job(&self) -> Result<v1::LeasedJob> {
        let deadline_ms = u64::try_from(self.int(4)).unwrap_or_default();
        Ok(v1::LeasedJob {
            job_id: self.str(0).to_owned(),
            lease_token: self.str(1).to_owned(),
            attempt: u32::try_from(self.int(2)).unwrap_or_default(),
            lease_expires_at: timestamp(u64::try_from(self.int(3)).unwrap_or_default()),
            deadline: timestamp(deadline_ms),
            kind: self.str(5).to_owned(),
            payload: self.bytes(6).unwrap_or_default().to_vec(),
            max_attempts: u32::try_from(self.int(7)).unwrap_or_default(),
            checkpoint: self.bytes(8).map(<[u8]>::to_vec),
            labels: decode_map(self.bytes(9).unwrap_or_default())?,
            trace_context: decode_map(self.bytes(10).unwrap_or_default())?,
            lease_ttl: duration(u64::try_from(self.int(11)).unwrap_or_default()),
            queue: JobId::parse(self.str(0))
                .map(|id| id.queue().to_owned())
                .unwrap_or_default(),
        })
    }
}

/// A protobuf `JobState` from a script's state number.
pub fn state(n: i64) -> v1::JobState {
    i32::try_from(n)
        .ok()
        .and_then(|n| v1::JobState::try_from(n).ok())
        .unwrap_or(v1::JobState::Unspecified)
}

/// A decimal field; 0 (the default) when missing or malformed.
fn number<T: std::str::FromStr + Default>(bytes: &[u8]) -> T {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

/// The events kept in a job's record (see prelude.lua), from its fields
/// st, ct, is, ei, e2 ... e6 as events.lua reads them: the first (created,
/// from `is` and `ct`) and the inline ones up to `ei`. None when the job
/// does not exist.
pub fn record_events(
    fields: &[Option<Vec<u8>>],
    job_id: &str,
) -> Result<Option<Vec<v1::JobEvent>>> {
    let field = |i: usize| fields.get(i).and_then(Option::as_deref);
    if field(0).is_none() {
        return Ok(None);
    }
    let mut events = vec![v1::JobEvent {
        seq: 1,
        job_id: job_id.to_owned(),
        kind: v1::EventKind::StateChanged.into(),
        // `is` is written only for a job created SCHEDULED.
        state: field(2).map_or(v1::JobState::Queued.into(), number),
        time: timestamp(number(field(1).unwrap_or_default())),
        ..Default::default()
    }];
    let last: u64 = number(field(3).unwrap_or_default());
    for seq in 2..=last {
        let value = usize::try_from(seq + 2)
            .ok()
            .and_then(field)
            .ok_or_else(|| Error::Corrupt(format!("job {job_id}: inline event {seq} missing")))?;
        events.push(inline_event(value, seq, job_id)?);
    }
    Ok(Some(events))
}

/// One inline event: `kind,state,time,attempt,progress length,tag,` then
/// the progress bytes and a tail, the error (tag `e`) or result (tag `r`).
fn inline_event(value: &[u8], seq: u64, job_id: &str) -> Result<v1::JobEvent> {
    let corrupt = || Error::Corrupt(format!("job {job_id}: inline event {seq}"));
    let mut parts = value.splitn(7, |b| *b == b',');
    let mut next = || parts.next().ok_or_else(corrupt);
    let (kind, state, time, attempt, pg_len, tag) =
        (next()?, next()?, next()?, next()?, next()?, next()?);
    let rest = next()?;
    let pg_len: usize = number(pg_len);
    let (pg, tail) = rest.split_at_checked(pg_len).ok_or_else(corrupt)?;
    let mut event = v1::JobEvent {
        seq,
        job_id: job_id.to_owned(),
        kind: number(kind),
        state: number(state),
        time: timestamp(number(time)),
        attempt: number(attempt),
        ..Default::default()
    };
    if !pg.is_empty() {
        event.progress = Some(decode("progress", pg)?);
    }
    match tag {
        b"e" => event.error = Some(decode("error", tail)?),
        b"r" => event.result = tail.to_vec(),
        _ => {}
    }
    Ok(event)
}

/// Job events from an XRANGE reply (entry id `<seq>-0`; fields k kind,
/// s state, t time ms, a attempt, p progress, e error, r result).
pub fn stream_events(reply: &Value, job_id: &str) -> Result<Vec<v1::JobEvent>> {
    let Value::Array(entries) = reply else {
        return Ok(Vec::new());
    };
    let mut events = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return Err(Error::Corrupt("unexpected stream entry".into()));
        };
        let Some(Value::Array(fields)) = parts.get(1) else {
            return Err(Error::Corrupt("stream entry without fields".into()));
        };
        let id = Reply(parts).str(0);
        let seq = id
            .split_once('-')
            .and_then(|(seq, _)| seq.parse().ok())
            .ok_or_else(|| Error::Corrupt(format!("stream entry id {id:?}")))?;
        let mut event = v1::JobEvent {
            seq,
            job_id: job_id.to_owned(),
            ..Default::default()
        };
        let fields = Reply(fields);
        for i in (0..fields.0.len()).step_by(2) {
            let value = fields.bytes(i + 1).unwrap_or_default();
            match fields.str(i) {
                "k" => event.kind = number(value),
                "s" => event.state = number(value),
                "t" => event.time = timestamp(number(value)),
                "a" => event.attempt = number(value),
                "p" => event.progress = Some(decode("progress", value)?),
                "e" => event.error = Some(decode("error", value)?),
                "r" => event.result = value.to_vec(),
                _ => {}
            }
        }
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_survive_their_field() {
        let options = Options {
            priority: -7,
            max_attempts: 25,
            lease_ttl_ms: 30_000,
            timeout_ms: 0,
            retention_ms: 86_400_000,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 600_000,
            backoff_multiplier: 1.5,
            backoff_jitter: 0.1,
        };
        let field = options.to_string();
        assert_eq!(field, "-7,25,30000,0,86400000,1000,600000,1.5,0.1");
        assert_eq!(Options::parse(field.as_bytes()), options);
        assert_eq!(Options::parse(b"garbage"), Options::default());
    }

    #[test]
    fn inline_events_keep_binary_progress_and_tails() {
        let progress = v1::Progress {
            percent: 12.5,
            message: "a,b".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut value = format!("2,3,1764512345678,2,{},r,", progress.len()).into_bytes();
        value.extend_from_slice(&progress);
        value.extend_from_slice(b"res,ult");
        let event = inline_event(&value, 4, "q:id").expect("decodes");
        assert_eq!(event.seq, 4);
        assert_eq!(event.state, 3);
        assert_eq!(event.attempt, 2);
        assert_eq!(event.progress.expect("progress").message, "a,b");
        assert_eq!(event.result, b"res,ult");
        assert!(inline_event(b"2,3,1,2,99,,x", 4, "q:id").is_err());
    }
}
