//! Server configuration: flags with `JOBCTL_*` environment variables.

use std::net::SocketAddr;
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

    /// Redis URL (`redis://[user:pass@]host:port[/db]`).
    #[arg(long, env = "JOBCTL_REDIS_URL")]
    pub redis_url: Option<String>,

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

    /// How often each replica promotes due jobs, reaps expired leases and
    /// deletes finished jobs past their retention.
    #[arg(long, env = "JOBCTL_MAINTENANCE_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub maintenance_interval: Duration,

    /// How long a WatchProgress reader may leave its stream full before it
    /// is cut off (told to resume with `after_seq`).
    #[arg(long, env = "JOBCTL_WATCH_STUCK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub watch_stuck_timeout: Duration,

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
