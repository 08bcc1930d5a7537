//! The HTTP API of the export service, over real sockets: submit, the event
//! stream and its resumption, the download, cancel, and the error answers.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{SseReader, check_csv, get, post, request, submit};

fn str_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_streams_every_event_once_and_resumes_after_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), 500, Duration::from_millis(60)).await;
    let addr = running.http_addr;

    let rows = 3000;
    let submitted = submit(addr, rows).await;
    let job_id = str_of(&submitted, "job_id");
    assert!(job_id.starts_with("exports:"), "{job_id}");
    let urls = &submitted["urls"];
    let events_url = str_of(urls, "events_url");

    // Read the first events live, then drop the connection mid-stream.
    let k = 4;
    let mut first = SseReader::open(addr, events_url, None).await;
    let mut seen = Vec::new();
    for _ in 0..k {
        seen.push(first.next().await.expect("the stream ended early"));
    }
    assert_eq!(
        first.retry.as_deref(),
        Some("1000"),
        "a retry hint comes first"
    );
    drop(first);

    // The browser reconnects with the last id it saw: exactly what follows.
    let resumed = SseReader::open(addr, events_url, Some(k))
        .await
        .rest()
        .await;

    // Everything, replayed from the start once the job is over.
    let all = SseReader::open(addr, events_url, None).await.rest().await;
    let seqs: Vec<u64> = all.iter().map(|e| e.seq()).collect();
    let n = seqs.len() as u64;
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "ids are 1, 2, 3, ... with no gap"
    );
    assert_eq!(
        &all[..k as usize],
        &seen[..],
        "the live events are the history"
    );
    assert_eq!(
        resumed,
        all[k as usize..].to_vec(),
        "the resumed stream holds exactly the events after {k}"
    );

    // What the events say: queued, running, progress to 100%, succeeded.
    let data: Vec<serde_json::Value> = all.iter().map(|e| e.json()).collect();
    assert_eq!(data[0]["state"], "QUEUED");
    let last = data.last().unwrap();
    assert_eq!(last["state"], "SUCCEEDED");
    assert_eq!(all.last().unwrap().event.as_deref(), Some("state"));
    assert_eq!(last["download_url"], urls["download_url"]);
    let percents: Vec<f64> = all
        .iter()
        .filter(|e| e.event.as_deref() == Some("progress"))
        .map(|e| e.json()["progress"]["percent"].as_f64().unwrap())
        .collect();
    assert!(
        percents.len() >= 6,
        "a progress event per chunk: {percents:?}"
    );
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress only grows: {percents:?}"
    );
    assert_eq!(percents.last(), Some(&100.0));

    // `?after=` for clients without the header; the header wins over it.
    let after = format!("{events_url}?after={k}");
    let by_query = SseReader::open(addr, &after, None).await.rest().await;
    assert_eq!(by_query, resumed);
    let both = format!("{events_url}?after=1");
    let by_header = SseReader::open(addr, &both, Some(k)).await.rest().await;
    assert_eq!(by_header, resumed);

    // Caught up with a finished job: 204, so an EventSource stops.
    let done = request(
        addr,
        "GET",
        events_url,
        &[("last-event-id", &n.to_string())],
        "",
    )
    .await;
    assert_eq!(done.status, 204);

    // The file.
    let csv = get(addr, str_of(urls, "download_url")).await;
    assert_eq!(csv.status, 200, "{}", csv.text());
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    let disposition = csv.header("content-disposition").unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"exports-"),
        "{disposition}"
    );
    check_csv(&csv.text(), rows);
    // Only the finished file is left in the output directory.
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, vec![last["file"].as_str().unwrap().to_owned()]);

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_answers_202_with_a_location_and_job_ids_route_encoded_or_raw() {
    let dir = tempfile::tempdir().unwrap();
    let running = common::start(dir.path(), 500, Duration::ZERO).await;
    let addr = running.http_addr;

    // An empty body takes the default row count.
    let reply = post(addr, "/exports", "").await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let body = reply.json();
    let job_id = str_of(&body, "job_id");
    assert_eq!(body["rows"], 1000);
    let location = reply.header("location").unwrap();
    assert_eq!(location, format!("/exports/{}", job_id.replace(':', "%3A")));
    assert_eq!(location, body["urls"]["status_url"]);

    // The id percent-encoded (as handed out) and raw, with its ':'.
    for path in [location.to_owned(), format!("/exports/{job_id}")] {
        let status = get(addr, &path).await;
        assert_eq!(status.status, 200, "GET {path}: {}", status.text());
        assert_eq!(status.json()["job_id"], job_id);
    }
    let raw_events = format!("/exports/{job_id}/events");
    let events = SseReader::open(addr, &raw_events, None).await.rest().await;
    assert_eq!(events.last().unwrap().json()["state"], "SUCCEEDED");
    let csv = get(addr, &format!("/exports/{job_id}/download")).await;
    assert_eq!(csv.status, 200);
    check_csv(&csv.text(), 1000);

    // The same Idempotency-Key submits once.
    let key = [
        ("idempotency-key", "click-42"),
        ("content-type", "application/json"),
    ];
    let a = request(addr, "POST", "/exports", &key, r#"{"rows": 10}"#).await;
    let b = request(addr, "POST", "/exports", &key, r#"{"rows": 10}"#).await;
    assert_eq!((a.status, b.status), (202, 202));
    assert_eq!(a.json()["job_id"], b.json()["job_id"]);
    assert_eq!(b.json()["deduplicated"], true);

    // Bad bodies are refused, saying why.
    for bad in [
        r#"{"rows": 100000000000}"#,
        r#"{"rows": -1}"#,
        "rows=5",
        r#"{"colums": 3}"#,
    ] {
        let reply = post(addr, "/exports", bad).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.text());
        assert!(reply.json()["error"].is_string(), "{bad}");
    }

    // The page.
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().contains("<progress id=\"bar\""));

    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_is_409_until_succeeded_404_for_unknown_jobs_and_cancel_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    // Slow enough to be caught running: 100 chunks of 10 rows, 50 ms each.
    let running = common::start(dir.path(), 10, Duration::from_millis(50)).await;
    let addr = running.http_addr;

    for unknown in ["exports:01ARZ3NDEKTSV4RRFFQ69G5FAV", "no-such-job"] {
        for (method, path) in [
            ("GET", format!("/exports/{unknown}")),
            ("GET", format!("/exports/{unknown}/events")),
            ("GET", format!("/exports/{unknown}/download")),
            ("POST", format!("/exports/{unknown}/cancel")),
        ] {
            let reply = request(addr, method, &path, &[], "").await;
            assert_eq!(reply.status, 404, "{method} {path}: {}", reply.text());
        }
    }

    let submitted = submit(addr, 1000).await;
    let urls = &submitted["urls"];
    let mut stream = SseReader::open(addr, str_of(urls, "events_url"), None).await;
    // Wait until it is running and has written something.
    loop {
        let event = stream.next().await.expect("the stream ended early");
        if event.json()["progress"]["current"].as_u64() > Some(0) {
            break;
        }
    }
    let early = get(addr, str_of(urls, "download_url")).await;
    assert_eq!(early.status, 409, "{}", early.text());
    assert!(
        early.json()["error"].as_str().unwrap().contains("RUNNING"),
        "{}",
        early.text()
    );

    let cancel = post(addr, str_of(urls, "cancel_url"), "").await;
    assert_eq!(cancel.status, 202, "{}", cancel.text());
    let rest = stream.rest().await;
    let last = rest.last().expect("events after the cancel").json();
    assert_eq!(last["state"], "CANCELLED", "{last}");

    let after = get(addr, str_of(urls, "download_url")).await;
    assert_eq!(after.status, 409, "{}", after.text());
    // A cancelled export leaves no partial file behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    running.shutdown().await.unwrap();
}
