//! Schedules in the embedded store: the same transitions as
//! `lua/schedule.lua` and `lua/fire.lua`, under the store's one mutex.

use std::collections::VecDeque;

use jobctl_proto::v1::{JobState, OverlapPolicy, ScheduleRunOutcome};

use super::{MemoryStore, State, is_terminal, now_ms};
use crate::error::{Error, Result};
use crate::keys::JobId;
use crate::model::NewJob;
use crate::store::schedules::{
    Due, Fire, FireAction, Fired, RECENT_RUNS, Run, ScheduleId, ScheduleRecord, ScheduleStore,
};

/// A schedule and its last runs.
pub(super) struct Schedule {
    record: ScheduleRecord,
    runs: VecDeque<Run>,
    /// When to look at it next (None: never).
    look_at: Option<u64>,
}

impl Schedule {
    fn run(&mut self, fire_ms: u64, outcome: ScheduleRunOutcome, job_id: &str) {
        self.runs.push_front(Run {
            fire_ms,
            job_id: job_id.to_owned(),
            outcome,
        });
        self.runs.truncate(RECENT_RUNS);
    }
}

fn key(ns: &str, id: &ScheduleId) -> (String, String) {
    (ns.to_owned(), id.to_string())
}

impl MemoryStore {
    /// Makes a schedule's job (as Submit does): or finds the one its
    /// idempotency key made. Returns (job id, duplicate, queued).
    fn make_job(
        &self,
        state: &mut State,
        ns: &str,
        job: &NewJob,
        now: u64,
    ) -> Result<(String, bool, bool)> {
        if let Some(id) = Self::prior(state, ns, job, now)? {
            return Ok((id, true, false));
        }
        let created = self.create(state, ns, job, now);
        Ok((job.id.to_string(), false, created == JobState::Queued))
    }

    fn previous_active(state: &State, ns: &str, current: &str) -> bool {
        if current.is_empty() {
            return false;
        }
        state
            .jobs
            .get(&(ns.to_owned(), current.to_owned()))
            .is_some_and(|j| !is_terminal(j.state))
    }

    fn with_schedule<T>(
        &self,
        ns: &str,
        id: &ScheduleId,
        f: impl FnOnce(&mut Schedule, u64) -> T,
    ) -> Result<T> {
        let now = now_ms();
        let mut state = self.state();
        let s = state
            .schedules
            .get_mut(&key(ns, id))
            .ok_or_else(|| Error::ScheduleNotFound(id.to_string()))?;
        Ok(f(s, now))
    }
}

#[tonic::async_trait]
impl ScheduleStore for MemoryStore {
    async fn create_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        spec: &[u8],
        paused: bool,
    ) -> Result<ScheduleRecord> {
        let now = now_ms();
        let mut state = self.state();
        if state.schedules.contains_key(&key(ns, id)) {
            return Err(Error::ScheduleExists(id.to_string()));
        }
        let record = ScheduleRecord {
            id: Some(id.clone()),
            spec: spec.to_vec(),
            paused,
            created_ms: now,
            updated_ms: now,
            after_ms: now,
            version: 1,
            ..ScheduleRecord::default()
        };
        state.schedules.insert(
            key(ns, id),
            Schedule {
                record: record.clone(),
                runs: VecDeque::new(),
                look_at: (!paused).then_some(now),
            },
        );
        Ok(record)
    }

    async fn get_schedule(&self, ns: &str, id: &ScheduleId) -> Result<(ScheduleRecord, Vec<Run>)> {
        self.with_schedule(ns, id, |s, _| {
            (s.record.clone(), s.runs.iter().cloned().collect())
        })
    }

    async fn list_schedules(&self, ns: &str, queue: Option<&str>) -> Result<Vec<ScheduleRecord>> {
        let state = self.state();
        Ok(state
            .schedules
            .iter()
            .filter(|((n, _), s)| n == ns && queue.is_none_or(|q| s.record.id().queue() == q))
            .map(|(_, s)| s.record.clone())
            .collect())
    }

    async fn update_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        spec: &[u8],
    ) -> Result<ScheduleRecord> {
        self.with_schedule(ns, id, |s, now| {
            let r = &mut s.record;
            r.spec = spec.to_vec();
            r.updated_ms = now;
            r.after_ms = now;
            r.buffered_ms = 0;
            r.version += 1;
            if !r.paused {
                s.look_at = Some(now);
            }
            s.record.clone()
        })
    }

    async fn delete_schedule(&self, ns: &str, id: &ScheduleId) -> Result<()> {
        self.state()
            .schedules
            .remove(&key(ns, id))
            .map(|_| ())
            .ok_or_else(|| Error::ScheduleNotFound(id.to_string()))
    }

    async fn pause_schedule(
        &self,
        ns: &str,
        id: &ScheduleId,
        paused: bool,
    ) -> Result<ScheduleRecord> {
        self.with_schedule(ns, id, |s, now| {
            let r = &mut s.record;
            if r.paused != paused {
                r.paused = paused;
                r.updated_ms = now;
                r.version += 1;
                if paused {
                    s.look_at = None;
                } else {
                    r.after_ms = now;
                    r.buffered_ms = 0;
                    s.look_at = Some(now);
                }
            }
            s.record.clone()
        })
    }

    async fn trigger_schedule(&self, ns: &str, id: &ScheduleId, job: &NewJob) -> Result<String> {
        let now = now_ms();
        let mut state = self.state();
        if !state.schedules.contains_key(&key(ns, id)) {
            return Err(Error::ScheduleNotFound(id.to_string()));
        }
        let (job_id, _, queued) = self.make_job(&mut state, ns, job, now)?;
        if let Some(s) = state.schedules.get_mut(&key(ns, id)) {
            s.record.current = job_id.clone();
            s.run(now, ScheduleRunOutcome::Triggered, &job_id);
        }
        drop(state);
        if queued {
            self.wake(ns, id.queue());
        }
        Ok(job_id)
    }

    async fn due_schedules(&self, limit: usize) -> Result<Due> {
        let now = now_ms();
        let state = self.state();
        let mut due = Due {
            now_ms: now,
            ..Due::default()
        };
        for ((ns, _), s) in &state.schedules {
            match s.look_at {
                Some(at) if at <= now && due.schedules.len() < limit => {
                    due.schedules.push((ns.clone(), s.record.clone()));
                }
                Some(at) if at <= now => {}
                Some(at) => due.next_ms = Some(due.next_ms.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        Ok(due)
    }

    async fn fire_schedule(&self, ns: &str, fire: &Fire) -> Result<Fired> {
        let now = now_ms();
        let mut state = self.state();
        let k = key(ns, &fire.id);
        let Some(s) = state.schedules.get(&k) else {
            return Err(Error::ScheduleNotFound(fire.id.to_string()));
        };
        let r = &s.record;
        if r.version != fire.version
            || r.after_ms != fire.after_ms
            || r.current != fire.current
            || r.paused
        {
            return Ok(Fired::Stale);
        }
        let mut buffered = r.buffered_ms;
        let active = Self::previous_active(&state, ns, &fire.current);
        let mut queued = false;
        // (outcome, run to record, job made, count as fired, count as skipped)
        let (out, run, made) = match &fire.action {
            FireAction::Release { fire_ms, job } => {
                if buffered != *fire_ms {
                    return Ok(Fired::Stale);
                }
                if *fire_ms > now {
                    return Ok(Fired::Early);
                }
                if active {
                    (Fired::Waiting, None, None)
                } else {
                    let (job_id, dup, q) = self.make_job(&mut state, ns, job, now)?;
                    queued = q;
                    buffered = 0;
                    (
                        Fired::Made {
                            job_id: job_id.clone(),
                            deduplicated: dup,
                        },
                        Some((*fire_ms, ScheduleRunOutcome::Fired)),
                        Some(job_id),
                    )
                }
            }
            FireAction::Tick { fire_ms, job } => {
                if *fire_ms > now {
                    return Ok(Fired::Early);
                }
                let active = fire.overlap != OverlapPolicy::Allow && active;
                match fire.overlap {
                    OverlapPolicy::Skip if active => (
                        Fired::Skipped,
                        Some((*fire_ms, ScheduleRunOutcome::Skipped)),
                        None,
                    ),
                    OverlapPolicy::BufferOne if active && buffered == 0 => {
                        buffered = *fire_ms;
                        (
                            Fired::Buffered,
                            Some((*fire_ms, ScheduleRunOutcome::Buffered)),
                            None,
                        )
                    }
                    OverlapPolicy::BufferOne if active => (
                        Fired::Skipped,
                        Some((*fire_ms, ScheduleRunOutcome::Skipped)),
                        None,
                    ),
                    _ => {
                        if active && let Ok(prev) = JobId::parse(&fire.current) {
                            self.cancel_job(
                                &mut state,
                                ns,
                                &prev,
                                "superseded by the next fire of its schedule",
                                now,
                            )?;
                        }
                        let (job_id, dup, q) = self.make_job(&mut state, ns, job, now)?;
                        queued = q;
                        (
                            Fired::Made {
                                job_id: job_id.clone(),
                                deduplicated: dup,
                            },
                            Some((*fire_ms, ScheduleRunOutcome::Fired)),
                            Some(job_id),
                        )
                    }
                }
            }
            FireAction::Advance => (Fired::Advanced, None, None),
        };
        let Some(s) = state.schedules.get_mut(&k) else {
            return Err(Error::ScheduleNotFound(fire.id.to_string()));
        };
        let r = &mut s.record;
        if let Some(job_id) = &made {
            r.current = job_id.clone();
        }
        match &out {
            Fired::Made { .. } => r.fired += 1,
            Fired::Skipped => r.skipped += 1,
            _ => {}
        }
        r.buffered_ms = buffered;
        if !matches!(fire.action, FireAction::Release { .. }) {
            r.after_ms = fire.new_after_ms;
        }
        r.missed += fire.missed;
        s.look_at = match (fire.next_ms, buffered) {
            (next, 0) => next,
            (None, _) => Some(fire.recheck_ms),
            (Some(n), _) => Some(n.min(fire.recheck_ms)),
        };
        if let Some((fire_ms, outcome)) = run {
            s.run(fire_ms, outcome, made.as_deref().unwrap_or_default());
        }
        drop(state);
        if queued {
            self.wake(ns, fire.id.queue());
        }
        Ok(out)
    }
}
