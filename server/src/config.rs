//! Server configuration: flags with `JOBCTL_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// How `jobctl-server` is configured. Every flag has a `JOBCTL_*`
/// environment variable; flags win.
#[derive(Parser, Clone, Debug)]
#[command(
    name = "jobctl-server",
    version,
    about = "The jobctl job-control service"
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "JOBCTL_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// HTTP listen address: Prometheus `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "JOBCTL_HTTP_LISTEN", default_value = "0.0.0.0:9090")]
    pub http_listen: SocketAddr,

    /// Serve the operations dashboard on the HTTP port at `/dashboard/`
    /// (with authentication on, it asks for an operator's API key or JWT).
    #[arg(long, env = "JOBCTL_DASHBOARD")]
    pub dashboard: bool,

    /// Redis URL: `redis://[user:pass@]host:port[/db]` (`rediss://` for
    /// TLS) for one Redis; `redis+cluster://[user:pass@]host:port,host:port`
    /// for a Redis Cluster (any of its nodes; `rediss+cluster://` for TLS);
    /// `redis+sentinel://[user:pass@]host:port,host:port/<master>[/db]` for
    /// the master a set of Sentinels watch (the credentials are the
    /// master's; `rediss+sentinel://` for TLS to it).
    #[arg(long, env = "JOBCTL_REDIS_URL")]
    pub redis_url: Option<String>,

    /// After every write a caller is answered about (each transition
    /// script), wait until this many replicas have it (`WAIT`); a write
    /// fewer replicas confirm within --redis-wait-timeout is answered
    /// UNAVAILABLE (it may still be applied: retry, with an idempotency key
    /// for Submit). 0: do not wait (a failover may lose the last writes).
    #[arg(long, env = "JOBCTL_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// Longest one `WAIT` for --redis-wait-replicas takes.
    #[arg(long, env = "JOBCTL_REDIS_WAIT_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub redis_wait_timeout: Duration,

    #[command(flatten)]
    pub redis_tls: RedisTls,

    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    #[arg(long, env = "JOBCTL_KEY_PREFIX", default_value = "jobctl")]
    pub key_prefix: String,

    /// Log output format.
    #[arg(long, env = "JOBCTL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub defaults: JobDefaults,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub tls: TlsConfig,

    #[command(flatten)]
    pub transport: Transport,

    /// How often each replica promotes due jobs, reaps expired leases and
    /// deletes finished jobs past their retention.
    #[arg(long, env = "JOBCTL_MAINTENANCE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub maintenance_interval: Duration,

    /// How long a WatchProgress reader may leave its stream full before it
    /// is cut off (told to resume with `after_seq`).
    #[arg(long, env = "JOBCTL_WATCH_STUCK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub watch_stuck_timeout: Duration,

    /// How far behind the job's newest event a WatchProgress reader may
    /// fall before it gets each run of progress as its newest (state
    /// changes are always delivered; the history asked for at the start is
    /// replayed whole; 32 waiting events make a reader behind however
    /// recent they are). Lower keeps a reader of a busy server closer to
    /// the live state and delivers fewer updates: `10ms` for live progress
    /// bars; `0s` coalesces whenever a newer progress waits.
    #[arg(long, env = "JOBCTL_WATCH_COALESCE_AFTER", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub watch_coalesce_after: Duration,

    /// HTTP/2 keep-alive ping interval, which keeps idle streams open through proxies.
    #[arg(long, env = "JOBCTL_HTTP2_KEEPALIVE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive: Duration,

    /// How often the store is pinged for gRPC health (SERVING only while it answers).
    #[arg(long, env = "JOBCTL_HEALTH_CHECK_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,

    /// Longest a shutdown waits for in-flight calls (long polls end at once).
    #[arg(long, env = "JOBCTL_SHUTDOWN_GRACE", default_value = "25s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a job gets when its Submit leaves a field unset.
#[derive(clap::Args, Clone, Debug)]
pub struct JobDefaults {
    /// Lease time-to-live when a Submit sets none.
    #[arg(long, env = "JOBCTL_DEFAULT_LEASE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub default_lease_ttl: Duration,

    /// Attempts in all when a Submit sets none.
    #[arg(long, env = "JOBCTL_DEFAULT_MAX_ATTEMPTS", default_value_t = 3)]
    pub default_max_attempts: u32,

    /// How long a finished job and its history are kept when a Submit sets none.
    #[arg(long, env = "JOBCTL_DEFAULT_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub default_retention: Duration,

    /// Backoff before the second attempt.
    #[arg(long, env = "JOBCTL_DEFAULT_BACKOFF_INITIAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub default_backoff_initial: Duration,

    /// Longest backoff between attempts.
    #[arg(long, env = "JOBCTL_DEFAULT_BACKOFF_MAX", default_value = "10m", value_parser = humantime::parse_duration)]
    pub default_backoff_max: Duration,

    /// Growth of the backoff per attempt.
    #[arg(long, env = "JOBCTL_DEFAULT_BACKOFF_MULTIPLIER", default_value_t = 2.0)]
    pub default_backoff_multiplier: f64,

    /// Random spread of each backoff, as a fraction (0.2 = +/-20%).
    #[arg(long, env = "JOBCTL_DEFAULT_BACKOFF_JITTER", default_value_t = 0.2)]
    pub default_backoff_jitter: f64,

    /// How long an idempotency key is remembered.
    #[arg(long, env = "JOBCTL_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,
}

/// Bounds on what a request may carry; a request over one is refused before
/// anything is written.
#[derive(clap::Args, Clone, Debug)]
pub struct Limits {
    /// Largest job payload.
    #[arg(long, env = "JOBCTL_MAX_PAYLOAD_BYTES", default_value_t = 1 << 20)]
    pub max_payload_bytes: usize,

    /// Largest job result.
    #[arg(long, env = "JOBCTL_MAX_RESULT_BYTES", default_value_t = 1 << 20)]
    pub max_result_bytes: usize,

    /// Largest checkpoint.
    #[arg(long, env = "JOBCTL_MAX_CHECKPOINT_BYTES", default_value_t = 1 << 20)]
    pub max_checkpoint_bytes: usize,

    /// Largest error (message, code and details together) of a failed attempt.
    #[arg(long, env = "JOBCTL_MAX_ERROR_BYTES", default_value_t = 64 << 10)]
    pub max_error_bytes: usize,

    /// Most labels on one job.
    #[arg(long, env = "JOBCTL_MAX_LABELS", default_value_t = 32)]
    pub max_labels: usize,

    /// Longest label key.
    #[arg(long, env = "JOBCTL_MAX_LABEL_KEY_BYTES", default_value_t = 64)]
    pub max_label_key_bytes: usize,

    /// Longest label value.
    #[arg(long, env = "JOBCTL_MAX_LABEL_VALUE_BYTES", default_value_t = 256)]
    pub max_label_value_bytes: usize,

    /// Longest queue name, job kind and worker id.
    #[arg(long, env = "JOBCTL_MAX_NAME_BYTES", default_value_t = 64)]
    pub max_name_bytes: usize,

    /// Longest idempotency key.
    #[arg(long, env = "JOBCTL_MAX_IDEMPOTENCY_KEY_BYTES", default_value_t = 256)]
    pub max_idempotency_key_bytes: usize,

    /// Longest progress message and cancel reason.
    #[arg(long, env = "JOBCTL_MAX_MESSAGE_BYTES", default_value_t = 1024)]
    pub max_message_bytes: usize,

    /// Most jobs one Lease call may ask for.
    #[arg(long, env = "JOBCTL_MAX_LEASE_BATCH", default_value_t = 1000)]
    pub max_lease_batch: u32,

    /// Most jobs one SubmitBatch call may carry.
    #[arg(long, env = "JOBCTL_MAX_SUBMIT_BATCH", default_value_t = 1000)]
    pub max_submit_batch: usize,

    /// Most completions one CompleteBatch call may carry.
    #[arg(long, env = "JOBCTL_MAX_COMPLETE_BATCH", default_value_t = 1000)]
    pub max_complete_batch: usize,

    /// Most queues one Lease call may name.
    #[arg(long, env = "JOBCTL_MAX_LEASE_QUEUES", default_value_t = 32)]
    pub max_lease_queues: usize,

    /// Longest a Lease call may wait for work.
    #[arg(long, env = "JOBCTL_MAX_LEASE_WAIT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_lease_wait: Duration,

    /// Shortest and longest lease time-to-live a job may ask for.
    #[arg(long, env = "JOBCTL_MIN_LEASE_TTL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub min_lease_ttl: Duration,

    /// Longest lease time-to-live a job may ask for.
    #[arg(long, env = "JOBCTL_MAX_LEASE_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_lease_ttl: Duration,

    /// Most attempts a job may ask for.
    #[arg(long, env = "JOBCTL_MAX_ATTEMPTS", default_value_t = 100)]
    pub max_attempts: u32,

    /// Longest delay or retention a job may ask for.
    #[arg(long, env = "JOBCTL_MAX_HORIZON", default_value = "365days", value_parser = humantime::parse_duration)]
    pub max_horizon: Duration,

    /// Events kept per job (older ones are trimmed).
    #[arg(long, env = "JOBCTL_EVENT_HISTORY_MAX", default_value_t = 10_000)]
    pub event_history_max: u32,

    /// Most jobs one ListJobs or PurgeJobs page looks at: a page that finds
    /// fewer matches comes back short, with a cursor (like Redis SCAN).
    #[arg(long, env = "JOBCTL_LIST_SCAN_LIMIT", default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub list_scan_limit: u32,
}

/// TLS to Redis (`rediss://` URLs).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RedisTls {
    /// PEM CA certificate(s) to verify a `rediss://` server with, instead of
    /// the system's roots.
    #[arg(long, env = "JOBCTL_REDIS_CA_CERT", value_name = "PEM_FILE")]
    pub redis_ca_cert: Option<PathBuf>,

    /// PEM client certificate for Redis servers that require one
    /// (`tls-auth-clients yes`); needs --redis-client-key.
    #[arg(
        long,
        env = "JOBCTL_REDIS_CLIENT_CERT",
        value_name = "PEM_FILE",
        requires = "redis_client_key"
    )]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(
        long,
        env = "JOBCTL_REDIS_CLIENT_KEY",
        value_name = "PEM_FILE",
        requires = "redis_client_cert"
    )]
    pub redis_client_key: Option<PathBuf>,
}

/// A way callers authenticate.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// Authentication off: every caller is in the `default` namespace with
    /// every role.
    None,
    /// `authorization: Bearer <key>` with a key from --api-keys-file.
    ApiKey,
    /// `authorization: Bearer <JWT>` verified with the --jwt-* settings.
    Jwt,
    /// A client certificate signed by --tls-client-ca.
    Mtls,
}

/// Where a client certificate's namespace comes from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertNamespaceFrom {
    /// The subject's common name (CN).
    Cn,
    /// The first DNS subject alternative name.
    San,
}

/// Who may call: see the README's "Security" section.
#[derive(clap::Args, Clone, Debug)]
pub struct AuthConfig {
    /// How callers authenticate, comma-separated (api-key,jwt,mtls), or
    /// `none`. Unset: the methods whose settings are given (--api-keys-file,
    /// --jwt-*, --tls-client-ca), or none at all.
    #[arg(long, env = "JOBCTL_AUTH", value_enum, value_delimiter = ',')]
    pub auth: Vec<AuthMethod>,

    /// API keys: one `<key or sha256:hex> <namespace> <roles> [name]` per line.
    #[arg(long, env = "JOBCTL_API_KEYS_FILE", value_name = "FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// JWT: the HS256 shared secret (at least 32 bytes).
    #[arg(long, env = "JOBCTL_JWT_HS256_SECRET_FILE", value_name = "FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,

    /// JWT: a PEM public key (RSA for RS256, EC P-256 for ES256, Ed25519).
    #[arg(long, env = "JOBCTL_JWT_PUBLIC_KEY_FILE", value_name = "PEM_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// JWT: a JSON Web Key Set file; a token's `kid` picks the key.
    #[arg(long, env = "JOBCTL_JWT_JWKS_FILE", value_name = "FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// JWT: the required `aud`.
    #[arg(long, env = "JOBCTL_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// JWT: the required `iss`.
    #[arg(long, env = "JOBCTL_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// JWT: the claim that holds the caller's namespace.
    #[arg(long, env = "JOBCTL_JWT_NAMESPACE_CLAIM", default_value = "namespace")]
    pub jwt_namespace_claim: String,

    /// JWT: the claim that holds the caller's roles (an array, or a string
    /// separated by spaces or commas).
    #[arg(long, env = "JOBCTL_JWT_ROLES_CLAIM", default_value = "roles")]
    pub jwt_roles_claim: String,

    /// JWT: clock skew allowed when checking `exp` and `nbf`.
    #[arg(long, env = "JOBCTL_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,

    /// mTLS: where a client certificate's namespace comes from.
    #[arg(long, env = "JOBCTL_MTLS_NAMESPACE_FROM", value_enum, default_value_t = CertNamespaceFrom::Cn)]
    pub mtls_namespace_from: CertNamespaceFrom,

    /// mTLS: roles of a certificate whose subject names none in an OU
    /// (`OU=worker`); comma-separated, empty for none.
    #[arg(long, env = "JOBCTL_MTLS_DEFAULT_ROLES", default_value = "")]
    pub mtls_default_roles: String,
}

impl AuthConfig {
    /// The methods that are on. `tls_client_ca`: whether client
    /// certificates are verified.
    pub fn methods(&self, tls_client_ca: bool) -> Result<Vec<AuthMethod>, crate::auth::Error> {
        if self.auth.contains(&AuthMethod::None) {
            if self.auth.len() > 1 {
                return Err(crate::auth::Error::Config(
                    "--auth none cannot be combined with other methods".into(),
                ));
            }
            return Ok(Vec::new());
        }
        if !self.auth.is_empty() {
            let mut methods = self.auth.clone();
            methods.dedup();
            return Ok(methods);
        }
        let mut methods = Vec::new();
        if self.api_keys_file.is_some() {
            methods.push(AuthMethod::ApiKey);
        }
        if self.jwt_hs256_secret_file.is_some()
            || self.jwt_public_key_file.is_some()
            || self.jwt_jwks_file.is_some()
        {
            methods.push(AuthMethod::Jwt);
        }
        if tls_client_ca {
            methods.push(AuthMethod::Mtls);
        }
        Ok(methods)
    }
}

/// TLS on the gRPC port.
#[derive(clap::Args, Clone, Debug)]
pub struct TlsConfig {
    /// PEM certificate chain of the gRPC port; with --tls-key, the port
    /// speaks TLS only.
    #[arg(
        long,
        env = "JOBCTL_TLS_CERT",
        value_name = "PEM_FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "JOBCTL_TLS_KEY",
        value_name = "PEM_FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that sign client certificates (mTLS). A
    /// client certificate is then required, unless API keys or JWTs are on
    /// too.
    #[arg(
        long,
        env = "JOBCTL_TLS_CLIENT_CA",
        value_name = "PEM_FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Longest a TLS handshake may take.
    #[arg(long, env = "JOBCTL_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,
}

/// Limits of the gRPC transport, which protect the server before a request
/// reaches a handler.
#[derive(clap::Args, Clone, Debug)]
pub struct Transport {
    /// Largest request message. Default: the largest of the payload, result
    /// and checkpoint limits plus 256 KiB for the other fields.
    #[arg(long, env = "JOBCTL_MAX_DECODING_MESSAGE_BYTES")]
    pub max_decoding_message_bytes: Option<usize>,

    /// Largest response message. Default: unlimited (a response holds whole
    /// jobs, bounded by the payload, result and checkpoint limits times the
    /// Lease batch or ListFailed page size).
    #[arg(long, env = "JOBCTL_MAX_ENCODING_MESSAGE_BYTES")]
    pub max_encoding_message_bytes: Option<usize>,

    /// Most concurrent HTTP/2 streams (calls, watches included) on one
    /// connection.
    #[arg(long, env = "JOBCTL_MAX_CONCURRENT_STREAMS", default_value_t = 1000)]
    pub max_concurrent_streams: u32,

    /// Most calls of one connection being handled at once (a stream counts
    /// until its first message); 0 for no limit.
    #[arg(
        long,
        env = "JOBCTL_MAX_CONCURRENT_CALLS_PER_CONNECTION",
        default_value_t = 512
    )]
    pub max_concurrent_calls_per_connection: usize,

    /// Most calls being handled at once by this process; calls beyond it are
    /// refused at once with UNAVAILABLE (load shedding). 0 for no limit.
    #[arg(long, env = "JOBCTL_MAX_CONCURRENT_REQUESTS", default_value_t = 4096)]
    pub max_concurrent_requests: usize,

    /// Longest time a call may take to answer (a stream: to start); longer
    /// than --max-lease-wait. A client's shorter grpc-timeout wins.
    #[arg(long, env = "JOBCTL_REQUEST_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// How long an HTTP/2 keep-alive ping may go unanswered before the
    /// connection is closed.
    #[arg(long, env = "JOBCTL_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// TCP keep-alive probe interval of accepted connections.
    #[arg(long, env = "JOBCTL_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive: Duration,

    /// Largest header block (metadata) of one call.
    #[arg(long, env = "JOBCTL_MAX_HEADER_LIST_BYTES", default_value_t = 64 << 10)]
    pub max_header_list_bytes: u32,
}

impl Config {
    /// A configuration with every default (and any `JOBCTL_*` variables
    /// set), against the given Redis.
    pub fn for_redis(url: impl Into<String>) -> Result<Self, clap::Error> {
        let mut config = Config::try_parse_from(["jobctl-server"])?;
        config.redis_url = Some(url.into());
        Ok(config)
    }
}
