//! The jobctl server: the gRPC job lifecycle over Redis.
//!
//! [`serve`] runs the services on a listener until a shutdown future
//! resolves; the `jobctl-server` binary wraps it with flags and signals.
//! See ARCHITECTURE.md at the top of the repository for the map.

pub mod api;
pub mod config;
pub mod error;
pub mod health;
pub mod http;
pub mod keys;
pub mod maintenance;
pub mod metrics;
pub mod model;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod watch;

use std::future::Future;
use std::sync::Arc;

use http_body::Frame;
use http_body_util::BodyExt;
use http_body_util::combinators::MapFrame;
use jobctl_proto::v1::admin_service_server::AdminServiceServer;
use jobctl_proto::v1::job_service_server::JobServiceServer;
use jobctl_proto::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::Error;

use crate::api::{AdminApi, JobApi, Shared, WorkerApi};
use crate::model::Validator;
use crate::signals::Signals;
use crate::store::{MemoryStore, RedisStore, Store, StoreOptions};

/// A request over the transport's size limit is answered
/// `RESOURCE_EXHAUSTED`, as gRPC's other implementations do and as every
/// other size limit of jobctl is (tonic's own codec says `OUT_OF_RANGE`).
type FrameMap = fn(Frame<bytes::Bytes>) -> Frame<bytes::Bytes>;

fn oversized_is_resource_exhausted<B>(
    response: ::http::Response<B>,
) -> ::http::Response<MapFrame<B, FrameMap>>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    fn rewrite(headers: &mut ::http::HeaderMap) {
        let too_large = headers.get("grpc-status").is_some_and(|s| s == "11")
            && headers
                .get("grpc-message")
                .and_then(|m| m.to_str().ok())
                // grpc-message is percent-encoded.
                .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
        if too_large {
            headers.insert("grpc-status", ::http::HeaderValue::from_static("8"));
        }
    }
    fn in_trailers(frame: Frame<bytes::Bytes>) -> Frame<bytes::Bytes> {
        match frame.into_trailers() {
            Ok(mut trailers) => {
                rewrite(&mut trailers);
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }
    }
    let (mut parts, body) = response.into_parts();
    rewrite(&mut parts.headers);
    ::http::Response::from_parts(parts, body.map_frame(in_trailers as FrameMap))
}

/// Serves jobctl on `listener` until `shutdown` resolves, then stops
/// accepting, ends long polls, lets in-flight calls finish (for at most
/// `config.shutdown_grace`) and returns. State lives in Redis when
/// `config.redis_url` is set, else in the process ([`MemoryStore`]).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    serve_with(config, listener, None, shutdown).await
}

/// [`serve`], plus the HTTP port (`/metrics`, `/healthz`, `/readyz`) on
/// `http_listener` when given.
pub async fn serve_with(
    config: Config,
    listener: TcpListener,
    http_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let signals = Arc::new(Signals::default());
    let options = StoreOptions {
        key_prefix: config.key_prefix.clone(),
        event_cap: config.limits.event_history_max,
        idempotency_ttl: config.defaults.idempotency_ttl,
    };
    let store: Arc<dyn Store> = match &config.redis_url {
        Some(url) => Arc::new(RedisStore::new(url, options)?),
        None => Arc::new(MemoryStore::new(options, signals.clone())),
    };
    let stopping = CancellationToken::new();
    let metrics = Arc::new(metrics::Metrics::default());
    let maintenance_waker = Arc::new(maintenance::Waker::default());
    let mut background = tokio::task::JoinSet::new();
    {
        let (store, signals, stopping) = (store.clone(), signals.clone(), stopping.clone());
        background.spawn(async move { store.relay_signals(signals, stopping).await });
    }
    if let Some(http_listener) = http_listener {
        background.spawn(http::serve(
            http_listener,
            store.clone(),
            metrics.clone(),
            stopping.clone(),
        ));
    }
    background.spawn(maintenance::run(
        store.clone(),
        metrics.clone(),
        config.maintenance_interval,
        maintenance_waker.clone(),
        stopping.clone(),
    ));
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    background.spawn(health::run(
        store.clone(),
        health_reporter,
        config.health_check_interval,
        stopping.clone(),
    ));
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(jobctl_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let shared = Arc::new(Shared {
        store,
        validator: Validator {
            limits: config.limits.clone(),
            defaults: config.defaults.clone(),
        },
        signals,
        metrics,
        watch_stuck_after: config.watch_stuck_timeout,
        maintenance: maintenance_waker,
        shutdown: stopping.clone(),
    });
    // Requests above the largest payload a limit allows, plus headroom for
    // the other fields, are refused by the transport.
    let max_message = [
        config.limits.max_payload_bytes,
        config.limits.max_result_bytes,
        config.limits.max_checkpoint_bytes,
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
        + (256 << 10);
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(config.http2_keepalive))
        // One span per jobctl call, continuing the caller's trace.
        .trace_fn(telemetry::rpc_span)
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ))
        // gRPC-Web (HTTP/1.1 and browsers) on the same port.
        .layer(tonic_web::GrpcWebLayer::new())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            JobServiceServer::new(JobApi(shared.clone())).max_decoding_message_size(max_message),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi(shared.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            AdminServiceServer::new(AdminApi(shared)).max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            stopping.clone().cancelled_owned(),
        );
    let mut server = tokio::spawn(server);
    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            stopping.cancel();
            return match result {
                Ok(r) => r.map_err(|e| Error::Startup(format!("grpc server: {e}"))),
                Err(e) => Err(Error::Startup(format!("grpc server task: {e}"))),
            };
        }
    }
    tracing::info!("shutting down: no new calls, finishing in-flight ones");
    stopping.cancel();
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(_) => tracing::info!("in-flight calls finished"),
        Err(_) => {
            tracing::warn!(grace = ?config.shutdown_grace, "in-flight calls cut off after the shutdown grace");
            server.abort();
        }
    }
    background.shutdown().await;
    Ok(())
}
