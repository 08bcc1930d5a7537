//! The `ScheduleService` calls of [`Client`]: periodic schedules that
//! submit a job template at each fire time (cron or interval).

use jobctl_proto::v1 as pb;

use crate::client::Client;
use crate::error::{Error, Result};

fn schedule_of(schedule: Option<pb::Schedule>) -> Result<pb::Schedule> {
    schedule.ok_or_else(|| Error::UnexpectedResponse("answered without a schedule".into()))
}

impl Client {
    /// Creates the schedule `name` (its id is `<template queue>:<name>`).
    pub async fn create_schedule(
        &self,
        name: &str,
        spec: pb::ScheduleSpec,
        paused: bool,
    ) -> Result<pb::Schedule> {
        let request = pb::CreateScheduleRequest {
            name: name.to_owned(),
            spec: Some(spec),
            paused,
        };
        schedule_of(
            self.schedule_service()
                .create_schedule(request)
                .await?
                .into_inner()
                .schedule,
        )
    }

    /// A schedule, its next `next_fire_times` fire times (0 for the
    /// server's default, 5) and its last runs, newest first.
    pub async fn get_schedule(
        &self,
        schedule_id: &str,
        next_fire_times: u32,
    ) -> Result<pb::GetScheduleResponse> {
        let request = pb::GetScheduleRequest {
            schedule_id: schedule_id.to_owned(),
            next_fire_times,
        };
        Ok(self
            .schedule_service()
            .get_schedule(request)
            .await?
            .into_inner())
    }

    /// The caller's schedules, of one queue or (`None`) of all.
    pub async fn list_schedules(&self, queue: Option<&str>) -> Result<Vec<pb::Schedule>> {
        let request = pb::ListSchedulesRequest {
            queue: queue.unwrap_or_default().to_owned(),
        };
        Ok(self
            .schedule_service()
            .list_schedules(request)
            .await?
            .into_inner()
            .schedules)
    }

    /// Replaces a schedule's spec (its template must keep the queue).
    pub async fn update_schedule(
        &self,
        schedule_id: &str,
        spec: pb::ScheduleSpec,
    ) -> Result<pb::Schedule> {
        let request = pb::UpdateScheduleRequest {
            schedule_id: schedule_id.to_owned(),
            spec: Some(spec),
        };
        schedule_of(
            self.schedule_service()
                .update_schedule(request)
                .await?
                .into_inner()
                .schedule,
        )
    }

    /// Deletes a schedule (the jobs it made stay).
    pub async fn delete_schedule(&self, schedule_id: &str) -> Result<()> {
        let request = pb::DeleteScheduleRequest {
            schedule_id: schedule_id.to_owned(),
        };
        self.schedule_service().delete_schedule(request).await?;
        Ok(())
    }

    /// Stops a schedule from firing until it is resumed.
    pub async fn pause_schedule(&self, schedule_id: &str) -> Result<pb::Schedule> {
        let request = pb::PauseScheduleRequest {
            schedule_id: schedule_id.to_owned(),
        };
        schedule_of(
            self.schedule_service()
                .pause_schedule(request)
                .await?
                .into_inner()
                .schedule,
        )
    }

    /// Resumes a paused schedule from now on.
    pub async fn resume_schedule(&self, schedule_id: &str) -> Result<pb::Schedule> {
        let request = pb::ResumeScheduleRequest {
            schedule_id: schedule_id.to_owned(),
        };
        schedule_of(
            self.schedule_service()
                .resume_schedule(request)
                .await?
                .into_inner()
                .schedule,
        )
    }

    /// Submits the schedule's job once, now; returns the job's id.
    pub async fn trigger_schedule(&self, schedule_id: &str) -> Result<String> {
        let request = pb::TriggerScheduleRequest {
            schedule_id: schedule_id.to_owned(),
        };
        Ok(self
            .schedule_service()
            .trigger_schedule(request)
            .await?
            .into_inner()
            .job_id)
    }
}
