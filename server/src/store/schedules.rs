//! Schedules in the store: the records of periodic schedules and the one
//! transition that fires them ([`ScheduleStore::fire_schedule`]).
//!
//! A schedule lives under the hash tag of its job template's queue, so a
//! fire and the Submit of its job are one script (`lua/fire.lua`). The
//! store knows no cron: the scheduler (`crate::schedules`) computes fire
//! times and hands the store a [`Fire`], which the store applies only if
//! the schedule is still as the scheduler read it (compare-and-set on its
//! version, its last handled fire time and its latest run) and the fire
//! time has come on the store's clock. Two replicas firing the same fire
//! time therefore make one job; the job's idempotency key (the schedule's
//! name and the fire time) makes that doubly sure.

use std::fmt;

use jobctl_proto::v1::{self, OverlapPolicy};

use crate::error::{Error, Result};
use crate::keys::is_valid_name;
use crate::model::NewJob;

/// How many runs a schedule remembers.
pub const RECENT_RUNS: usize = 20;

/// A schedule's id: its queue and name, `<queue>:<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScheduleId {
    queue: String,
    name: String,
}

impl ScheduleId {
    pub fn new(queue: &str, name: &str) -> Self {
        ScheduleId {
            queue: queue.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Reads an id; anything that is not one is an unknown schedule.
    pub fn parse(id: &str) -> Result<Self> {
        let not_found = || Error::ScheduleNotFound(id.chars().take(200).collect());
        let (queue, name) = id.split_once(':').ok_or_else(not_found)?;
        if !is_valid_name(queue) || !is_valid_name(name) {
            return Err(not_found());
        }
        Ok(ScheduleId::new(queue, name))
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ScheduleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.queue, self.name)
    }
}

/// A schedule as stored. Times are ms since the epoch on the store's clock.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduleRecord {
    pub id: Option<ScheduleId>,
    /// The encoded `v1::ScheduleSpec`.
    pub spec: Vec<u8>,
    pub paused: bool,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Every fire time up to this one has been handled (fired, skipped or
    /// missed); set to the time of the call by create, update and resume.
    pub after_ms: u64,
    /// Changes with every create, update, pause and resume.
    pub version: u64,
    pub fired: u64,
    pub skipped: u64,
    pub missed: u64,
    /// The job of the latest run ("" for none).
    pub current: String,
    /// A fire time kept for later by BUFFER_ONE (0 for none).
    pub buffered_ms: u64,
}

impl ScheduleRecord {
    /// The schedule's id (set on every record a store hands out).
    pub fn id(&self) -> ScheduleId {
        self.id.clone().unwrap_or_else(|| ScheduleId::new("", ""))
    }
}

/// One run of a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub fire_ms: u64,
    pub job_id: String,
    pub outcome: v1::ScheduleRunOutcome,
}

/// Schedules whose time to be looked at has come.
#[derive(Clone, Debug, Default)]
pub struct Due {
    /// The store's clock when they were read.
    pub now_ms: u64,
    /// (namespace, record).
    pub schedules: Vec<(String, ScheduleRecord)>,
    /// When the earliest schedule not yet due is, if any.
    pub next_ms: Option<u64>,
}

/// What a [`Fire`] does.
#[derive(Clone, Debug)]
pub enum FireAction {
    /// Handles fire time `fire_ms` (after `missed` earlier ones were
    /// missed): make `job`, or skip or buffer it by the overlap policy.
    Tick { fire_ms: u64, job: Box<NewJob> },
    /// Makes the buffered fire time's `job` once the previous run has ended.
    Release { fire_ms: u64, job: Box<NewJob> },
    /// Makes no job: records missed fire times and when to look next.
    Advance,
}

/// One step of a schedule, applied only if the schedule is still as read.
#[derive(Clone, Debug)]
pub struct Fire {
    pub id: ScheduleId,
    /// What the schedule was read with (compare-and-set).
    pub version: u64,
    pub after_ms: u64,
    pub current: String,
    pub action: FireAction,
    /// The schedule's last handled fire time after this step.
    pub new_after_ms: u64,
    /// Fire times missed (catch-up policy) before this step's.
    pub missed: u64,
    /// When to look at the schedule next (None: never, it has ended).
    pub next_ms: Option<u64>,
    /// While a fire time is buffered, look again no later than this.
    pub recheck_ms: u64,
    pub overlap: OverlapPolicy,
}

/// What a [`Fire`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Fired {
    /// The schedule changed since it was read (another replica fired it,
    /// or it was updated, paused or deleted): nothing was done.
    Stale,
    /// The fire time has not come on the store's clock: nothing was done.
    Early,
    /// A job was made (or found: its idempotency key had made it).
    Made { job_id: String, deduplicated: bool },
    /// Skipped by the overlap policy.
    Skipped,
    /// Buffered by BUFFER_ONE.
    Buffered,
    /// The buffered fire time still waits for the previous run.
    Waiting,
    /// No job to make; the schedule was advanced.
    Advanced,
}

/// Schedules, kept by both stores.
#[tonic::async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Creates a schedule; `ALREADY_EXISTS` when its id is taken.
    async fn create_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        spec: &[u8],
        paused: bool,
    ) -> Result<ScheduleRecord>;

    /// A schedule and its last runs, newest first.
    async fn get_schedule(&self, ns: &str, id: &ScheduleId) -> Result<(ScheduleRecord, Vec<Run>)>;

    /// The namespace's schedules (of one queue, if given), by id.
    async fn list_schedules(&self, ns: &str, queue: Option<&str>) -> Result<Vec<ScheduleRecord>>;

    /// Replaces a schedule's spec.
    async fn update_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        spec: &[u8],
    ) -> Result<ScheduleRecord>;

    async fn delete_schedule(&self, ns: &str, id: &ScheduleId) -> Result<()>;

    /// Pauses or resumes a schedule (resuming starts from now).
    async fn pause_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        paused: bool,
    ) -> Result<ScheduleRecord>;

    /// Makes `job` as a run of the schedule, now.
    async fn trigger_schedule(&self, ns: &str, id: &ScheduleId, job: &NewJob) -> Result<String>;

    /// Up to `limit` schedules whose time to be looked at has come.
    async fn due_schedules(&self, limit: usize) -> Result<Due>;

    /// Applies one step of a schedule (see [`Fire`]).
    async fn fire_schedule(&self, ns: &str, fire: &Fire) -> Result<Fired>;
}
