//! The operations dashboard (`--dashboard`) in a real headless Chromium:
//! the page loads, lists queues and jobs, follows a running job's progress
//! live, and a cancel pressed on the page reaches the worker. With
//! authentication on it asks for an operator's key and refuses others; its
//! actions refuse what another site could send, from plain HTTP requests
//! and from a page of another origin in the same browser.
//!
//! Set `JOBCTL_SCREENSHOTS=<dir>` to save the pages as PNGs (the README's
//! screenshots in `docs/` are made so).

use std::time::Duration;

use crate::browser::Browser;
use jobctl_proto::v1::{HeartbeatRequest, JobState, Progress, SubmitRequest};
use jobctl_tests::*;
use serde_json::Value;

const PAGE_WAIT: Duration = Duration::from_secs(30);

/// Polls `script` (a JS expression) in the page until it is truthy.
async fn until(browser: &Browser, what: &str, script: &str) -> Value {
    let code = format!("return ({script}) || null;");
    eventually(what, PAGE_WAIT, || {
        let code = code.clone();
        async move {
            let v = browser.eval(&code).await;
            if v.is_null() || v == Value::Bool(false) {
                Err("not yet")
            } else {
                Ok(v)
            }
        }
    })
    .await
}

async fn screenshot(browser: &Browser, name: &str) {
    let Some(dir) = std::env::var_os("JOBCTL_SCREENSHOTS") else {
        return;
    };
    let png = browser.client.screenshot().await.expect("screenshot");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(std::path::Path::new(&dir).join(name), png).expect("write screenshot");
}

/// A worker in the test: leases `queue`'s next job and heartbeats its
/// progress (5% more each time) until a heartbeat says cancel, then ends
/// the attempt as the SDK does (Fail, which makes it CANCELLED). Returns
/// the job id at once and, through the handle, the percent it had reached
/// when the cancel arrived.
async fn slow_worker(srv: &TestServer, queue: &str) -> (String, tokio::task::JoinHandle<f64>) {
    let leased = lease_one(&srv.worker, queue).await;
    let id = leased.job_id.clone();
    let mut worker = srv.worker.clone();
    let task = tokio::spawn(async move {
        let mut percent = 0.0;
        loop {
            percent = f64::min(percent + 5.0, 95.0);
            let hb = worker
                .heartbeat(HeartbeatRequest {
                    progress: Some(Progress {
                        percent,
                        current: percent as u64,
                        total: 100,
                        message: format!("row {}", percent as u64),
                    }),
                    ..heartbeat_request(&leased)
                })
                .await
                .expect("heartbeat")
                .into_inner();
            if hb.cancel_requested {
                worker
                    .fail(fail_request(&leased, "cancelled by request", false))
                    .await
                    .expect("fail after the cancel");
                return percent;
            }
            // The handler's pace (a worker's work), not a wait for readiness.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    (id, task)
}

#[tokio::test]
async fn the_dashboard_lists_jobs_follows_progress_live_and_its_cancel_reaches_the_worker() {
    let redis = RedisServer::start().await;
    let srv = TestServer::start(&redis, &["--dashboard"]).await;
    for i in 0..3 {
        submit(
            &srv.job,
            SubmitRequest {
                labels: labels(&[("customer", &format!("c{i}"))]),
                ..submit_request("exports", "export", format!("{{\"month\":\"2026-0{i}\"}}"))
            },
        )
        .await;
    }
    submit(&srv.job, submit_request("emails", "send", "hello")).await;
    let browser = Browser::launch(1280, 860).await;
    let base = format!("http://{}/dashboard/", srv.http_addr);
    browser
        .client
        .goto(&base)
        .await
        .expect("open the dashboard");
    // The queues, with their counts.
    let queued = until(
        &browser,
        "the exports queue is listed",
        "(() => { const r = document.querySelector('tr[data-queue=\"exports\"]'); \
           return r && r.cells[2].textContent; })()",
    )
    .await;
    assert_eq!(queued, Value::String("3".into()));

    // A worker takes one; the job list shows it running among the others.
    let (id, worker) = slow_worker(&srv, "exports").await;
    browser
        .client
        .goto(&format!("{base}#/queue/exports"))
        .await
        .expect("open the queue");
    until(
        &browser,
        "three jobs listed, one running",
        "document.querySelectorAll('#jobs tr[data-job]').length === 3 && \
         document.querySelectorAll('#jobs tr[data-state=\"RUNNING\"]').length === 1",
    )
    .await;
    let running_row = browser
        .eval("return document.querySelector('#jobs tr[data-state=\"RUNNING\"]').dataset.job;")
        .await;
    assert_eq!(running_row, Value::String(id.clone()));
    screenshot(&browser, "dashboard-jobs.png").await;
    // Filtered by state through the form.
    browser
        .eval(
            "document.getElementById('f-state').value = 'QUEUED'; \
             document.getElementById('apply').click(); return true;",
        )
        .await;
    until(
        &browser,
        "only the queued jobs listed",
        "location.hash.includes('state=QUEUED') && \
         document.querySelectorAll('#jobs tr[data-job]').length === 2 && \
         !document.querySelector('#jobs tr[data-state=\"RUNNING\"]')",
    )
    .await;

    // The job's page follows its progress live.
    browser
        .client
        .goto(&format!("{base}#/job/{id}"))
        .await
        .expect("open the job");
    let first = until(
        &browser,
        "the page shows progress",
        "(() => { const v = document.getElementById('job-progress').value; return v > 0 && v; })()",
    )
    .await
    .as_f64()
    .expect("a number");
    let later = until(
        &browser,
        "the bar moves while the page is open",
        &format!(
            "(() => {{ const v = document.getElementById('job-progress').value; \
               return v >= {first} + 10 && v; }})()"
        ),
    )
    .await
    .as_f64()
    .expect("a number");
    assert!(later > first);
    until(
        &browser,
        "the live event history lists the progress events",
        "document.querySelectorAll('#events tr').length >= 3",
    )
    .await;
    let payload = browser
        .eval("return document.getElementById('job-bodies').textContent;")
        .await;
    assert!(
        payload.as_str().unwrap_or_default().contains("\"month\""),
        "{payload}"
    );
    screenshot(&browser, "dashboard-job.png").await;

    // Cancel on the page: the worker's next heartbeat hears it and the
    // page shows the job CANCELLED.
    browser
        .client
        .find(fantoccini::Locator::Id("cancel"))
        .await
        .expect("the cancel button")
        .click()
        .await
        .expect("press cancel");
    let reached = tokio::time::timeout(PAGE_WAIT, worker)
        .await
        .expect("the worker hears the cancel")
        .expect("worker task");
    assert!(reached > 0.0);
    until(
        &browser,
        "the page shows the job cancelled",
        "document.getElementById('job-state').dataset.state === 'CANCELLED'",
    )
    .await;
    let job = get_job(&srv.job, &id).await;
    assert_eq!(job.state(), JobState::Cancelled);
    assert!(job.cancel_reason.contains("dashboard"), "{job:?}");

    // Pause and resume from the queues page.
    browser.client.goto(&base).await.expect("open the queues");
    browser.client.refresh().await.expect("reload");
    until(
        &browser,
        "the pause button",
        "document.querySelector('tr[data-queue=\"exports\"] button.pause')",
    )
    .await;
    browser
        .eval("document.querySelector('tr[data-queue=\"exports\"] button.pause').click(); return true;")
        .await;
    until(
        &browser,
        "the queue shows paused",
        "(document.querySelector('tr[data-queue=\"exports\"] .queue-status') || {}).textContent === 'paused'",
    )
    .await;
    assert!(
        lease(&srv.worker, "exports", 5).await.is_empty(),
        "paused from the page"
    );
    until(
        &browser,
        "the rate chart is drawn",
        "document.querySelectorAll('#chart polyline').length === 3",
    )
    .await;
    if std::env::var_os("JOBCTL_SCREENSHOTS").is_some() {
        // Some traffic on another queue for the screenshot's rate chart.
        let (job, worker) = (srv.job.clone(), srv.worker.clone());
        let traffic = tokio::spawn(async move {
            for i in 0..2000u32 {
                submit(&job, submit_request("emails", "send", "x")).await;
                if i % 3 != 0 {
                    for leased in lease(&worker, "emails", 2).await {
                        complete(&worker, &leased, b"").await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20 + u64::from(i % 7) * 10)).await;
            }
        });
        until(
            &browser,
            "the chart has a few samples",
            "document.querySelector('#chart polyline').getAttribute('points').split(' ').length >= 10",
        )
        .await;
        traffic.abort();
        screenshot(&browser, "dashboard-queues.png").await;
    }
    browser
        .eval("document.querySelector('tr[data-queue=\"exports\"] button.resume').click(); return true;")
        .await;
    until(
        &browser,
        "the queue shows active",
        "(document.querySelector('tr[data-queue=\"exports\"] .queue-status') || {}).textContent === 'active'",
    )
    .await;
    assert_eq!(lease(&srv.worker, "exports", 5).await.len(), 2, "resumed");
    browser.close().await;
}

const OPERATOR_KEY: &str = "dash-operator-5b1f0c9e7a3d2468";
const CLIENT_KEY: &str = "dash-client-9a7c5e3b1d2f4068";

/// A plain HTTP/1.1 request to the dashboard; the status and body.
async fn http(addr: std::net::SocketAddr, request: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut answer = String::new();
    socket
        .read_to_string(&mut answer)
        .await
        .expect("read answer");
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

fn post(addr: std::net::SocketAddr, path: &str, headers: &[&str], body: &str) -> String {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    r
}

#[tokio::test]
async fn with_auth_the_dashboard_needs_an_operator_and_refuses_cross_site_actions() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    std::fs::write(
        &keys,
        format!("{OPERATOR_KEY} default operator ops\n{CLIENT_KEY} default client app\n"),
    )
    .expect("write keys");
    let srv = TestServer::start(
        &redis,
        &[
            "--dashboard",
            "--api-keys-file",
            keys.to_str().expect("path"),
        ],
    )
    .await;
    let client = jobctl_client::Client::connect_with(
        srv.endpoint.clone(),
        jobctl_client::ConnectOptions::new().bearer_token(CLIENT_KEY),
    )
    .await
    .expect("connect");
    let job_id = client
        .submit(jobctl_client::SubmitOptions::new("guarded", "k").payload(b"x".to_vec()))
        .await
        .expect("submit")
        .job_id;
    let addr = srv.http_addr;

    // Reading needs an operator.
    let get = |token: Option<&str>| {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "GET /dashboard/api/queues HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n"
        )
    };
    assert_eq!(http(addr, get(None)).await.0, 401);
    assert_eq!(http(addr, get(Some("wrong-key-0123456789ab"))).await.0, 401);
    assert_eq!(http(addr, get(Some(CLIENT_KEY))).await.0, 403);
    let (status, body) = http(addr, get(Some(OPERATOR_KEY))).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"guarded\""), "{body}");

    // Actions: only a same-site JSON request with the dashboard's header.
    let cancel = format!("{{\"job_id\":\"{job_id}\"}}");
    let bearer = format!("Authorization: Bearer {OPERATOR_KEY}");
    let refused: Vec<(&str, Vec<String>)> = vec![
        (
            "a cross-site form",
            vec![
                "Content-Type: application/x-www-form-urlencoded".into(),
                "Origin: http://evil.example".into(),
                bearer.clone(),
            ],
        ),
        (
            "text/plain",
            vec![
                "Content-Type: text/plain".into(),
                "X-Jobctl-Dashboard: 1".into(),
                bearer.clone(),
            ],
        ),
        (
            "no dashboard header",
            vec!["Content-Type: application/json".into(), bearer.clone()],
        ),
        (
            "another origin",
            vec![
                "Content-Type: application/json".into(),
                "X-Jobctl-Dashboard: 1".into(),
                "Origin: http://evil.example".into(),
                bearer.clone(),
            ],
        ),
        (
            "cross-site fetch metadata",
            vec![
                "Content-Type: application/json".into(),
                "X-Jobctl-Dashboard: 1".into(),
                "Sec-Fetch-Site: cross-site".into(),
                bearer.clone(),
            ],
        ),
        (
            "no credentials",
            vec![
                "Content-Type: application/json".into(),
                "X-Jobctl-Dashboard: 1".into(),
            ],
        ),
    ];
    for (what, headers) in refused {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let (status, body) =
            http(addr, post(addr, "/dashboard/api/cancel", &headers, &cancel)).await;
        assert!(matches!(status, 401 | 403), "{what}: {body}");
        assert_eq!(
            get_job_as(&client, &job_id).await,
            JobState::Queued,
            "{what} changed nothing"
        );
    }
    // Nothing answers a CORS preflight, so no other origin may send these.
    let (_, preflight) = http(
        addr,
        format!(
            "OPTIONS /dashboard/api/cancel HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Origin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: content-type,x-jobctl-dashboard\r\n\r\n"
        ),
    )
    .await;
    assert!(
        !preflight
            .to_ascii_lowercase()
            .contains("access-control-allow"),
        "{preflight}"
    );

    // In the browser: the page asks for a key; a client's key is refused,
    // an operator's shows the queue.
    let browser = Browser::launch(1280, 800).await;
    let base = format!("http://{addr}/dashboard/");
    browser.client.goto(&base).await.expect("open");
    until(
        &browser,
        "the sign-in form",
        "!document.getElementById('login').hidden",
    )
    .await;
    screenshot(&browser, "dashboard-login.png").await;
    let sign_in = |key: &str| {
        format!(
            "document.getElementById('token').value = '{key}'; \
             document.getElementById('sign-in').click(); return true;"
        )
    };
    browser.eval(&sign_in(CLIENT_KEY)).await;
    until(
        &browser,
        "a client's key is refused",
        "document.getElementById('status').textContent.includes('operator')",
    )
    .await;
    browser.eval(&sign_in(OPERATOR_KEY)).await;
    until(
        &browser,
        "the operator sees the queue",
        "document.querySelector('tr[data-queue=\"guarded\"]')",
    )
    .await;

    // A page of another origin in the same browser, which the operator is
    // signed in to: its form post and its fetch both fail to cancel.
    let evil = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let evil_addr = evil.local_addr().expect("addr");
    let page = format!(
        "<!doctype html><form id=f method=post enctype=text/plain \
         action='http://{addr}/dashboard/api/cancel'>\
         <input name='{{\"job_id\":\"{job_id}\",\"x\":\"' value='\"}}'></form>\
         <iframe name=sink></iframe>"
    );
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = evil.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    browser
        .client
        .goto(&format!("http://{evil_addr}/"))
        .await
        .expect("open the other site");
    let fetched = browser
        .client
        .execute_async(
            &format!(
                "const done = arguments[arguments.length - 1];
                 fetch('http://{addr}/dashboard/api/cancel', {{
                   method: 'POST',
                   headers: {{ 'Content-Type': 'application/json', 'X-Jobctl-Dashboard': '1' }},
                   body: JSON.stringify({{ job_id: '{job_id}' }}),
                 }}).then(r => done('answered ' + r.status), e => done('blocked: ' + e));"
            ),
            vec![],
        )
        .await
        .expect("run the other site's fetch");
    assert!(
        fetched.as_str().unwrap_or_default().starts_with("blocked"),
        "{fetched}"
    );
    browser
        .eval("document.getElementById('f').target = 'sink'; document.getElementById('f').submit(); return true;")
        .await;
    // The form's answer (a refusal) lands in the frame.
    until(
        &browser,
        "the cross-site form post was answered",
        "(() => { try { return window.frames.sink.location.href !== 'about:blank'; } \
           catch (e) { return true; } })()",
    )
    .await;
    assert_eq!(
        get_job_as(&client, &job_id).await,
        JobState::Queued,
        "the other site cancelled nothing"
    );
    browser.close().await;

    // The operator's own request, with everything the page sends, works.
    let (status, body) = http(
        addr,
        post(
            addr,
            "/dashboard/api/cancel",
            &[
                "Content-Type: application/json",
                "X-Jobctl-Dashboard: 1",
                &format!("Origin: http://{addr}"),
                &bearer,
            ],
            &cancel,
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(get_job_as(&client, &job_id).await, JobState::Cancelled);
}

async fn get_job_as(client: &jobctl_client::Client, id: &str) -> JobState {
    client.status(id).await.expect("status").state()
}

#[tokio::test]
async fn the_dashboard_is_off_unless_enabled() {
    let srv = TestServer::start_on(&Backend::Embedded, &[]).await;
    let (status, _) = http(
        srv.http_addr,
        format!(
            "GET /dashboard/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            srv.http_addr
        ),
    )
    .await;
    assert_eq!(status, 404);
}
