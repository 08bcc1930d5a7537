//! The jobctl server, in-process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Parser;
use jobctl_proto::v1::GetStatusRequest;
use jobctl_proto::v1::admin_service_client::AdminServiceClient;
use jobctl_proto::v1::job_service_client::JobServiceClient;
use jobctl_proto::v1::worker_service_client::WorkerServiceClient;
use jobctl_server::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{Backend, RedisServer};

/// Flags every test server gets unless the test passes its own value.
///
/// The maintenance tick (reaper and promoter) runs every 100ms so that expired
/// leases and due jobs are noticed quickly; jitter is off so backoff timing is
/// predictable.
pub const DEFAULT_FLAGS: &[(&str, &str)] = &[
    ("--maintenance-interval", "100ms"),
    ("--default-backoff-jitter", "0"),
];

/// `jobctl_server::serve` running in-process on `127.0.0.1:<free port>`
/// against one Redis or on the embedded store, with connected clients. Shut
/// down when dropped.
pub struct TestServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Its HTTP port: `/metrics`, `/healthz`, `/readyz`.
    pub http_addr: SocketAddr,
    /// `http://<addr>` (`https://localhost:<port>` with TLS).
    pub endpoint: String,
    /// A client of `jobctl.v1.JobService`.
    pub job: JobServiceClient<Channel>,
    /// A client of `jobctl.v1.WorkerService`.
    pub worker: WorkerServiceClient<Channel>,
    /// A client of `jobctl.v1.AdminService`.
    pub admin: AdminServiceClient<Channel>,
    channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), jobctl_server::Error>>>,
}

impl TestServer {
    /// Starts a server against `redis` with [`DEFAULT_FLAGS`] and
    /// `extra_flags` (`["--max-payload-bytes", "100"]`, or `"--flag=value"`),
    /// and waits until it answers.
    pub async fn start(redis: &RedisServer, extra_flags: &[&str]) -> Self {
        Self::start_with_url(&redis.url(), extra_flags).await
    }

    /// Starts a server on `backend`: against its Redis, or on the embedded
    /// store (a [`Config`] without `redis_url`; each such server has a store
    /// of its own). Flags as for [`TestServer::start`].
    pub async fn start_on(backend: &Backend, extra_flags: &[&str]) -> Self {
        match backend {
            Backend::Redis(redis) => Self::start(redis, extra_flags).await,
            Backend::Embedded => Self::start_with_config(embedded_config(extra_flags)).await,
            Backend::Cluster(cluster, prefix) => {
                let mut flags = vec!["--key-prefix", prefix.as_str()];
                flags.extend_from_slice(extra_flags);
                Self::start_with_url(&cluster.url(), &flags).await
            }
        }
    }

    /// Like [`TestServer::start`] with any Redis URL.
    pub async fn start_with_url(redis_url: &str, extra_flags: &[&str]) -> Self {
        Self::start_with_config(config(redis_url, extra_flags)).await
    }

    /// Starts a server with exactly `config` (its `listen` address is not
    /// used: the server listens on `127.0.0.1:<free port>`).
    pub async fn start_with_config(config: Config) -> Self {
        Self::start_with_tls(config, None).await
    }

    /// [`TestServer::start_with_config`] for a server whose gRPC port speaks
    /// TLS (`--tls-cert`…): the clients connect to `https://localhost:<port>`
    /// with `tls` (the CA, and a client certificate for mTLS).
    pub async fn start_with_tls(config: Config, tls: Option<ClientTlsConfig>) -> Self {
        crate::init_tracing();
        crate::panics::install_panic_counter();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let http_addr = http_listener.local_addr().expect("local address");
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(jobctl_server::serve_with(
            config,
            listener,
            Some(http_listener),
            async move {
                let _ = shutdown_rx.await;
            },
        ));
        let endpoint = match &tls {
            Some(_) => format!("https://localhost:{}", addr.port()),
            None => format!("http://{addr}"),
        };
        let mut configured = Endpoint::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            configured = configured.tls_config(tls).expect("client TLS config");
        }
        let channel = configured.connect_lazy();
        let mut server = TestServer {
            addr,
            http_addr,
            endpoint,
            job: JobServiceClient::new(channel.clone()),
            worker: WorkerServiceClient::new(channel.clone()),
            admin: AdminServiceClient::new(channel.clone()),
            channel,
            shutdown: Some(shutdown),
            task: Some(task),
        };
        server.wait_ready().await;
        server
    }

    /// The value of an unlabelled Prometheus metric from `/metrics` (its
    /// full name, e.g. `jobctl_watchers`).
    pub async fn metric(&self, name: &str) -> f64 {
        let page = http_get(self.http_addr, "/metrics").await;
        page.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == name).then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no metric {name} in:\n{page}"))
    }

    /// A channel to the server, for other clients.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A new job client (the clients take `&mut self`).
    pub fn job(&self) -> JobServiceClient<Channel> {
        self.job.clone()
    }

    /// A new worker client.
    pub fn worker(&self) -> WorkerServiceClient<Channel> {
        self.worker.clone()
    }

    /// A new admin client.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        self.admin.clone()
    }

    /// Whether `serve` has returned (or panicked).
    pub fn has_stopped(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Asks the server to shut down and waits for `serve` to return its
    /// result.
    pub async fn shutdown(mut self) -> Result<(), jobctl_server::Error> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("running server");
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join_error)) => panic!("the server task failed: {join_error}"),
            Err(_) => panic!("the server did not shut down within 15s"),
        }
    }

    /// Polls a harmless request until the server answers it (any answer
    /// that comes from the service, not the transport).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last;
        loop {
            if self.has_stopped() {
                let task = self.task.take().expect("server task");
                match task.await {
                    Ok(Ok(())) => panic!("the server stopped before it was ready"),
                    Ok(Err(e)) => panic!("the server failed to start: {e}"),
                    Err(e) => panic!("the server task failed to start: {e}"),
                }
            }
            let probe = self
                .job
                .get_status(GetStatusRequest {
                    job_id: "readiness-probe:01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
                })
                .await;
            match probe {
                Ok(_) => return,
                // With authentication on, the probe has no credentials.
                Err(status)
                    if matches!(
                        status.code(),
                        Code::NotFound
                            | Code::InvalidArgument
                            | Code::Unauthenticated
                            | Code::PermissionDenied
                    ) =>
                {
                    return;
                }
                Err(status) => last = format!("{status:?}"),
            }
            assert!(
                Instant::now() < deadline,
                "the server did not become ready within 15s; last answer: {last}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Builds the server's [`Config`] from its command line: `--redis-url`,
/// [`DEFAULT_FLAGS`] overridden by `extra_flags`, and `--http-listen
/// 127.0.0.1:0` when the server has that flag (so parallel tests do not fight
/// over the metrics port).
pub fn config(redis_url: &str, extra_flags: &[&str]) -> Config {
    parse_config(command_line(redis_url, extra_flags), extra_flags)
}

/// Like [`config`] for the embedded store: no `--redis-url`, and no Redis
/// URL even when `JOBCTL_REDIS_URL` is set in the environment.
pub fn embedded_config(extra_flags: &[&str]) -> Config {
    let mut config = parse_config(embedded_command_line(extra_flags), extra_flags);
    config.redis_url = None;
    config
}

fn parse_config(args: Vec<String>, extra_flags: &[&str]) -> Config {
    let mut with_http = args.clone();
    with_http.extend(["--http-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    if !flag_given(extra_flags, "--http-listen")
        && let Ok(config) = Config::try_parse_from(&with_http)
    {
        return config;
    }
    Config::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the server refused the flags {args:?}: {e}"))
}

/// `jobctl-server --listen 127.0.0.1:0 --redis-url <url>` plus
/// [`DEFAULT_FLAGS`] (unless overridden) and `extra_flags`.
pub fn command_line(redis_url: &str, extra_flags: &[&str]) -> Vec<String> {
    command_line_for(Some(redis_url), extra_flags)
}

/// [`command_line`] without `--redis-url`: the embedded store.
pub fn embedded_command_line(extra_flags: &[&str]) -> Vec<String> {
    command_line_for(None, extra_flags)
}

fn command_line_for(redis_url: Option<&str>, extra_flags: &[&str]) -> Vec<String> {
    let mut args = vec![
        "jobctl-server".to_owned(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--http-listen".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    if let Some(url) = redis_url {
        args.extend(["--redis-url".to_owned(), url.to_owned()]);
    }
    for (flag, value) in DEFAULT_FLAGS {
        if !flag_given(extra_flags, flag) {
            args.push((*flag).to_owned());
            args.push((*value).to_owned());
        }
    }
    args.extend(extra_flags.iter().map(|s| (*s).to_owned()));
    args
}

fn flag_given(flags: &[&str], flag: &str) -> bool {
    flags
        .iter()
        .any(|f| *f == flag || f.starts_with(&format!("{flag}=")))
}

/// The body of a plain HTTP/1.1 GET (no client library needed for a scrape).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the http port");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an http response: {response}"));
    assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
    body.to_owned()
}
