//! gRPC health (`grpc.health.v1`): SERVING only while the store answers.
//!
//! Each replica pings its store every `interval`; the overall status (`""`)
//! and each jobctl service follow it. On shutdown every status turns
//! NOT_SERVING first, so load balancers stop sending new calls.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store::Store;

/// The names health is reported for: the server as a whole and each service.
const SERVICES: &[&str] = &[
    "",
    "jobctl.v1.JobService",
    "jobctl.v1.WorkerService",
    "jobctl.v1.AdminService",
];

/// How long a ping may take before the store counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

async fn report(reporter: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        reporter.set_service_status(*service, status).await;
    }
}

/// Keeps the health statuses current until `shutdown`.
pub async fn run(
    store: Arc<dyn Store>,
    reporter: HealthReporter,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let status = match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => ServingStatus::Serving,
            Ok(Err(error)) => {
                tracing::warn!(%error, "health: the store does not answer");
                ServingStatus::NotServing
            }
            Err(_) => {
                tracing::warn!("health: the store did not answer in time");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            tracing::info!(?status, "health");
            report(&reporter, status).await;
            last = Some(status);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => {
                report(&reporter, ServingStatus::NotServing).await;
                return;
            }
        }
    }
}
