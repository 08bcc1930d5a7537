//! How the Redis store writes new jobs: `submit_batch.lua`, for a
//! `SubmitBatch` (all or none) and for single `Submit`s, which are
//! coalesced per queue.
//!
//! Each queue that receives `Submit`s gets a writer task. A `Submit` hands
//! its job to the task and waits for its answer; the task takes every job
//! already waiting (up to [`COALESCE`]) and writes them with one script
//! call, each job standing alone (its own idempotency check, its own
//! answer). Nothing waits to fill a batch: an idle queue's Submit is
//! written at once, a busy queue's are written together while the previous
//! call is in flight. That halves Redis's time per single Submit under
//! concurrency and sends one command instead of many.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jobctl_proto::v1::JobState;
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, Reply};
use super::conn::RedisConn;
use super::redis::job_fields;
use crate::error::{Error, Result};
use crate::keys::QueueKeys;
use crate::model::NewJob;

/// The most single Submits one script call writes.
const COALESCE: usize = 256;
/// A queue's writer task ends after this long without a Submit (the next
/// one starts another).
const IDLE: Duration = Duration::from_secs(30);

/// One job's outcome in submit_batch.lua's reply.
#[derive(Debug)]
pub enum Created {
    New {
        job_id: String,
        state: JobState,
    },
    /// Its idempotency key made this job before (state to be read).
    Duplicate {
        job_id: String,
    },
    /// Its idempotency key made this job for another request.
    Conflict {
        job_id: String,
    },
}

/// A refused all-or-nothing batch: the 1-based index of the job whose
/// idempotency key conflicts, and the job that key made.
pub struct BatchConflict {
    pub index: usize,
    pub job_id: String,
}

/// What writing jobs needs, cloned into each queue's writer task.
#[derive(Clone)]
pub struct Writer {
    pub conn: RedisConn,
    pub script: redis::Script,
    pub idempotency_ttl_ms: u64,
}

impl Writer {
    /// Writes `jobs` (all of `qk`'s queue) with one script call. With
    /// `independent`, each job stands alone (coalesced Submits); else one
    /// idempotency conflict refuses them all.
    pub async fn write(
        &self,
        qk: &QueueKeys,
        jobs: &[NewJob],
        independent: bool,
    ) -> Result<std::result::Result<Vec<Created>, BatchConflict>> {
        let mut inv = self.script.prepare_invoke();
        inv.key(qk.ready()).key(qk.sched()).key(qk.seq());
        for job in jobs {
            inv.key(qk.job(&job.id));
        }
        for key in jobs.iter().filter_map(|j| j.idempotency_key.as_deref()) {
            inv.key(qk.idempotency(key));
        }
        inv.key(qk.all());
        inv.arg(self.idempotency_ttl_ms.max(1))
            .arg(qk.wake_channel())
            .arg(qk.tag())
            .arg(if independent { "1" } else { "0" })
            .arg(jobs.len());
        for job in jobs {
            let fields = job_fields(job);
            inv.arg(job.id.to_string())
                .arg(if job.idempotency_key.is_some() {
                    job.request_hash.as_str()
                } else {
                    ""
                })
                .arg(job.run_at_ms)
                .arg(job.delay_ms)
                .arg(job.priority)
                .arg(fields.len() * 2);
            for (name, value) in fields {
                inv.arg(name).arg(value.as_ref());
            }
        }
        let value: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let reply = Reply::of(&value)?;
        match reply.str(0) {
            "ok" => {
                let Some(Value::Array(items)) = reply.0.get(1) else {
                    return Err(Error::Corrupt("unexpected submit batch reply".into()));
                };
                if items.len() != jobs.len() {
                    return Err(Error::Corrupt(format!(
                        "submit batch answered {} of {} jobs",
                        items.len(),
                        jobs.len()
                    )));
                }
                let mut out = Vec::with_capacity(items.len());
                for (item, job) in items.iter().zip(jobs) {
                    out.push(match item {
                        Value::Int(state) => Created::New {
                            job_id: job.id.to_string(),
                            state: codec::state(*state),
                        },
                        other => {
                            let r = Reply::of(other)?;
                            let job_id = r.str(1).to_owned();
                            match r.str(0) {
                                "dup" => Created::Duplicate { job_id },
                                "conflict" => Created::Conflict { job_id },
                                other => {
                                    return Err(Error::Corrupt(format!(
                                        "unexpected submit outcome {other:?}"
                                    )));
                                }
                            }
                        }
                    });
                }
                Ok(Ok(out))
            }
            "conflict" => Ok(Err(BatchConflict {
                index: usize::try_from(reply.int(1)).unwrap_or_default(),
                job_id: reply.str(2).to_owned(),
            })),
            other => Err(Error::Corrupt(format!(
                "unexpected submit batch status {other:?}"
            ))),
        }
    }
}

struct Pending {
    job: NewJob,
    reply: oneshot::Sender<Result<Created>>,
}

/// The writer tasks of the queues that receive Submits, by queue tag.
#[derive(Default)]
pub struct Coalescer {
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<Pending>>>,
}

impl Coalescer {
    /// Writes one job, together with the other Submits of its queue that
    /// are waiting.
    pub async fn submit(&self, writer: &Writer, qk: &QueueKeys, job: NewJob) -> Result<Created> {
        let (reply, answer) = oneshot::channel();
        let mut pending = Pending { job, reply };
        loop {
            let sender = {
                let mut queues = lock(&self.queues);
                if queues.len() > 10_000 {
                    queues.retain(|_, s| !s.is_closed());
                }
                queues
                    .entry(qk.tag().to_owned())
                    .or_insert_with(|| spawn(writer.clone(), qk.clone()))
                    .clone()
            };
            match sender.send(pending) {
                Ok(()) => break,
                // That task just ended (idle): start another.
                Err(mpsc::error::SendError(back)) => {
                    pending = back;
                    let mut queues = lock(&self.queues);
                    if queues.get(qk.tag()).is_some_and(|s| s.is_closed()) {
                        queues.remove(qk.tag());
                    }
                }
            }
        }
        answer
            .await
            .map_err(|_| Error::Corrupt("the submit writer stopped".into()))?
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Starts a queue's writer task.
fn spawn(writer: Writer, qk: QueueKeys) -> mpsc::UnboundedSender<Pending> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        let mut last = false;
        while !last {
            match tokio::time::timeout(IDLE, rx.recv()).await {
                Ok(Some(first)) => batch.push(first),
                // Idle: refuse new Submits (they start another task), then
                // write any that came in meanwhile.
                _ => {
                    rx.close();
                    last = true;
                }
            }
            while batch.len() < COALESCE {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                continue;
            }
            let (jobs, replies): (Vec<NewJob>, Vec<_>) =
                batch.drain(..).map(|p| (p.job, p.reply)).unzip();
            match writer.write(&qk, &jobs, true).await {
                Ok(Ok(created)) => {
                    for (reply, c) in replies.into_iter().zip(created) {
                        let _ = reply.send(Ok(c));
                    }
                }
                Ok(Err(_)) => {
                    for reply in replies {
                        let _ = reply.send(Err(Error::Corrupt(
                            "submit batch refused independent jobs together".into(),
                        )));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(share(&e)));
                    }
                }
            }
        }
    });
    tx
}

/// The same error, for every Submit of a failed script call.
fn share(e: &Error) -> Error {
    match e {
        Error::Unavailable(e) => Error::Unavailable(e.clone()),
        Error::Redis(e) => Error::Redis(e.clone()),
        other => Error::Corrupt(other.to_string()),
    }
}
