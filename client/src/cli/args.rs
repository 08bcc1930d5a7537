//! The command line: clap definitions and the parsers of its values.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand, ValueEnum};
use jobctl_client::{RetryPolicy, SubmitOptions};

/// Printed after `jobctl --help`; keep in step with `exit_code_for` and the
/// README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
    0  success
    1  any other error (internal server error, authentication, ...)
    2  usage: bad flags or values
    3  not found: no such job
    4  invalid argument or over a limit (also an unreadable --payload-file)
    5  refused in the job's current state, or an idempotency key reused with
       a different request
    6  server unreachable or unavailable; retrying may help (a watch that
       lost the server says how to resume it)
    7  watch: the job FAILED
    8  watch: the job was CANCELLED
  130  watch: interrupted (Ctrl-C)";

/// Printed after `jobctl watch --help`.
pub const WATCH_HELP: &str = "\
JSON output (--output json): one JSON object per line for each event, and
nothing else on stdout:
  {\"seq\", \"job_id\", \"kind\", \"state\", \"progress\", \"time\", \"attempt\",
   \"error\", \"result\"}
kind is STATE_CHANGED, PROGRESS or CANCEL_REQUESTED; state a name without its
prefix (\"RUNNING\"); progress {\"percent\", \"current\", \"total\", \"message\"};
time RFC 3339 in UTC; error {\"message\", \"code\", \"details\"} or null;
result standard padded base64 (set on the SUCCEEDED event).

Exit codes: 0 SUCCEEDED, 7 FAILED, 8 CANCELLED, 130 interrupted; 3 unknown
job, 4 events after --after-seq no longer kept, 6 server lost for too long.";

/// Printed after `jobctl status --help` and `jobctl failed --help`.
pub const JSON_JOB_HELP: &str = "\
JSON output (--output json): the job as an object with the fields of the Job
message in snake_case. States are names without their prefix (\"SUCCEEDED\").
Bytes fields (payload, result, checkpoint) are standard padded base64.
Timestamps are RFC 3339 in UTC, durations protobuf JSON strings (\"30s\"),
unset messages and timestamps null.";

/// Submit, inspect and control the jobs of a jobctl server.
#[derive(Debug, Parser)]
#[command(name = "jobctl", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// The server's gRPC address (a bare host:port means http://host:port).
    #[arg(
        long,
        global = true,
        env = "JOBCTL_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL",
        value_parser = parse_server
    )]
    pub server: String,

    /// How to print results: text for people or JSON for scripts.
    #[arg(
        long,
        short = 'o',
        global = true,
        env = "JOBCTL_OUTPUT",
        value_enum,
        default_value_t = Output::Human
    )]
    pub output: Output,

    #[command(flatten)]
    pub connection: ConnectArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Credentials and TLS of the connection to the server.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// A bearer token (API key or JWT) sent with every call. Prefer
    /// JOBCTL_TOKEN or --token-file: a flag is visible to other users in
    /// the process list.
    #[arg(
        long,
        global = true,
        env = "JOBCTL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    /// A file holding the bearer token.
    #[arg(
        long,
        global = true,
        env = "JOBCTL_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,

    /// A PEM CA certificate to verify the server with (https:// only;
    /// default: the system's roots).
    #[arg(long, global = true, env = "JOBCTL_CA_CERT", value_name = "PEM_FILE")]
    pub ca_cert: Option<PathBuf>,

    /// A PEM client certificate for mTLS (with --client-key).
    #[arg(
        long,
        global = true,
        env = "JOBCTL_CLIENT_CERT",
        value_name = "PEM_FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// The PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "JOBCTL_CLIENT_KEY",
        value_name = "PEM_FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// The name the server's certificate must carry, when it differs from
    /// the host of --server.
    #[arg(long, global = true, env = "JOBCTL_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
}

impl ConnectArgs {
    /// The client's connect options; reads the files named.
    pub fn options(&self) -> Result<jobctl_client::ConnectOptions, String> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
        };
        let mut options = jobctl_client::ConnectOptions::new();
        if let Some(token) = &self.token {
            options = options.bearer_token(token.clone());
        }
        if let Some(path) = &self.token_file {
            let token = String::from_utf8(read("--token-file", path)?)
                .map_err(|_| format!("--token-file {}: not UTF-8", path.display()))?;
            options = options.bearer_token(token.trim().to_owned());
        }
        if let Some(path) = &self.ca_cert {
            options = options.ca_certificate_pem(read("--ca-cert", path)?);
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            options = options
                .client_identity_pem(read("--client-cert", cert)?, read("--client-key", key)?);
        }
        if let Some(domain) = &self.tls_domain {
            options = options.tls_domain_name(domain.clone());
        }
        Ok(options)
    }
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enqueue a job and print its id.
    ///
    /// JSON output: {"job_id", "deduplicated", "state"}; with --watch, the
    /// job's events as `jobctl watch` prints them.
    Submit(Box<SubmitArgs>),

    /// Show a job's state, progress, attempts and result or error.
    #[command(after_help = JSON_JOB_HELP)]
    Status {
        /// The job's id, as printed by submit.
        job_id: String,
    },

    /// Cancel a job: a queued one at once, a running one by asking its worker
    /// to stop (it stays RUNNING until the worker does).
    ///
    /// JSON output: {"job_id", "state", "cancel_requested"}.
    Cancel {
        job_id: String,
        /// Why, kept with the job and shown to its worker.
        #[arg(long, default_value = "")]
        reason: String,
    },

    /// List a queue's dead letters (FAILED jobs), newest first.
    ///
    /// When more pages remain, the token of the next one is printed on stderr.
    /// JSON output: an array of job objects.
    #[command(after_help = JSON_JOB_HELP)]
    Failed {
        queue: String,
        /// Jobs per page, 1 to 1000 (default: the server's, 50).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Continue from a previous listing's next-page token.
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
        /// Follow every page instead of printing one.
        #[arg(long, conflicts_with = "page_token")]
        all: bool,
    },

    /// Put a FAILED job back in its queue with a fresh set of attempts.
    ///
    /// JSON output: {"job_id", "state"}.
    Requeue { job_id: String },

    /// Count a queue's jobs by state.
    ///
    /// JSON output: {"queue", "scheduled", "queued", "running", "failed",
    /// "finished"}.
    Stats { queue: String },

    /// Follow a job's events live until it ends.
    ///
    /// Draws a progress bar on stderr when it is a terminal (one line per
    /// event otherwise), then prints the result on stdout or the error on
    /// stderr. A broken connection is resumed by itself after the last
    /// event seen. Exits 0 when the job SUCCEEDED, 7 when it FAILED, 8 when
    /// it was CANCELLED.
    #[command(after_help = WATCH_HELP)]
    Watch(WatchArgs),

    /// Periodic schedules: create, list, get, pause, resume, trigger, delete.
    #[command(subcommand)]
    Schedule(super::schedule::ScheduleCommand),
    /// Search a queue's jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),

    /// Pause or resume a queue.
    #[command(subcommand)]
    Queue(QueueCommand),
}

/// `jobctl jobs …`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List a queue's jobs, newest first, filtered by state, kind, labels
    /// and creation time.
    ///
    /// A page looks at a bounded number of jobs, so with a rare filter a
    /// page may be short or empty and still have a next one: --all follows
    /// them. When more pages remain, the token of the next one is printed
    /// on stderr. JSON output: an array of job objects.
    #[command(after_help = JSON_JOB_HELP)]
    List(Box<JobsListArgs>),

    /// Delete a finished job and its history.
    ///
    /// JSON output: {"job_id", "deleted": true}.
    Delete { job_id: String },
}

/// `jobctl jobs list`.
#[derive(Debug, Args)]
pub struct JobsListArgs {
    pub queue: String,
    /// Only jobs in this state (repeat for several): scheduled, queued,
    /// running, succeeded, failed, cancelled.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<i32>,
    /// Only jobs of this kind.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only jobs with this label (repeat: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Only jobs created at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub after: Option<SystemTime>,
    /// Only jobs created before this time (RFC 3339).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub before: Option<SystemTime>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    pub oldest_first: bool,
    /// Jobs per page, 1 to 1000 (default: the server's, 50).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Continue from a previous listing's next-page token.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Follow every page instead of printing one.
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
}

/// `jobctl queue …`.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Stop handing out the queue's jobs (running ones go on; submits are
    /// still accepted).
    ///
    /// JSON output: {"queue", "paused": true}.
    Pause { queue: String },
    /// Hand out the queue's jobs again.
    ///
    /// JSON output: {"queue", "paused": false}.
    Resume { queue: String },
    /// Every queue with its counts and whether it is paused.
    ///
    /// JSON output: an array of {"queue", "scheduled", "queued", "running",
    /// "failed", "finished", "paused"}.
    List,
}

/// A job state by name, any case, with or without `JOB_STATE_`.
pub fn parse_state(s: &str) -> Result<i32, String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = upper.trim_start_matches("JOB_STATE_");
    jobctl_client::proto::v1::JobState::from_str_name(&format!("JOB_STATE_{name}"))
        .filter(|s| *s != jobctl_client::proto::v1::JobState::Unspecified)
        .map(|s| s as i32)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a state (scheduled, queued, running, succeeded, failed, cancelled)"
            )
        })
}

/// `jobctl watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The job's id, as printed by submit.
    pub job_id: String,
    /// Show only the events after this sequence number (to resume a watch).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub after_seq: u64,
}

/// `jobctl submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The queue, 1 to 64 characters of [A-Za-z0-9_.-].
    pub queue: String,
    /// Which handler runs the job.
    pub kind: String,

    #[command(flatten)]
    pub payload: PayloadArgs,

    /// Higher runs first, -1000 to 1000 [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Run no sooner than this long from now (10s, 5m, 1h 30m).
    #[arg(
        long,
        value_parser = parse_duration,
        value_name = "DURATION",
        conflicts_with = "run_at"
    )]
    pub delay: Option<Duration>,
    /// Run no sooner than this RFC 3339 time (2030-01-01T09:00:00+01:00).
    #[arg(long, value_parser = parse_time, value_name = "TIME")]
    pub run_at: Option<SystemTime>,
    /// Attempts in all, including the first [default: the server's].
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// How long a lease lasts without a heartbeat [default: the server's].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub lease_ttl: Option<Duration>,
    /// The longest one attempt may run [default: no limit].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Submits with the same key on the same queue give the same job.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// A label, KEY=VALUE; repeat for more.
    #[arg(long = "label", value_parser = parse_label, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// How long the job's record is kept after it ends (7d) [default: the
    /// server's].
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub retention: Option<Duration>,

    /// Retry backoff: the delay before the second attempt.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub backoff_initial: Option<Duration>,
    /// Retry backoff: the longest delay between attempts.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub backoff_max: Option<Duration>,
    /// Retry backoff: the factor each delay grows by.
    #[arg(long, value_parser = parse_positive, value_name = "FACTOR")]
    pub backoff_multiplier: Option<f64>,
    /// Retry backoff: the fraction (0 to 1) each delay is randomised by.
    #[arg(long, value_parser = parse_fraction, value_name = "FRACTION")]
    pub backoff_jitter: Option<f64>,

    /// Then follow the job until it ends, as `jobctl watch` does (same
    /// output and exit codes; the job's id goes to stderr).
    #[arg(long)]
    pub watch: bool,
}

/// Where the payload comes from; at most one, none for an empty payload.
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct PayloadArgs {
    /// The payload, as a string.
    #[arg(long, value_name = "STRING")]
    pub payload: Option<String>,
    /// Read the payload from a file.
    #[arg(long, value_name = "PATH")]
    pub payload_file: Option<PathBuf>,
    /// Read the payload from standard input.
    #[arg(long)]
    pub payload_stdin: bool,
}

/// Where [`PayloadArgs`] says to read the payload from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSource {
    Empty,
    Inline(Vec<u8>),
    File(PathBuf),
    Stdin,
}

impl PayloadArgs {
    pub fn source(&self) -> PayloadSource {
        if let Some(payload) = &self.payload {
            PayloadSource::Inline(payload.clone().into_bytes())
        } else if let Some(path) = &self.payload_file {
            PayloadSource::File(path.clone())
        } else if self.payload_stdin {
            PayloadSource::Stdin
        } else {
            PayloadSource::Empty
        }
    }
}

impl SubmitArgs {
    /// The submit these flags describe, carrying `payload`. Fails on a label
    /// key given twice.
    pub fn options(&self, payload: Vec<u8>) -> Result<SubmitOptions, String> {
        let mut labels = HashMap::with_capacity(self.labels.len());
        for (key, value) in &self.labels {
            if labels.insert(key.clone(), value.clone()).is_some() {
                return Err(format!("label '{key}' given more than once"));
            }
        }

        let mut options = SubmitOptions::new(self.queue.clone(), self.kind.clone())
            .payload(payload)
            .labels(labels);
        if let Some(priority) = self.priority {
            options = options.priority(priority);
        }
        if let Some(delay) = self.delay {
            options = options.delay(delay);
        }
        if let Some(at) = self.run_at {
            options = options.run_at(at);
        }
        if let Some(n) = self.max_attempts {
            options = options.max_attempts(n);
        }
        if let Some(ttl) = self.lease_ttl {
            options = options.lease_ttl(ttl);
        }
        if let Some(timeout) = self.timeout {
            options = options.timeout(timeout);
        }
        if let Some(key) = &self.idempotency_key {
            options = options.idempotency_key(key.clone());
        }
        if let Some(retention) = self.retention {
            options = options.retention(retention);
        }
        let retry = RetryPolicy {
            initial_backoff: self.backoff_initial,
            max_backoff: self.backoff_max,
            multiplier: self.backoff_multiplier,
            jitter: self.backoff_jitter,
        };
        if retry != RetryPolicy::default() {
            options = options.retry(retry);
        }
        Ok(options)
    }
}

/// A server address: an http(s) URL, or `host:port` for plain http.
pub fn parse_server(s: &str) -> Result<String, String> {
    let url = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("'{s}' is not an http:// or https:// address"));
    }
    tonic::transport::Endpoint::from_shared(url.clone())
        .map(|_| url)
        .map_err(|_| format!("'{s}' is not a valid address (expected http://host:port)"))
}

/// A duration such as `10s`, `5m`, `1h 30m`, `7d` or `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e} (expected a duration such as 10s, 5m, 1h 30m or 7d)"))
}

/// An RFC 3339 time such as `2030-01-01T08:00:00Z` or
/// `2030-01-01T09:00:00+01:00`.
pub fn parse_time(s: &str) -> Result<SystemTime, String> {
    let invalid = || format!("expected an RFC 3339 time such as 2030-01-01T08:00:00Z, got '{s}'");
    let timestamp: prost_types::Timestamp = s.trim().parse().map_err(|_| invalid())?;
    SystemTime::try_from(timestamp).map_err(|_| invalid())
}

/// A label, `KEY=VALUE`; the value may be empty and may contain `=`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

/// A finite number above 0.
pub fn parse_positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("expected a number above 0, got '{s}'")),
    }
}

/// A number from 0 to 1.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("expected a number from 0 to 1, got '{s}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use jobctl_client::proto::v1::submit_request::Schedule;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("jobctl").chain(args.iter().copied()))
    }

    fn submit_args(args: &[&str]) -> SubmitArgs {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        match parse(&all).unwrap().command {
            Command::Submit(args) => *args,
            other => panic!("not a submit: {other:?}"),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_have_defaults_and_go_anywhere() {
        let cli = parse(&["status", "j1"]).unwrap();
        assert_eq!(cli.output, Output::Human);
        assert_eq!(cli.server, "http://127.0.0.1:50051");

        let cli = parse(&["status", "j1", "-o", "json", "--server", "10.0.0.1:7000"]).unwrap();
        assert_eq!(cli.output, Output::Json);
        assert_eq!(cli.server, "http://10.0.0.1:7000");
    }

    #[test]
    fn a_full_submit_becomes_the_request_it_describes() {
        let args = submit_args(&[
            "emails",
            "send_email",
            "--payload",
            "{\"to\":\"ada\"}",
            "--priority",
            "-5",
            "--delay",
            "1m 30s",
            "--max-attempts",
            "4",
            "--lease-ttl",
            "30s",
            "--timeout",
            "5m",
            "--idempotency-key",
            "k1",
            "--label",
            "tenant=acme",
            "--label",
            "query=a=b",
            "--retention",
            "7d",
            "--backoff-initial",
            "1s",
            "--backoff-max",
            "5m",
            "--backoff-multiplier",
            "2",
            "--backoff-jitter",
            "0.2",
        ]);
        let payload = match args.payload.source() {
            PayloadSource::Inline(bytes) => bytes,
            other => panic!("{other:?}"),
        };
        let req = args.options(payload).unwrap().into_request().unwrap();
        assert_eq!(req.queue, "emails");
        assert_eq!(req.kind, "send_email");
        assert_eq!(req.payload, br#"{"to":"ada"}"#);
        assert_eq!(req.priority, -5);
        assert_eq!(
            req.schedule,
            Some(Schedule::Delay(prost_types::Duration {
                seconds: 90,
                nanos: 0
            }))
        );
        assert_eq!(req.max_attempts, 4);
        assert_eq!(req.lease_ttl.unwrap().seconds, 30);
        assert_eq!(req.timeout.unwrap().seconds, 300);
        assert_eq!(req.idempotency_key, "k1");
        assert_eq!(req.labels["tenant"], "acme");
        assert_eq!(req.labels["query"], "a=b");
        assert_eq!(req.retention.unwrap().seconds, 7 * 86400);
        let retry = req.retry.unwrap();
        assert_eq!(retry.initial_backoff.unwrap().seconds, 1);
        assert_eq!(retry.max_backoff.unwrap().seconds, 300);
        assert_eq!(retry.multiplier, 2.0);
        assert_eq!(retry.jitter, 0.2);
    }

    #[test]
    fn a_bare_submit_leaves_everything_to_the_server() {
        let args = submit_args(&["q", "k"]);
        assert_eq!(args.payload.source(), PayloadSource::Empty);
        let req = args.options(Vec::new()).unwrap().into_request().unwrap();
        assert_eq!(req.priority, 0);
        assert_eq!(req.schedule, None);
        assert_eq!(req.retry, None);
        assert_eq!(req.lease_ttl, None);
        assert!(req.labels.is_empty());
    }

    #[test]
    fn run_at_takes_rfc3339_with_an_offset() {
        let args = submit_args(&["q", "k", "--run-at", "2030-01-01T09:00:00+01:00"]);
        let req = args.options(Vec::new()).unwrap().into_request().unwrap();
        assert_eq!(
            req.schedule,
            Some(Schedule::RunAt(prost_types::Timestamp {
                seconds: 1_893_484_800,
                nanos: 0
            }))
        );
    }

    #[test]
    fn payload_sources_are_exclusive() {
        assert_eq!(
            submit_args(&["q", "k", "--payload-file", "p.json"])
                .payload
                .source(),
            PayloadSource::File("p.json".into())
        );
        assert_eq!(
            submit_args(&["q", "k", "--payload-stdin"]).payload.source(),
            PayloadSource::Stdin
        );
        let err = parse(&["submit", "q", "k", "--payload", "x", "--payload-stdin"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn delay_and_run_at_are_exclusive() {
        let err = parse(&[
            "submit",
            "q",
            "k",
            "--delay",
            "1s",
            "--run-at",
            "2030-01-01T00:00:00Z",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["submit", "q", "k", "--delay", "10"][..],
            &["submit", "q", "k", "--delay", "soon"],
            &["submit", "q", "k", "--run-at", "tomorrow"],
            &["submit", "q", "k", "--label", "novalue"],
            &["submit", "q", "k", "--label", "=v"],
            &["submit", "q", "k", "--priority", "high"],
            &["submit", "q", "k", "--backoff-jitter", "1.5"],
            &["submit", "q", "k", "--backoff-multiplier", "NaN"],
            &["failed", "q", "--limit", "0"],
            &["failed", "q", "--all", "--page-token", "t"],
            &["status", "j", "--server", "ftp://x"],
            &["status", "j", "--output", "yaml"],
            &["watch"],
            &["watch", "j", "--after-seq", "-1"],
            &["watch", "j", "--after-seq", "x"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn watch_takes_a_job_and_a_resume_point() {
        match parse(&["watch", "01J"]).unwrap().command {
            Command::Watch(args) => {
                assert_eq!(args.job_id, "01J");
                assert_eq!(args.after_seq, 0);
            }
            other => panic!("not a watch: {other:?}"),
        }
        match parse(&["watch", "01J", "--after-seq", "42", "-o", "json"])
            .unwrap()
            .command
        {
            Command::Watch(args) => assert_eq!(args.after_seq, 42),
            other => panic!("not a watch: {other:?}"),
        }
        assert!(submit_args(&["q", "k", "--watch"]).watch);
        assert!(!submit_args(&["q", "k"]).watch);
    }

    #[test]
    fn a_label_given_twice_is_refused() {
        let args = submit_args(&["q", "k", "--label", "a=1", "--label", "a=2"]);
        assert_eq!(
            args.options(Vec::new()).unwrap_err(),
            "label 'a' given more than once"
        );
    }

    #[test]
    fn labels_split_at_the_first_equals_sign() {
        assert_eq!(parse_label("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_label("a="), Ok(("a".into(), String::new())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_label("a").is_err());
        assert!(parse_label("=b").is_err());
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
    }

    #[test]
    fn server_addresses_default_to_http() {
        assert_eq!(
            parse_server("localhost:50051"),
            Ok("http://localhost:50051".into())
        );
        assert_eq!(
            parse_server("https://jobs.example.com"),
            Ok("https://jobs.example.com".into())
        );
        assert!(parse_server("ftp://x").is_err());
        assert!(parse_server("http://bad host").is_err());
    }

    #[test]
    fn credentials_come_from_a_token_file_and_conflict_with_a_token() {
        let dir = std::env::temp_dir().join(format!("jobctl-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "secret-token\n").unwrap();
        let path = file.to_str().unwrap();
        let cli = parse(&["--token-file", path, "status", "x"]).unwrap();
        let options = cli.connection.options().unwrap();
        assert!(!format!("{options:?}").contains("secret-token"));
        assert!(parse(&["--token", "t", "--token-file", path, "status", "x"]).is_err());
        assert!(parse(&["--client-cert", path, "status", "x"]).is_err());
        let missing = parse(&["--ca-cert", "/nonexistent/ca.pem", "status", "x"]).unwrap();
        assert!(
            missing
                .connection
                .options()
                .unwrap_err()
                .contains("--ca-cert")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
