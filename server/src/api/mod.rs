//! The gRPC services: they validate requests, call the store, and map
//! errors to status codes. They hold no job state of their own.

mod admin;
mod jobs;
mod workers;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tonic::Request;

pub use admin::AdminApi;
pub use jobs::JobApi;
pub use workers::WorkerApi;

use crate::error::{Error, Result};
use crate::keys::JobId;
use crate::maintenance::Waker;
use crate::metrics::Metrics;
use crate::model::Validator;
use crate::signals::Signals;
use crate::store::Store;

/// The namespace of callers while authentication is off.
pub const DEFAULT_NAMESPACE: &str = "default";

/// What every service shares.
pub struct Shared {
    pub store: Arc<dyn Store>,
    pub validator: Validator,
    pub signals: Arc<Signals>,
    pub metrics: Arc<Metrics>,
    pub maintenance: Arc<Waker>,
    /// How long a watcher may leave its stream full before it is cut off.
    pub watch_stuck_after: std::time::Duration,
    /// Cancelled when the server begins to shut down: long polls end.
    pub shutdown: CancellationToken,
}

/// The caller's namespace. Until authentication lands every caller is in
/// the default one; it will come from the verified identity, never from a
/// request field.
fn namespace<T>(_request: &Request<T>) -> &'static str {
    DEFAULT_NAMESPACE
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
