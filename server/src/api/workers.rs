//! `jobctl.v1.WorkerService`: Lease, Heartbeat, Complete, Fail, Release.

use std::sync::Arc;
use std::time::Duration;

use futures::future::select_all;
use jobctl_proto::v1::{self, worker_service_server::WorkerService};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::{Shared, job_id, lease_token, namespace};
use crate::auth::Role;
use crate::error::Error;
use crate::keys::queue_tag;
use crate::metrics::{self, Metrics};
use crate::model::{Validator, duration_ms};
use crate::store::{Completion, Failure, timestamp};
use crate::telemetry;

pub struct WorkerApi(pub Arc<Shared>);

impl WorkerApi {
    /// Leases from the queues in order until `max` jobs are found or all
    /// were tried. With `waiting` (a long poll: woken by the queue's signal
    /// while it waits), a queue this process found empty with nothing made
    /// ready since is not looked at again, so idle long polls cost Redis
    /// nothing; a call that answers at once always looks (a wake-up may
    /// still be on its way from Redis).
    async fn lease_now(
        &self,
        ns: &str,
        worker_id: &str,
        queues: &[String],
        max: usize,
        waiting: bool,
    ) -> Result<Vec<v1::LeasedJob>, Error> {
        let metrics = &self.0.metrics;
        let mut jobs = Vec::new();
        for queue in queues {
            let want = max - jobs.len();
            if want == 0 {
                break;
            }
            let signal = self.0.signals.queue(&queue_tag(ns, queue));
            if waiting && signal.known_empty() {
                continue;
            }
            let generation = signal.generation();
            let leased = metrics.store(self.0.store.lease(ns, queue, worker_id, want).await)?;
            if leased.is_empty() {
                signal.found_empty(generation);
            }
            let labels = metrics::queue(ns, queue);
            for l in leased {
                metrics.leased.get_or_create(&labels).inc();
                Metrics::observe(&metrics.queue_wait_seconds, &labels, l.queue_wait);
                jobs.push(l.job);
            }
        }
        Ok(jobs)
    }
}

/// Checks who leases, from which queues, and how many jobs at most (the
/// count and the field it came in): the same rules for `Lease` and for the
/// lease that follows a `CompleteBatch`.
fn check_lease(
    v: &Validator,
    worker_id: &str,
    queues: &[String],
    (field, max_jobs): (&'static str, u32),
) -> Result<(), Error> {
    let limits = &v.limits;
    v.name("worker_id", worker_id)?;
    if queues.is_empty() || queues.len() > limits.max_lease_queues {
        return Err(Error::InvalidArgument {
            field: "queues",
            reason: format!("name 1 to {} queues", limits.max_lease_queues),
        });
    }
    for queue in queues {
        v.queue("queues", queue)?;
    }
    if max_jobs > limits.max_lease_batch {
        return Err(Error::InvalidArgument {
            field,
            reason: format!("must be at most {}", limits.max_lease_batch),
        });
    }
    Ok(())
}

/// The status of one item of a batch.
fn item_status(e: Error) -> (i32, String) {
    let status = Status::from(e);
    (status.code() as i32, status.message().to_owned())
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn lease(
        &self,
        request: Request<v1::LeaseRequest>,
    ) -> Result<Response<v1::LeaseResponse>, Status> {
        let ns = &namespace(&request, Role::Worker)?;
        let req = request.into_inner();
        let shared = &self.0;
        let limits = &shared.validator.limits;
        check_lease(
            &shared.validator,
            &req.worker_id,
            &req.queues,
            ("max_jobs", req.max_jobs),
        )?;
        let max = req.max_jobs.max(1) as usize;
        let wait = match &req.wait {
            Some(d) => Duration::from_millis(duration_ms("wait", d)?).min(limits.max_lease_wait),
            None => Duration::ZERO,
        };
        let deadline = Instant::now() + wait;
        let notifiers: Vec<_> = req
            .queues
            .iter()
            .map(|q| shared.signals.queue(&queue_tag(ns, q)))
            .collect();
        loop {
            // Register for wake-ups before looking, so none is missed between.
            let mut woken: Vec<_> = notifiers.iter().map(|n| Box::pin(n.notified())).collect();
            for w in &mut woken {
                w.as_mut().enable();
            }
            let jobs = self
                .lease_now(ns, &req.worker_id, &req.queues, max, !wait.is_zero())
                .await?;
            if !jobs.is_empty() || Instant::now() >= deadline || shared.shutdown.is_cancelled() {
                for job in &jobs {
                    // One short span per job handed out, linked to the
                    // trace of the job's submitter.
                    let span = tracing::debug_span!(
                        target: telemetry::RPC_TARGET,
                        "lease",
                        otel.name = "jobctl lease",
                        job_id = %job.job_id,
                        worker_id = %req.worker_id,
                        attempt = i64::from(job.attempt),
                    );
                    telemetry::link_to_submitter(&span, &job.trace_context);
                    span.in_scope(|| tracing::debug!("leased"));
                }
                return Ok(Response::new(v1::LeaseResponse { jobs }));
            }
            tokio::select! {
                _ = select_all(woken) => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = shared.shutdown.cancelled() => {}
            }
        }
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let ns = &namespace(&request, Role::Worker)?;
        let req = request.get_ref();
        let id = job_id(&req.job_id)?;
        telemetry::record_job(&id);
        let token = lease_token(&req.lease_token)?;
        if let Some(p) = &req.progress {
            self.0.validator.progress(p)?;
        }
        self.0.validator.checkpoint(req.checkpoint.as_ref())?;
        let heartbeat = self
            .0
            .store
            .heartbeat(
                ns,
                &id,
                token,
                req.progress.as_ref(),
                req.checkpoint.as_deref(),
            )
            .await;
        let hb = self.0.metrics.store(heartbeat)?;
        Ok(Response::new(v1::HeartbeatResponse {
            cancel_requested: hb.cancel_requested,
            cancel_reason: hb.cancel_reason,
            lease_expires_at: timestamp(hb.lease_expires_at_ms),
        }))
    }

    async fn complete(
        &self,
        request: Request<v1::CompleteRequest>,
    ) -> Result<Response<v1::CompleteResponse>, Status> {
        let ns = &namespace(&request, Role::Worker)?;
        let req = request.get_ref();
        let id = job_id(&req.job_id)?;
        telemetry::record_job(&id);
        let token = lease_token(&req.lease_token)?;
        let v = &self.0.validator;
        v.size("result", req.result.len(), v.limits.max_result_bytes)?;
        let metrics = &self.0.metrics;
        let ended = metrics.store(self.0.store.complete(ns, &id, token, &req.result).await)?;
        if let Some(run_time) = ended.run_time {
            let labels = metrics::queue(ns, id.queue());
            metrics.completed.get_or_create(&labels).inc();
            Metrics::observe(&metrics.run_seconds, &labels, run_time);
        }
        let state = ended.state;
        tracing::debug!(job_id = %id, "completed");
        Ok(Response::new(v1::CompleteResponse {
            state: state.into(),
        }))
    }

    async fn complete_batch(
        &self,
        request: Request<v1::CompleteBatchRequest>,
    ) -> Result<Response<v1::CompleteBatchResponse>, Status> {
        let ns = &namespace(&request, Role::Worker)?;
        let req = request.into_inner();
        let shared = &self.0;
        let v = &shared.validator;
        let limits = &v.limits;
        if req.completions.len() > limits.max_complete_batch {
            return Err(Error::InvalidArgument {
                field: "completions",
                reason: format!("at most {} per call", limits.max_complete_batch),
            }
            .into());
        }
        if req.lease_max_jobs > 0 {
            check_lease(
                v,
                &req.worker_id,
                &req.queues,
                ("lease_max_jobs", req.lease_max_jobs),
            )?;
        }
        // Each completion is checked on its own; a bad one is answered in
        // its result and does not hold up the others.
        let mut results: Vec<v1::CompleteBatchResult> = req
            .completions
            .iter()
            .map(|c| v1::CompleteBatchResult {
                job_id: c.job_id.clone(),
                ..Default::default()
            })
            .collect();
        let mut valid = Vec::with_capacity(req.completions.len());
        let mut at = Vec::with_capacity(req.completions.len());
        for (i, c) in req.completions.iter().enumerate() {
            let checked = job_id(&c.job_id).and_then(|id| {
                let token = lease_token(&c.lease_token)?;
                v.size("result", c.result.len(), limits.max_result_bytes)?;
                Ok(Completion {
                    id,
                    token,
                    result: &c.result,
                })
            });
            match checked {
                Ok(completion) => {
                    valid.push(completion);
                    at.push(i);
                }
                Err(e) => (results[i].code, results[i].message) = item_status(e),
            }
        }
        let metrics = &shared.metrics;
        let answers = if valid.is_empty() {
            Vec::new()
        } else {
            metrics.store(shared.store.complete_batch(ns, &valid).await)?
        };
        for ((completion, i), answer) in valid.iter().zip(at).zip(answers) {
            match answer {
                Ok(ended) => {
                    if let Some(run_time) = ended.run_time {
                        let labels = metrics::queue(ns, completion.id.queue());
                        metrics.completed.get_or_create(&labels).inc();
                        Metrics::observe(&metrics.run_seconds, &labels, run_time);
                    }
                    results[i].state = ended.state.into();
                }
                Err(e) => (results[i].code, results[i].message) = item_status(e),
            }
        }
        let mut jobs = Vec::new();
        if req.lease_max_jobs > 0 && !shared.shutdown.is_cancelled() {
            // The completions stand whatever happens to the lease.
            match self
                .lease_now(
                    ns,
                    &req.worker_id,
                    &req.queues,
                    req.lease_max_jobs as usize,
                    false,
                )
                .await
            {
                Ok(leased) => jobs = leased,
                Err(error) => tracing::warn!(%error, "lease after complete batch failed"),
            }
        }
        tracing::debug!(
            completions = results.len(),
            leased = jobs.len(),
            worker_id = %req.worker_id,
            "completed a batch"
        );
        Ok(Response::new(v1::CompleteBatchResponse { results, jobs }))
    }

    async fn fail(
        &self,
        request: Request<v1::FailRequest>,
    ) -> Result<Response<v1::FailResponse>, Status> {
        let ns = &namespace(&request, Role::Worker)?;
        let req = request.get_ref();
        let id = job_id(&req.job_id)?;
        telemetry::record_job(&id);
        let token = lease_token(&req.lease_token)?;
        let failure = Failure {
            error: req.error.clone().unwrap_or_default(),
            retryable: req.retryable,
            retry_after: match &req.retry_after {
                Some(d) => Some(Duration::from_millis(duration_ms("retry_after", d)?)),
                None => None,
            },
            checkpoint: req.checkpoint.clone(),
        };
        self.0.validator.error(&failure.error)?;
        self.0.validator.checkpoint(failure.checkpoint.as_ref())?;
        let metrics = &self.0.metrics;
        let ended = metrics.store(self.0.store.fail(ns, &id, token, &failure).await)?;
        let (state, retry_in) = (ended.state, ended.retry_in);
        metrics
            .failed
            .get_or_create(&metrics::state(ns, id.queue(), state))
            .inc();
        if let Some(run_time) = ended.run_time {
            Metrics::observe(
                &metrics.run_seconds,
                &metrics::queue(ns, id.queue()),
                run_time,
            );
        }
        if let Some(after) = retry_in {
            self.0.maintenance.wake_in(after);
        }
        tracing::info!(job_id = %id, state = state.as_str_name(), error = %failure.error.message, "attempt failed");
        let next_run_at = retry_in.map(|d| (std::time::SystemTime::now() + d).into());
        Ok(Response::new(v1::FailResponse {
            state: state.into(),
            next_run_at,
        }))
    }

    async fn release(
        &self,
        request: Request<v1::ReleaseRequest>,
    ) -> Result<Response<v1::ReleaseResponse>, Status> {
        let ns = &namespace(&request, Role::Worker)?;
        let req = request.get_ref();
        let id = job_id(&req.job_id)?;
        telemetry::record_job(&id);
        let token = lease_token(&req.lease_token)?;
        self.0.validator.checkpoint(req.checkpoint.as_ref())?;
        let released = self
            .0
            .store
            .release(ns, &id, token, req.checkpoint.as_deref())
            .await;
        let state = self.0.metrics.store(released)?;
        tracing::info!(job_id = %id, state = state.as_str_name(), "released");
        Ok(Response::new(v1::ReleaseResponse {
            state: state.into(),
        }))
    }
}
