//! The worker: configuration, the lease loop, and shutdown.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jobctl_proto::v1::{LeaseRequest, LeasedJob};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tracing::{Instrument, debug, error, info, warn};

use crate::backoff::{Backoff, lease_failure_is_fatal};
use crate::completer::{self, Completer, LeaseTarget};
use crate::handler::{BoxHandler, HandlerResult, Handlers, boxed};
use crate::job::{RELEASE_BUDGET, Shared, release, run_job};
use crate::rpc::Rpc;
use crate::{Error, JobContext};

/// Default number of jobs run at once.
pub const DEFAULT_CONCURRENCY: usize = 4;
/// Default long-poll wait of a `Lease` call.
pub const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(20);
/// Default minimum time between two progress updates of a job.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_millis(100);
/// Default time running jobs get to finish once shutdown begins.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default deadline of a `Heartbeat`, `Complete`, `Fail` or `Release` call.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Default queue.
pub const DEFAULT_QUEUE: &str = "default";

/// Configures a [`Worker`]; made by [`Worker::builder`]. Mistakes are
/// reported by [`WorkerBuilder::build`], never by a panic.
#[must_use]
pub struct WorkerBuilder {
    endpoint: String,
    worker_id: Option<String>,
    queues: Vec<String>,
    concurrency: usize,
    lease_batch: Option<usize>,
    lease_wait: Duration,
    progress_interval: Duration,
    shutdown_grace: Duration,
    rpc_timeout: Duration,
    connect_timeout: Duration,
    metadata: Vec<(String, String)>,
    bearer_token: Option<String>,
    tls: Option<Tls>,
    handlers: Handlers,
    problems: Vec<String>,
    batch_completions: bool,
}

/// TLS settings of the connection to the server.
#[derive(Clone, Default)]
struct Tls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("endpoint", &self.endpoint)
            .field("worker_id", &self.worker_id)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("lease_batch", &self.lease_batch)
            .field("kinds", &sorted_kinds(&self.handlers))
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    fn new(endpoint: String) -> Self {
        Self {
            endpoint,
            worker_id: None,
            queues: vec![DEFAULT_QUEUE.to_owned()],
            concurrency: DEFAULT_CONCURRENCY,
            lease_batch: None,
            lease_wait: DEFAULT_LEASE_WAIT,
            progress_interval: DEFAULT_PROGRESS_INTERVAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            connect_timeout: Duration::from_secs(5),
            metadata: Vec::new(),
            bearer_token: None,
            tls: None,
            handlers: HashMap::new(),
            problems: Vec::new(),
            batch_completions: true,
        }
    }

    /// The id the worker leases under. Default: `<hostname>-<pid>-<random>`.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// The queues to lease from, in order of preference. Default: `default`.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// The most jobs run at once. Default: 4.
    pub fn concurrency(mut self, jobs: usize) -> Self {
        self.concurrency = jobs;
        self
    }

    /// The most jobs one `Lease` call asks for. Default: the concurrency.
    pub fn lease_batch(mut self, jobs: usize) -> Self {
        self.lease_batch = Some(jobs);
        self
    }

    /// How long a `Lease` call waits on the server for work (long poll).
    /// Default: 20s.
    pub fn lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// The least time between two progress updates of one job reaching the
    /// server. Default: 100ms.
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// How long running jobs get to finish once shutdown begins; the jobs
    /// still running then are cancelled and handed back. It is also how long
    /// a handler gets to return once its cancellation token fired (cancel
    /// requested, lease lost, deadline passed) before it is aborted.
    /// Default: 30s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The deadline of each `Heartbeat`, `Complete`, `Fail` and `Release`
    /// call (a `Lease` call gets the lease wait on top). Default: 10s.
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// How long connecting to the server may take. Default: 5s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether successful jobs are completed in batches (`CompleteBatch`,
    /// one call for the completions that gathered while the last one was
    /// under way), which also leases the next jobs in the same round trip.
    /// Each completion is still checked against its own lease token. Against
    /// a server without `CompleteBatch` the worker completes one by one by
    /// itself. A job traced with OpenTelemetry still completes with a call
    /// of its own, so that the server's span joins the job's trace.
    /// Default: on.
    pub fn batch_completions(mut self, on: bool) -> Self {
        self.batch_completions = on;
        self
    }

    /// Adds an ASCII gRPC metadata entry to every call, for example
    /// `("authorization", "Bearer ...")`.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Sends `authorization: Bearer <token>` (an API key or a JWT with the
    /// worker role) with every call. The token is never logged.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.bearer_token = Some(token.into());
        self
    }

    /// Verifies the server's certificate against this PEM CA certificate
    /// (instead of the system's roots). Needs an `https://` endpoint.
    pub fn tls_ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(Tls::default).ca_pem = Some(pem.into());
        self
    }

    /// Presents this PEM client certificate and key (mTLS). Needs an
    /// `https://` endpoint.
    pub fn tls_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.tls.get_or_insert_with(Tls::default).identity = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, when it differs from
    /// the endpoint's host.
    pub fn tls_domain_name(mut self, domain: impl Into<String>) -> Self {
        self.tls.get_or_insert_with(Tls::default).domain = Some(domain.into());
        self
    }

    /// [`Worker::builder_from_env`] with the variables read through `var`.
    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> WorkerBuilder {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let endpoint = set("JOBCTL_SERVER").unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
        let mut builder = WorkerBuilder::new(endpoint);
        let read = |name: &str, builder: &mut WorkerBuilder| -> Option<Vec<u8>> {
            let path = set(name)?;
            match std::fs::read(&path) {
                Ok(bytes) => Some(bytes),
                Err(error) => {
                    builder
                        .problems
                        .push(format!("{name}: cannot read {path:?}: {error}"));
                    None
                }
            }
        };
        let token_file = read("JOBCTL_TOKEN_FILE", &mut builder);
        match (set("JOBCTL_TOKEN"), token_file) {
            (Some(_), Some(_)) => builder
                .problems
                .push("set JOBCTL_TOKEN or JOBCTL_TOKEN_FILE, not both".to_owned()),
            (Some(token), None) => builder = builder.bearer_token(token.trim()),
            (None, Some(bytes)) => match String::from_utf8(bytes) {
                Ok(token) => builder = builder.bearer_token(token.trim()),
                Err(_) => builder
                    .problems
                    .push("JOBCTL_TOKEN_FILE: the token is not text".to_owned()),
            },
            (None, None) => {}
        }
        if let Some(pem) = read("JOBCTL_CA_CERT", &mut builder) {
            builder = builder.tls_ca_certificate_pem(pem);
        }
        if set("JOBCTL_CLIENT_CERT").is_some() != set("JOBCTL_CLIENT_KEY").is_some() {
            builder
                .problems
                .push("JOBCTL_CLIENT_CERT and JOBCTL_CLIENT_KEY go together".to_owned());
        }
        let cert = read("JOBCTL_CLIENT_CERT", &mut builder);
        let key = read("JOBCTL_CLIENT_KEY", &mut builder);
        if let (Some(cert), Some(key)) = (cert, key) {
            builder = builder.tls_identity_pem(cert, key);
        }
        if let Some(domain) = set("JOBCTL_TLS_DOMAIN") {
            builder = builder.tls_domain_name(domain);
        }
        if let Some(id) = set("JOBCTL_WORKER_ID") {
            builder = builder.worker_id(id);
        }
        builder
    }

    /// Registers the handler of a job kind.
    ///
    /// ```no_run
    /// # use jobctl_worker::{Worker, JobContext, HandlerError};
    /// async fn resize(ctx: JobContext) -> Result<Vec<u8>, HandlerError> {
    ///     Ok(ctx.payload().to_vec())
    /// }
    /// let builder = Worker::builder("http://127.0.0.1:50051")
    ///     .handler("resize", resize)
    ///     .handler("echo", |ctx: JobContext| async move { Ok(ctx.payload().to_vec()) });
    /// ```
    pub fn handler<F, Fut>(mut self, kind: impl Into<String>, handler: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let kind = kind.into();
        let handler: BoxHandler = boxed(handler);
        if self.handlers.insert(kind.clone(), handler).is_some() {
            self.problems
                .push(format!("kind {kind:?} has more than one handler"));
        }
        self
    }

    /// Checks the configuration and makes the worker. Nothing connects yet:
    /// the worker connects when it runs, and reconnects by itself.
    pub fn build(self) -> Result<Worker, Error> {
        let config = |message: String| Err(Error::Config(message));
        if let Some(problem) = self.problems.into_iter().next() {
            return config(problem);
        }
        let endpoint = endpoint(&self.endpoint, self.connect_timeout, self.tls.as_ref())?;
        let worker_id = match self.worker_id {
            Some(id) => id,
            None => default_worker_id(),
        };
        if worker_id.trim().is_empty() || worker_id.chars().any(char::is_control) {
            return config(format!(
                "worker_id {worker_id:?} must be non-empty printable text"
            ));
        }
        if self.queues.is_empty() {
            return config("queues: at least one queue is needed".to_owned());
        }
        if let Some(q) = self.queues.iter().find(|q| q.trim().is_empty()) {
            return config(format!("queues: {q:?} is not a queue name"));
        }
        let mut queues: Vec<String> = Vec::with_capacity(self.queues.len());
        for q in self.queues {
            if !queues.contains(&q) {
                queues.push(q);
            }
        }
        if self.concurrency == 0 || self.concurrency > Semaphore::MAX_PERMITS {
            return config(format!(
                "concurrency must be between 1 and {}, not {}",
                Semaphore::MAX_PERMITS,
                self.concurrency
            ));
        }
        let lease_batch = self.lease_batch.unwrap_or(self.concurrency);
        if lease_batch == 0 {
            return config("lease_batch must be at least 1".to_owned());
        }
        let lease_wait = prost_types::Duration::try_from(self.lease_wait)
            .map_err(|_| Error::Config(format!("lease_wait {:?} is too long", self.lease_wait)))?;
        if self.rpc_timeout.is_zero() {
            return config("rpc_timeout must be more than zero".to_owned());
        }
        if self.handlers.is_empty() {
            return config(
                "no handlers registered: a worker without handlers would fail every job it leases"
                    .to_owned(),
            );
        }
        let mut metadata = Vec::with_capacity(self.metadata.len());
        for (key, value) in self.metadata {
            let k = AsciiMetadataKey::from_bytes(key.as_bytes()).map_err(|_| {
                Error::Config(format!(
                    "metadata key {key:?} is not a valid gRPC header name"
                ))
            })?;
            if key.ends_with("-bin") {
                return config(format!(
                    "metadata key {key:?}: binary metadata is not supported"
                ));
            }
            let printable = value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            let v = AsciiMetadataValue::try_from(value.as_str())
                .ok()
                .filter(|_| printable)
                .ok_or_else(|| {
                    Error::Config(format!("metadata value of {key:?} is not printable ASCII"))
                })?;
            metadata.push((k, v));
        }
        if let Some(token) = &self.bearer_token {
            let token = token.trim();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return config(
                    "the bearer token must be printable ASCII without spaces".to_owned(),
                );
            }
            let mut value = AsciiMetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| Error::Config("the bearer token is not printable ASCII".to_owned()))?;
            value.set_sensitive(true);
            metadata.push((AsciiMetadataKey::from_static("authorization"), value));
        }
        Ok(Worker {
            endpoint,
            worker_id: Arc::from(worker_id),
            queues,
            concurrency: self.concurrency,
            lease_batch: lease_batch.min(self.concurrency),
            lease_wait,
            lease_wait_std: self.lease_wait,
            progress_interval: self.progress_interval,
            shutdown_grace: self.shutdown_grace,
            rpc_timeout: self.rpc_timeout,
            metadata,
            handlers: self.handlers,
            batch_completions: self.batch_completions,
        })
    }
}

/// Parses and configures the server endpoint; `host:port` means
/// `http://host:port`.
fn endpoint(raw: &str, connect_timeout: Duration, tls: Option<&Tls>) -> Result<Endpoint, Error> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(Error::Config("the endpoint is empty".to_owned()));
    }
    let uri = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|source| Error::InvalidEndpoint {
        endpoint: raw.to_owned(),
        source,
    })?;
    match (endpoint.uri().scheme_str(), tls) {
        (Some("http"), None) => {}
        (Some("http"), Some(_)) => {
            return Err(Error::Config(format!(
                "endpoint {raw:?}: TLS settings need an https:// endpoint"
            )));
        }
        (Some("https"), tls) => {
            let tls = tls.cloned().unwrap_or_default();
            let mut config = ClientTlsConfig::new();
            config = match &tls.ca_pem {
                Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
                None => config.with_native_roots(),
            };
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = tls.domain {
                config = config.domain_name(domain);
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|source| Error::InvalidEndpoint {
                    endpoint: raw.to_owned(),
                    source,
                })?;
        }
        _ => {
            return Err(Error::Config(format!(
                "endpoint {raw:?}: the scheme must be http:// or https://"
            )));
        }
    }
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(Error::Config(format!("endpoint {raw:?} has no host")));
    }
    Ok(endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10)))
}

/// `<hostname>-<pid>-<6 random characters>`.
fn default_worker_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| {
            let i = rng.random_range(0..ALPHABET.len());
            ALPHABET.get(i).map_or('x', |&b| char::from(b))
        })
        .collect();
    format!("{}-{}-{suffix}", hostname(), std::process::id())
}

fn hostname() -> String {
    let from_env = std::env::var("HOSTNAME").ok();
    let from_file = || {
        ["/proc/sys/kernel/hostname", "/etc/hostname"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok())
    };
    from_env
        .or_else(from_file)
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.chars().any(char::is_control))
        .unwrap_or_else(|| "worker".to_owned())
}

fn sorted_kinds(handlers: &Handlers) -> Vec<&str> {
    let mut kinds: Vec<&str> = handlers.keys().map(String::as_str).collect();
    kinds.sort_unstable();
    kinds
}

/// A jobctl worker: leases jobs from its queues, runs their handlers, and
/// reports back. Made by [`Worker::builder`], started by [`Worker::run`].
pub struct Worker {
    endpoint: Endpoint,
    worker_id: Arc<str>,
    queues: Vec<String>,
    concurrency: usize,
    lease_batch: usize,
    lease_wait: prost_types::Duration,
    lease_wait_std: Duration,
    progress_interval: Duration,
    shutdown_grace: Duration,
    rpc_timeout: Duration,
    metadata: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    handlers: Handlers,
    batch_completions: bool,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("endpoint", &self.endpoint.uri())
            .field("worker_id", &self.worker_id)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("lease_batch", &self.lease_batch)
            .field("kinds", &sorted_kinds(&self.handlers))
            .finish_non_exhaustive()
    }
}

/// The endpoint [`Worker::builder_from_env`] uses when `JOBCTL_SERVER` is unset.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

impl Worker {
    /// Starts configuring a worker for the server at `endpoint`
    /// (`http://host:port`; `host:port` works too).
    pub fn builder(endpoint: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder::new(endpoint.into())
    }

    /// Starts configuring a worker from the environment, with the variables
    /// the `jobctl` CLI reads and the Helm chart's worker Deployment sets:
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `JOBCTL_SERVER` | the endpoint (default `http://127.0.0.1:50051`) |
    /// | `JOBCTL_TOKEN` or `JOBCTL_TOKEN_FILE` | the bearer token, or a file holding it |
    /// | `JOBCTL_CA_CERT` | a PEM file of the CA the server's certificate must chain to |
    /// | `JOBCTL_CLIENT_CERT` and `JOBCTL_CLIENT_KEY` | PEM files of a client certificate (mTLS) |
    /// | `JOBCTL_TLS_DOMAIN` | the name the server's certificate must carry |
    /// | `JOBCTL_WORKER_ID` | the worker id (default: host name and process id) |
    ///
    /// A file that cannot be read, or a variable set inconsistently, is
    /// reported by [`WorkerBuilder::build`].
    pub fn builder_from_env() -> WorkerBuilder {
        WorkerBuilder::from_lookup(|name| std::env::var(name).ok())
    }

    /// The id this worker leases under.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// The queues this worker leases from, in order of preference.
    pub fn queues(&self) -> &[String] {
        &self.queues
    }

    /// Runs the worker until `shutdown` resolves, then shuts down gracefully:
    /// no more leasing, running jobs get the shutdown grace to finish, and
    /// the ones still running after it are cancelled and handed back with
    /// `Release`.
    ///
    /// Returns an error only if the server refuses to lease for good
    /// (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT`,
    /// `UNIMPLEMENTED`); the running jobs still get to finish first. An
    /// unreachable server is waited for, however long that takes.
    pub async fn run<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: Future<Output = ()>,
    {
        let channel = self.endpoint.connect_lazy();
        let rpc = Rpc::new(channel, self.metadata, self.rpc_timeout);
        let (leased_tx, leased_rx) = mpsc::channel(16);
        let stop_leasing = CancellationToken::new();
        let completer = self.batch_completions.then(|| {
            Completer::spawn(
                rpc.clone(),
                LeaseTarget {
                    worker_id: self.worker_id.to_string(),
                    queues: self.queues.clone(),
                    leased: leased_tx,
                    stop: stop_leasing.clone(),
                },
            )
        });
        let shared = Arc::new(Shared {
            rpc,
            handlers: self.handlers,
            worker_id: self.worker_id.clone(),
            progress_interval: self.progress_interval,
            stop_grace: self.shutdown_grace,
            completer,
        });
        let lease = LeaseLoop {
            shared: shared.clone(),
            worker_id: self.worker_id.to_string(),
            queues: self.queues,
            lease_batch: self.lease_batch,
            lease_wait: self.lease_wait,
            lease_wait_std: self.lease_wait_std,
            lease_timeout: self.lease_wait_std.saturating_add(self.rpc_timeout),
            slots: Arc::new(Semaphore::new(self.concurrency)),
            abandon: CancellationToken::new(),
            jobs: JoinSet::new(),
            leased: leased_rx,
            stop_leasing,
        };
        info!(
            worker_id = %self.worker_id,
            endpoint = %self.endpoint.uri(),
            queues = ?lease.queues,
            kinds = ?sorted_kinds(&shared.handlers),
            concurrency = self.concurrency,
            "worker started"
        );
        lease.run(shutdown, self.shutdown_grace).await
    }

    /// Runs the worker until SIGINT or SIGTERM (Ctrl-C elsewhere than Unix),
    /// then shuts down gracefully as [`Worker::run`] does.
    pub async fn run_until_signal(self) -> Result<(), Error> {
        let signal = shutdown_signal()?;
        self.run(signal).await
    }
}

#[cfg(unix)]
fn shutdown_signal() -> Result<impl Future<Output = ()>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => info!("received sigterm, shutting down"),
            _ = interrupt.recv() => info!("received sigint, shutting down"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl Future<Output = ()>, Error> {
    Ok(async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => info!("received ctrl-c, shutting down"),
            Err(e) => error!(error = %e, "could not listen for ctrl-c"),
        }
    })
}

/// The lease loop and the jobs it started.
struct LeaseLoop {
    shared: Arc<Shared>,
    worker_id: String,
    queues: Vec<String>,
    lease_batch: usize,
    lease_wait: prost_types::Duration,
    lease_wait_std: Duration,
    lease_timeout: Duration,
    /// One permit per job slot; taken before leasing.
    slots: Arc<Semaphore>,
    /// Fires when the shutdown grace is over.
    abandon: CancellationToken,
    jobs: JoinSet<()>,
    /// Jobs leased along with batched completions, each with its slot.
    leased: mpsc::Receiver<completer::Leased>,
    /// Fired when leasing stops, so completions lease no more.
    stop_leasing: CancellationToken,
}

impl LeaseLoop {
    async fn run<F: Future<Output = ()>>(
        mut self,
        shutdown: F,
        grace: Duration,
    ) -> Result<(), Error> {
        let result = self.lease(shutdown).await;
        // No more leasing: what batched completions leased meanwhile goes back.
        self.stop_leasing.cancel();
        self.leased.close();
        while let Ok(unstarted) = self.leased.try_recv() {
            for (job, permit) in unstarted {
                let rpc = self.shared.rpc.clone();
                let span = tracing::info_span!("job", job_id = %job.job_id, kind = %job.kind);
                self.jobs.spawn(
                    async move {
                        release(&rpc, &job.job_id, &job.lease_token).await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        }
        self.drain(grace).await;
        info!("worker stopped");
        result
    }

    /// Leases and starts jobs until `shutdown` resolves or leasing is refused
    /// for good.
    async fn lease<F: Future<Output = ()>>(&mut self, shutdown: F) -> Result<(), Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut failures = Backoff::rpc();
        let mut idle = Backoff::idle();
        loop {
            self.reap();
            let slots = self.slots.clone();
            let first = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                Some(leased) = self.leased.recv() => {
                    self.start_with_slots(leased);
                    continue;
                }
                permit = slots.acquire_owned() => permit,
            };
            let Ok(first) = first else {
                return Ok(());
            };
            let mut permits = vec![first];
            while permits.len() < self.lease_batch {
                match self.slots.clone().try_acquire_owned() {
                    Ok(permit) => permits.push(permit),
                    Err(_) => break,
                }
            }
            let request = LeaseRequest {
                worker_id: self.worker_id.clone(),
                queues: self.queues.clone(),
                max_jobs: u32::try_from(permits.len()).unwrap_or(u32::MAX),
                wait: Some(self.lease_wait),
            };
            let asked = Instant::now();
            // Dropping an in-flight Lease at shutdown may leave jobs leased to
            // us that we never see; their leases expire and they run again.
            let rpc = self.shared.rpc.clone();
            let call = rpc.lease(request, self.lease_timeout);
            let mut call = std::pin::pin!(call);
            let answer = loop {
                tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(()),
                    answer = &mut call => break answer,
                    Some(leased) = self.leased.recv() => self.start_with_slots(leased),
                }
            };
            match answer {
                Ok(answer) if answer.jobs.is_empty() => {
                    failures.reset();
                    // A long poll that came back early and empty (woken for a
                    // job another worker took, or a server that does not
                    // wait): pause a little so as never to spin.
                    if asked.elapsed() < self.lease_wait_std / 2 {
                        let pause = idle.next_delay();
                        drop(permits);
                        tokio::select! {
                            biased;
                            () = &mut shutdown => return Ok(()),
                            () = tokio::time::sleep(pause) => {}
                        }
                    } else {
                        idle.reset();
                    }
                }
                Ok(answer) => {
                    failures.reset();
                    idle.reset();
                    debug!(count = answer.jobs.len(), "leased jobs");
                    self.start(answer.jobs, permits);
                }
                Err(status) if lease_failure_is_fatal(status.code()) => {
                    error!(
                        code = ?status.code(),
                        error = %status.message(),
                        "the server refuses to lease jobs to this worker, stopping"
                    );
                    return Err(Error::Rejected {
                        op: "lease",
                        status,
                    });
                }
                Err(status) => {
                    let pause = failures.next_delay();
                    warn!(
                        code = ?status.code(),
                        error = %status.message(),
                        retry_in_ms = pause.as_millis() as u64,
                        "lease failed, retrying"
                    );
                    drop(permits);
                    tokio::select! {
                        biased;
                        () = &mut shutdown => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// Starts the jobs leased along with batched completions.
    fn start_with_slots(&mut self, leased: completer::Leased) {
        debug!(count = leased.len(), "leased jobs with completions");
        for (job, permit) in leased {
            let (shared, abandon) = (self.shared.clone(), self.abandon.clone());
            self.jobs.spawn(job_task(shared, job, abandon, permit));
        }
    }

    /// Starts one task per leased job, each holding one slot. Jobs beyond
    /// what was asked for are handed back at once.
    fn start(&mut self, jobs: Vec<LeasedJob>, mut permits: Vec<OwnedSemaphorePermit>) {
        for job in jobs {
            let shared = self.shared.clone();
            match permits.pop() {
                Some(permit) => {
                    let abandon = self.abandon.clone();
                    self.jobs.spawn(job_task(shared, job, abandon, permit));
                }
                None => {
                    warn!(job_id = %job.job_id, "server leased more jobs than asked for, handing it back");
                    let span = tracing::info_span!("job", job_id = %job.job_id, kind = %job.kind);
                    self.jobs.spawn(
                        async move {
                            release(&shared.rpc, &job.job_id, &job.lease_token).await;
                        }
                        .instrument(span),
                    );
                }
            }
        }
    }

    /// Forgets the tasks of jobs that ended.
    fn reap(&mut self) {
        while let Some(ended) = self.jobs.try_join_next() {
            log_join(ended);
        }
    }

    /// Lets running jobs finish within `grace`; then cancels the rest and
    /// hands them back.
    async fn drain(&mut self, grace: Duration) {
        self.reap();
        if !self.jobs.is_empty() {
            info!(
                running = self.jobs.len(),
                grace_ms = grace.as_millis() as u64,
                "stopped leasing, waiting for running jobs to finish"
            );
        }
        let deadline = Instant::now().checked_add(grace);
        let finished = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, join_all(&mut self.jobs))
                .await
                .is_ok(),
            None => {
                join_all(&mut self.jobs).await;
                true
            }
        };
        if finished {
            return;
        }
        warn!(
            unfinished = self.jobs.len(),
            "shutdown grace expired, cancelling and handing back the unfinished jobs"
        );
        self.abandon.cancel();
        let budget = RELEASE_BUDGET + Duration::from_secs(1);
        if tokio::time::timeout(budget, join_all(&mut self.jobs))
            .await
            .is_err()
        {
            warn!(
                unfinished = self.jobs.len(),
                "giving up on the unfinished jobs"
            );
            self.jobs.abort_all();
            join_all(&mut self.jobs).await;
        }
    }
}

async fn join_all(jobs: &mut JoinSet<()>) {
    while let Some(ended) = jobs.join_next().await {
        log_join(ended);
    }
}

fn log_join(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        error!("a job task panicked");
    }
}

/// A leased job's task, boxed: the job's future is several kilobytes, and
/// a task holding it inline was moved (memmove) on every spawn and poll
/// transition, a tenth of the worker's CPU in the drain benchmark.
fn job_task(
    shared: Arc<Shared>,
    job: LeasedJob,
    abandon: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(run_job(shared, job, abandon, Some(permit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_builder() -> WorkerBuilder {
        Worker::builder("http://127.0.0.1:50051")
            .handler("k", |_ctx: JobContext| async { Ok(Vec::new()) })
    }

    fn config_error(b: WorkerBuilder) -> String {
        match b.build() {
            Err(Error::Config(message)) => message,
            Err(e) => panic!("expected a config error, got {e:?}"),
            Ok(_) => panic!("expected a config error, got a worker"),
        }
    }

    fn from_env(vars: &[(&str, &str)]) -> WorkerBuilder {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        WorkerBuilder::from_lookup(|name| vars.get(name).cloned())
            .handler("k", |_ctx: JobContext| async { Ok(Vec::new()) })
    }

    /// A file of this test process's own in the temp dir, removed on drop.
    struct TempFile(std::path::PathBuf);
    impl TempFile {
        fn new(name: &str, contents: &str) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("jobctl-worker-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn the_environment_configures_endpoint_credentials_and_tls() {
        let empty = from_env(&[("JOBCTL_SERVER", " ")]);
        assert_eq!(empty.endpoint, DEFAULT_ENDPOINT);
        assert!(empty.bearer_token.is_none() && empty.tls.is_none());
        assert!(empty.build().is_ok());

        let token = TempFile::new("token", "s3cret\n");
        let ca = TempFile::new("ca", "CA PEM");
        let b = from_env(&[
            ("JOBCTL_SERVER", "https://jobctl.example:50051"),
            ("JOBCTL_TOKEN_FILE", token.path()),
            ("JOBCTL_CA_CERT", ca.path()),
            ("JOBCTL_TLS_DOMAIN", "jobctl.svc"),
            ("JOBCTL_WORKER_ID", "pod-7"),
        ]);
        assert_eq!(b.endpoint, "https://jobctl.example:50051");
        assert_eq!(b.bearer_token.as_deref(), Some("s3cret"));
        let tls = b.tls.as_ref().unwrap();
        assert_eq!(tls.ca_pem.as_deref(), Some(&b"CA PEM"[..]));
        assert_eq!(tls.domain.as_deref(), Some("jobctl.svc"));
        assert!(tls.identity.is_none());
        assert_eq!(b.worker_id.as_deref(), Some("pod-7"));

        let plain = from_env(&[("JOBCTL_TOKEN", "tok")]);
        assert_eq!(plain.bearer_token.as_deref(), Some("tok"));
    }

    #[test]
    fn a_bad_environment_is_a_config_error() {
        let token = TempFile::new("both", "t");
        let both = config_error(from_env(&[
            ("JOBCTL_TOKEN", "t"),
            ("JOBCTL_TOKEN_FILE", token.path()),
        ]));
        assert!(both.contains("not both"), "{both}");
        let missing = config_error(from_env(&[("JOBCTL_CA_CERT", "/nonexistent/ca.pem")]));
        assert!(missing.contains("JOBCTL_CA_CERT"), "{missing}");
        let cert = TempFile::new("cert", "C");
        let half = config_error(from_env(&[("JOBCTL_CLIENT_CERT", cert.path())]));
        assert!(half.contains("go together"), "{half}");
    }

    #[test]
    fn defaults_build() {
        let w = ok_builder().build().unwrap();
        assert_eq!(w.concurrency, DEFAULT_CONCURRENCY);
        assert_eq!(w.lease_batch, DEFAULT_CONCURRENCY);
        assert_eq!(w.queues(), ["default"]);
        assert_eq!(w.lease_wait_std, DEFAULT_LEASE_WAIT);
        let id = w.worker_id();
        assert!(id.matches('-').count() >= 2, "{id}");
        assert!(id.contains(&std::process::id().to_string()), "{id}");
    }

    #[test]
    fn settings_are_kept() {
        let w = ok_builder()
            .worker_id("w1")
            .queues(["a", "b", "a"])
            .concurrency(8)
            .lease_batch(3)
            .lease_wait(Duration::from_secs(5))
            .metadata("authorization", "Bearer x")
            .build()
            .unwrap();
        assert_eq!(w.worker_id(), "w1");
        assert_eq!(w.queues(), ["a", "b"]);
        assert_eq!(w.concurrency, 8);
        assert_eq!(w.lease_batch, 3);
        assert_eq!(w.metadata.len(), 1);
        let w = ok_builder().concurrency(2).lease_batch(10).build().unwrap();
        assert_eq!(w.lease_batch, 2);
    }

    #[test]
    fn bad_settings_are_errors_not_panics() {
        config_error(ok_builder().concurrency(0));
        config_error(ok_builder().lease_batch(0));
        config_error(ok_builder().queues(Vec::<String>::new()));
        config_error(ok_builder().queues(["ok", " "]));
        config_error(ok_builder().worker_id(""));
        config_error(ok_builder().worker_id("a\nb"));
        config_error(ok_builder().lease_wait(Duration::MAX));
        config_error(ok_builder().rpc_timeout(Duration::ZERO));
        config_error(ok_builder().metadata("bad key", "v"));
        config_error(ok_builder().metadata("k", "caf\u{e9}"));
        config_error(Worker::builder("http://127.0.0.1:1"));
        let twice = ok_builder().handler("k", |_ctx: JobContext| async { Ok(Vec::new()) });
        assert!(config_error(twice).contains("more than one handler"));
    }

    #[test]
    fn endpoints_are_checked() {
        let with = |e: &str| {
            Worker::builder(e)
                .handler("k", |_ctx: JobContext| async { Ok(Vec::new()) })
                .build()
        };
        assert!(with("http://localhost:50051").is_ok());
        assert!(with("127.0.0.1:50051").is_ok());
        assert!(with("").is_err());
        assert!(with("https://example.com").is_ok());
        let tls_over_http = Worker::builder("http://example.com")
            .tls_ca_certificate_pem(b"-----BEGIN CERTIFICATE-----".to_vec())
            .handler("k", |_ctx: JobContext| async { Ok(Vec::new()) })
            .build();
        assert!(tls_over_http.is_err());
        assert!(with("ftp://example.com").is_err());
        assert!(with("http://").is_err());
        assert!(with("not a uri").is_err());
    }

    #[test]
    fn default_worker_ids_differ() {
        assert_ne!(default_worker_id(), default_worker_id());
    }
}
