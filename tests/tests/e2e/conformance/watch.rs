//! WatchProgress (invariant 6) beyond the basic stream: replay then live,
//! resume from every point, slow and stuck readers, trimmed history.

use std::time::Duration;

use jobctl_proto::v1::{
    EventKind, HeartbeatRequest, JobEvent, JobState, LeasedJob, Progress, WatchProgressRequest,
    WatchProgressResponse,
};
use jobctl_tests::*;
use tonic::{Code, Streaming};

conformance! {
    watch_started_mid_job_replays_history_then_streams_live_events;
    watch_resumed_from_every_after_seq_delivers_exactly_the_later_events;
    short_and_long_events_resume_from_every_after_seq_with_their_contents;
    slow_reader_gets_progress_coalesced_but_every_state_change;
    stuck_reader_is_cut_off_with_the_seq_to_resume_from;
    resume_point_older_than_the_kept_history_is_out_of_range;
    watch_of_unknown_job_is_not_found;
}

const WAIT: Duration = Duration::from_secs(30);

async fn open(srv: &TestServer, id: &str, after_seq: u64) -> Streaming<WatchProgressResponse> {
    watch(&srv.job, id, after_seq).await
}

/// A watch from the start on a connection of its own with a small HTTP/2
/// window, as a slow browser behind a BFF would have: a reader that does not
/// read fills it with a few dozen events instead of tens of thousands.
async fn open_narrow(srv: &TestServer, id: &str) -> Streaming<WatchProgressResponse> {
    let channel = tonic::transport::Endpoint::from_shared(srv.endpoint.clone())
        .expect("endpoint")
        .initial_stream_window_size(Some(16 * 1024))
        .connect()
        .await
        .expect("connect");
    jobctl_proto::v1::job_service_client::JobServiceClient::new(channel)
        .watch_progress(WatchProgressRequest {
            job_id: id.to_owned(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner()
}

fn seqs(events: &[JobEvent]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

async fn report(srv: &TestServer, leased: &LeasedJob, percent: f64) {
    // Big enough that the reader's window holds few of them.
    report_with(
        srv,
        leased,
        percent,
        &format!("at {percent} {}", "-".repeat(400)),
    )
    .await;
}

async fn report_with(srv: &TestServer, leased: &LeasedJob, percent: f64, message: &str) {
    srv.worker()
        .heartbeat(HeartbeatRequest {
            progress: Some(Progress {
                percent,
                current: 0,
                total: 0,
                message: message.to_owned(),
            }),
            ..heartbeat_request(leased)
        })
        .await
        .expect("heartbeat");
}

/// Runs a job through a retry with progress on both attempts; returns its id
/// and its whole history (read by a watcher from the start).
async fn finished_job_with_history(srv: &TestServer, queue: &str) -> (String, Vec<JobEvent>) {
    let id = submit(
        &srv.job,
        jobctl_proto::v1::SubmitRequest {
            max_attempts: 2,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request(queue, "k", "x")
        },
    )
    .await;
    let first = lease_one(&srv.worker, queue).await;
    report(srv, &first, 25.0).await;
    report(srv, &first, 50.0).await;
    srv.worker()
        .fail(fail_request(&first, "flaky", true))
        .await
        .expect("fail");
    let second = lease_one(&srv.worker, queue).await;
    report(srv, &second, 75.0).await;
    complete(&srv.worker, &second, b"done").await;
    let history = read_to_end(open(srv, &id, 0).await).await;
    (id, history)
}

/// A watcher that joins a running job first gets what happened so far, then
/// what happens next, in one gap-free sequence ending in the terminal event.
async fn watch_started_mid_job_replays_history_then_streams_live_events(backend: Backend) {
    let srv = TestServer::start_on(&backend, &WATCH_EVERY_UPDATE).await;
    let id = submit(&srv.job, submit_request("mid", "k", "x")).await;
    let leased = lease_one(&srv.worker, "mid").await;
    for pct in [10.0, 20.0, 30.0] {
        report(&srv, &leased, pct).await;
    }
    let before = get_job(&srv.job, &id).await.last_seq;

    let mut stream = open(&srv, &id, 0).await;
    let mut replayed = Vec::new();
    while replayed.len() < usize::try_from(before).expect("seq") {
        let m = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("replayed events arrive")
            .expect("watch stream")
            .expect("the stream goes on while the job runs");
        replayed.push(m.event.expect("event"));
    }
    assert_eq!(seqs(&replayed), (1..=before).collect::<Vec<_>>());

    // Live: these happen after the watcher has caught up.
    for pct in [40.0, 50.0] {
        report(&srv, &leased, pct).await;
    }
    complete(&srv.worker, &leased, b"ok").await;
    let live = read_to_end(stream).await;
    let all: Vec<JobEvent> = replayed.into_iter().chain(live).collect();
    let last = get_job(&srv.job, &id).await.last_seq;
    assert_eq!(seqs(&all), (1..=last).collect::<Vec<_>>(), "{all:?}");
    let progress: Vec<f64> = all
        .iter()
        .filter(|e| e.kind() == EventKind::Progress)
        .filter_map(|e| e.progress.as_ref().map(|p| p.percent))
        .collect();
    assert_eq!(progress, [10.0, 20.0, 30.0, 40.0, 50.0]);
    let end = all.last().expect("events");
    assert_eq!(end.state(), JobState::Succeeded);
    assert_eq!(end.result, b"ok");
}

/// For every k from 0 to the last seq, `after_seq = k` delivers exactly the
/// events after k, once each, in order, and then ends.
async fn watch_resumed_from_every_after_seq_delivers_exactly_the_later_events(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let (id, history) = finished_job_with_history(&srv, "resume").await;
    let last = history.last().expect("history").seq;
    assert_eq!(seqs(&history), (1..=last).collect::<Vec<_>>());
    assert!(last >= 8, "a history worth resuming in: {history:?}");
    for k in 0..=last {
        let events = read_to_end(open(&srv, &id, k).await).await;
        assert_eq!(
            events,
            history[usize::try_from(k).expect("seq")..],
            "after_seq={k}"
        );
    }
    // Past the end: nothing is left to deliver, and the stream still ends.
    let beyond = read_to_end(open(&srv, &id, last + 5).await).await;
    assert!(beyond.is_empty(), "{beyond:?}");
}

/// Short events and long ones, interleaved (the Redis store keeps a job's
/// first short events in its record and the rest in a stream): every resume
/// point still gives exactly the later events, with their progress, errors
/// and results intact. A plain job's whole history is short.
async fn short_and_long_events_resume_from_every_after_seq_with_their_contents(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mixed = submit(
        &srv.job,
        jobctl_proto::v1::SubmitRequest {
            max_attempts: 2,
            retry: Some(backoff(Duration::ZERO, Duration::ZERO, 1.0)),
            ..submit_request("mixed", "k", "x")
        },
    )
    .await;
    let first = lease_one(&srv.worker, "mixed").await;
    report_with(&srv, &first, 10.0, "a").await;
    srv.worker()
        .fail(fail_request(&first, "flaky", true))
        .await
        .expect("fail");
    let second = lease_one(&srv.worker, "mixed").await;
    report_with(&srv, &second, 60.0, "b").await;
    report(&srv, &second, 70.0).await;
    report_with(&srv, &second, 80.0, "c").await;
    complete(&srv.worker, &second, b"done").await;

    let plain = submit(&srv.job, submit_request("plain", "k", "x")).await;
    let leased = lease_one(&srv.worker, "plain").await;
    complete(&srv.worker, &leased, b"ok").await;

    // seq kind state attempt, progress (percent/message length), error, result
    let describe = |e: &JobEvent| {
        format!(
            "{} {:?} {:?} a{} p={} e={} r={}",
            e.seq,
            e.kind(),
            e.state(),
            e.attempt,
            e.progress.as_ref().map_or("-".into(), |p| format!(
                "{}/{}",
                p.percent,
                p.message.len()
            )),
            e.error.as_ref().map_or("-", |e| e.message.as_str()),
            String::from_utf8_lossy(&e.result),
        )
    };
    for (id, want) in [
        (
            &mixed,
            vec![
                "1 StateChanged Queued a0 p=- e=- r=",
                "2 StateChanged Running a1 p=- e=- r=",
                "3 Progress Running a1 p=10/1 e=- r=",
                "4 StateChanged Queued a1 p=10/1 e=flaky r=",
                "5 StateChanged Running a2 p=10/1 e=- r=",
                "6 Progress Running a2 p=60/1 e=- r=",
                "7 Progress Running a2 p=70/406 e=- r=",
                "8 Progress Running a2 p=80/1 e=- r=",
                "9 StateChanged Succeeded a2 p=80/1 e=- r=done",
            ],
        ),
        (
            &plain,
            vec![
                "1 StateChanged Queued a0 p=- e=- r=",
                "2 StateChanged Running a1 p=- e=- r=",
                "3 StateChanged Succeeded a1 p=- e=- r=ok",
            ],
        ),
    ] {
        let history = read_to_end(open(&srv, id, 0).await).await;
        assert_eq!(
            history.iter().map(describe).collect::<Vec<_>>(),
            want,
            "{id}"
        );
        for k in 0..=history.len() {
            let events = read_to_end(open(&srv, id, k as u64).await).await;
            assert_eq!(events, history[k..], "{id} after_seq={k}");
        }
    }
}

/// A reader that does not read while hundreds of progress updates and several
/// state changes happen: when it reads, it still gets every state change (in
/// order, each once) and the newest progress, with increasing seqs.
async fn slow_reader_gets_progress_coalesced_but_every_state_change(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--watch-stuck-timeout", "60s"]).await;
    let id = submit(
        &srv.job,
        jobctl_proto::v1::SubmitRequest {
            max_attempts: 3,
            retry: Some(backoff(
                Duration::from_millis(10),
                Duration::from_millis(10),
                1.0,
            )),
            ..submit_request("slow", "k", "x")
        },
    )
    .await;
    let mut slow = open_narrow(&srv, &id).await;
    // Wait until the watcher is attached (it has the first event).
    let first = slow
        .message()
        .await
        .expect("watch stream")
        .expect("first event")
        .event
        .expect("event");
    assert_eq!(first.seq, 1);

    // Far more events than the stream and the transport buffer hold.
    let mut sent_states = 1; // the submit's
    for attempt in 0..3 {
        let leased = lease_one(&srv.worker, "slow").await;
        for i in 0..150 {
            report(&srv, &leased, f64::from(i) / 2.0).await;
        }
        if attempt < 2 {
            srv.worker()
                .fail(fail_request(&leased, "again", true))
                .await
                .expect("fail");
            sent_states += 3; // RUNNING, SCHEDULED, and QUEUED again
        } else {
            complete(&srv.worker, &leased, b"finally").await;
            sent_states += 2; // RUNNING, SUCCEEDED
        }
    }

    let rest = read_to_end(slow).await;
    let got: Vec<JobEvent> = std::iter::once(first).chain(rest).collect();
    for pair in got.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "seqs increase: {pair:?}");
    }
    let history = read_to_end(open(&srv, &id, 0).await).await;
    let states = |events: &[JobEvent]| -> Vec<(u64, i32)> {
        events
            .iter()
            .filter(|e| e.kind() == EventKind::StateChanged)
            .map(|e| (e.seq, e.state))
            .collect()
    };
    assert_eq!(
        states(&got),
        states(&history),
        "the slow reader got every state change"
    );
    assert!(
        states(&history).len() >= sent_states,
        "{} state changes in the history, at least {sent_states} expected",
        states(&history).len()
    );
    assert!(
        got.len() < history.len(),
        "progress was coalesced for the slow reader ({} of {} events)",
        got.len(),
        history.len()
    );
    // Everything it got is the history's own events (nothing invented).
    for event in &got {
        let original = &history[usize::try_from(event.seq - 1).expect("seq")];
        assert_eq!(event, original);
    }
    assert_eq!(
        got.last(),
        history.last(),
        "it ends with the terminal event"
    );
    // The last progress before each state change survives coalescing.
    let last_progress = history
        .iter()
        .filter(|e| e.kind() == EventKind::Progress)
        .map(|e| e.seq)
        .max()
        .expect("progress");
    assert!(
        got.iter().any(|e| e.seq == last_progress),
        "the newest progress was delivered"
    );
}

/// A reader that leaves its stream full past `--watch-stuck-timeout` while
/// events keep coming is cut off with RESOURCE_EXHAUSTED naming the seq to
/// resume after; resuming there completes the sequence without a gap.
async fn stuck_reader_is_cut_off_with_the_seq_to_resume_from(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--watch-stuck-timeout", "300ms"]).await;
    let id = submit(&srv.job, submit_request("stuck", "k", "x")).await;
    let mut stuck = open_narrow(&srv, &id).await;
    stuck.message().await.expect("watch").expect("first event");
    assert_eq!(srv.metric("jobctl_watchers").await, 1.0);
    let leased = lease_one(&srv.worker, "stuck").await;

    // Keep the job busy while the watcher reads nothing, until the server has
    // given up on it (its watcher gauge drops to zero).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (stop, worker, leased) = (stop.clone(), srv.worker(), leased.clone());
        tokio::spawn(async move {
            let mut worker = worker;
            for i in 0..100_000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                worker
                    .heartbeat(HeartbeatRequest {
                        progress: Some(Progress {
                            percent: f64::from(i % 100),
                            current: u64::from(i),
                            total: 0,
                            message: "x".repeat(500),
                        }),
                        ..heartbeat_request(&leased)
                    })
                    .await
                    .expect("heartbeat");
            }
        })
    };
    eventually(
        "the stuck watcher is cut off",
        Duration::from_secs(60),
        || async {
            let open = srv.metric("jobctl_watchers").await;
            (open == 0.0).then_some(()).ok_or(open)
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.await.expect("heartbeats");

    // What it still holds arrives first, then the status that says where to
    // resume.
    let mut delivered: Vec<u64> = vec![1];
    let status = loop {
        match tokio::time::timeout(WAIT, stuck.message())
            .await
            .expect("a cut-off stream ends")
        {
            Ok(Some(m)) => delivered.push(m.event.expect("event").seq),
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    for pair in delivered.windows(2) {
        assert!(pair[0] < pair[1], "{delivered:?}");
    }
    let resume_at: u64 = status
        .message()
        .rsplit("after_seq=")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("the status names after_seq: {}", status.message()));
    assert_eq!(
        resume_at,
        *delivered.last().expect("delivered"),
        "it names the last event delivered"
    );

    complete(&srv.worker, &leased, b"ok").await;
    let rest = read_to_end(open(&srv, &id, resume_at).await).await;
    assert_eq!(rest.first().map(|e| e.seq), Some(resume_at + 1));
    let last = get_job(&srv.job, &id).await.last_seq;
    assert_eq!(seqs(&rest), ((resume_at + 1)..=last).collect::<Vec<_>>());
    assert_eq!(rest.last().map(JobEvent::state), Some(JobState::Succeeded));
}

/// With the history capped, a resume point whose successors were trimmed is
/// refused with OUT_OF_RANGE (never a silent gap), while recent ones work.
/// (Redis trims streams approximately, whole nodes of 100 entries at a time,
/// so the job makes a few hundred events.)
async fn resume_point_older_than_the_kept_history_is_out_of_range(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--event-history-max", "5"]).await;
    let id = submit(&srv.job, submit_request("trim", "k", "x")).await;
    let leased = lease_one(&srv.worker, "trim").await;
    for i in 1..=300 {
        report(&srv, &leased, f64::from(i) / 3.0).await;
    }
    complete(&srv.worker, &leased, b"ok").await;
    let last = get_job(&srv.job, &id).await.last_seq;
    assert!(last > 300);

    for after_seq in [0, 1, 50] {
        let refused = srv
            .job()
            .watch_progress(WatchProgressRequest {
                job_id: id.clone(),
                after_seq,
            })
            .await;
        let status = match refused {
            Err(status) => status,
            Ok(stream) => match stream.into_inner().message().await {
                Err(status) => status,
                Ok(m) => panic!("after_seq={after_seq} was trimmed, yet got {m:?}"),
            },
        };
        assert_eq!(
            status.code(),
            Code::OutOfRange,
            "after_seq={after_seq}: {status:?}"
        );
    }
    let kept = read_to_end(open(&srv, &id, last - 5).await).await;
    assert_eq!(seqs(&kept), ((last - 4)..=last).collect::<Vec<_>>());
}

async fn watch_of_unknown_job_is_not_found(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(&srv.job, submit_request("known", "k", "x")).await;
    let (queue, _) = split_job_id(&id);
    let unknown = format!("{queue}:01ARZ3NDEKTSV4RRFFQ69G5FAV");
    let status = srv
        .job()
        .watch_progress(WatchProgressRequest {
            job_id: unknown,
            after_seq: 0,
        })
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}
