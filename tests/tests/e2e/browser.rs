//! A real browser for tests of pages: Debian's headless Chromium driven
//! through chromedriver (WebDriver, with `fantoccini`), in a fresh profile.
//! The export example's browser test (`examples/export/tests/browser.rs`)
//! is where this harness comes from.
//!
//! Needs `apt-get install -y chromium chromium-driver`; `CHROMIUM` and
//! `CHROMEDRIVER` may point at other binaries. Without them a test fails
//! and says so: it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// A binary from `var`, or the first of `candidates` that exists.
fn find_binary(var: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{var}={} does not exist; unset it, or install the browser: {INSTALL}",
            path.display()
        );
        return path;
    }
    let found = candidates.iter().map(PathBuf::from).find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "the browser test needs {} (looked for {}); install it with: {INSTALL} \
             (or set {var})",
            candidates[0],
            candidates.join(", ")
        )
    })
}

/// chromedriver on a port of its choosing; killed when dropped.
struct Driver {
    _child: Child,
    url: String,
}

impl Driver {
    async fn start(binary: &Path) -> Driver {
        let mut child = Command::new(binary)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        // "ChromeDriver was started successfully on port 34003."
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').trim().parse::<u16>().ok();
                }
            }
            None
        })
        .await
        .expect("chromedriver did not say which port it listens on")
        .expect("chromedriver exited without listening");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Driver {
            _child: child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// Headless Chromium under chromedriver, in a fresh profile.
pub struct Browser {
    pub client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a browser session, `width`×`height` pixels.
    pub async fn launch(width: u32, height: u32) -> Browser {
        let chromium = find_binary(
            "CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        );
        let chromedriver = find_binary(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let profile = tempfile::tempdir().expect("a profile directory");
        let driver = Driver::start(&chromedriver).await;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                // Without the background-networking flags Chromium dials out
                // at start, which a closed network answers slowly or never.
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--hide-scrollbars",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = tokio::time::timeout(
            Duration::from_secs(30),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&driver.url),
        )
        .await
        .expect("chromium did not start within 30s")
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} through chromedriver: {e}",
                chromium.display()
            )
        });
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Runs `script` in the page and returns what it returns.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("running {script:?} in the page: {e}"))
    }

    /// Ends the session (and Chromium with it), then chromedriver.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
