//! `jobctl.v1.AdminService`: dead letters, re-queue, queue stats.

use std::sync::Arc;

use jobctl_proto::v1::{self, admin_service_server::AdminService};
use tonic::{Request, Response, Status};

use super::{Shared, job_id, namespace};
use crate::auth::Role;
use crate::error::Error;
use crate::metrics;

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
}
