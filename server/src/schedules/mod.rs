//! Periodic schedules: the scheduler every replica runs (no leader).
//!
//! Each pass reads the schedules whose time has come on the store's clock
//! ([`ScheduleStore::due_schedules`]), computes each one's next step from
//! its spec ([`plan`]: which fire time to run, which were missed, when to
//! look next) and hands it to the store ([`ScheduleStore::fire_schedule`]),
//! which applies it only if the schedule is still as read and the fire time
//! has come on its clock. Replicas that fire the same schedule at once make
//! one job per fire time; a replica killed mid-fire leaves the step undone
//! (one script), and another replica does it.

pub mod spec;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use jobctl_proto::v1::CatchupPolicy;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use self::spec::Spec;
use crate::error::Result;
use crate::metrics::{self, Metrics};
use crate::model::Validator;
use crate::store::{Fire, FireAction, Fired, ScheduleRecord, Store};

/// How many due schedules one pass reads.
const DUE_BATCH: usize = 1000;
/// How many schedules one replica steps at once.
const CONCURRENT: usize = 64;
/// Most steps of one schedule in one pass (RUN_ALL catching up).
const STEPS: usize = 32;
/// While a fire time is buffered, how often to look whether the previous
/// run has ended.
const RECHECK_MS: u64 = 1000;
/// Missed fire times are counted up to this many per step.
const COUNT_CAP: u64 = 100_000;

/// Wakes the scheduler early (a schedule was created or resumed here).
#[derive(Debug, Default)]
pub struct Nudge(Notify);

impl Nudge {
    pub fn nudge(&self) {
        self.0.notify_one();
    }
}

/// The next step of a schedule whose time has come, read at `now_ms` on the
/// store's clock; `job` makes the job of a fire time. None when there is
/// nothing to do (a buffered fire time was just handled and no other is
/// due).
pub fn plan(
    spec: &Spec,
    record: &ScheduleRecord,
    now_ms: u64,
    release: bool,
    make: impl FnOnce(u64) -> Result<crate::model::NewJob>,
) -> Result<Fire> {
    let base = |action, new_after_ms, missed, next_ms| Fire {
        id: record.id(),
        version: record.version,
        after_ms: record.after_ms,
        current: record.current.clone(),
        action,
        new_after_ms,
        missed,
        next_ms,
        recheck_ms: now_ms + RECHECK_MS,
        overlap: spec.overlap,
    };
    let after = record.after_ms;
    if release && record.buffered_ms != 0 {
        let fire_ms = record.buffered_ms;
        let job = make(fire_ms)?;
        return Ok(base(
            FireAction::Release {
                fire_ms,
                job: Box::new(job),
            },
            after,
            0,
            spec.next_after(after),
        ));
    }
    let Some(first) = spec.next_after(after) else {
        return Ok(base(FireAction::Advance, after, 0, None));
    };
    if first > now_ms {
        return Ok(base(FireAction::Advance, after, 0, Some(first)));
    }
    let window = spec.catchup_window_ms;
    let last = spec.last_until(after, now_ms).unwrap_or(first);
    let (fire_ms, missed, new_after) = match spec.catchup {
        CatchupPolicy::RunLatest => (Some(last), spec.count_between(after, last, COUNT_CAP), last),
        // SKIP_MISSED and RUN_ALL: each fire time in turn, from the oldest
        // within the window.
        _ => {
            let oldest = now_ms.saturating_sub(window);
            match spec.next_after(after.max(oldest.saturating_sub(1))) {
                Some(t) if t <= now_ms => (Some(t), spec.count_between(after, t, COUNT_CAP), t),
                _ => (None, spec.count_between(after, now_ms + 1, COUNT_CAP), last),
            }
        }
    };
    let next = spec.next_after(new_after);
    Ok(match fire_ms {
        Some(fire_ms) => {
            let job = make(fire_ms)?;
            base(
                FireAction::Tick {
                    fire_ms,
                    job: Box::new(job),
                },
                new_after,
                missed,
                next,
            )
        }
        None => base(FireAction::Advance, new_after, missed, next),
    })
}

/// A decoded spec and the schedule version it is of.
type VersionedSpec = (u64, Arc<Spec>);

/// The scheduler of one replica.
pub struct Scheduler {
    pub store: Arc<dyn Store>,
    pub validator: Validator,
    pub metrics: Arc<Metrics>,
    /// The longest sleep between passes.
    pub interval: Duration,
    pub nudge: Arc<Nudge>,
    /// Decoded specs by (namespace, id), with the version they are of.
    specs: Mutex<HashMap<(String, String), VersionedSpec>>,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        validator: Validator,
        metrics: Arc<Metrics>,
        interval: Duration,
        nudge: Arc<Nudge>,
    ) -> Self {
        Scheduler {
            store,
            validator,
            metrics,
            interval,
            nudge,
            specs: Mutex::new(HashMap::new()),
        }
    }

    /// Runs passes until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        loop {
            let sleep = match this.pass().await {
                Ok(Some(sleep)) => sleep,
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, "schedule pass failed");
                    this.interval
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = this.nudge.0.notified() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One pass; how long to sleep after it (None: more are due now).
    async fn pass(self: &Arc<Self>) -> Result<Option<Duration>> {
        let due = self.store.schedules().due_schedules(DUE_BATCH).await?;
        let full = due.schedules.len() >= DUE_BATCH;
        let now = due.now_ms;
        let nexts: Vec<Option<u64>> = futures::stream::iter(due.schedules)
            .map(|(ns, record)| {
                let this = self.clone();
                async move {
                    match this.step(&ns, record, now).await {
                        Ok(next) => next,
                        Err(error) => {
                            tracing::warn!(%error, namespace = %ns, "schedule step failed");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(CONCURRENT)
            .collect()
            .await;
        if full {
            return Ok(None);
        }
        let next = nexts.into_iter().flatten().chain(due.next_ms).min();
        Ok(Some(match next {
            Some(at) => Duration::from_millis(at.saturating_sub(now).max(1)).min(self.interval),
            None => self.interval,
        }))
    }

    fn spec(&self, ns: &str, record: &ScheduleRecord) -> Result<Arc<Spec>> {
        let key = (ns.to_owned(), record.id().to_string());
        let mut specs = self
            .specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((version, spec)) = specs.get(&key)
            && *version == record.version
        {
            return Ok(spec.clone());
        }
        let (spec, _) = Spec::decode(&self.validator, record.id().name(), &record.spec)?;
        let spec = Arc::new(spec);
        if specs.len() > 100_000 {
            specs.clear();
        }
        specs.insert(key, (record.version, spec.clone()));
        Ok(spec)
    }

    /// Steps one schedule until nothing is due; when to look at it next.
    async fn step(&self, ns: &str, mut record: ScheduleRecord, now: u64) -> Result<Option<u64>> {
        let spec = self.spec(ns, &record)?;
        let id = record.id();
        let labels = metrics::queue(ns, id.queue());
        let mut release = true;
        for _ in 0..STEPS {
            let validator = &self.validator;
            let name = id.name().to_owned();
            let sid = id.to_string();
            let fire = plan(&spec, &record, now, release, |fire_ms| {
                spec.job(validator, &sid, spec::fire_key(&name, fire_ms), fire_ms)
            })?;
            let was_release = matches!(fire.action, FireAction::Release { .. });
            let fire_ms = match &fire.action {
                FireAction::Tick { fire_ms, .. } | FireAction::Release { fire_ms, .. } => {
                    Some(*fire_ms)
                }
                FireAction::Advance => None,
            };
            let outcome = self.store.schedules().fire_schedule(ns, &fire).await?;
            if fire.missed > 0 && !matches!(outcome, Fired::Stale | Fired::Early) {
                self.metrics
                    .schedule_missed
                    .get_or_create(&labels)
                    .inc_by(fire.missed);
            }
            match &outcome {
                Fired::Made { job_id, .. } => {
                    self.metrics.schedule_fires.get_or_create(&labels).inc();
                    if let Some(fire_ms) = fire_ms {
                        let lag = now.saturating_sub(fire_ms);
                        self.metrics
                            .schedule_fire_lag_seconds
                            .get_or_create(&labels)
                            .observe(lag as f64 / 1000.0);
                    }
                    tracing::debug!(schedule = %id, job_id = %job_id, fire_ms, "schedule fired");
                    record.current = job_id.clone();
                    record.fired += 1;
                    if was_release {
                        record.buffered_ms = 0;
                    }
                }
                Fired::Skipped => {
                    self.metrics.schedule_skipped.get_or_create(&labels).inc();
                }
                Fired::Buffered => {
                    record.buffered_ms = fire_ms.unwrap_or_default();
                }
                Fired::Waiting => {}
                Fired::Advanced => return Ok(fire.next_ms),
                Fired::Stale | Fired::Early => return Ok(None),
            }
            if was_release {
                release = false;
                continue;
            }
            record.after_ms = fire.new_after_ms;
            match fire.next_ms {
                Some(next) if next <= now => {}
                next => {
                    return Ok(if record.buffered_ms != 0 {
                        Some(next.map_or(fire.recheck_ms, |n| n.min(fire.recheck_ms)))
                    } else {
                        next
                    });
                }
            }
        }
        Ok(Some(now))
    }
}
