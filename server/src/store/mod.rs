//! The job store: every piece of job state, behind the [`Store`] trait.
//!
//! The API layer hands a store validated requests ([`crate::model`]) and
//! gets back the contract's messages. [`RedisStore`] keeps state in Redis
//! (one Lua script per transition); [`MemoryStore`] keeps it in the process
//! (the embedded mode and the test harness). Both pass one conformance suite.

mod codec;
mod combine;
pub mod conn;
pub mod listing;
mod memory;
mod redis;
mod schedules;
mod scripts;
mod submits;

use std::sync::Arc;
use std::time::Duration;

use jobctl_proto::v1::{self, JobState};
use tokio_util::sync::CancellationToken;

pub use self::codec::timestamp;
pub use self::conn::{Target, WaitReplicas};
pub use self::listing::{ListPage, ListQuery};
pub use self::memory::MemoryStore;
pub use self::redis::{RedisStore, StoreOptions};
pub use self::schedules::{
    Due, Fire, FireAction, Fired, Run, ScheduleId, ScheduleRecord, ScheduleStore,
};
use crate::error::Result;
use crate::keys::JobId;
use crate::model::NewJob;
use crate::signals::Signals;

/// The answer to a Submit.
#[derive(Clone, Debug)]
pub struct Submitted {
    pub job_id: String,
    pub deduplicated: bool,
    pub state: JobState,
}

/// The answer to a Heartbeat.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    pub cancel_requested: bool,
    pub cancel_reason: String,
    pub lease_expires_at_ms: u64,
}

/// How an attempt failed.
#[derive(Clone, Debug, Default)]
pub struct Failure {
    pub error: v1::JobError,
    pub retryable: bool,
    /// Retry after this long instead of the job's backoff.
    pub retry_after: Option<Duration>,
    /// A checkpoint to keep for the next attempt.
    pub checkpoint: Option<Vec<u8>>,
}

/// A leased job and how long it had waited ready.
#[derive(Clone, Debug)]
pub struct Leased {
    pub job: v1::LeasedJob,
    pub queue_wait: Duration,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub struct AttemptEnded {
    /// The job's state after the call.
    pub state: JobState,
    /// When it will be retried after a backoff: how long from now.
    pub retry_in: Option<Duration>,
    /// How long the attempt ran (None for a repeated call).
    pub run_time: Option<Duration>,
}

/// One attempt to end with success, in a batch.
#[derive(Clone, Debug)]
pub struct Completion<'a> {
    pub id: JobId,
    pub token: &'a str,
    pub result: &'a [u8],
}

/// What a maintenance pass over every queue did.
#[derive(Clone, Debug, Default)]
pub struct Maintenance {
    /// How soon the next scheduled job is due, if known.
    pub next_due: Option<Duration>,
    /// Leases that expired, by (namespace, queue).
    pub lease_expiries: Vec<(String, String, u64)>,
}

/// What one maintenance pass over a queue did.
#[derive(Clone, Debug, Default)]
pub struct Maintained {
    pub promoted: u64,
    pub reaped: u64,
    pub expired: u64,
    /// Milliseconds until the earliest scheduled job is due, if any.
    pub next_due_in_ms: Option<u64>,
}

/// Every operation on jobs. `ns` is the caller's namespace: a job of
/// another namespace is not found. Each operation is atomic.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The store's schedules (`store/schedules.rs`).
    fn schedules(&self) -> &dyn ScheduleStore;

    /// Answers once the store can serve.
    async fn ping(&self) -> Result<()>;

    /// Creates a job, or finds the one its idempotency key already made.
    async fn submit(&self, ns: &str, job: &NewJob) -> Result<Submitted>;

    /// Creates several jobs of one queue, all or none: a batch whose
    /// idempotency key was used for a different request (on the queue or
    /// within the batch) is refused whole and writes nothing. A key seen
    /// before with the same request gives that job back, deduplicated. The
    /// answers are in the order of `jobs`.
    async fn submit_batch(&self, ns: &str, jobs: &[NewJob]) -> Result<Vec<Submitted>>;

    /// The job's record.
    async fn get(&self, ns: &str, id: &JobId) -> Result<v1::Job>;

    /// Cancels a job; returns its state after the call and whether a cancel
    /// was requested.
    async fn cancel(&self, ns: &str, id: &JobId, reason: &str) -> Result<(JobState, bool)>;

    /// Leases up to `max` ready jobs of one queue, at once (no waiting).
    async fn lease(
        &self,
        ns: &str,
        queue: &str,
        worker_id: &str,
        max: usize,
    ) -> Result<Vec<Leased>>;

    /// Extends a lease, records progress and a checkpoint.
    async fn heartbeat(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        progress: Option<&v1::Progress>,
        checkpoint: Option<&[u8]>,
    ) -> Result<Heartbeat>;

    /// Ends an attempt with success.
    async fn complete(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        result: &[u8],
    ) -> Result<AttemptEnded>;

    /// Ends several attempts with success, each checked against its own
    /// lease token as [`Store::complete`] does: one answer per completion,
    /// in order, and a refused one changes nothing.
    async fn complete_batch(
        &self,
        ns: &str,
        completions: &[Completion<'_>],
    ) -> Result<Vec<Result<AttemptEnded>>>;

    /// Ends an attempt with an error; it is retried while attempts remain.
    async fn fail(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        failure: &Failure,
    ) -> Result<AttemptEnded>;

    /// Hands a running job back without using up its attempt.
    async fn release(
        &self,
        ns: &str,
        id: &JobId,
        token: &str,
        checkpoint: Option<&[u8]>,
    ) -> Result<JobState>;

    /// Puts a FAILED job back in its queue with a fresh set of attempts.
    async fn requeue(&self, ns: &str, id: &JobId) -> Result<JobState>;

    /// A page of a queue's dead letters, newest first, from `offset`; and
    /// the offset of the next page, if any.
    async fn list_failed(
        &self,
        ns: &str,
        queue: &str,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<v1::Job>, Option<usize>)>;

    /// Counts a queue's jobs by state (and says whether it is paused).
    async fn queue_stats(&self, ns: &str, queue: &str) -> Result<v1::GetQueueStatsResponse>;

    /// One page of a walk over a queue's jobs (see [`listing`]).
    async fn list_jobs(&self, ns: &str, query: &ListQuery) -> Result<ListPage>;

    /// Pauses (no leases) or resumes a queue; resuming wakes its workers.
    async fn set_paused(&self, ns: &str, queue: &str, paused: bool) -> Result<()>;

    /// Deletes a finished job with its history; `FAILED_PRECONDITION` for
    /// one that has not finished.
    async fn delete(&self, ns: &str, id: &JobId) -> Result<()>;

    /// Deletes the finished jobs of one page of a walk (`query.states` are
    /// finished states); returns how many, and where the walk goes on.
    async fn purge(&self, ns: &str, query: &ListQuery) -> Result<(u64, Option<String>)>;

    /// Re-queues up to `limit` dead letters of a queue, oldest first;
    /// returns how many, and how many are left.
    async fn requeue_failed(&self, ns: &str, queue: &str, limit: usize) -> Result<(u64, u64)>;

    /// One maintenance pass over every queue: promote due scheduled jobs,
    /// reap expired leases, delete finished jobs past their retention.
    async fn maintain(&self) -> Result<Maintenance>;

    /// Every known `(namespace, queue)`.
    async fn queues(&self) -> Result<Vec<(String, String)>>;

    /// The job's events with a sequence number above `after`, in order, at
    /// most `limit`. `OUT_OF_RANGE` when events after `after` were trimmed
    /// from the history; `NOT_FOUND` when there is no such job.
    async fn events(
        &self,
        ns: &str,
        id: &JobId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<v1::JobEvent>>;

    /// Relays what other processes signal (work made ready, events
    /// appended) into `signals`, until `shutdown`. A store no other process
    /// shares signals directly and only waits.
    async fn relay_signals(&self, signals: Arc<Signals>, shutdown: CancellationToken);
}
