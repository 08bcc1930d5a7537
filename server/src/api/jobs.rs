//! `jobctl.v1.JobService`: Submit, GetStatus, Cancel, WatchProgress.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use jobctl_proto::v1::{self, job_service_server::JobService};
use tonic::{Request, Response, Status};

use tonic::metadata::MetadataValue;

use super::{Shared, job_id, namespace};
use crate::auth::Role;
use crate::error::Error;
use crate::metrics;
use crate::telemetry::{self, REQUEST_ID};
use crate::watch::{PAGE, Watcher, is_terminal_state};

/// Metadata kept with a job so the worker's span continues the submitter's trace.
const TRACE_HEADERS: &[&str] = &["traceparent", "tracestate", REQUEST_ID];
const MAX_TRACE_HEADER_BYTES: usize = 512;

pub struct JobApi(pub Arc<Shared>);

fn trace_context<T>(request: &Request<T>) -> BTreeMap<String, String> {
    TRACE_HEADERS
        .iter()
        .filter_map(|name| {
            let value = request.metadata().get(*name)?.to_str().ok()?;
            (value.len() <= MAX_TRACE_HEADER_BYTES).then(|| ((*name).to_owned(), value.to_owned()))
        })
        .collect()
}

/// The caller's request id, or a new one (a ULID) kept with the job: the
/// worker's span and the Submit answer carry it.
fn request_id(trace: &mut BTreeMap<String, String>) -> String {
    if let Some(id) = trace.get(REQUEST_ID) {
        return id.clone();
    }
    let id = ulid::Ulid::new().to_string();
    tracing::Span::current().record("request_id", id.as_str());
    trace.insert(REQUEST_ID.to_owned(), id.clone());
    id
}

/// Puts the request id on an answer (a refusal included), so the caller
/// can quote it.
fn with_request_id<T>(
    result: Result<Response<T>, Status>,
    id: &str,
) -> Result<Response<T>, Status> {
    let Ok(value) = MetadataValue::try_from(id) else {
        return result;
    };
    match result {
        Ok(mut response) => {
            response.metadata_mut().insert(REQUEST_ID, value);
            Ok(response)
        }
        Err(mut status) => {
            status.metadata_mut().insert(REQUEST_ID, value);
            Err(status)
        }
    }
}

impl JobApi {
    async fn submit_traced(
        &self,
        request: Request<v1::SubmitRequest>,
        trace: BTreeMap<String, String>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let job = self.0.validator.submit(request.into_inner(), trace)?;
        let submitted = self.0.metrics.store(self.0.store.submit(ns, &job).await)?;
        let labels = metrics::queue(ns, job.queue());
        match submitted.deduplicated {
            false => self.0.metrics.submitted.get_or_create(&labels).inc(),
            true => self.0.metrics.deduplicated.get_or_create(&labels).inc(),
        };
        if submitted.state == v1::JobState::Scheduled && !submitted.deduplicated {
            let due_in = if job.delay_ms > 0 {
                Duration::from_millis(job.delay_ms)
            } else {
                let at = std::time::UNIX_EPOCH + Duration::from_millis(job.run_at_ms);
                at.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default()
            };
            self.0.maintenance.wake_in(due_in);
        }
        telemetry::record_job(&submitted.job_id);
        tracing::debug!(job_id = %submitted.job_id, deduplicated = submitted.deduplicated, "submitted");
        Ok(Response::new(v1::SubmitResponse {
            job_id: submitted.job_id,
            deduplicated: submitted.deduplicated,
            state: submitted.state.into(),
        }))
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit(
        &self,
        request: Request<v1::SubmitRequest>,
    ) -> Result<Response<v1::SubmitResponse>, Status> {
        let mut trace = trace_context(&request);
        let id = request_id(&mut trace);
        with_request_id(self.submit_traced(request, trace).await, &id)
    }

    async fn get_status(
        &self,
        request: Request<v1::GetStatusRequest>,
    ) -> Result<Response<v1::GetStatusResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let id = job_id(&request.get_ref().job_id)?;
        telemetry::record_job(&id);
        let job = self.0.metrics.store(self.0.store.get(ns, &id).await)?;
        Ok(Response::new(v1::GetStatusResponse { job: Some(job) }))
    }

    async fn cancel(
        &self,
        request: Request<v1::CancelRequest>,
    ) -> Result<Response<v1::CancelResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let req = request.get_ref();
        let id = job_id(&req.job_id)?;
        telemetry::record_job(&id);
        self.0.validator.message("reason", &req.reason)?;
        let (state, cancel_requested) = self
            .0
            .metrics
            .store(self.0.store.cancel(ns, &id, &req.reason).await)?;
        if state == v1::JobState::Cancelled || state == v1::JobState::Running {
            self.0
                .metrics
                .cancelled
                .get_or_create(&metrics::queue(ns, id.queue()))
                .inc();
        }
        tracing::info!(job_id = %id, state = state.as_str_name(), "cancel");
        Ok(Response::new(v1::CancelResponse {
            state: state.into(),
            cancel_requested,
        }))
    }

    async fn submit_batch(
        &self,
        request: Request<v1::SubmitBatchRequest>,
    ) -> Result<Response<v1::SubmitBatchResponse>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let trace = trace_context(&request);
        let req = request.into_inner();
        let shared = &self.0;
        let max = shared.validator.limits.max_submit_batch;
        if req.jobs.is_empty() || req.jobs.len() > max {
            return Err(Error::InvalidArgument {
                field: "jobs",
                reason: format!("a batch holds 1 to {max} jobs, not {}", req.jobs.len()),
            }
            .into());
        }
        // Every job is checked before anything is written.
        let queue = req
            .jobs
            .first()
            .map(|j| j.queue.clone())
            .unwrap_or_default();
        let mut jobs = Vec::with_capacity(req.jobs.len());
        for (i, job) in req.jobs.into_iter().enumerate() {
            if job.queue != queue {
                return Err(Error::InvalidArgument {
                    field: "jobs",
                    reason: format!(
                        "jobs[{i}].queue is {:?}: every job of a batch must name the same queue ({queue:?})",
                        job.queue
                    ),
                }
                .into());
            }
            let job = shared
                .validator
                .submit(job, trace.clone())
                .map_err(|e| match e {
                    Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                        field,
                        reason: format!("{reason} (jobs[{i}])"),
                    },
                    other => other,
                })?;
            jobs.push(job);
        }
        let submitted = shared
            .metrics
            .store(shared.store.submit_batch(ns, &jobs).await)?;
        let labels = metrics::queue(ns, &queue);
        let mut due_in: Option<Duration> = None;
        for (job, s) in jobs.iter().zip(&submitted) {
            if s.deduplicated {
                shared.metrics.deduplicated.get_or_create(&labels).inc();
                continue;
            }
            shared.metrics.submitted.get_or_create(&labels).inc();
            if s.state == v1::JobState::Scheduled {
                let due = if job.delay_ms > 0 {
                    Duration::from_millis(job.delay_ms)
                } else {
                    let at = std::time::UNIX_EPOCH + Duration::from_millis(job.run_at_ms);
                    at.duration_since(std::time::SystemTime::now())
                        .unwrap_or_default()
                };
                due_in = Some(due_in.map_or(due, |d| d.min(due)));
            }
        }
        if let Some(due_in) = due_in {
            shared.maintenance.wake_in(due_in);
        }
        tracing::debug!(%queue, jobs = submitted.len(), "submitted a batch");
        Ok(Response::new(v1::SubmitBatchResponse {
            results: submitted
                .into_iter()
                .map(|s| v1::SubmitResponse {
                    job_id: s.job_id,
                    deduplicated: s.deduplicated,
                    state: s.state.into(),
                })
                .collect(),
        }))
    }

    type WatchProgressStream =
        Pin<Box<dyn Stream<Item = Result<v1::WatchProgressResponse, Status>> + Send + 'static>>;

    async fn watch_progress(
        &self,
        request: Request<v1::WatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        let ns = &namespace(&request, Role::Client)?;
        let req = request.get_ref();
        let id = job_id(&req.job_id)?;
        telemetry::record_job(&id);
        let shared = &self.0;
        // Subscribe before the first read, so no event falls in between.
        let feed = shared.signals.feed(ns, &id.to_string());
        // Unknown jobs and trimmed resume points fail the call itself.
        let first = shared
            .metrics
            .store(shared.store.events(ns, &id, req.after_seq, PAGE).await)?;
        // The newest event when the watch began: what it replays up to
        // (never coalesced), when the first page does not reach it.
        let mut replay_to = first.last().map_or(req.after_seq, |e| e.seq);
        if first.is_empty() || first.len() >= PAGE {
            let job = shared.metrics.store(shared.store.get(ns, &id).await)?;
            // Resumed after the end of a finished job: nothing is left to
            // deliver, and nothing will come.
            if is_terminal_state(job.state()) && job.last_seq <= req.after_seq {
                return Ok(Response::new(Box::pin(tokio_stream::empty())));
            }
            replay_to = replay_to.max(job.last_seq);
        }
        let watcher = Watcher {
            store: shared.store.clone(),
            feed,
            ns: ns.to_owned(),
            id,
            first,
            after: req.after_seq,
            replay_to,
            stuck_after: shared.watch_stuck_after,
            coalesce_after: shared.watch_coalesce_after,
            shutdown: shared.shutdown.clone(),
            gauge: shared.metrics.watchers.clone(),
        };
        // The stream pulls the events itself when the transport has room.
        Ok(Response::new(Box::pin(watcher.start())))
    }
}
