//! The HTTP side port (`--http-listen`): `/metrics` for Prometheus,
//! `/healthz` (the process is up) and `/readyz` (the store answers); and
//! the dashboard (`crate::dashboard`) when `--dashboard` is set.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::Store;

#[derive(Clone)]
struct Http {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

async fn scrape(State(http): State<Http>) -> impl IntoResponse {
    let body = http.metrics.render(http.store.as_ref()).await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(http): State<Http>) -> (StatusCode, &'static str) {
    match http.metrics.store(http.store.ping().await) {
        Ok(()) => (StatusCode::OK, "ready\n"),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the store does not answer\n",
        ),
    }
}

/// Serves the HTTP port until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    dashboard: Option<Router>,
    shutdown: CancellationToken,
) {
    let mut app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Http { store, metrics });
    if let Some(dashboard) = dashboard {
        app = app.merge(dashboard);
    }
    if let Err(error) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(%error, "http server failed");
    }
}
