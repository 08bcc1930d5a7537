//! The jobctl server: the gRPC job lifecycle over Redis.
//!
//! [`serve`] runs the services on a listener until a shutdown future
//! resolves; the `jobctl-server` binary wraps it with flags and signals.
//! See ARCHITECTURE.md at the top of the repository for the map.

pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
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
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity as TlsIdentity, ServerTlsConfig};

pub use config::Config;
pub use error::Error;

use crate::api::{AdminApi, JobApi, Shared, WorkerApi};
use crate::auth::{AuthLayer, Authenticator};
use crate::model::Validator;
use crate::signals::Signals;
use crate::store::{MemoryStore, RedisStore, Store, StoreOptions, WaitReplicas};

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

/// Load shedding's refusal, as a status a client may retry.
fn overloaded_is_unavailable(
    result: Result<::http::Response<tonic::body::Body>, tower::BoxError>,
) -> Result<::http::Response<tonic::body::Body>, tower::BoxError> {
    match result {
        Err(e) if e.is::<tower::load_shed::error::Overloaded>() => Ok(tonic::Status::unavailable(
            "the server is at --max-concurrent-requests; retry with backoff",
        )
        .into_http()),
        other => other,
    }
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Startup(format!("cannot read {what} {path:?}: {e}")))
}

/// TLS of the gRPC port, from `--tls-cert`, `--tls-key` and
/// `--tls-client-ca`.
fn server_tls(config: &Config) -> Result<Option<ServerTlsConfig>, Error> {
    let tls = &config.tls;
    let (Some(cert), Some(key)) = (&tls.tls_cert, &tls.tls_key) else {
        if tls.tls_client_ca.is_some() {
            return Err(Error::Startup(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            ));
        }
        return Ok(None);
    };
    let identity =
        TlsIdentity::from_pem(read_file("--tls-cert", cert)?, read_file("--tls-key", key)?);
    let mut server = ServerTlsConfig::new()
        .identity(identity)
        .timeout(tls.tls_handshake_timeout);
    if let Some(ca) = &tls.tls_client_ca {
        // With tokens on too, a caller may come without a certificate and
        // authenticate with its token instead.
        let tokens = config
            .auth
            .methods(true)
            .map_err(|e| Error::Startup(format!("authentication: {e}")))?
            .iter()
            .any(|m| matches!(m, config::AuthMethod::ApiKey | config::AuthMethod::Jwt));
        server = server
            .client_ca_root(Certificate::from_pem(read_file("--tls-client-ca", ca)?))
            .client_auth_optional(tokens);
    }
    Ok(Some(server))
}

/// The certificates of a `rediss://` connection.
fn redis_tls(config: &Config) -> Result<Option<redis::TlsCertificates>, Error> {
    let t = &config.redis_tls;
    if t.redis_ca_cert.is_none() && t.redis_client_cert.is_none() {
        return Ok(None);
    }
    let client_tls = match (&t.redis_client_cert, &t.redis_client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read_file("--redis-client-cert", cert)?,
            client_key: read_file("--redis-client-key", key)?,
        }),
        _ => None,
    };
    let root_cert = match &t.redis_ca_cert {
        Some(path) => Some(read_file("--redis-ca-cert", path)?),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Says at start-up who may call, and how.
fn log_security(config: &Config, auth: &Authenticator, tls: bool) {
    if auth.is_on() {
        tracing::info!(
            methods = %auth.methods().join(","),
            tls,
            "authentication is on: callers need credentials; namespaces and roles come from them"
        );
    } else {
        tracing::warn!(
            tls,
            "authentication is off: every caller is in the \"default\" namespace with every role (set --auth or JOBCTL_AUTH to turn it on)"
        );
    }
    if !tls && auth.accepts_bearer_tokens() {
        tracing::warn!(
            "bearer tokens travel in the clear: the gRPC port has no TLS (set --tls-cert and --tls-key, or terminate TLS in front)"
        );
    }
    if config
        .redis_url
        .as_deref()
        .is_some_and(|u| u.starts_with("redis://"))
    {
        tracing::debug!("redis connection is not encrypted (use rediss:// for TLS)");
    }
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
        wait_replicas: (config.redis_wait_replicas > 0).then_some(WaitReplicas {
            replicas: config.redis_wait_replicas,
            timeout: config.redis_wait_timeout,
        }),
    };
    // Only ring is compiled in; installing it makes that explicit for every
    // rustls user (the gRPC port, rediss://).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = server_tls(&config)?;
    let authenticator = Arc::new(
        Authenticator::from_config(&config.auth, config.tls.tls_client_ca.is_some())
            .map_err(|e| Error::Startup(format!("authentication: {e}")))?,
    );
    log_security(&config, &authenticator, tls.is_some());
    if config.transport.request_timeout <= config.limits.max_lease_wait {
        return Err(Error::Startup(format!(
            "--request-timeout ({:?}) must be longer than --max-lease-wait ({:?})",
            config.transport.request_timeout, config.limits.max_lease_wait
        )));
    }
    let store: Arc<dyn Store> = match &config.redis_url {
        Some(url) => Arc::new(RedisStore::with_tls(url, redis_tls(&config)?, options)?),
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
        watch_coalesce_after: config.watch_coalesce_after,
        maintenance: maintenance_waker,
        shutdown: stopping.clone(),
    });
    if let Some(http_listener) = http_listener {
        let dashboard = config
            .dashboard
            .then(|| dashboard::router(shared.clone(), authenticator.clone()));
        background.spawn(http::serve(
            http_listener,
            shared.store.clone(),
            shared.metrics.clone(),
            dashboard,
            stopping.clone(),
        ));
    }
    // Requests above the largest payload a limit allows, plus headroom for
    // the other fields, are refused by the transport.
    let max_message = config
        .transport
        .max_decoding_message_bytes
        .unwrap_or_else(|| {
            [
                config.limits.max_payload_bytes,
                config.limits.max_result_bytes,
                config.limits.max_checkpoint_bytes,
            ]
            .into_iter()
            .max()
            .unwrap_or(0)
                + (256 << 10)
        });
    let max_response = config
        .transport
        .max_encoding_message_bytes
        .unwrap_or(usize::MAX);
    let transport = &config.transport;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Startup(format!("tls: {e}")))?;
    }
    let per_connection = match transport.max_concurrent_calls_per_connection {
        0 => usize::MAX >> 4,
        n => n,
    };
    let global_limit = match transport.max_concurrent_requests {
        0 => tokio::sync::Semaphore::MAX_PERMITS,
        n => n,
    };
    let server = builder
        .accept_http1(true)
        .http2_keepalive_interval(Some(config.http2_keepalive))
        // One span per jobctl call, continuing the caller's trace.
        .trace_fn(telemetry::rpc_span)
        .http2_keepalive_timeout(Some(transport.http2_keepalive_timeout))
        .max_concurrent_streams(Some(transport.max_concurrent_streams))
        .concurrency_limit_per_connection(per_connection)
        .timeout(transport.request_timeout)
        .http2_max_header_list_size(Some(transport.max_header_list_bytes))
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ))
        // gRPC-Web (HTTP/1.1 and browsers) on the same port.
        .layer(tonic_web::GrpcWebLayer::new())
        // Load shedding: beyond the process's limit, refuse at once.
        .layer(tower::util::MapResultLayer::new(overloaded_is_unavailable))
        .layer(tower::load_shed::LoadShedLayer::new())
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(global_limit))
        // Authenticate once per call, before its body is read.
        .layer(AuthLayer::new(authenticator))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            JobServiceServer::new(JobApi(shared.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_response),
        )
        .add_service(
            WorkerServiceServer::new(WorkerApi(shared.clone()))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_response),
        )
        .add_service(
            AdminServiceServer::new(AdminApi(shared))
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_response),
        )
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(transport.tcp_keepalive)),
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
