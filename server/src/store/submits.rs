//! How the Redis store writes new jobs: `submit_batch.lua`, for a
//! `SubmitBatch` (all or none) and for single `Submit`s, which are
//! combined per queue.
//!
//! Single `Submit`s go through the queue's lane of `combine.rs`: an idle
//! queue's Submit is written at once by its own call; the Submits that
//! arrive while a write is in flight are written together by the next
//! script call, each job standing alone (its own idempotency check, its
//! own answer). That halves Redis's time per single Submit under
//! concurrency and sends one command instead of many.

use jobctl_proto::v1::JobState;
use redis::Value;

use super::codec::{self, Reply};
use super::combine::Write;
use super::conn::RedisConn;
use super::redis::job_fields;
use crate::error::{Error, Result};
use crate::keys::QueueKeys;
use crate::model::NewJob;

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

/// What writing jobs needs.
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

/// Single Submits, combined per queue (`combine.rs`): each job stands
/// alone in the script call.
impl Write for Writer {
    type Call = NewJob;
    type Answer = Created;

    async fn write(&self, qk: &QueueKeys, jobs: Vec<NewJob>) -> Result<Vec<Created>> {
        match Writer::write(self, qk, &jobs, true).await? {
            Ok(created) => Ok(created),
            Err(_) => Err(Error::Corrupt(
                "submit batch refused independent jobs together".into(),
            )),
        }
    }
}
