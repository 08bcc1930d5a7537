//! What a workload runs against: a `redis-server` of its own (or a given
//! one), the jobctl server in-process on a runtime of its own, as the
//! `jobctl-server` binary, or a given address.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Parser;
use jobctl_proto::v1::admin_service_client::AdminServiceClient;
use jobctl_proto::v1::job_service_client::JobServiceClient;
use jobctl_proto::v1::{GetQueueStatsRequest, GetStatusRequest};
use jobctl_tests::RedisServer;
use jobctl_tests::redis_server::free_port;
use redis::aio::MultiplexedConnection;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

use crate::Options;

/// A running jobctl (and the Redis behind it, when known).
pub struct Env {
    /// `http://host:port` of the jobctl server.
    pub endpoint: String,
    /// The Redis behind it, when this run started it or was told its URL.
    pub redis_url: Option<String>,
    _redis: Option<RedisServer>,
    server: Server,
}

enum Server {
    InProcess {
        shutdown: Option<oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    },
    Process(tokio::process::Child),
    External,
}

impl Drop for Env {
    fn drop(&mut self) {
        match &mut self.server {
            Server::InProcess { shutdown, thread } => {
                if let Some(tx) = shutdown.take() {
                    let _ = tx.send(());
                }
                if let Some(thread) = thread.take() {
                    let _ = thread.join();
                }
            }
            Server::Process(child) => {
                let _ = child.start_kill();
            }
            Server::External => {}
        }
    }
}

impl Env {
    /// Starts what `options` does not name: a fresh `redis-server`
    /// (`--save '' --appendonly no`, a free port) and a server on it.
    pub async fn start(options: &Options) -> Result<Env, String> {
        if let Some(endpoint) = &options.server {
            return Ok(Env {
                endpoint: endpoint.clone(),
                redis_url: options.redis_url.clone(),
                _redis: None,
                server: Server::External,
            });
        }
        let (redis, redis_url) = match &options.redis_url {
            Some(url) => (None, url.clone()),
            None => {
                let redis = RedisServer::start().await;
                let url = redis.url();
                (Some(redis), url)
            }
        };
        let (endpoint, server) = match &options.server_bin {
            Some(bin) => start_process(bin, &redis_url).await?,
            None => start_in_process(&redis_url)?,
        };
        let env = Env {
            endpoint,
            redis_url: Some(redis_url),
            _redis: redis,
            server,
        };
        env.wait_ready().await?;
        Ok(env)
    }

    /// A new HTTP/2 connection to the server.
    pub fn channel(&self) -> Channel {
        // Validated in wait_ready.
        Endpoint::from_shared(self.endpoint.clone())
            .map(|e| {
                e.tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy()
            })
            .unwrap_or_else(|e| panic!("endpoint {}: {e}", self.endpoint))
    }

    async fn wait_ready(&self) -> Result<(), String> {
        Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| format!("bad server address {}: {e}", self.endpoint))?;
        let mut client = JobServiceClient::new(self.channel());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let probe = client
                .get_status(GetStatusRequest {
                    job_id: "probe:01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
                })
                .await;
            match probe {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
                Err(s) if Instant::now() > deadline => {
                    return Err(format!("the server at {} is not ready: {s}", self.endpoint));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// A connection to the Redis, when known.
    pub async fn redis(&self) -> Option<MultiplexedConnection> {
        let url = self.redis_url.as_ref()?;
        let client = redis::Client::open(url.as_str()).ok()?;
        client.get_multiplexed_async_connection().await.ok()
    }

    /// `INFO <section>` as a map, empty without a Redis.
    pub async fn info(&self, section: &str) -> BTreeMap<String, String> {
        let Some(mut conn) = self.redis().await else {
            return BTreeMap::new();
        };
        let text: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect()
    }

    /// CPU seconds used so far by Redis (when it runs on this machine) and
    /// by this process (the load, and the server when it runs in-process).
    pub async fn cpu(&self) -> (Option<f64>, Option<f64>) {
        let redis = match self.info_u64("server", "process_id").await {
            Some(pid) => u32::try_from(pid).ok().and_then(cpu_seconds),
            None => None,
        };
        let own = cpu_seconds(std::process::id());
        let server = match &self.server {
            Server::Process(child) => child.id().and_then(cpu_seconds),
            _ => Some(0.0),
        };
        (redis, own.zip(server).map(|(a, b)| a + b))
    }

    /// One numeric field of `INFO <section>`.
    pub async fn info_u64(&self, section: &str, field: &str) -> Option<u64> {
        self.info(section).await.get(field)?.parse().ok()
    }

    /// Calls per command from `INFO commandstats` (commands run inside
    /// scripts included).
    pub async fn command_calls(&self) -> BTreeMap<String, u64> {
        self.command_stat("calls=").await
    }

    /// Microseconds spent per command from `INFO commandstats` (a script's
    /// time includes the commands it ran).
    pub async fn command_usec(&self) -> BTreeMap<String, u64> {
        self.command_stat("usec=").await
    }

    async fn command_stat(&self, stat: &str) -> BTreeMap<String, u64> {
        self.info("commandstats")
            .await
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix("cmdstat_")?.to_owned();
                let n = v
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(stat))?
                    .parse()
                    .ok()?;
                Some((name, n))
            })
            .collect()
    }

    /// How many jobs of `queue` have finished.
    pub async fn finished(&self, admin: &mut AdminServiceClient<Channel>, queue: &str) -> u64 {
        admin
            .get_queue_stats(GetQueueStatsRequest {
                queue: queue.into(),
            })
            .await
            .map(|r| r.into_inner().finished)
            .unwrap_or(0)
    }
}

/// CPU seconds (user + system) a process has used so far, from
/// `/proc/<pid>/stat` (Linux; `None` elsewhere).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

/// Command calls between two readings, without the bench's own `INFO`.
pub fn calls_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .filter_map(|(name, n)| {
            let d = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            (d > 0).then(|| (name.clone(), d))
        })
        .collect()
}

/// `jobctl_server::serve` on a runtime of its own (2 threads), so the
/// server's and the load's tasks do not share a scheduler.
fn start_in_process(redis_url: &str) -> Result<(String, Server), String> {
    let config = jobctl_server::Config::try_parse_from([
        "jobctl-server",
        "--redis-url",
        redis_url,
        "--listen",
        "127.0.0.1:0",
    ])
    .map_err(|e| format!("server config: {e}"))?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("jobctl-server".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(
                    std::env::var("JOBCTL_BENCH_SERVER_THREADS")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(2),
                )
                .thread_name("jobctl-server")
                .enable_all()
                .build();
            let Ok(runtime) = runtime else { return };
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let stop = async move {
                    let _ = shutdown_rx.await;
                };
                if let Err(e) = jobctl_server::serve(config, listener, stop).await {
                    eprintln!("jobctl-server: {e}");
                }
            });
        })
        .map_err(|e| e.to_string())?;
    Ok((
        format!("http://{addr}"),
        Server::InProcess {
            shutdown: Some(shutdown),
            thread: Some(thread),
        },
    ))
}

async fn start_process(bin: &PathBuf, redis_url: &str) -> Result<(String, Server), String> {
    let port = free_port();
    let http = free_port();
    let child = tokio::process::Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--redis-url", redis_url])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))?;
    Ok((format!("http://127.0.0.1:{port}"), Server::Process(child)))
}
