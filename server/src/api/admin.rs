//! `jobctl.v1.AdminService`: dead letters, re-queue, queue stats, job
//! listings, pausing queues, deleting and purging finished jobs.

use std::sync::Arc;

use jobctl_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::{Shared, job_id, namespace};
use crate::auth::Role;
use crate::error::Error;
use crate::metrics;
use crate::model::page_token;

const DEFAULT_PAGE_SIZE: u32 = 50;
const MAX_PAGE_SIZE: u32 = 1000;

pub struct AdminApi(pub Arc<Shared>);

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_failed(
        &self,
        request: Request<v1::ListFailedRequest>,
    ) -> Result<Response<v1::ListFailedResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let req = request.get_ref();
        self.0.validator.queue("queue", &req.queue)?;
        let limit = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n <= MAX_PAGE_SIZE => n,
            _ => {
                return Err(Error::InvalidArgument {
                    field: "page_size",
                    reason: format!("must be at most {MAX_PAGE_SIZE}"),
                }
                .into());
            }
        };
        let offset = match req.page_token.as_str() {
            "" => 0,
            t => t.parse::<usize>().map_err(|_| Error::InvalidArgument {
                field: "page_token",
                reason: "is not a token this server handed out".into(),
            })?,
        };
        let listed = self
            .0
            .store
            .list_failed(ns, &req.queue, limit as usize, offset)
            .await;
        let (jobs, next) = self.0.metrics.store(listed)?;
        Ok(Response::new(v1::ListFailedResponse {
            jobs,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }

    async fn requeue(
        &self,
        request: Request<v1::RequeueRequest>,
    ) -> Result<Response<v1::RequeueResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let id = job_id(&request.get_ref().job_id)?;
        let state = self.0.metrics.store(self.0.store.requeue(ns, &id).await)?;
        self.0
            .metrics
            .requeued
            .get_or_create(&metrics::queue(ns, id.queue()))
            .inc();
        tracing::info!(job_id = %id, "re-queued by an operator");
        Ok(Response::new(v1::RequeueResponse {
            state: state.into(),
        }))
    }

    async fn get_queue_stats(
        &self,
        request: Request<v1::GetQueueStatsRequest>,
    ) -> Result<Response<v1::GetQueueStatsResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let queue = &request.get_ref().queue;
        self.0.validator.queue("queue", queue)?;
        let stats = self
            .0
            .metrics
            .store(self.0.store.queue_stats(ns, queue).await)?;
        Ok(Response::new(stats))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let query = self.0.validator.list_jobs(request.get_ref())?;
        let page = self
            .0
            .metrics
            .store(self.0.store.list_jobs(ns, &query).await)?;
        Ok(Response::new(v1::ListJobsResponse {
            jobs: page.jobs,
            next_page_token: page_token(&query, page.next),
        }))
    }

    async fn list_queues(
        &self,
        request: Request<v1::ListQueuesRequest>,
    ) -> Result<Response<v1::ListQueuesResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let store = &self.0.store;
        let mut names: Vec<String> = self
            .0
            .metrics
            .store(store.queues().await)?
            .into_iter()
            .filter(|(n, _)| n == ns)
            .map(|(_, q)| q)
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut queues = Vec::with_capacity(names.len());
        for queue in &names {
            queues.push(self.0.metrics.store(store.queue_stats(ns, queue).await)?);
        }
        Ok(Response::new(v1::ListQueuesResponse { queues }))
    }

    async fn pause_queue(
        &self,
        request: Request<v1::PauseQueueRequest>,
    ) -> Result<Response<v1::PauseQueueResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let queue = &request.get_ref().queue;
        self.0.validator.queue("queue", queue)?;
        let paused = self.0.store.set_paused(ns, queue, true).await;
        self.0.metrics.store(paused)?;
        tracing::info!(namespace = %ns, %queue, "queue paused by an operator");
        Ok(Response::new(v1::PauseQueueResponse {}))
    }

    async fn resume_queue(
        &self,
        request: Request<v1::ResumeQueueRequest>,
    ) -> Result<Response<v1::ResumeQueueResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let queue = &request.get_ref().queue;
        self.0.validator.queue("queue", queue)?;
        let resumed = self.0.store.set_paused(ns, queue, false).await;
        self.0.metrics.store(resumed)?;
        tracing::info!(namespace = %ns, %queue, "queue resumed by an operator");
        Ok(Response::new(v1::ResumeQueueResponse {}))
    }

    async fn delete_job(
        &self,
        request: Request<v1::DeleteJobRequest>,
    ) -> Result<Response<v1::DeleteJobResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let id = job_id(&request.get_ref().job_id)?;
        self.0.metrics.store(self.0.store.delete(ns, &id).await)?;
        tracing::info!(job_id = %id, "deleted by an operator");
        Ok(Response::new(v1::DeleteJobResponse {}))
    }

    async fn purge_jobs(
        &self,
        request: Request<v1::PurgeJobsRequest>,
    ) -> Result<Response<v1::PurgeJobsResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let query = self.0.validator.purge_jobs(request.get_ref())?;
        let (deleted, next) = self.0.metrics.store(self.0.store.purge(ns, &query).await)?;
        if deleted > 0 {
            tracing::info!(namespace = %ns, queue = %query.queue, deleted, "finished jobs purged by an operator");
        }
        Ok(Response::new(v1::PurgeJobsResponse {
            deleted,
            next_page_token: page_token(&query, next),
        }))
    }

    async fn requeue_failed(
        &self,
        request: Request<v1::RequeueFailedRequest>,
    ) -> Result<Response<v1::RequeueFailedResponse>, Status> {
        let ns = &namespace(&request, Role::Operator)?;
        let req = request.get_ref();
        self.0.validator.queue("queue", &req.queue)?;
        let limit = self.0.validator.requeue_limit(req.limit)?;
        let (requeued, remaining) = self
            .0
            .metrics
            .store(self.0.store.requeue_failed(ns, &req.queue, limit).await)?;
        if requeued > 0 {
            self.0
                .metrics
                .requeued
                .get_or_create(&metrics::queue(ns, &req.queue))
                .inc_by(requeued);
            tracing::info!(namespace = %ns, queue = %req.queue, requeued, "dead letters re-queued by an operator");
        }
        Ok(Response::new(v1::RequeueFailedResponse {
            requeued,
            remaining,
        }))
    }
}
