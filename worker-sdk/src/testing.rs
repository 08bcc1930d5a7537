//! An in-process jobctl for testing handlers: no Redis, no server to run.
//!
//! Enable the `testing` feature (as a dev-dependency). A [`Harness`] starts
//! jobctl on its embedded store on a free local port, runs your workers
//! against it, and lets you submit jobs and wait for them to end — the
//! analogue of Celery's eager mode, but through the real protocol, so
//! retries, checkpoints, progress and cancellation behave as in production.
//! Retry backoffs are shortened to milliseconds so tests stay fast.
//!
//! ```
//! use std::time::Duration;
//!
//! use jobctl_worker::testing::{Harness, SubmitOptions};
//! use jobctl_worker::{HandlerError, JobContext};
//! use jobctl_worker::proto::v1::JobState;
//!
//! async fn shout(ctx: JobContext) -> Result<Vec<u8>, HandlerError> {
//!     // Fails its first attempt, to show the retry.
//!     if ctx.attempt() == 1 {
//!         ctx.checkpoint_now(b"half".to_vec()).await?;
//!         return Err(HandlerError::retry("flaky upstream"));
//!     }
//!     assert_eq!(ctx.checkpoint(), Some(&b"half"[..]));
//!     ctx.set_progress(100.0, "shouted");
//!     Ok(String::from_utf8_lossy(ctx.payload()).to_uppercase().into_bytes())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut harness = Harness::start().await?;
//! harness.spawn_worker(harness.worker().handler("shout", shout))?;
//!
//! let id = harness.submit(SubmitOptions::new("default", "shout").payload("hello")).await?;
//! let job = harness.wait_for(&id, Duration::from_secs(10)).await?;
//!
//! assert_eq!(job.state(), JobState::Succeeded);
//! assert_eq!(job.result, b"HELLO");
//! assert_eq!(job.attempt, 2);
//! assert_eq!(job.progress.unwrap().message, "shouted");
//! harness.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use clap::Parser;
use jobctl_proto::v1::{self, JobState};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use jobctl_client::{Client, RetryPolicy, SubmitOptions};

use crate::{Error, WorkerBuilder};

/// How often `wait_for` and `run_until_idle` look.
const POLL: Duration = Duration::from_millis(10);

/// Errors of the harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The in-process server could not start.
    #[error("cannot start the in-process jobctl: {0}")]
    Start(String),
    /// A call to the in-process server failed.
    #[error(transparent)]
    Client(#[from] jobctl_client::Error),
    /// A worker could not be built.
    #[error(transparent)]
    Worker(#[from] Error),
    /// A job did not end in time.
    #[error("job {job_id} is still {state:?} after {waited:?}")]
    Timeout {
        /// The job waited for.
        job_id: String,
        /// Its state when the wait gave up.
        state: JobState,
        /// How long the wait was.
        waited: Duration,
    },
    /// Queues still had work when the wait gave up.
    #[error("queues still busy after {0:?}")]
    NotIdle(Duration),
}

/// A running in-process jobctl and the workers started on it.
pub struct Harness {
    endpoint: String,
    client: Client,
    stop_server: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), jobctl_server::Error>>>,
    workers: Vec<RunningWorker>,
}

/// A spawned worker: its stop signal and its task.
type RunningWorker = (oneshot::Sender<()>, JoinHandle<Result<(), Error>>);

impl Harness {
    /// Starts jobctl on the embedded store with test-friendly settings:
    /// retry backoff 10 ms to 100 ms without jitter, maintenance every 10 ms.
    pub async fn start() -> Result<Harness, HarnessError> {
        let config = jobctl_server::Config::try_parse_from([
            "jobctl-server",
            "--default-backoff-initial",
            "10ms",
            "--default-backoff-max",
            "100ms",
            "--default-backoff-jitter",
            "0",
            "--maintenance-interval",
            "10ms",
            "--shutdown-grace",
            "2s",
        ])
        .map_err(|e| HarnessError::Start(e.to_string()))?;
        Self::start_with(config).await
    }

    /// Starts jobctl with the given configuration (its `listen` address is
    /// ignored: the harness picks a free local port). With a `redis_url`
    /// the harness runs against that Redis instead.
    pub async fn start_with(config: jobctl_server::Config) -> Result<Harness, HarnessError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::Start(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::Start(e.to_string()))?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(jobctl_server::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let endpoint = format!("http://{addr}");
        let client = Client::connect(endpoint.clone()).await?;
        Ok(Harness {
            endpoint,
            client,
            stop_server: Some(stop_server),
            server: Some(server),
            workers: Vec::new(),
        })
    }

    /// The in-process server's address, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A client of the in-process server.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A worker builder pointed at the in-process server, with a short
    /// long-poll and shutdown grace; add handlers and queues, then
    /// [`spawn_worker`](Self::spawn_worker).
    pub fn worker(&self) -> WorkerBuilder {
        crate::Worker::builder(self.endpoint.clone())
            .lease_wait(Duration::from_secs(1))
            .progress_interval(Duration::from_millis(10))
            .shutdown_grace(Duration::from_secs(2))
    }

    /// Builds the worker and runs it until [`shutdown`](Self::shutdown).
    pub fn spawn_worker(&mut self, builder: WorkerBuilder) -> Result<(), HarnessError> {
        let worker = builder.build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        self.workers.push((stop, task));
        Ok(())
    }

    /// Submits a job and returns its id.
    pub async fn submit(&self, options: SubmitOptions) -> Result<String, HarnessError> {
        Ok(self.client.submit(options).await?.job_id)
    }

    /// The job as GetStatus reports it.
    pub async fn status(&self, job_id: &str) -> Result<v1::Job, HarnessError> {
        Ok(self.client.status(job_id).await?)
    }

    /// Waits until the job is SUCCEEDED, FAILED or CANCELLED and returns it.
    pub async fn wait_for(&self, job_id: &str, timeout: Duration) -> Result<v1::Job, HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let job = self.client.status(job_id).await?;
            let state = job.state();
            if matches!(
                state,
                JobState::Succeeded | JobState::Failed | JobState::Cancelled
            ) {
                return Ok(job);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    job_id: job_id.to_owned(),
                    state,
                    waited: timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the queues hold no scheduled, queued or running job.
    pub async fn run_until_idle(
        &self,
        queues: &[&str],
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut busy = false;
            for queue in queues {
                let stats = self.client.queue_stats(queue).await?;
                busy |= stats.scheduled + stats.queued + stats.running > 0;
            }
            if !busy {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::NotIdle(timeout));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops the workers (they finish or release their jobs) and the server.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        for (stop, task) in self.workers.drain(..) {
            let _ = stop.send(());
            let _ = task.await;
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for (_, task) in &self.workers {
            task.abort();
        }
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}
