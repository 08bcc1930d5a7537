//! The page in a real browser: Debian's headless Chromium, driven through
//! chromedriver (WebDriver). Press Export, watch the bar reach 100% and the
//! download link appear, then fetch the link and check the CSV; and the same
//! with every event stream cut short, which the page survives by
//! reconnecting with `Last-Event-ID`.
//!
//! Needs `apt-get install -y chromium chromium-driver`; `CHROMIUM` and
//! `CHROMEDRIVER` may point at other binaries. Without them the test fails
//! and says so: it is never skipped.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use jobctl_export_example::Running;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const INSTALL: &str = "apt-get install -y chromium chromium-driver";

/// How long the page may take to finish the export.
const PAGE_DEADLINE: Duration = Duration::from_secs(15);
/// How often the test looks at the page.
const POLL: Duration = Duration::from_millis(50);

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
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // "ChromeDriver was started successfully on port 34003."
        let port = tokio::time::timeout(common::WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
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

/// What the page shows, read in one round trip.
#[derive(Debug)]
struct Seen {
    bar: f64,
    link_visible: bool,
    href: String,
    status: String,
}

async fn look(browser: &Client) -> Result<Seen, String> {
    let v = browser
        .execute(
            "const link = document.getElementById('download');
             return {
               bar: document.getElementById('bar').value,
               link_visible: !link.hidden && link.offsetParent !== null,
               href: link.href,
               status: document.getElementById('status').textContent,
             };",
            vec![],
        )
        .await
        .map_err(|e| format!("reading the page: {e}"))?;
    Ok(Seen {
        bar: v["bar"].as_f64().unwrap_or(-1.0),
        link_visible: v["link_visible"].as_bool().unwrap_or(false),
        href: v["href"].as_str().unwrap_or_default().to_owned(),
        status: v["status"].as_str().unwrap_or_default().to_owned(),
    })
}

/// Opens the page, presses Export and waits for the finished state; returns
/// the bar values the page went through and what it shows at the end.
/// With an empty `page`, the page is already open.
async fn press_export_and_wait(browser: &Client, page: &str) -> Result<(Vec<f64>, Seen), String> {
    if !page.is_empty() {
        browser
            .goto(page)
            .await
            .map_err(|e| format!("opening {page}: {e}"))?;
    }
    let before = look(browser).await?;
    if before.bar != 0.0 || before.link_visible {
        return Err(format!("the page does not start empty: {before:?}"));
    }
    // Record every value the bar takes (setting `value` sets its attribute).
    browser
        .execute(
            "const bar = document.getElementById('bar');
             window.barValues = [];
             new MutationObserver(() => window.barValues.push(bar.value))
               .observe(bar, { attributes: true, attributeFilter: ['value'] });",
            vec![],
        )
        .await
        .map_err(|e| format!("observing the bar: {e}"))?;
    browser
        .find(Locator::Id("export"))
        .await
        .map_err(|e| format!("finding the Export button: {e}"))?
        .click()
        .await
        .map_err(|e| format!("clicking Export: {e}"))?;

    let started = Instant::now();
    let seen = loop {
        let seen = look(browser).await?;
        if seen.bar == 100.0 && seen.link_visible {
            break seen;
        }
        if started.elapsed() > PAGE_DEADLINE {
            return Err(format!(
                "after {PAGE_DEADLINE:?} the page shows {seen:?}, not a full bar and a visible link"
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    let values = browser
        .execute("return window.barValues;", vec![])
        .await
        .map_err(|e| format!("reading the recorded bar values: {e}"))?;
    let values = values
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    Ok((values, seen))
}

/// Headless Chromium under chromedriver, in a fresh profile.
struct Browser {
    client: Client,
    _driver: Driver,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Browser {
        let chromium = find_binary(
            "CHROMIUM",
            &["/usr/bin/chromium", "/usr/bin/chromium-browser"],
        );
        let chromedriver = find_binary(
            "CHROMEDRIVER",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let profile = tempfile::tempdir().unwrap();
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
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = tokio::time::timeout(
            Duration::from_secs(15),
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&driver.url),
        )
        .await
        .expect("chromium did not start within 15s")
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

    /// Ends the session (and Chromium with it), then chromedriver.
    async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Fetches the page's download link and checks it is the CSV of `rows` rows.
async fn check_download(running: &Running, href: &str, rows: u64) {
    let base = format!("http://{}", running.http_addr);
    let path = href
        .strip_prefix(&base)
        .unwrap_or_else(|| panic!("the link {href} is not on {base}"));
    assert!(path.ends_with("/download"), "{path}");
    let csv = common::get(running.http_addr, path).await;
    assert_eq!(csv.status, 200, "{}", csv.text());
    common::check_csv(&csv.text(), rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pressing_export_fills_the_bar_and_offers_the_csv() {
    let out = tempfile::tempdir().unwrap();
    // The page asks for the default 1000 rows: 8 chunks of 125 rows, 50 ms
    // apiece, so the bar has steps to show.
    let running = common::start(out.path(), 125, Duration::from_millis(50)).await;

    let browser = Browser::launch().await;
    let outcome = press_export_and_wait(&browser.client, &running.url()).await;
    browser.close().await;
    let (values, seen) = outcome.unwrap_or_else(|e| panic!("{e}"));

    assert!(
        values.iter().any(|v| *v > 0.0 && *v < 100.0),
        "the bar moved through intermediate values: {values:?}"
    );
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "the bar never went back: {values:?}"
    );
    assert!(seen.status.starts_with("done"), "{seen:?}");
    check_download(&running, &seen.href, 1000).await;

    running.shutdown().await.unwrap();
}

/// Wraps `EventSource` so the test sees what the page's streams deliver:
/// every event's `lastEventId` and every (re)connection.
const RECORD_EVENT_SOURCE: &str = "
    const Original = window.EventSource;
    window.eventIds = [];
    window.connections = 0;
    class Recording extends Original {
      constructor(url, init) {
        super(url, init);
        this.addEventListener('open', () => window.connections++);
        for (const name of ['progress', 'state']) {
          this.addEventListener(name, (e) => window.eventIds.push(Number(e.lastEventId)));
        }
      }
    }
    window.EventSource = Recording;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_resumes_cut_streams_with_last_event_id_and_misses_nothing() {
    let out = tempfile::tempdir().unwrap();
    let mut options = common::options(out.path(), 125, Duration::from_millis(50));
    // Every response ends after 4 events, as behind a proxy with a short
    // timeout: the page only gets to 100% by resuming, three times over.
    options.cut_streams_after = Some(4);
    let running = jobctl_export_example::start(options).await.unwrap();

    let browser = Browser::launch().await;
    let outcome = async {
        browser
            .client
            .goto(&running.url())
            .await
            .map_err(|e| format!("opening the page: {e}"))?;
        browser
            .client
            .execute(RECORD_EVENT_SOURCE, vec![])
            .await
            .map_err(|e| format!("wrapping EventSource: {e}"))?;
        let (_, seen) = press_export_and_wait(&browser.client, "").await?;
        let recorded = browser
            .client
            .execute("return [window.eventIds, window.connections];", vec![])
            .await
            .map_err(|e| format!("reading what the streams delivered: {e}"))?;
        Ok::<_, String>((seen, recorded))
    }
    .await;
    browser.close().await;
    let (seen, recorded) = outcome.unwrap_or_else(|e| panic!("{e}"));

    let ids: Vec<u64> = recorded[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let n = ids.len() as u64;
    assert_eq!(
        ids,
        (1..=n).collect::<Vec<_>>(),
        "across the reconnections, every event arrived once, in order"
    );
    let connections = recorded[1].as_u64().unwrap();
    eprintln!("{n} events over {connections} connections");
    assert!(
        connections >= n.div_ceil(4),
        "{connections} connections for {n} events, 4 per connection"
    );
    assert!(seen.status.starts_with("done"), "{seen:?}");
    check_download(&running, &seen.href, 1000).await;

    running.shutdown().await.unwrap();
}
