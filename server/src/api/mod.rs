//! The gRPC services: they validate requests, call the store, and map
//! errors to status codes. They hold no job state of their own.

mod admin;
mod jobs;
mod schedules;
mod workers;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Request;

pub use admin::AdminApi;
pub use jobs::JobApi;
pub use schedules::ScheduleApi;
pub use workers::WorkerApi;

use crate::auth::{Identity, Role};
use crate::error::{Error, Result};
use crate::keys::JobId;
use crate::maintenance::Waker;
use crate::metrics::Metrics;
use crate::model::Validator;
use crate::signals::Signals;
use crate::store::Store;

pub use crate::auth::DEFAULT_NAMESPACE;

/// What every service shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub validator: Validator,
    pub signals: Arc<Signals>,
    pub metrics: Arc<Metrics>,
    pub maintenance: Arc<Waker>,
    /// Wakes this replica's scheduler (a schedule was created or resumed).
    pub schedule_nudge: Arc<crate::schedules::Nudge>,
    /// How long a watcher may leave its stream full before it is cut off.
    pub watch_stuck_after: std::time::Duration,
    /// How far behind the newest event a watcher may be before runs of
    /// progress are coalesced for it.
    pub watch_coalesce_after: std::time::Duration,
    /// Cancelled when the server begins to shut down: long polls end.
    pub shutdown: CancellationToken,
}

/// The caller's namespace, once its identity (put in the request by
/// [`crate::auth::AuthLayer`]) is known to hold `role`. The namespace comes
/// from the verified identity only, never from a request field; every key
/// of a job includes it, so another namespace's job is not found.
fn namespace<T>(request: &Request<T>, role: Role) -> Result<String> {
    let identity = request
        .extensions()
        .get::<Identity>()
        .ok_or(Error::Unauthenticated("no verified identity"))?;
    if !identity.roles.contains(role) {
        return Err(Error::PermissionDenied {
            subject: identity.subject.clone(),
            role,
        });
    }
    Ok(identity.namespace.clone())
}

/// A job id from a request; an empty or malformed one names no job.
fn job_id(id: &str) -> Result<JobId> {
    if id.is_empty() {
        return Err(Error::InvalidArgument {
            field: "job_id",
            reason: "must not be empty".into(),
        });
    }
    JobId::parse(id)
}

fn lease_token(token: &str) -> Result<&str> {
    if token.is_empty() || token.len() > 128 {
        return Err(Error::InvalidArgument {
            field: "lease_token",
            reason: "must be the token Lease handed out".into(),
        });
    }
    Ok(token)
}
