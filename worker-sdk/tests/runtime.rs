//! The worker runtime against an in-process fake WorkerService.

#![allow(clippy::unwrap_used)]

mod fake;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jobctl_worker::{
    CancelReason, Error, HandlerError, JobContext, Progress, Worker, WorkerBuilder,
};
use tokio::time::Instant;
use tonic::Code;

use fake::{deadline_in, job, serve};

fn builder(endpoint: &str) -> WorkerBuilder {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("debug")),
        )
        .with_test_writer()
        .try_init();
    Worker::builder(endpoint)
        .worker_id("w1")
        .queues(["q"])
        .lease_wait(Duration::from_millis(500))
        .progress_interval(Duration::from_millis(100))
        .shutdown_grace(Duration::from_secs(5))
}

#[tokio::test]
async fn completes_a_job_and_delivers_its_last_progress() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .handler("count", |ctx: JobContext| async move {
            assert_eq!(ctx.labels().get("team").map(String::as_str), Some("a"));
            for i in 1..=10u64 {
                ctx.progress(Progress {
                    percent: i as f64 * 10.0,
                    current: i,
                    total: 10,
                    message: format!("step {i}"),
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(b"counted".to_vec())
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server.fake.push(job("j1", "count", b""));
    server
        .fake
        .wait_for("complete", |s| s.completed("j1").is_some())
        .await;
    {
        let s = server.fake.state();
        assert_eq!(s.completed("j1").unwrap().result, b"counted");
        let beats = s.heartbeats_of("j1");
        let with_progress: Vec<_> = beats.iter().filter_map(|h| h.progress.as_ref()).collect();
        // Throttled: 10 updates over ~50ms give far fewer heartbeats...
        assert!(with_progress.len() <= 4, "{with_progress:?}");
        // ...and the last one is delivered before Complete.
        assert_eq!(with_progress.last().unwrap().current, 10);
        assert_eq!(with_progress.last().unwrap().message, "step 10");
        let last_beat = s.log.iter().rposition(|c| c == "heartbeat:j1").unwrap();
        let complete = s.log.iter().position(|c| c == "complete:j1").unwrap();
        assert!(last_beat < complete);
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn handler_errors_become_fail_calls() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .handler("retry", |_ctx: JobContext| async move {
            Err(HandlerError::retry_after("rate limited", Duration::from_secs(7)).with_code("429"))
        })
        .handler("fatal", |_ctx: JobContext| async move {
            Err(HandlerError::fatal("bad payload").with_details("line 1"))
        })
        .handler("io", |_ctx: JobContext| async move {
            Err(std::io::Error::other("disk on fire"))?;
            Ok(Vec::new())
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server.fake.push(job("r", "retry", b""));
    server.fake.push(job("f", "fatal", b""));
    server.fake.push(job("i", "io", b""));
    server.fake.push(job("u", "no-such-kind", b""));
    server
        .fake
        .wait_for("fails", |s| {
            ["r", "f", "i", "u"].iter().all(|j| s.failed(j).is_some())
        })
        .await;
    {
        let s = server.fake.state();
        let r = s.failed("r").unwrap();
        assert!(r.retryable);
        assert_eq!(
            r.retry_after,
            Some(prost_types::Duration {
                seconds: 7,
                nanos: 0
            })
        );
        let e = r.error.as_ref().unwrap();
        assert_eq!(
            (e.message.as_str(), e.code.as_str()),
            ("rate limited", "429")
        );

        let f = s.failed("f").unwrap();
        assert!(!f.retryable);
        assert_eq!(f.error.as_ref().unwrap().details, "line 1");

        let i = s.failed("i").unwrap();
        assert!(i.retryable);
        assert_eq!(i.error.as_ref().unwrap().message, "disk on fire");

        let u = s.failed("u").unwrap();
        assert!(!u.retryable);
        assert_eq!(u.error.as_ref().unwrap().code, "unknown_kind");
        assert!(s.completes.is_empty());
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_panicking_handler_fails_its_job_and_the_worker_goes_on() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .concurrency(1)
        .handler("panic", |_ctx: JobContext| async move {
            if true {
                panic!("kaboom");
            }
            Ok(Vec::new())
        })
        .handler("ok", |_ctx: JobContext| async move { Ok(b"fine".to_vec()) })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server.fake.push(job("p", "panic", b""));
    server.fake.push(job("o", "ok", b""));
    server
        .fake
        .wait_for("both jobs", |s| {
            s.failed("p").is_some() && s.completed("o").is_some()
        })
        .await;
    {
        let s = server.fake.state();
        let p = s.failed("p").unwrap();
        assert!(p.retryable);
        let e = p.error.as_ref().unwrap();
        assert_eq!(e.message, "handler panicked: kaboom");
        assert_eq!(e.code, "panic");
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_cancel_request_fires_the_token_and_ends_the_job_cancelled() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .handler("wait", |ctx: JobContext| async move {
            ctx.cancelled().await;
            assert!(matches!(
                ctx.cancel_reason(),
                Some(CancelReason::Requested { .. })
            ));
            Err(HandlerError::cancelled())
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    let mut j = job("c", "wait", b"");
    j.lease_ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    });
    server.fake.push(j);
    server
        .fake
        .wait_for("a heartbeat", |s| !s.heartbeats_of("c").is_empty())
        .await;
    server.fake.update(|s| s.cancel.insert("c".into()));
    server
        .fake
        .wait_for("fail", |s| s.failed("c").is_some())
        .await;
    {
        let s = server.fake.state();
        let f = s.failed("c").unwrap();
        assert!(!f.retryable);
        let e = f.error.as_ref().unwrap();
        assert_eq!(e.code, "cancelled");
        assert_eq!(e.message, "cancelled: test");
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_handler_ignoring_cancellation_is_aborted_after_the_grace() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .shutdown_grace(Duration::from_millis(200))
        .handler("stubborn", |_ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Vec::new())
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    let mut j = job("s", "stubborn", b"");
    j.lease_ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 150_000_000,
    });
    server.fake.update(|s| s.cancel.insert("s".into()));
    server.fake.push(j);
    server
        .fake
        .wait_for("fail", |s| s.failed("s").is_some())
        .await;
    assert_eq!(
        server
            .fake
            .state()
            .failed("s")
            .unwrap()
            .error
            .as_ref()
            .unwrap()
            .code,
        "cancelled"
    );
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_lost_lease_cancels_the_handler_and_nothing_more_is_sent() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .handler("wait", |ctx: JobContext| async move {
            ctx.cancelled().await;
            assert_eq!(ctx.cancel_reason(), Some(CancelReason::LeaseLost));
            assert!(matches!(
                ctx.checkpoint_now(b"x".to_vec()).await,
                Err(Error::LeaseLost { .. })
            ));
            Ok(b"too late".to_vec())
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    let mut j = job("l", "wait", b"");
    j.lease_ttl = Some(prost_types::Duration {
        seconds: 0,
        nanos: 300_000_000,
    });
    server.fake.update(|s| s.lost.insert("l".into()));
    server.fake.push(j);
    server
        .fake
        .wait_for("the refused heartbeat", |s| {
            s.log.iter().any(|c| c == "heartbeat:l")
        })
        .await;
    // The worker frees the slot: shutting down completes promptly.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let s = server.fake.state();
    assert!(!s.ended("l"), "{:?}", s.log);
}

#[tokio::test]
async fn checkpoints_are_sent_at_once_and_handed_over() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .handler("cp", |ctx: JobContext| async move {
            let previous = ctx.checkpoint().unwrap_or_default().to_vec();
            ctx.set_progress(50.0, "half");
            ctx.checkpoint_now(b"half".to_vec()).await?;
            Ok(previous)
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    let mut j = job("k", "cp", b"");
    j.checkpoint = Some(b"earlier".to_vec());
    server.fake.push(j);
    server
        .fake
        .wait_for("complete", |s| s.completed("k").is_some())
        .await;
    {
        let s = server.fake.state();
        assert_eq!(s.completed("k").unwrap().result, b"earlier");
        let beats = s.heartbeats_of("k");
        let with_cp: Vec<_> = beats.iter().filter(|h| h.checkpoint.is_some()).collect();
        assert_eq!(with_cp.len(), 1);
        assert_eq!(with_cp[0].checkpoint.as_deref(), Some(&b"half"[..]));
        assert_eq!(with_cp[0].progress.as_ref().unwrap().message, "half");
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_deadline_fires_the_token_and_the_attempt_is_retried() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .handler("slow", |ctx: JobContext| async move {
            assert!(ctx.deadline().is_some());
            tokio::select! {
                () = ctx.cancelled() => Err(HandlerError::cancelled()),
                () = tokio::time::sleep(Duration::from_secs(60)) => Ok(Vec::new()),
            }
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    let mut j = job("d", "slow", b"");
    j.deadline = deadline_in(Duration::from_millis(100));
    server.fake.push(j);
    server
        .fake
        .wait_for("fail", |s| s.failed("d").is_some())
        .await;
    {
        let s = server.fake.state();
        let f = s.failed("d").unwrap();
        assert!(f.retryable);
        assert_eq!(f.error.as_ref().unwrap().code, "timeout");
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn concurrency_is_never_exceeded() {
    let server = serve().await;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let worker = builder(&server.endpoint())
        .concurrency(3)
        .handler("work", move |_ctx: JobContext| {
            let (running, most) = (r.clone(), m.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Vec::new())
            }
        })
        .build()
        .unwrap();
    for i in 0..12 {
        server.fake.push(job(&format!("j{i}"), "work", b""));
    }
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server
        .fake
        .wait_for("all complete", |s| s.completes.len() == 12)
        .await;
    assert!(most.load(Ordering::SeqCst) <= 3);
    assert!(
        server
            .fake
            .state()
            .leases
            .iter()
            .all(|l| l.max_jobs >= 1 && l.max_jobs <= 3)
    );
    assert_eq!(server.fake.state().leases[0].worker_id, "w1");
    assert_eq!(server.fake.state().leases[0].queues, ["q"]);
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn extra_jobs_beyond_what_was_asked_are_handed_back() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .concurrency(1)
        .handler("work", |_ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Vec::new())
        })
        .build()
        .unwrap();
    server.fake.update(|s| {
        s.extra_jobs = 1;
        s.ready.push_back(job("a", "work", b""));
        s.ready.push_back(job("b", "work", b""));
    });
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server
        .fake
        .wait_for("both ended", |s| s.ended("a") && s.ended("b"))
        .await;
    {
        let s = server.fake.state();
        assert_eq!(s.completes.len() + s.releases.len(), 2);
        assert_eq!(s.releases.len(), 1);
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn complete_is_retried_through_unavailable() {
    let server = serve().await;
    server.fake.update(|s| s.unavailable_completes = 3);
    let worker = builder(&server.endpoint())
        .handler("ok", |_ctx: JobContext| async move { Ok(b"x".to_vec()) })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server.fake.push(job("u", "ok", b""));
    server
        .fake
        .wait_for("complete", |s| s.completed("u").is_some())
        .await;
    assert_eq!(
        server
            .fake
            .state()
            .log
            .iter()
            .filter(|c| *c == "complete:u")
            .count(),
        4
    );
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_stops_leasing_and_lets_running_jobs_finish() {
    let server = serve().await;
    let worker = builder(&server.endpoint())
        .lease_wait(Duration::from_secs(30))
        .handler("work", |_ctx: JobContext| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok(b"done".to_vec())
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server.fake.push(job("s", "work", b""));
    server
        .fake
        .wait_for("the next long poll", |s| s.leases.len() >= 2)
        .await;
    let asked = Instant::now();
    stop.cancel();
    run.await.unwrap().unwrap();
    // The in-flight 30s long poll was abandoned, the job was not.
    assert!(asked.elapsed() < Duration::from_secs(5));
    let s = server.fake.state();
    assert_eq!(s.completed("s").unwrap().result, b"done");
    assert!(s.releases.is_empty());
}

#[tokio::test]
async fn jobs_still_running_after_the_grace_are_cancelled_and_released() {
    let server = serve().await;
    let saw_cancel = Arc::new(AtomicUsize::new(0));
    let seen = saw_cancel.clone();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let worker = builder(&server.endpoint())
        .shutdown_grace(Duration::from_millis(200))
        .handler("forever", move |ctx: JobContext| {
            let seen = seen.clone();
            let _ = started_tx.send(());
            async move {
                let token = ctx.cancellation_token();
                tokio::spawn(async move {
                    token.cancelled().await;
                    seen.fetch_add(1, Ordering::SeqCst);
                });
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(Vec::new())
            }
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server.fake.push(job("a", "forever", b""));
    server.fake.push(job("b", "forever", b""));
    for _ in 0..2 {
        started.recv().await.unwrap();
    }
    let asked = Instant::now();
    stop.cancel();
    run.await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(3));
    {
        let s = server.fake.state();
        assert!(
            s.released("a").is_some() && s.released("b").is_some(),
            "{:?}",
            s.log
        );
        assert!(s.completes.is_empty() && s.fails.is_empty());
    }
    // Both handlers saw their tokens fire.
    tokio::time::timeout(Duration::from_secs(2), async {
        while saw_cancel.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_worker_started_before_its_server_connects_once_it_is_up() {
    // Find a free port, then start the worker while nothing listens there.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let worker = builder(&format!("http://{addr}"))
        .handler("ok", |_ctx: JobContext| async move { Ok(b"late".to_vec()) })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = fake::serve_on(addr).await;
    server.fake.push(job("late", "ok", b""));
    server
        .fake
        .wait_for("complete", |s| s.completed("late").is_some())
        .await;
    stop.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn empty_answers_never_make_the_worker_spin() {
    let server = serve().await;
    server.fake.update(|s| s.ignore_wait = true);
    let worker = builder(&server.endpoint())
        .handler("ok", |_ctx: JobContext| async move { Ok(Vec::new()) })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    run.await.unwrap().unwrap();
    let leases = server.fake.state().leases.len();
    assert!((2..=20).contains(&leases), "{leases} lease calls in 1s");
}

#[tokio::test]
async fn a_refused_lease_stops_the_worker_with_an_error() {
    let server = serve().await;
    server
        .fake
        .update(|s| s.refuse_lease = Some(Code::Unauthenticated));
    let worker = builder(&server.endpoint())
        .handler("ok", |_ctx: JobContext| async move { Ok(Vec::new()) })
        .build()
        .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), worker.run(std::future::pending()))
        .await
        .unwrap();
    match result {
        Err(Error::Rejected {
            op: "lease",
            status,
        }) => assert_eq!(status.code(), Code::Unauthenticated),
        other => panic!("expected a rejected lease, got {other:?}"),
    }
}

#[tokio::test]
async fn failing_heartbeats_back_off_and_the_last_progress_still_arrives() {
    let server = serve().await;
    server.fake.update(|s| s.unavailable_heartbeats = true);
    let worker = builder(&server.endpoint())
        .progress_interval(Duration::ZERO)
        .handler("chatty", |ctx: JobContext| async move {
            for i in 0..=100u64 {
                ctx.set_progress_units(i, 100, "working");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Vec::new())
        })
        .build()
        .unwrap();
    let (stop, run) = fake::spawn(|stop| worker.run(stop.cancelled_owned()));
    server.fake.push(job("h", "chatty", b""));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let attempts = server
        .fake
        .state()
        .log
        .iter()
        .filter(|c| *c == "heartbeat:h")
        .count();
    assert!(
        (1..=15).contains(&attempts),
        "{attempts} heartbeats in 800ms"
    );
    server.fake.update(|s| s.unavailable_heartbeats = false);
    server
        .fake
        .wait_for("complete", |s| s.completed("h").is_some())
        .await;
    {
        let s = server.fake.state();
        let last = s
            .heartbeats_of("h")
            .last()
            .and_then(|h| h.progress.clone())
            .unwrap();
        assert_eq!((last.current, last.total, last.percent), (100, 100, 100.0));
    }
    stop.cancel();
    run.await.unwrap().unwrap();
}
