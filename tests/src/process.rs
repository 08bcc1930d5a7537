//! The `jobctl-server` and `jobctl-test-worker` binaries as child processes,
//! for tests that kill them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::server::command_line;

/// A `jobctl-server` child process. Killed (SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    /// The address it reported in its `listening on <addr>` line.
    pub addr: SocketAddr,
    /// `http://<addr>`.
    pub endpoint: String,
    output: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Runs the `jobctl-server` binary with `--listen 127.0.0.1:0`,
    /// `--redis-url`, the harness's default flags and `extra_flags`, and waits
    /// for its `listening on <addr>` line.
    pub async fn start(redis_url: &str, extra_flags: &[&str]) -> Self {
        Self::start_wrapped(&[], &[], redis_url, extra_flags).await
    }

    /// Like [`ServerProcess::start`], with the binary run through `wrapper`
    /// (for example `["faketime", "-f", "+1h"]`) and extra environment.
    pub async fn start_wrapped(
        wrapper: &[&str],
        env: &[(&str, &str)],
        redis_url: &str,
        extra_flags: &[&str],
    ) -> Self {
        let binary = server_binary();
        let mut args = command_line(redis_url, extra_flags);
        args.remove(0);
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        command
            .args(&args)
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            command.env(k, v);
        }
        // Keep the server's metrics listener off the shared default port.
        command.env("JOBCTL_HTTP_LISTEN", "127.0.0.1:0");
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::unbounded_channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        forward_lines(stdout, output.clone(), Some(addr_tx.clone()));
        forward_lines(stderr, output.clone(), Some(addr_tx));
        let addr = tokio::time::timeout(Duration::from_secs(20), addr_rx.recv())
            .await
            .ok()
            .flatten();
        let Some(addr) = addr else {
            let _ = child.start_kill();
            let status = child.wait().await;
            panic!(
                "jobctl-server did not print `listening on <addr>` within 20s (exit: {status:?}); \
                 its output:\n{}",
                output.lock().map(|o| o.clone()).unwrap_or_default()
            );
        };
        ServerProcess {
            child,
            addr,
            endpoint: format!("http://{addr}"),
            output,
        }
    }

    /// Kills the process with SIGKILL and waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A `jobctl-test-worker` child process (see `src/bin/jobctl-test-worker.rs`).
/// Killed (SIGKILL) when dropped.
pub struct WorkerProcess {
    child: Child,
    /// The worker id it leases with.
    pub worker_id: String,
    output: Arc<Mutex<String>>,
}

impl WorkerProcess {
    /// Runs the test worker binary at `binary` (use
    /// [`crate::test_worker_bin!`]) against `endpoint`, serving `queue`.
    pub fn spawn(
        binary: &str,
        endpoint: &str,
        worker_id: &str,
        queue: &str,
        concurrency: u32,
    ) -> Self {
        Self::spawn_with_env(binary, endpoint, worker_id, queue, concurrency, &[])
    }

    /// Like [`WorkerProcess::spawn`], with extra environment.
    pub fn spawn_with_env(
        binary: &str,
        endpoint: &str,
        worker_id: &str,
        queue: &str,
        concurrency: u32,
        env: &[(&str, &str)],
    ) -> Self {
        let mut child = Command::new(binary)
            .args(["--endpoint", endpoint])
            .args(["--worker-id", worker_id])
            .args(["--queue", queue])
            .args(["--concurrency", &concurrency.to_string()])
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        forward_lines(child.stdout.take().expect("stdout"), output.clone(), None);
        forward_lines(child.stderr.take().expect("stderr"), output.clone(), None);
        WorkerProcess {
            child,
            worker_id: worker_id.to_owned(),
            output,
        }
    }

    /// Kills the process with SIGKILL (no graceful shutdown, no Release) and
    /// waits for it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// Collects a child's output lines; the first `listening on <addr>` line's
/// address goes to `addr_tx`.
fn forward_lines<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    output: Arc<Mutex<String>>,
    addr_tx: Option<tokio::sync::mpsc::UnboundedSender<SocketAddr>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        let mut addr_tx = addr_tx;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut out) = output.lock() {
                out.push_str(&line);
                out.push('\n');
            }
            if let Some(addr) = listening_addr(&line)
                && let Some(tx) = addr_tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
}

/// The address in a line like `... listening on 127.0.0.1:4242` (also with
/// structured fields such as `addr=127.0.0.1:4242` or JSON).
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let line = strip_ansi(line);
    let at = line.find("listening on")?;
    line[at..]
        .split(|c: char| c.is_whitespace() || matches!(c, '=' | '"' | ',' | '}' | '{' | '\''))
        .find_map(|token| token.parse::<SocketAddr>().ok())
        .or_else(|| {
            line.split(|c: char| c.is_whitespace() || matches!(c, '=' | '"' | ',' | '}' | '{'))
                .find_map(|token| token.parse::<SocketAddr>().ok())
        })
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The path of the `jobctl-server` binary, built on first use.
///
/// `JOBCTL_SERVER_BIN` wins when set. Otherwise the workspace's binaries are
/// brought up to date with `cargo build --workspace --bins` (a no-op after
/// `scripts/test.sh` built them) in the target directory these tests run
/// from, since `cargo test` builds another package's binaries only when asked
/// to.
pub fn server_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("JOBCTL_SERVER_BIN") {
                return PathBuf::from(path);
            }
            let exe = std::env::current_exe().expect("current executable");
            // <target>/<profile>/deps/<test binary>
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test binary lives in <target>/<profile>/deps")
                .to_path_buf();
            let target_dir = profile_dir.parent().expect("target directory");
            let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev".to_owned(),
                Some(other) => other.to_owned(),
            };
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
            let mut build = std::process::Command::new(&cargo);
            // The test runner gives this process the tests package's build
            // variables (CARGO_MANIFEST_DIR, CARGO_PKG_*, OUT_DIR, …). Build
            // scripts watch some of them (`rerun-if-env-changed`: ring's
            // does), so a cargo that inherits them rebuilds those crates and
            // everything above them, and the next plain build rebuilds them
            // back: minutes on 2 cores, inside a test's time limit.
            for (name, _) in std::env::vars_os() {
                let Some(name) = name.to_str() else { continue };
                if is_package_build_var(name) {
                    build.env_remove(name);
                }
            }
            let status = build
                .args(["build", "--quiet", "--workspace", "--bins"])
                .arg("--manifest-path")
                .arg(&manifest)
                .arg("--profile")
                .arg(&profile)
                .arg("--target-dir")
                .arg(target_dir)
                .status()
                .unwrap_or_else(|e| panic!("run {cargo} build: {e}"));
            assert!(status.success(), "cargo build --workspace --bins failed");
            let binary = profile_dir.join("jobctl-server");
            assert!(
                binary.exists(),
                "cargo built jobctl-server but {} is missing",
                binary.display()
            );
            binary
        })
        .clone()
}

/// A variable cargo sets for the crate it builds or runs (not one of its
/// configuration variables such as `CARGO_HOME` or `CARGO_BUILD_JOBS`).
fn is_package_build_var(name: &str) -> bool {
    const PREFIXES: &[&str] = &["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CFG_"];
    const NAMES: &[&str] = &[
        "OUT_DIR",
        "CARGO_CRATE_NAME",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "CARGO_RUSTC_CURRENT_DIR",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::is_package_build_var;

    #[test]
    fn only_the_tested_packages_build_variables_are_dropped() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "OUT_DIR",
            "CARGO_BIN_EXE_jobctl",
        ] {
            assert!(is_package_build_var(name), "{name}");
        }
        for name in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "PATH",
            "CARGO",
        ] {
            assert!(!is_package_build_var(name), "{name}");
        }
    }
}
