#![doc = include_str!("../README.md")]

pub mod bff;
pub mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use jobctl_client::Client;
use jobctl_worker::Worker;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use bff::Bff;
pub use worker::Exporter;

/// The queue export jobs go to.
pub const QUEUE: &str = "exports";
/// The kind of an export job, the name the worker's handler is registered under.
pub const KIND: &str = "export_csv";

/// What [`start`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the HTTP service listens (port 0 for any free one).
    pub http: SocketAddr,
    /// An external jobctl server to use; `None` runs one in this process on
    /// its embedded store.
    pub jobctl: Option<String>,
    /// Rows an export writes when the request does not say.
    pub rows: u64,
    /// Rows per chunk: one progress update and one checkpoint each.
    pub chunk_rows: u64,
    /// A pause per chunk, standing in for the database query that would
    /// produce it, so the progress bar has something to show.
    pub chunk_delay: Duration,
    /// Where the worker writes the CSV files and the service reads them.
    pub out_dir: PathBuf,
    /// End each event stream after this many events, to see the browser
    /// resume with `Last-Event-ID` ([`bff::Settings::cut_streams_after`]).
    pub cut_streams_after: Option<usize>,
}

impl Options {
    /// The defaults of the command line, writing into `out_dir`, with the
    /// HTTP service on any free local port.
    pub fn new(out_dir: impl Into<PathBuf>) -> Options {
        Options {
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            jobctl: None,
            rows: 20_000,
            chunk_rows: 500,
            chunk_delay: Duration::from_millis(100),
            out_dir: out_dir.into(),
            cut_streams_after: None,
        }
    }
}

/// Why [`start`] or [`Running::run_until`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output directory could not be created.
    #[error("cannot create the output directory {path}")]
    OutDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The in-process jobctl server failed.
    #[error("jobctl server")]
    Server(#[from] jobctl_server::Error),
    /// The in-process server's configuration could not be read (a bad
    /// `JOBCTL_*` variable).
    #[error("jobctl server configuration: {0}")]
    Config(String),
    /// The worker could not be built or stopped with an error.
    #[error("worker")]
    Worker(#[from] jobctl_worker::Error),
    /// jobctl could not be reached.
    #[error("jobctl client")]
    Client(#[from] jobctl_client::Error),
    /// The HTTP service failed.
    #[error("http service")]
    Http(#[source] std::io::Error),
    /// A component's task panicked or was aborted.
    #[error("{what} task ended abnormally")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A component stopped on its own, before it was asked to.
    #[error("{0} stopped unexpectedly")]
    Stopped(&'static str),
}

/// Everything [`start`] started: jobctl (unless external), the CSV worker
/// and the HTTP service.
pub struct Running {
    /// Where the HTTP service listens.
    pub http_addr: SocketAddr,
    /// The gRPC endpoint of jobctl (the in-process one or `--jobctl`).
    pub jobctl_endpoint: String,
    /// Whether jobctl runs in this process on the embedded store.
    pub embedded: bool,
    http: Component,
    worker: Component,
    server: Option<Component>,
}

struct Component {
    what: &'static str,
    stop: CancellationToken,
    task: JoinHandle<Result<(), Error>>,
}

impl Component {
    fn spawn<F>(what: &'static str, run: impl FnOnce(CancellationToken) -> F) -> Component
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(stop.clone()));
        Component { what, stop, task }
    }

    async fn stop(self) -> Result<(), Error> {
        self.stop.cancel();
        match self.task.await {
            Ok(result) => result,
            Err(source) => Err(Error::Task {
                what: self.what,
                source,
            }),
        }
    }
}

impl Running {
    /// The address of the page, `http://<http_addr>/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.http_addr)
    }

    /// Runs until `shutdown` resolves (or a component fails), then stops
    /// the HTTP service, the worker and jobctl, in that order.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let early = tokio::select! {
            () = shutdown => None,
            r = &mut self.http.task => Some(("http service", r)),
            r = &mut self.worker.task => Some(("worker", r)),
            r = async {
                match self.server.as_mut() {
                    Some(s) => (&mut s.task).await,
                    None => std::future::pending().await,
                }
            } => Some(("jobctl server", r)),
        };
        if let Some((what, result)) = early {
            // One part ended on its own: stop the others and report why.
            self.http.stop.cancel();
            self.worker.stop.cancel();
            if let Some(server) = &self.server {
                server.stop.cancel();
            }
            return match result {
                Ok(Ok(())) => Err(Error::Stopped(what)),
                Ok(Err(e)) => Err(e),
                Err(source) => Err(Error::Task { what, source }),
            };
        }
        self.shutdown().await
    }

    /// Stops the HTTP service (open event streams end), then the worker
    /// (a running export gets its grace to finish, else it is handed back
    /// and resumes from its checkpoint next time), then jobctl.
    pub async fn shutdown(self) -> Result<(), Error> {
        let http = self.http.stop().await;
        let worker = self.worker.stop().await;
        let server = match self.server {
            Some(server) => server.stop().await,
            None => Ok(()),
        };
        http.and(worker).and(server)
    }
}

/// Starts jobctl (unless `options.jobctl` names one), the CSV worker and the
/// HTTP service, and returns once all of them are listening.
pub async fn start(options: Options) -> Result<Running, Error> {
    tokio::fs::create_dir_all(&options.out_dir)
        .await
        .map_err(|source| Error::OutDir {
            path: options.out_dir.clone(),
            source,
        })?;

    let (jobctl_endpoint, server) = match &options.jobctl {
        Some(url) => (url.clone(), None),
        None => {
            let (endpoint, server) = start_jobctl().await?;
            (endpoint, Some(server))
        }
    };

    let client = Client::connect(jobctl_endpoint.clone()).await?;

    let exporter = Exporter {
        out_dir: options.out_dir.clone(),
        chunk_rows: options.chunk_rows.max(1),
        chunk_delay: options.chunk_delay,
    };
    let worker = Worker::builder(jobctl_endpoint.clone())
        .queues([QUEUE])
        .concurrency(4)
        .shutdown_grace(Duration::from_secs(2))
        .handler(KIND, move |ctx| {
            let exporter = exporter.clone();
            async move { exporter.run(ctx).await }
        })
        .build()?;
    let worker = Component::spawn("worker", |stop| async move {
        worker.run(stop.cancelled_owned()).await?;
        Ok(())
    });

    let listener = TcpListener::bind(options.http)
        .await
        .map_err(|source| Error::Bind {
            what: "http",
            addr: options.http,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(Error::Http)?;
    let bff = Bff::new(
        client,
        bff::Settings {
            out_dir: options.out_dir.clone(),
            default_rows: options.rows,
            cut_streams_after: options.cut_streams_after,
        },
    );
    let http = Component::spawn("http service", |stop| async move {
        bff.serve(listener, stop).await.map_err(Error::Http)
    });

    Ok(Running {
        http_addr,
        embedded: server.is_some(),
        jobctl_endpoint,
        http,
        worker,
        server,
    })
}

/// jobctl in this process, on its embedded store, on a free local port.
async fn start_jobctl() -> Result<(String, Component), Error> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind {
            what: "jobctl grpc",
            addr,
            source,
        })?;
    let endpoint = format!(
        "http://{}",
        listener.local_addr().map_err(|source| Error::Bind {
            what: "jobctl grpc",
            addr,
            source,
        })?
    );
    let mut config = jobctl_server::Config::try_parse_from(["jobctl-server"])
        .map_err(|e| Error::Config(e.to_string()))?;
    // The embedded store, whatever JOBCTL_REDIS_URL says: `--jobctl` is the
    // way to use a real deployment.
    config.redis_url = None;
    config.shutdown_grace = Duration::from_secs(2);
    let server = Component::spawn("jobctl server", |stop| async move {
        jobctl_server::serve(config, listener, stop.cancelled_owned()).await?;
        Ok(())
    });
    Ok((endpoint, server))
}
