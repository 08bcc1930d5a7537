//! The embedded store: every job in this process's memory, lost on exit.
//!
//! It keeps the same invariants as [`super::RedisStore`] and follows the
//! same transitions as its Lua scripts (`store/lua/*.lua`): leases with
//! fencing tokens, retries with backoff, delays, cancellation, checkpoints,
//! idempotency and the event history. One mutex makes each operation atomic;
//! the process's clock is the one clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobctl_proto::v1::{self, EventKind, JobState};
use tokio_util::sync::CancellationToken;

use super::codec::timestamp;
use super::{
    AttemptEnded, Completion, Failure, Heartbeat, Leased, Maintenance, Store, StoreOptions,
    Submitted,
};
use crate::error::{Error, Result};
use crate::keys::{JobId, queue_tag};
use crate::model::{Backoff, NewJob};
use crate::signals::Signals;

mod admin;
mod schedules;

/// The in-process job store.
pub struct MemoryStore {
    options: StoreOptions,
    signals: Arc<Signals>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    /// By (namespace, job id).
    jobs: HashMap<(String, String), Job>,
    /// By (queue tag, idempotency key): (job id, request hash, expires at).
    idempotency: HashMap<(String, String), (String, String, u64)>,
    /// By (namespace, schedule id) (`memory/schedules.rs`).
    schedules: BTreeMap<(String, String), schedules::Schedule>,
}

#[derive(Default)]
struct Queue {
    seq: u64,
    /// (priority rank, FIFO seq, id): lowest first.
    ready: BTreeSet<(i64, u64, String)>,
    /// (run at, id).
    sched: BTreeSet<(u64, String)>,
    /// (lease expiry, id).
    active: BTreeSet<(u64, String)>,
    /// (failed at, id).
    dead: BTreeSet<(u64, String)>,
    /// (expires at, id).
    done: BTreeSet<(u64, String)>,
    /// Every job's id (ListJobs walks it).
    all: BTreeSet<String>,
    /// No leases while set (PauseQueue).
    paused: bool,
}

struct Job {
    id: JobId,
    ns: String,
    /// Where each new event is signalled, for watchers.
    signals: Arc<Signals>,
    kind: String,
    payload: Vec<u8>,
    priority: i32,
    state: JobState,
    attempt: u32,
    max_attempts: u32,
    backoff: Backoff,
    lease_ttl_ms: u64,
    timeout_ms: u64,
    retention_ms: u64,
    idempotency_key: Option<String>,
    labels: BTreeMap<String, String>,
    trace_context: BTreeMap<String, String>,
    created: u64,
    run_at: u64,
    started: u64,
    finished: u64,
    updated: u64,
    expires: u64,
    token: Option<String>,
    fence: u64,
    worker_id: String,
    lease_expires: u64,
    deadline: u64,
    progress: Option<v1::Progress>,
    checkpoint: Option<Vec<u8>>,
    result: Option<Vec<u8>>,
    error: Option<v1::JobError>,
    cancel_requested: bool,
    cancel_reason: String,
    seq: u64,
    events: VecDeque<v1::JobEvent>,
    /// Where the job sits in its queue's ready set.
    ready_key: Option<(i64, u64)>,
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

fn stale(id: &JobId, what: &str, state: JobState) -> Error {
    Error::FailedPrecondition(format!(
        "{what} refused: the lease token of job {id} is stale (the job is {})",
        state.as_str_name().trim_start_matches("JOB_STATE_")
    ))
}

fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

impl Job {
    fn event(
        &mut self,
        cap: u32,
        kind: EventKind,
        now: u64,
        extra: impl FnOnce(&mut v1::JobEvent),
    ) {
        self.seq += 1;
        let mut event = v1::JobEvent {
            seq: self.seq,
            job_id: self.id.to_string(),
            kind: kind.into(),
            state: self.state.into(),
            progress: self.progress.clone(),
            time: timestamp(now),
            attempt: self.attempt,
            error: None,
            result: Vec::new(),
        };
        extra(&mut event);
        self.events.push_back(event);
        while self.events.len() > cap as usize {
            self.events.pop_front();
        }
        self.signals.event(&self.ns, &self.id.to_string(), self.seq);
    }

    fn to_proto(&self) -> v1::Job {
        let duration = |ms: u64| prost_types::Duration::try_from(Duration::from_millis(ms)).ok();
        v1::Job {
            id: self.id.to_string(),
            queue: self.id.queue().to_owned(),
            kind: self.kind.clone(),
            state: self.state.into(),
            payload: self.payload.clone(),
            priority: self.priority,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            progress: self.progress.clone(),
            result: self.result.clone().unwrap_or_default(),
            error: self.error.clone(),
            cancel_requested: self.cancel_requested,
            cancel_reason: self.cancel_reason.clone(),
            labels: self.labels.clone().into_iter().collect(),
            retry: Some(v1::RetryPolicy {
                initial_backoff: duration(self.backoff.initial_ms),
                max_backoff: duration(self.backoff.max_ms),
                multiplier: self.backoff.multiplier,
                jitter: self.backoff.jitter,
            }),
            lease_ttl: duration(self.lease_ttl_ms),
            timeout: (self.timeout_ms > 0)
                .then(|| duration(self.timeout_ms))
                .flatten(),
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            worker_id: self.worker_id.clone(),
            last_seq: self.seq,
            checkpoint: self.checkpoint.clone(),
            created_at: timestamp(self.created),
            run_at: timestamp(self.run_at),
            started_at: timestamp(self.started),
            finished_at: timestamp(self.finished),
            updated_at: timestamp(self.updated),
            lease_expires_at: timestamp(self.lease_expires),
            expires_at: timestamp(self.expires),
            retention: duration(self.retention_ms),
        }
    }

    /// The backoff before the next attempt, after `self.attempt` failed.
    fn backoff_ms(&self) -> u64 {
        let b = &self.backoff;
        let exponent = i32::try_from(self.attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let d = (b.initial_ms as f64 * b.multiplier.powi(exponent)).min(b.max_ms as f64);
        let d = d * (1.0 + b.jitter * (2.0 * rand::random::<f64>() - 1.0));
        d.max(0.0) as u64
    }
}

impl State {
    fn queue(&mut self, ns: &str, queue: &str) -> &mut Queue {
        self.queues.entry(queue_tag(ns, queue)).or_default()
    }

    fn job(&mut self, ns: &str, id: &JobId) -> Result<&mut Job> {
        self.jobs
            .get_mut(&(ns.to_owned(), id.to_string()))
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Splits the borrow: the job and its queue.
    fn job_and_queue(&mut self, ns: &str, id: &JobId) -> Result<(&mut Job, &mut Queue)> {
        let job = self
            .jobs
            .get_mut(&(ns.to_owned(), id.to_string()))
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let queue = self.queues.entry(queue_tag(ns, id.queue())).or_default();
        Ok((job, queue))
    }
}

impl Queue {
    fn enqueue(&mut self, job: &mut Job) {
        self.seq += 1;
        let key = (1000 - i64::from(job.priority), self.seq);
        self.ready.insert((key.0, key.1, job.id.to_string()));
        job.ready_key = Some(key);
    }

    fn unready(&mut self, job: &mut Job) {
        if let Some((rank, seq)) = job.ready_key.take() {
            self.ready.remove(&(rank, seq, job.id.to_string()));
        }
    }

    fn unschedule(&mut self, job: &Job) {
        self.sched.remove(&(job.run_at, job.id.to_string()));
    }

    fn deactivate(&mut self, job: &mut Job) {
        self.active.remove(&(job.lease_expires, job.id.to_string()));
        job.lease_expires = 0;
        job.deadline = 0;
    }
}

impl MemoryStore {
    pub fn new(options: StoreOptions, signals: Arc<Signals>) -> Self {
        MemoryStore {
            options,
            signals,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn cap(&self) -> u32 {
        self.options.event_cap
    }

    fn wake(&self, ns: &str, queue: &str) {
        self.signals.wake(&queue_tag(ns, queue));
    }

    /// Cancels a job (mirrors `cancel_job` in prelude.lua): ends it
    /// CANCELLED when it is not running, asks a running one's worker to stop.
    fn cancel_job(
        &self,
        state: &mut State,
        ns: &str,
        id: &JobId,
        reason: &str,
        now: u64,
    ) -> Result<(JobState, bool)> {
        let (job, queue) = state.job_and_queue(ns, id)?;
        if is_terminal(job.state) {
            return Ok((job.state, job.cancel_requested));
        }
        if job.state == JobState::Running {
            if !job.cancel_requested {
                job.cancel_requested = true;
                job.cancel_reason = reason.to_owned();
                job.updated = now;
                job.event(self.cap(), EventKind::CancelRequested, now, |_| {});
            }
            return Ok((JobState::Running, true));
        }
        queue.unready(job);
        queue.unschedule(job);
        job.cancel_requested = true;
        job.cancel_reason = reason.to_owned();
        self.finish(job, queue, JobState::Cancelled, now, |_| {});
        Ok((JobState::Cancelled, true))
    }

    /// Moves a job to a terminal state (mirrors `finish` in prelude.lua).
    fn finish(
        &self,
        job: &mut Job,
        queue: &mut Queue,
        state: JobState,
        now: u64,
        extra: impl FnOnce(&mut v1::JobEvent),
    ) {
        job.state = state;
        job.finished = now;
        job.updated = now;
        job.expires = now + job.retention_ms;
        queue.deactivate(job);
        queue.done.insert((job.expires, job.id.to_string()));
        job.event(self.cap(), EventKind::StateChanged, now, extra);
    }

    /// Ends a failed attempt (mirrors `fail_attempt` in prelude.lua).
    /// Returns the next state and, when retried after a backoff, the wait.
    fn fail_attempt(
        &self,
        ns: &str,
        job: &mut Job,
        queue: &mut Queue,
        failure: &Failure,
        now: u64,
    ) -> (JobState, Option<Duration>) {
        let Failure {
            error,
            retryable,
            retry_after,
            ..
        } = failure;
        queue.deactivate(job);
        job.error = Some(error.clone());
        let with_error = |e: &mut v1::JobEvent| e.error = Some(error.clone());
        if job.cancel_requested {
            self.finish(job, queue, JobState::Cancelled, now, with_error);
            return (JobState::Cancelled, None);
        }
        if *retryable && job.attempt < job.max_attempts {
            let delay = retry_after.map_or_else(
                || job.backoff_ms(),
                |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            );
            job.updated = now;
            if delay == 0 {
                job.state = JobState::Queued;
                job.run_at = now;
                queue.enqueue(job);
                job.event(self.cap(), EventKind::StateChanged, now, with_error);
                self.wake(ns, job.id.queue());
                return (JobState::Queued, None);
            }
            job.state = JobState::Scheduled;
            job.run_at = now.saturating_add(delay);
            queue.sched.insert((job.run_at, job.id.to_string()));
            job.event(self.cap(), EventKind::StateChanged, now, with_error);
            return (JobState::Scheduled, Some(Duration::from_millis(delay)));
        }
        queue.dead.insert((now, job.id.to_string()));
        self.finish(job, queue, JobState::Failed, now, with_error);
        (JobState::Failed, None)
    }

    fn state_of(state: &State, ns: &str, job_id: &str) -> JobState {
        state
            .jobs
            .get(&(ns.to_owned(), job_id.to_owned()))
            .map_or(JobState::Unspecified, |j| j.state)
    }

    /// The job an unexpired idempotency key of `new` already made, if any;
    /// the key used for a different request is a conflict.
    fn prior(state: &State, ns: &str, new: &NewJob, now: u64) -> Result<Option<String>> {
        let Some(key) = &new.idempotency_key else {
            return Ok(None);
        };
        let idem = (queue_tag(ns, new.queue()), key.clone());
        match state.idempotency.get(&idem) {
            Some((id, hash, expires)) if *expires > now => {
                if *hash != new.request_hash {
                    return Err(Error::IdempotencyConflict {
                        key: key.clone(),
                        job_id: id.clone(),
                    });
                }
                Ok(Some(id.clone()))
            }
            _ => Ok(None),
        }
    }

    /// Creates a job (mirrors `create_job` in prelude.lua) and records its
    /// idempotency key; returns its state. The caller wakes the queue.
    fn create(&self, state: &mut State, ns: &str, new: &NewJob, now: u64) -> JobState {
        if let Some(key) = &new.idempotency_key {
            let ttl = u64::try_from(self.options.idempotency_ttl.as_millis()).unwrap_or(u64::MAX);
            state.idempotency.insert(
                (queue_tag(ns, new.queue()), key.clone()),
                (
                    new.id.to_string(),
                    new.request_hash.clone(),
                    now.saturating_add(ttl),
                ),
            );
        }
        let run_at = if new.run_at_ms > 0 {
            new.run_at_ms
        } else {
            now + new.delay_ms
        };
        let mut job = Job {
            id: new.id.clone(),
            ns: ns.to_owned(),
            signals: self.signals.clone(),
            kind: new.kind.clone(),
            payload: new.payload.clone(),
            priority: new.priority,
            state: if run_at > now {
                JobState::Scheduled
            } else {
                JobState::Queued
            },
            attempt: 0,
            max_attempts: new.max_attempts,
            backoff: new.backoff,
            lease_ttl_ms: new.lease_ttl_ms,
            timeout_ms: new.timeout_ms,
            retention_ms: new.retention_ms,
            idempotency_key: new.idempotency_key.clone(),
            labels: new.labels.clone(),
            trace_context: new.trace_context.clone(),
            created: now,
            run_at,
            started: 0,
            finished: 0,
            updated: now,
            expires: 0,
            token: None,
            fence: 0,
            worker_id: String::new(),
            lease_expires: 0,
            deadline: 0,
            progress: None,
            checkpoint: None,
            result: None,
            error: None,
            cancel_requested: false,
            cancel_reason: String::new(),
            seq: 0,
            events: VecDeque::new(),
            ready_key: None,
        };
        let queue = state.queue(ns, new.queue());
        queue.all.insert(job.id.to_string());
        if job.state == JobState::Scheduled {
            queue.sched.insert((run_at, job.id.to_string()));
        } else {
            queue.enqueue(&mut job);
        }
        job.event(self.cap(), EventKind::StateChanged, now, |_| {});
        let job_state = job.state;
        state.jobs.insert((ns.to_owned(), new.id.to_string()), job);
        job_state
    }

    /// Ends a running attempt with success (mirrors `complete_one` in
    /// prelude.lua).
    fn complete_one(
        &self,
        state: &mut State,
        ns: &str,
        id: &JobId,
        token: &str,
        result: &[u8],
        now: u64,
    ) -> Result<AttemptEnded> {
        {
            let job = state.job(ns, id)?;
            if job.state == JobState::Succeeded && job.token.as_deref() == Some(token) {
                return Ok(AttemptEnded {
                    state: JobState::Succeeded,
                    retry_in: None,
                    run_time: None,
                });
            }
        }
        let (job, queue) = Self::leased(state, ns, id, token, "complete")?;
        let run_time = Duration::from_millis(now.saturating_sub(job.started));
        job.result = Some(result.to_vec());
        self.finish(job, queue, JobState::Succeeded, now, |e| {
            e.result = result.to_vec()
        });
        Ok(AttemptEnded {
            state: JobState::Succeeded,
            retry_in: None,
            run_time: Some(run_time),
        })
    }

    /// The job if `token` holds its running lease (mirrors `check_lease`).
    fn leased<'a>(
        state: &'a mut State,
        ns: &str,
        id: &JobId,
        token: &str,
        what: &str,
    ) -> Result<(&'a mut Job, &'a mut Queue)> {
        let (job, queue) = state.job_and_queue(ns, id)?;
        if job.state != JobState::Running || job.token.as_deref() != Some(token) {
            return Err(stale(id, what, job.state));
        }
        Ok((job, queue))
    }
}

#[tonic::async_trait]
impl Store for MemoryStore {
    fn schedules(&self) -> &dyn super::ScheduleStore {
        self
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn submit(&self, ns: &str, new: &NewJob) -> Result<Submitted> {
        let now = now_ms();
        let mut state = self.state();
        if let Some(job_id) = Self::prior(&state, ns, new, now)? {
            let job_state = Self::state_of(&state, ns, &job_id);
            return Ok(Submitted {
                job_id,
                deduplicated: true,
                state: job_state,
            });
        }
        let job_state = self.create(&mut state, ns, new, now);
        drop(state);
        if job_state == JobState::Queued {
            self.wake(ns, new.queue());
        }
        Ok(Submitted {
            job_id: new.id.to_string(),
            deduplicated: false,
            state: job_state,
        })
    }

    async fn submit_batch(&self, ns: &str, jobs: &[NewJob]) -> Result<Vec<Submitted>> {
        let Some(first) = jobs.first() else {
            return Ok(Vec::new());
        };
        if jobs.iter().any(|j| j.queue() != first.queue()) {
            return Err(Error::InvalidArgument {
                field: "jobs",
                reason: "every job of a batch must name the same queue".into(),
            });
        }
        let now = now_ms();
        let mut state = self.state();
        // Check every job before writing any (mirrors submit_batch.lua).
        let mut seen: HashMap<&str, (String, &str)> = HashMap::new();
        let mut dups: Vec<Option<String>> = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Some(key) = job.idempotency_key.as_deref() else {
                dups.push(None);
                continue;
            };
            if let Some((id, hash)) = seen.get(key) {
                if *hash != job.request_hash {
                    return Err(Error::IdempotencyConflict {
                        key: key.to_owned(),
                        job_id: id.clone(),
                    });
                }
                dups.push(Some(id.clone()));
                continue;
            }
            let prior = Self::prior(&state, ns, job, now)?;
            if prior.is_none() {
                seen.insert(key, (job.id.to_string(), job.request_hash.as_str()));
            }
            dups.push(prior);
        }
        let mut queued = false;
        for (job, dup) in jobs.iter().zip(&dups) {
            if dup.is_none() {
                queued |= self.create(&mut state, ns, job, now) == JobState::Queued;
            }
        }
        let out = jobs
            .iter()
            .zip(dups)
            .map(|(job, dup)| {
                let deduplicated = dup.is_some();
                let job_id = dup.unwrap_or_else(|| job.id.to_string());
                Submitted {
                    state: Self::state_of(&state, ns, &job_id),
                    job_id,
                    deduplicated,
                }
            })
            .collect();
        drop(state);
        if queued {
            self.wake(ns, first.queue());
        }
        Ok(out)
    }

    async fn get(&self, ns: &str, id: &JobId) -> Result<v1::Job> {
        Ok(self.state().job(ns, id)?.to_proto())
    }

    async fn cancel(&self, ns: &str, id: &JobId, reason: &str) -> Result<(JobState, bool)> {
        let now = now_ms();
        self.cancel_job(&mut self.state(), ns, id, reason, now)
    }

    async fn lease(
        &self,
        ns: &str,
        queue_name: &str,
        worker_id: &str,
        max: usize,
    ) -> Result<Vec<Leased>> {
        let now = now_ms();
        let mut state = self.state();
        let State { queues, jobs, .. } = &mut *state;
        let Some(queue) = queues.get_mut(&queue_tag(ns, queue_name)) else {
            return Ok(Vec::new());
        };
        if queue.paused {
            return Ok(Vec::new());
        }
        let nonce = format!("{:016x}", rand::random::<u64>());
        let mut out = Vec::new();
        while out.len() < max {
            let Some((_, _, id)) = queue.ready.pop_first() else {
                break;
            };
            let Some(job) = jobs.get_mut(&(ns.to_owned(), id)) else {
                continue;
            };
            job.ready_key = None;
            if job.state != JobState::Queued {
                continue;
            }
            job.fence += 1;
            let token = format!("{}.{nonce}{}", job.fence, out.len() + 1);
            job.attempt += 1;
            let mut lease_expires = now + job.lease_ttl_ms;
            job.deadline = 0;
            if job.timeout_ms > 0 {
                job.deadline = now + job.timeout_ms;
                lease_expires = lease_expires.min(job.deadline);
            }
            job.state = JobState::Running;
            job.token = Some(token.clone());
            job.worker_id = worker_id.to_owned();
            job.lease_expires = lease_expires;
            job.started = now;
            job.updated = now;
            queue.active.insert((lease_expires, job.id.to_string()));
            job.event(self.options.event_cap, EventKind::StateChanged, now, |_| {});
            let queue_wait = Duration::from_millis(now.saturating_sub(job.run_at));
            let leased = v1::LeasedJob {
                job_id: job.id.to_string(),
                lease_token: token,
                queue: queue_name.to_owned(),
                kind: job.kind.clone(),
                payload: job.payload.clone(),
                attempt: job.attempt,
                max_attempts: job.max_attempts,
                checkpoint: job.checkpoint.clone(),
                lease_expires_at: timestamp(lease_expires),
                lease_ttl: prost_types::Duration::try_from(Duration::from_millis(job.lease_ttl_ms))
                    .ok(),
                labels: job.labels.clone().into_iter().collect(),
                deadline: timestamp(job.deadline),
                trace_context: job.trace_context.clone().into_iter().collect(),
            };
            out.push(Leased {
                job: leased,
                queue_wait,
            });
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        progress: Option<&v1::Progress>,
        checkpoint: Option<&[u8]>,
    ) -> Result<Heartbeat> {
        let now = now_ms();
        let mut state = self.state();
        let (job, queue) = Self::leased(&mut state, ns, id, token, "heartbeat")?;
        let mut lease_expires = now + job.lease_ttl_ms;
        if job.deadline > 0 {
            lease_expires = lease_expires.min(job.deadline);
        }
        queue
            .active
            .remove(&(job.lease_expires, job.id.to_string()));
        queue.active.insert((lease_expires, job.id.to_string()));
        job.lease_expires = lease_expires;
        job.updated = now;
        if let Some(c) = checkpoint {
            job.checkpoint = Some(c.to_vec());
        }
        if let Some(p) = progress
            && job.progress.as_ref() != Some(p)
        {
            job.progress = Some(p.clone());
            job.event(self.cap(), EventKind::Progress, now, |_| {});
        }
        Ok(Heartbeat {
            cancel_requested: job.cancel_requested,
            cancel_reason: job.cancel_reason.clone(),
            lease_expires_at_ms: lease_expires,
        })
    }

    async fn complete(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        result: &[u8],
    ) -> Result<AttemptEnded> {
        let now = now_ms();
        let mut state = self.state();
        self.complete_one(&mut state, ns, id, token, result, now)
    }

    async fn complete_batch(
        &self,
        ns: &str,
        completions: &[Completion<'_>],
    ) -> Result<Vec<Result<AttemptEnded>>> {
        let now = now_ms();
        let mut state = self.state();
        Ok(completions
            .iter()
            .map(|c| self.complete_one(&mut state, ns, &c.id, c.token, c.result, now))
            .collect())
    }

    async fn fail(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        failure: &Failure,
    ) -> Result<AttemptEnded> {
        let now = now_ms();
        let mut state = self.state();
        let (job, queue) = Self::leased(&mut state, ns, id, token, "fail")?;
        let run_time = Duration::from_millis(now.saturating_sub(job.started));
        if let Some(c) = &failure.checkpoint {
            job.checkpoint = Some(c.clone());
        }
        let (state, retry_in) = self.fail_attempt(ns, job, queue, failure, now);
        Ok(AttemptEnded {
            state,
            retry_in,
            run_time: Some(run_time),
        })
    }

    async fn release(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        checkpoint: Option<&[u8]>,
    ) -> Result<JobState> {
        let now = now_ms();
        let mut state = self.state();
        let (job, queue) = Self::leased(&mut state, ns, id, token, "release")?;
        if let Some(c) = checkpoint {
            job.checkpoint = Some(c.to_vec());
        }
        queue.deactivate(job);
        job.token = None;
        if job.cancel_requested {
            self.finish(job, queue, JobState::Cancelled, now, |_| {});
            return Ok(JobState::Cancelled);
        }
        job.attempt = job.attempt.saturating_sub(1);
        job.state = JobState::Queued;
        job.run_at = now;
        job.updated = now;
        queue.enqueue(job);
        job.event(self.cap(), EventKind::StateChanged, now, |_| {});
        drop(state);
        self.wake(ns, id.queue());
        Ok(JobState::Queued)
    }

    async fn requeue(&self, ns: &str, id: &JobId) -> Result<JobState> {
        let now = now_ms();
        let mut state = self.state();
        let (job, queue) = state.job_and_queue(ns, id)?;
        if job.state != JobState::Failed {
            return Err(Error::FailedPrecondition(format!(
                "only a FAILED job can be re-queued; job {id} is {}",
                job.state.as_str_name().trim_start_matches("JOB_STATE_")
            )));
        }
        queue.dead.retain(|(_, d)| *d != job.id.to_string());
        queue.done.remove(&(job.expires, job.id.to_string()));
        job.finished = 0;
        job.expires = 0;
        job.token = None;
        job.attempt = 0;
        job.state = JobState::Queued;
        job.run_at = now;
        job.updated = now;
        queue.enqueue(job);
        job.event(self.cap(), EventKind::StateChanged, now, |_| {});
        drop(state);
        self.wake(ns, id.queue());
        Ok(JobState::Queued)
    }

    async fn list_failed(
        &self,
        ns: &str,
        queue: &str,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<v1::Job>, Option<usize>)> {
        let state = self.state();
        let Some(q) = state.queues.get(&queue_tag(ns, queue)) else {
            return Ok((Vec::new(), None));
        };
        let page: Vec<v1::Job> = q
            .dead
            .iter()
            .rev()
            .skip(offset)
            .take(limit)
            .filter_map(|(_, id)| state.jobs.get(&(ns.to_owned(), id.clone())))
            .map(Job::to_proto)
            .collect();
        let more = q.dead.len() > offset.saturating_add(limit);
        Ok((page, more.then_some(offset + limit)))
    }

    async fn queue_stats(&self, ns: &str, queue: &str) -> Result<v1::GetQueueStatsResponse> {
        let state = self.state();
        let q = state.queues.get(&queue_tag(ns, queue));
        let count = |f: fn(&Queue) -> usize| q.map_or(0, |q| f(q) as u64);
        Ok(v1::GetQueueStatsResponse {
            queue: queue.to_owned(),
            scheduled: count(|q| q.sched.len()),
            queued: count(|q| q.ready.len()),
            running: count(|q| q.active.len()),
            failed: count(|q| q.dead.len()),
            finished: count(|q| q.done.len()),
            paused: q.is_some_and(|q| q.paused),
        })
    }

    async fn queues(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .state()
            .queues
            .keys()
            .filter_map(|tag| tag.split_once(':'))
            .map(|(ns, queue)| (ns.to_owned(), queue.to_owned()))
            .collect())
    }

    async fn maintain(&self) -> Result<Maintenance> {
        let now = now_ms();
        let mut state = self.state();
        let State {
            queues,
            jobs,
            idempotency,
            ..
        } = &mut *state;
        let mut next_due = None;
        let mut lease_expiries = Vec::new();
        let mut woken = Vec::new();
        for (tag, queue) in queues.iter_mut() {
            let Some((ns, queue_name)) = tag.split_once(':') else {
                continue;
            };
            let mut reaped = 0;
            // Promote.
            while let Some((at, id)) = queue.sched.first().cloned() {
                if at > now {
                    let due = Duration::from_millis(at - now);
                    next_due = Some(next_due.map_or(due, |d: Duration| d.min(due)));
                    break;
                }
                queue.sched.pop_first();
                if let Some(job) = jobs.get_mut(&(ns.to_owned(), id))
                    && job.state == JobState::Scheduled
                {
                    job.state = JobState::Queued;
                    job.updated = now;
                    queue.enqueue(job);
                    job.event(self.cap(), EventKind::StateChanged, now, |_| {});
                    woken.push(tag.clone());
                }
            }
            // Reap.
            while let Some((at, id)) = queue.active.first().cloned() {
                if at > now {
                    break;
                }
                let Some(job) = jobs.get_mut(&(ns.to_owned(), id.clone())) else {
                    queue.active.pop_first();
                    continue;
                };
                let error = if job.deadline > 0 && job.deadline <= now {
                    v1::JobError {
                        message: "the attempt ran past the job's timeout".into(),
                        code: "timeout".into(),
                        details: String::new(),
                    }
                } else {
                    v1::JobError {
                        message: "lease expired: the worker stopped heartbeating".into(),
                        code: "lease_expired".into(),
                        details: String::new(),
                    }
                };
                job.token = None;
                tracing::info!(job_id = %id, "lease expired");
                let failure = Failure {
                    error,
                    retryable: true,
                    ..Failure::default()
                };
                let (next, _) = self.fail_attempt(ns, job, queue, &failure, now);
                reaped += 1;
                if next == JobState::Scheduled {
                    let due = Duration::from_millis(job.run_at.saturating_sub(now));
                    next_due = Some(next_due.map_or(due, |d: Duration| d.min(due)));
                }
            }
            if reaped > 0 {
                lease_expiries.push((ns.to_owned(), queue_name.to_owned(), reaped));
            }
            // Expire.
            while let Some((at, id)) = queue.done.first().cloned() {
                if at > now {
                    break;
                }
                queue.done.pop_first();
                queue.all.remove(&id);
                if let Some(job) = jobs.remove(&(ns.to_owned(), id.clone())) {
                    queue.dead.remove(&(job.finished, id));
                }
            }
        }
        idempotency.retain(|_, (_, _, expires)| *expires > now);
        drop(state);
        for tag in woken {
            self.signals.wake(&tag);
        }
        Ok(Maintenance {
            next_due,
            lease_expiries,
        })
    }

    async fn events(
        &self,
        ns: &str,
        id: &JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<v1::JobEvent>> {
        let mut state = self.state();
        let job = state.job(ns, id)?;
        if let Some(oldest) = job.events.front()
            && oldest.seq > after + 1
        {
            return Err(Error::OutOfRange(format!(
                "events after {after} of job {id} are no longer kept; the oldest kept is {}",
                oldest.seq
            )));
        }
        Ok(job
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn relay_signals(&self, _signals: Arc<Signals>, shutdown: CancellationToken) {
        // Every transition signals directly; no other process shares this store.
        shutdown.cancelled().await;
    }

    async fn list_jobs(&self, ns: &str, query: &super::ListQuery) -> Result<super::ListPage> {
        let state = self.state();
        let (ids, next) = admin::walk(&state, ns, query);
        let jobs = ids
            .iter()
            .filter_map(|id| state.jobs.get(&(ns.to_owned(), id.clone())))
            .map(Job::to_proto)
            .collect();
        Ok(super::ListPage { jobs, next })
    }

    async fn set_paused(&self, ns: &str, queue: &str, paused: bool) -> Result<()> {
        self.state().queue(ns, queue).paused = paused;
        if !paused {
            self.wake(ns, queue);
        }
        Ok(())
    }

    async fn delete(&self, ns: &str, id: &JobId) -> Result<()> {
        admin::delete(&mut self.state(), ns, id)
    }

    async fn purge(&self, ns: &str, query: &super::ListQuery) -> Result<(u64, Option<String>)> {
        let mut state = self.state();
        let (ids, next) = admin::walk(&state, ns, query);
        let mut deleted = 0;
        for id in ids {
            if let Ok(id) = JobId::parse(&id)
                && admin::delete(&mut state, ns, &id).is_ok()
            {
                deleted += 1;
            }
        }
        Ok((deleted, next))
    }

    async fn requeue_failed(&self, ns: &str, queue: &str, limit: usize) -> Result<(u64, u64)> {
        let ids: Vec<String> = {
            let state = self.state();
            let Some(q) = state.queues.get(&queue_tag(ns, queue)) else {
                return Ok((0, 0));
            };
            q.dead
                .iter()
                .take(limit)
                .map(|(_, id)| id.clone())
                .collect()
        };
        let mut requeued = 0;
        for id in ids {
            if let Ok(id) = JobId::parse(&id)
                && self.requeue(ns, &id).await.is_ok()
            {
                requeued += 1;
            }
        }
        let remaining = self
            .state()
            .queues
            .get(&queue_tag(ns, queue))
            .map_or(0, |q| q.dead.len() as u64);
        Ok((requeued, remaining))
    }
}
