//! A real `redis-server` per test.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

const INSTALL_REDIS: &str = "redis-server is not on PATH: the end-to-end tests need it \
     (Debian/Ubuntu: `apt-get install redis-server`; macOS: `brew install redis`)";
const INSTALL_FAKETIME: &str = "libfaketime is not installed: the clock-skew tests need it \
     (Debian/Ubuntu: `apt-get install faketime`; or set JOBCTL_TEST_LIBFAKETIME to the path of \
     libfaketime.so.1)";

/// How to run a [`RedisServer`].
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Run redis-server under libfaketime with this `FAKETIME` spec (for
    /// example `+2h`), so Redis's clock differs from the test's.
    pub faketime: Option<String>,
    /// Run in cluster mode as a single node that owns all 16384 slots, so
    /// Redis refuses scripts whose keys span slots.
    pub cluster: bool,
    /// With `cluster`: a node that owns no slots yet, for a
    /// [`RedisCluster`](crate::RedisCluster) to join.
    pub cluster_member: bool,
    /// Run as a Sentinel (`redis-server <dir>/sentinel.conf --sentinel`)
    /// with this configuration (its `sentinel monitor …` lines).
    pub sentinel_config: Option<String>,
    /// More `redis-server` arguments (for example `--tls-port` and its
    /// certificates; the plain port stays open for the harness).
    pub extra_args: Vec<String>,
}

/// A `redis-server` child process on a free port in its own temporary
/// directory; killed when dropped. Nothing is persisted
/// (`--save '' --appendonly no`).
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    cluster_port: Option<u16>,
    options: RedisOptions,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a plain redis-server and waits until it answers PING.
    pub async fn start() -> Self {
        Self::start_with(RedisOptions::default()).await
    }

    /// Starts a redis-server whose clock runs `spec` (a libfaketime spec such
    /// as `+2h`) away from the real one.
    pub async fn start_with_faketime(spec: &str) -> Self {
        Self::start_with(RedisOptions {
            faketime: Some(spec.to_owned()),
            ..RedisOptions::default()
        })
        .await
    }

    /// Starts a single-node Redis Cluster owning every slot and waits until
    /// `CLUSTER INFO` reports `cluster_state:ok`.
    pub async fn start_cluster() -> Self {
        Self::start_with(RedisOptions {
            cluster: true,
            ..RedisOptions::default()
        })
        .await
    }

    /// Starts a redis-server with `options`.
    pub async fn start_with(options: RedisOptions) -> Self {
        let binary = find_on_path("redis-server").unwrap_or_else(|| panic!("{INSTALL_REDIS}"));
        let mut last_error = String::new();
        for _ in 0..20 {
            let dir = tempfile::Builder::new()
                .prefix("jobctl-redis-")
                .tempdir()
                .expect("create a temporary directory for redis-server");
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                cluster_port: options.cluster.then(free_port),
                options: options.clone(),
                dir,
            };
            match server.spawn(&binary).await {
                Ok(()) => {
                    if server.options.cluster && !server.options.cluster_member {
                        server.assign_all_slots().await;
                    }
                    return server;
                }
                // Most likely another process took the port first: dropping
                // `server` kills it, and the next round picks another port.
                Err(e) => last_error = e,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// The port Redis listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port of its cluster bus (cluster mode only).
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// The process id of the running redis-server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temporary directory Redis runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new connection to this Redis.
    pub async fn conn(&self) -> MultiplexedConnection {
        connect(self.port, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("connect to redis on port {}: {e}", self.port))
    }

    /// Redis's own clock (`TIME`).
    pub async fn time(&self) -> SystemTime {
        let mut conn = self.conn().await;
        let (secs, micros): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut conn)
            .await
            .expect("redis TIME");
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
    }

    /// Everything redis-server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills redis-server (SIGKILL) and waits for it to exit; its data is
    /// gone. The port is kept for [`RedisServer::restart`].
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts redis-server again on the same port (empty: nothing was
    /// persisted) and waits until it answers.
    pub async fn restart(&mut self) {
        self.kill();
        let binary = find_on_path("redis-server").unwrap_or_else(|| panic!("{INSTALL_REDIS}"));
        let mut last_error = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.spawn(&binary).await {
                Ok(()) => {
                    if self.options.cluster && !self.options.cluster_member {
                        self.assign_all_slots().await;
                    }
                    return;
                }
                Err(e) => {
                    // The port may linger for a moment after the kill: retry
                    // on the same port, since clients know only that one.
                    last_error = e;
                    self.kill();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        panic!(
            "could not restart redis-server on port {}: {last_error}",
            self.port
        );
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn spawn(&mut self, binary: &Path) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("open redis log: {e}"))?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(binary);
        if let Some(config) = &self.options.sentinel_config {
            // A Sentinel rewrites its file: written once, kept on restart.
            let path = self.dir.path().join("sentinel.conf");
            if !path.exists() {
                std::fs::write(&path, config).map_err(|e| format!("write sentinel.conf: {e}"))?;
            }
            command.arg(&path).arg("--sentinel");
        }
        command
            .current_dir(self.dir.path())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        if let Some(cluster_port) = self.cluster_port {
            command
                .args(["--cluster-enabled", "yes"])
                .args([
                    "--cluster-config-file",
                    &self.dir.path().join("nodes.conf").to_string_lossy(),
                ])
                .args(["--cluster-port", &cluster_port.to_string()]);
        }
        command.args(&self.options.extra_args);
        if let Some(spec) = &self.options.faketime {
            // `faketime -f +2h redis-server` does not work with the Debian
            // redis-server: libfaketime and the jemalloc it is linked against
            // call each other while starting (wolfcw/libfaketime#130) and
            // redis-server exits at once. Preloading libc after libfaketime
            // makes redis-server allocate with glibc's malloc, which breaks
            // that cycle; Redis itself runs unchanged.
            let libfaketime = find_libfaketime().unwrap_or_else(|| panic!("{INSTALL_FAKETIME}"));
            command
                .env("LD_PRELOAD", format!("{}:libc.so.6", libfaketime.display()))
                .env("FAKETIME", spec)
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
                .env("DONT_FAKE_MONOTONIC", "1")
                .env("FAKETIME_DONT_RESET", "1");
        }
        let child = command
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let pid = child.id();
        self.child = Some(child);
        self.wait_ready(pid).await
    }

    /// Polls until our own redis-server answers PING on the port: a process
    /// that exited (port taken) or another process answering is an error.
    async fn wait_ready(&mut self, pid: u32) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return Err(format!(
                    "redis-server exited with {status} before it was ready; its log:\n{}",
                    self.log()
                ));
            }
            if let Ok(mut conn) = connect(self.port, Duration::from_millis(500)).await {
                let info: Result<String, _> = redis::cmd("INFO")
                    .arg("server")
                    .query_async(&mut conn)
                    .await;
                if let Ok(info) = info {
                    let answering = info_field(&info, "process_id");
                    if answering.as_deref() == Some(pid.to_string().as_str()) {
                        return Ok(());
                    }
                    return Err(format!(
                        "another redis (pid {answering:?}) answers on port {}",
                        self.port
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer on port {} within 15s; its log:\n{}",
                    self.port,
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn assign_all_slots(&self) {
        let mut conn = self.conn().await;
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(0)
            .arg(16383)
            .query_async(&mut conn)
            .await
            .expect("CLUSTER ADDSLOTSRANGE 0 16383");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut conn)
                .await
                .expect("CLUSTER INFO");
            if info_field(&info, "cluster_state").as_deref() == Some("ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within 15s:\n{info}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A connection to the redis on `port`, failing after `timeout`.
pub async fn connect(port: u16, timeout: Duration) -> redis::RedisResult<MultiplexedConnection> {
    assert_ne!(port, 6379, "the tests never use the redis on port 6379");
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(Duration::from_secs(10)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// A port that was free a moment ago (never 6379).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if port != 6379 {
            return port;
        }
    }
}

pub(crate) fn info_field(info: &str, name: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_owned())
    })
}

/// Finds an executable on `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The path of `libfaketime.so.1`: `JOBCTL_TEST_LIBFAKETIME`, or where the
/// Debian, Fedora and source packages put it.
pub fn find_libfaketime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("JOBCTL_TEST_LIBFAKETIME") {
        let path = PathBuf::from(path);
        return File::open(&path).is_ok().then_some(path);
    }
    let mut candidates = vec![
        PathBuf::from("/usr/local/lib/faketime/libfaketime.so.1"),
        PathBuf::from("/usr/lib/faketime/libfaketime.so.1"),
        PathBuf::from("/usr/lib64/faketime/libfaketime.so.1"),
    ];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("faketime/libfaketime.so.1"));
        }
    }
    candidates.into_iter().find(|p| File::open(p).is_ok())
}

/// Whether libfaketime is installed.
pub fn faketime_available() -> bool {
    find_libfaketime().is_some()
}
