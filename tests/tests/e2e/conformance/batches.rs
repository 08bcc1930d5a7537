//! The batch RPCs keep every invariant of the calls they batch:
//! `SubmitBatch` creates every job or none (limits checked for every job
//! before anything is written, idempotency keys deduplicated per job), and
//! `CompleteBatch` checks each completion's fencing token on its own (a stale
//! one changes nothing) and leases the next jobs in the same round trip.

use std::time::Duration;

use jobctl_proto::v1::{
    CompleteBatchRequest, CompleteRequest, JobState, SubmitBatchRequest, SubmitRequest,
};
use jobctl_tests::*;
use tonic::Code;

conformance! {
    a_batch_submit_creates_every_job_in_order;
    a_batch_submit_deduplicates_idempotency_keys_per_job;
    a_batch_with_one_bad_job_is_refused_and_writes_nothing;
    a_batch_complete_refuses_a_stale_token_without_writing;
    a_batch_complete_leases_the_next_jobs_in_the_same_call;
    the_client_library_submits_a_batch_all_or_nothing;
    concurrent_single_submits_are_each_answered_on_their_own, worker_threads = 4;
    concurrent_single_completes_are_each_fenced_and_answered_on_their_own, worker_threads = 4;
}

fn keyed(payload: &str, key: &str) -> SubmitRequest {
    SubmitRequest {
        idempotency_key: key.into(),
        ..submit_request("q", "k", payload)
    }
}

fn batch(jobs: Vec<SubmitRequest>) -> SubmitBatchRequest {
    SubmitBatchRequest { jobs }
}

async fn a_batch_submit_creates_every_job_in_order(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let jobs: Vec<SubmitRequest> = (0..5)
        .map(|i| submit_request("q", "k", format!("job {i}")))
        .collect();
    let results = srv
        .job()
        .submit_batch(batch(jobs))
        .await
        .expect("submit batch")
        .into_inner()
        .results;
    assert_eq!(results.len(), 5);
    for (i, r) in results.iter().enumerate() {
        assert!(!r.deduplicated, "{r:?}");
        assert_eq!(r.state(), JobState::Queued, "{r:?}");
        let job = get_job(&srv.job, &r.job_id).await;
        assert_eq!(job.payload, format!("job {i}").into_bytes());
        assert_eq!(job.state(), JobState::Queued);
    }
    // FIFO within the batch, like five single submits.
    let leased = lease(&srv.worker, "q", 5).await;
    let order: Vec<&str> = leased.iter().map(|j| j.job_id.as_str()).collect();
    let expected: Vec<&str> = results.iter().map(|r| r.job_id.as_str()).collect();
    assert_eq!(order, expected);
}

async fn a_batch_submit_deduplicates_idempotency_keys_per_job(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let earlier = srv
        .job()
        .submit(keyed("a", "key-a"))
        .await
        .expect("submit")
        .into_inner();
    let results = srv
        .job()
        .submit_batch(batch(vec![
            keyed("a", "key-a"),
            keyed("b", "key-b"),
            keyed("b", "key-b"),
            submit_request("q", "k", "c"),
        ]))
        .await
        .expect("submit batch")
        .into_inner()
        .results;
    let dedup: Vec<bool> = results.iter().map(|r| r.deduplicated).collect();
    assert_eq!(dedup, [true, false, true, false], "{results:?}");
    assert_eq!(results[0].job_id, earlier.job_id);
    assert_eq!(results[0].state(), JobState::Queued);
    assert_eq!(results[2].job_id, results[1].job_id, "one job per key");
    assert_eq!(results[2].state(), JobState::Queued);
    assert_ne!(results[3].job_id, results[1].job_id);
    let stats = srv
        .admin()
        .get_queue_stats(jobctl_proto::v1::GetQueueStatsRequest { queue: "q".into() })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.queued, 3, "a, b and c: {stats:?}");
}

async fn a_batch_with_one_bad_job_is_refused_and_writes_nothing(backend: Backend) {
    let srv = TestServer::start_on(
        &backend,
        &["--max-payload-bytes", "16", "--max-submit-batch", "4"],
    )
    .await;
    let existing = srv
        .job()
        .submit(keyed("x", "taken"))
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let good = || submit_request("q", "k", "fine");
    let cases: Vec<(&str, Vec<SubmitRequest>, Code, &str)> = vec![
        (
            "a payload over the limit in the last job",
            vec![good(), good(), submit_request("q", "k", vec![0u8; 17])],
            Code::ResourceExhausted,
            "payload",
        ),
        (
            "a bad priority in the middle",
            vec![
                good(),
                SubmitRequest {
                    priority: 5000,
                    ..good()
                },
                good(),
            ],
            Code::InvalidArgument,
            "priority",
        ),
        (
            "two queues",
            vec![good(), submit_request("other", "k", "fine")],
            Code::InvalidArgument,
            "queue",
        ),
        (
            "an idempotency key used for a different request",
            vec![good(), keyed("not x", "taken")],
            Code::AlreadyExists,
            "taken",
        ),
        (
            "one key twice for different requests",
            vec![keyed("1", "twice"), keyed("2", "twice")],
            Code::AlreadyExists,
            "twice",
        ),
        (
            "more jobs than --max-submit-batch",
            vec![good(), good(), good(), good(), good()],
            Code::InvalidArgument,
            "jobs",
        ),
        ("no jobs", vec![], Code::InvalidArgument, "jobs"),
    ];
    for (what, jobs, code, mention) in cases {
        let before = StateSnapshot::take(&backend, &srv, &[&existing], &["q", "other"]).await;
        let status = expect_code(srv.job().submit_batch(batch(jobs)).await, code, what);
        assert!(status_mentions(&status, mention), "{what}: {status:?}");
        before.assert_unchanged(
            &StateSnapshot::take(&backend, &srv, &[&existing], &["q", "other"]).await,
            what,
        );
    }
}

async fn a_batch_complete_refuses_a_stale_token_without_writing(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let zombie_job = submit(&srv.job, submit_request("q", "k", "z")).await;
    let other = submit(&srv.job, submit_request("q", "k", "o")).await;
    // The first attempt fails and the job is leased again: its first token
    // is stale, the token of a zombie worker.
    let first = lease_one(&srv.worker, "q").await;
    assert_eq!(first.job_id, zombie_job);
    let mut fail = fail_request(&first, "boom", true);
    fail.retry_after = Some(pb_duration(Duration::ZERO));
    srv.worker().fail(fail).await.expect("fail");
    let leased = lease(&srv.worker, "q", 2).await;
    assert_eq!(leased.len(), 2);
    let second = leased
        .iter()
        .find(|j| j.job_id == zombie_job)
        .expect("the retried job");
    let other_lease = leased.iter().find(|j| j.job_id == other).expect("other");
    assert_ne!(first.lease_token, second.lease_token);

    // A batch of only the stale completion writes nothing at all.
    let before = StateSnapshot::take(&backend, &srv, &[&zombie_job, &other], &["q"]).await;
    let answer = srv
        .worker()
        .complete_batch(CompleteBatchRequest {
            completions: vec![complete_request(&first, b"zombie")],
            ..Default::default()
        })
        .await
        .expect("complete batch")
        .into_inner();
    assert_eq!(answer.results.len(), 1);
    assert_eq!(answer.results[0].code, Code::FailedPrecondition as i32);
    assert!(answer.jobs.is_empty());
    before.assert_unchanged(
        &StateSnapshot::take(&backend, &srv, &[&zombie_job, &other], &["q"]).await,
        "a stale completion",
    );

    // Mixed with a valid one, the stale one is still refused on its own.
    let answer = srv
        .worker()
        .complete_batch(CompleteBatchRequest {
            completions: vec![
                complete_request(other_lease, b"done"),
                complete_request(&first, b"zombie"),
                CompleteRequest {
                    job_id: "q:not-an-id".into(),
                    lease_token: "t".into(),
                    result: Vec::new(),
                },
            ],
            ..Default::default()
        })
        .await
        .expect("complete batch")
        .into_inner();
    let codes: Vec<i32> = answer.results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [0, Code::FailedPrecondition as i32, Code::NotFound as i32],
        "{answer:?}"
    );
    assert_eq!(answer.results[0].state(), JobState::Succeeded);
    let job = get_job(&srv.job, &zombie_job).await;
    assert_eq!(job.state(), JobState::Running, "the zombie changed nothing");
    assert!(job.result.is_empty());
    assert_eq!(get_job(&srv.job, &other).await.result, b"done");

    // The current lease holder completes it; a repeat is answered again.
    for _ in 0..2 {
        let answer = srv
            .worker()
            .complete_batch(CompleteBatchRequest {
                completions: vec![complete_request(second, b"real")],
                ..Default::default()
            })
            .await
            .expect("complete batch")
            .into_inner();
        assert_eq!(answer.results[0].code, 0, "{answer:?}");
    }
    let job = get_job(&srv.job, &zombie_job).await;
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.result, b"real");
}

async fn a_batch_complete_leases_the_next_jobs_in_the_same_call(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(submit(&srv.job, submit_request("q", "k", format!("{i}"))).await);
    }
    let first = lease(&srv.worker, "q", 2).await;
    assert_eq!(first.len(), 2);
    let answer = srv
        .worker()
        .complete_batch(CompleteBatchRequest {
            completions: first.iter().map(|j| complete_request(j, b"ok")).collect(),
            lease_max_jobs: 3,
            worker_id: "w".into(),
            queues: vec!["q".into()],
        })
        .await
        .expect("complete batch")
        .into_inner();
    assert!(answer.results.iter().all(|r| r.code == 0), "{answer:?}");
    let next: Vec<&str> = answer.jobs.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(next, [ids[2].as_str(), ids[3].as_str()]);
    for job in &answer.jobs {
        complete(&srv.worker, job, b"ok").await;
    }
    for id in &ids {
        assert_eq!(get_job(&srv.job, id).await.state(), JobState::Succeeded);
    }
    // Leasing needs a worker and queues.
    expect_code(
        srv.worker()
            .complete_batch(CompleteBatchRequest {
                lease_max_jobs: 1,
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "lease without queues",
    );
}

async fn the_client_library_submits_a_batch_all_or_nothing(backend: Backend) {
    use jobctl_client::{Client, SubmitOptions};
    let srv = TestServer::start_on(&backend, &[]).await;
    let client = Client::connect_lazy(srv.endpoint.clone()).expect("client");
    let jobs = (0..3).map(|i| SubmitOptions::new("q", "k").payload(format!("{i}")));
    let submitted = client.submit_batch(jobs).await.expect("submit batch");
    assert_eq!(submitted.len(), 3);
    for (i, s) in submitted.iter().enumerate() {
        assert!(!s.deduplicated);
        assert_eq!(s.state, JobState::Queued);
        assert_eq!(
            get_job(&srv.job, &s.job_id).await.payload,
            format!("{i}").into_bytes()
        );
    }
    let before = StateSnapshot::take(&backend, &srv, &[], &["q"]).await;
    let err = client
        .submit_batch([
            SubmitOptions::new("q", "k"),
            SubmitOptions::new("q", "k").priority(5000),
        ])
        .await
        .expect_err("a bad priority refuses the batch");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    before.assert_unchanged(
        &StateSnapshot::take(&backend, &srv, &[], &["q"]).await,
        "a refused client batch",
    );
}

/// Single Submits arriving together (which the Redis store writes with one
/// script call) still stand alone: a conflicting idempotency key refuses
/// only its own Submit, duplicates get the one job, every other job is
/// created once, and each caller gets its own answer.
async fn concurrent_single_submits_are_each_answered_on_their_own(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    const PLAIN: usize = 120;
    const DUPLICATES: usize = 20;
    const CONFLICTS: usize = 10;
    let requests: Vec<(usize, SubmitRequest)> = (0..PLAIN)
        .map(|i| (i, submit_request("q", "k", format!("plain-{i}"))))
        .chain((0..DUPLICATES).map(|i| (PLAIN + i, keyed("same", "k-1"))))
        .chain(
            (0..CONFLICTS).map(|i| (PLAIN + DUPLICATES + i, keyed(&format!("other-{i}"), "k-1"))),
        )
        .collect();
    let answers = futures::future::join_all(requests.into_iter().map(|(i, request)| {
        let mut client = srv.job();
        async move { (i, client.submit(request).await) }
    }))
    .await;

    let mut plain = std::collections::HashSet::new();
    let mut keyed_ids = std::collections::HashSet::new();
    let (mut created, mut refused) = (0, 0);
    for (i, answer) in answers {
        if i < PLAIN {
            let answer = answer.expect("a plain submit succeeds").into_inner();
            assert!(!answer.deduplicated);
            assert!(plain.insert(answer.job_id), "job ids are unique");
            continue;
        }
        match answer {
            Ok(answer) => {
                let answer = answer.into_inner();
                created += usize::from(!answer.deduplicated);
                keyed_ids.insert(answer.job_id);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(keyed_ids.len(), 1, "one job for one key: {keyed_ids:?}");
    assert_eq!(created, 1, "exactly one keyed submit created its job");
    let id = keyed_ids.into_iter().next().expect("one id");
    let job = get_job(&srv.job, &id).await;
    // Whichever request came first made the job; every other one with
    // another payload was refused, every one with the same was answered
    // with the job.
    let winner_is_same = job.payload == b"same";
    let want_refused = if winner_is_same {
        CONFLICTS
    } else {
        DUPLICATES + CONFLICTS - 1
    };
    assert_eq!(refused, want_refused, "{job:?}");
    assert_eq!(plain.len(), PLAIN);
    for id in &plain {
        assert_eq!(get_job(&srv.job, id).await.state(), JobState::Queued);
    }
}

/// Single Completes arriving together (which the Redis store writes with
/// one script call) keep every fencing rule of a lone Complete: each is
/// checked against its own lease token, a stale or unknown one is refused
/// alone and changes nothing, a repeated one is answered OK, and every job
/// keeps its own result.
async fn concurrent_single_completes_are_each_fenced_and_answered_on_their_own(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    const JOBS: usize = 60;
    for i in 0..JOBS {
        submit(&srv.job, submit_request("q", "k", format!("job-{i}"))).await;
    }
    let mut leased = Vec::new();
    while leased.len() < JOBS {
        leased.extend(lease(&srv.worker, "q", 100).await);
    }
    // One stale job: its first attempt failed and it was leased again.
    let zombie = leased.pop().expect("a leased job");
    let mut fail = fail_request(&zombie, "boom", true);
    fail.retry_after = Some(pb_duration(Duration::ZERO));
    srv.worker().fail(fail).await.expect("fail");
    let retried = lease_one(&srv.worker, "q").await;
    assert_eq!(retried.job_id, zombie.job_id);

    enum Want {
        Ok(String),
        Refused(Code),
    }
    let mut calls: Vec<(CompleteRequest, Want)> = Vec::new();
    for (i, job) in leased.iter().enumerate() {
        let result = format!("result-{}", job.job_id);
        calls.push((
            complete_request(job, result.as_bytes()),
            Want::Ok(result.clone()),
        ));
        if i % 6 == 0 {
            // The same call again: answered OK, the result unchanged.
            calls.push((complete_request(job, result.as_bytes()), Want::Ok(result)));
        }
    }
    calls.push((
        complete_request(&zombie, b"zombie"),
        Want::Refused(Code::FailedPrecondition),
    ));
    let mut unknown = retried.clone();
    unknown.job_id = format!("q:{}", "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    calls.push((
        complete_request(&unknown, b"x"),
        Want::Refused(Code::NotFound),
    ));
    let answers = futures::future::join_all(calls.into_iter().map(|(request, want)| {
        let mut client = srv.worker();
        async move { (request.job_id.clone(), client.complete(request).await, want) }
    }))
    .await;
    for (job_id, answer, want) in answers {
        match (answer, want) {
            (Ok(answer), Want::Ok(result)) => {
                assert_eq!(answer.into_inner().state(), JobState::Succeeded, "{job_id}");
                let job = get_job(&srv.job, &job_id).await;
                assert_eq!(job.state(), JobState::Succeeded, "{job_id}");
                assert_eq!(job.result, result.as_bytes(), "{job_id}");
            }
            (Err(status), Want::Refused(code)) => assert_eq!(status.code(), code, "{status:?}"),
            (Ok(_), Want::Refused(code)) => panic!("{job_id}: completed, want {code:?}"),
            (Err(status), Want::Ok(_)) => panic!("{job_id}: {status:?}"),
        }
    }
    // The zombie's Complete changed nothing: its job still runs the retry.
    let job = get_job(&srv.job, &zombie.job_id).await;
    assert_eq!(job.state(), JobState::Running);
    assert!(job.result.is_empty());
    complete(&srv.worker, &retried, b"retried").await;
    assert_eq!(get_job(&srv.job, &zombie.job_id).await.result, b"retried");
}
