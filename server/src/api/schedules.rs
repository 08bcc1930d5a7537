//! `jobctl.v1.ScheduleService`: periodic schedules. A schedule is standing
//! Submits, so its calls need the client role (as Submit does); its id is
//! `<queue>:<name>`, in the caller's namespace.

use std::sync::Arc;

use jobctl_proto::v1::{self, schedule_service_server::ScheduleService};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Shared, namespace};
use crate::auth::Role;
use crate::error::{Error, Result};
use crate::schedules::Spec;
use crate::store::{ScheduleId, ScheduleRecord, timestamp};

/// Next fire times a GetSchedule shows by default, and at most.
const DEFAULT_NEXT: u32 = 5;
const MAX_NEXT: u32 = 100;

pub struct ScheduleApi(pub Arc<Shared>);

fn schedule_id(id: &str) -> Result<ScheduleId> {
    if id.is_empty() {
        return Err(Error::InvalidArgument {
            field: "schedule_id",
            reason: "must not be empty".into(),
        });
    }
    ScheduleId::parse(id)
}

impl ScheduleApi {
    fn spec(&self, record: &ScheduleRecord) -> Result<(Spec, v1::ScheduleSpec)> {
        Spec::decode(&self.0.validator, record.id().name(), &record.spec)
    }

    fn to_proto(&self, record: &ScheduleRecord) -> Result<v1::Schedule> {
        let (spec, raw) = self.spec(record)?;
        Ok(v1::Schedule {
            id: record.id().to_string(),
            spec: Some(raw),
            paused: record.paused,
            created_at: timestamp(record.created_ms),
            updated_at: timestamp(record.updated_ms),
            next_fire_time: if record.paused {
                None
            } else {
                spec.next_after(record.after_ms).and_then(timestamp)
            },
            fired: record.fired,
            skipped: record.skipped,
            missed: record.missed,
            buffered_fire_time: timestamp(record.buffered_ms),
        })
    }

    fn answer(&self, record: Result<ScheduleRecord>) -> std::result::Result<v1::Schedule, Status> {
        let record = self.0.metrics.store(record)?;
        Ok(self.to_proto(&record)?)
    }
}

#[tonic::async_trait]
impl ScheduleService for ScheduleApi {
    async fn create_schedule(
        &self,
        request: Request<v1::CreateScheduleRequest>,
    ) -> std::result::Result<Response<v1::CreateScheduleResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let req = request.into_inner();
        self.0.validator.queue("name", &req.name)?;
        let spec = Spec::validate(&self.0.validator, &req.name, req.spec.as_ref())?;
        let raw = req.spec.unwrap_or_default();
        let id = ScheduleId::new(&spec.template.queue, &req.name);
        let created = self
            .0
            .store
            .schedules()
            .create_schedule(ns, &id, &raw.encode_to_vec(), req.paused)
            .await;
        let schedule = self.answer(created)?;
        self.0.schedule_nudge.nudge();
        tracing::info!(schedule = %id, "schedule created");
        Ok(Response::new(v1::CreateScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<v1::GetScheduleRequest>,
    ) -> std::result::Result<Response<v1::GetScheduleResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let req = request.get_ref();
        let id = schedule_id(&req.schedule_id)?;
        let n = match req.next_fire_times {
            0 => DEFAULT_NEXT,
            n if n <= MAX_NEXT => n,
            _ => {
                return Err(Error::InvalidArgument {
                    field: "next_fire_times",
                    reason: format!("must be at most {MAX_NEXT}"),
                }
                .into());
            }
        };
        let got = self.0.store.schedules().get_schedule(ns, &id).await;
        let (record, runs) = self.0.metrics.store(got)?;
        let (spec, _) = self.spec(&record)?;
        let next_fire_times = if record.paused {
            Vec::new()
        } else {
            spec.upcoming(record.after_ms, n as usize)
                .into_iter()
                .filter_map(timestamp)
                .collect()
        };
        Ok(Response::new(v1::GetScheduleResponse {
            schedule: Some(self.to_proto(&record)?),
            next_fire_times,
            recent_runs: runs
                .into_iter()
                .map(|r| v1::ScheduleRun {
                    fire_time: timestamp(r.fire_ms),
                    job_id: r.job_id,
                    outcome: r.outcome.into(),
                })
                .collect(),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<v1::ListSchedulesRequest>,
    ) -> std::result::Result<Response<v1::ListSchedulesResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let queue = request.get_ref().queue.as_str();
        if !queue.is_empty() {
            self.0.validator.queue("queue", queue)?;
        }
        let listed = self
            .0
            .store
            .schedules()
            .list_schedules(ns, (!queue.is_empty()).then_some(queue))
            .await;
        let records = self.0.metrics.store(listed)?;
        let schedules = records
            .iter()
            .map(|r| self.to_proto(r))
            .collect::<Result<Vec<_>>>()?;
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn update_schedule(
        &self,
        request: Request<v1::UpdateScheduleRequest>,
    ) -> std::result::Result<Response<v1::UpdateScheduleResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let req = request.into_inner();
        let id = schedule_id(&req.schedule_id)?;
        let spec = Spec::validate(&self.0.validator, id.name(), req.spec.as_ref())?;
        if spec.template.queue != id.queue() {
            return Err(Error::InvalidArgument {
                field: "spec.template.queue",
                reason: format!(
                    "must stay {:?}: a schedule cannot move to another queue (delete it and create another)",
                    id.queue()
                ),
            }
            .into());
        }
        let raw = req.spec.unwrap_or_default();
        let updated = self
            .0
            .store
            .schedules()
            .update_schedule(ns, &id, &raw.encode_to_vec())
            .await;
        let schedule = self.answer(updated)?;
        self.0.schedule_nudge.nudge();
        Ok(Response::new(v1::UpdateScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<v1::DeleteScheduleRequest>,
    ) -> std::result::Result<Response<v1::DeleteScheduleResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let id = schedule_id(&request.get_ref().schedule_id)?;
        let deleted = self.0.store.schedules().delete_schedule(ns, &id).await;
        self.0.metrics.store(deleted)?;
        tracing::info!(schedule = %id, "schedule deleted");
        Ok(Response::new(v1::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<v1::PauseScheduleRequest>,
    ) -> std::result::Result<Response<v1::PauseScheduleResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let id = schedule_id(&request.get_ref().schedule_id)?;
        let paused = self.0.store.schedules().pause_schedule(ns, &id, true).await;
        Ok(Response::new(v1::PauseScheduleResponse {
            schedule: Some(self.answer(paused)?),
        }))
    }

    async fn resume_schedule(
        &self,
        request: Request<v1::ResumeScheduleRequest>,
    ) -> std::result::Result<Response<v1::ResumeScheduleResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let id = schedule_id(&request.get_ref().schedule_id)?;
        let resumed = self
            .0
            .store
            .schedules()
            .pause_schedule(ns, &id, false)
            .await;
        let schedule = self.answer(resumed)?;
        self.0.schedule_nudge.nudge();
        Ok(Response::new(v1::ResumeScheduleResponse {
            schedule: Some(schedule),
        }))
    }

    async fn trigger_schedule(
        &self,
        request: Request<v1::TriggerScheduleRequest>,
    ) -> std::result::Result<Response<v1::TriggerScheduleResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let id = schedule_id(&request.get_ref().schedule_id)?;
        let got = self.0.store.schedules().get_schedule(ns, &id).await;
        let (record, _) = self.0.metrics.store(got)?;
        let (spec, _) = self.spec(&record)?;
        let key = format!("schedule:{}:now:{}", id.name(), ulid::Ulid::new());
        let job = spec.job(&self.0.validator, &id.to_string(), key, 0)?;
        let triggered = self
            .0
            .store
            .schedules()
            .trigger_schedule(ns, &id, &job)
            .await;
        let job_id = self.0.metrics.store(triggered)?;
        tracing::info!(schedule = %id, job_id = %job_id, "schedule triggered");
        Ok(Response::new(v1::TriggerScheduleResponse { job_id }))
    }
}
