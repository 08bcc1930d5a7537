//! The operators' API: job listings (filters, order, cursors that stay
//! correct while jobs move, pages of bounded cost), pausing queues,
//! deleting and purging finished jobs, re-queueing dead letters in bulk.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobctl_proto::v1::{
    CancelRequest, DeleteJobRequest, GetQueueStatsRequest, JobFilter, JobState, LeaseRequest,
    ListJobsRequest, ListOrder, ListQueuesRequest, PauseQueueRequest, PurgeJobsRequest,
    RequeueFailedRequest, ResumeQueueRequest, SubmitRequest,
};
use jobctl_tests::*;
use tonic::Code;

conformance! {
    list_jobs_walks_every_job_once_in_either_order;
    list_jobs_filters_by_state_kind_labels_and_creation_time;
    list_jobs_walk_shows_no_job_twice_while_jobs_change_state;
    list_jobs_pages_look_at_a_bounded_number_of_jobs;
    list_jobs_refuses_bad_requests_naming_the_field;
    paused_queue_hands_out_no_leases_until_resumed;
    delete_job_removes_only_finished_jobs;
    purge_jobs_deletes_finished_jobs_page_by_page;
    requeue_failed_requeues_dead_letters_in_bulk;
    list_queues_reports_every_queue_of_the_namespace;
}

fn list(queue: &str, filter: JobFilter, order: ListOrder, page_size: u32) -> ListJobsRequest {
    ListJobsRequest {
        queue: queue.into(),
        filter: Some(filter),
        order: order.into(),
        page_size,
        page_token: String::new(),
    }
}

/// Every page of a walk: the ids of each page, in order.
async fn walk(srv: &TestServer, mut request: ListJobsRequest) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    loop {
        let page = srv
            .admin
            .clone()
            .list_jobs(request.clone())
            .await
            .expect("list jobs")
            .into_inner();
        pages.push(page.jobs.iter().map(|j| j.id.clone()).collect());
        if page.next_page_token.is_empty() {
            return pages;
        }
        assert!(pages.len() < 10_000, "the walk ends");
        request.page_token = page.next_page_token;
    }
}

fn flat(pages: Vec<Vec<String>>) -> Vec<String> {
    pages.into_iter().flatten().collect()
}

fn states(list: &[JobState]) -> Vec<i32> {
    list.iter().map(|s| i32::from(*s)).collect()
}

async fn submit_n(srv: &TestServer, queue: &str, kind: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(submit(&srv.job, submit_request(queue, kind, format!("{kind}-{i}"))).await);
    }
    ids
}

async fn list_jobs_walks_every_job_once_in_either_order(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mut ids = submit_n(&srv, "walk", "k", 23).await;
    // Ids sort in creation order.
    ids.sort();
    let oldest = walk(
        &srv,
        list("walk", JobFilter::default(), ListOrder::OldestFirst, 5),
    )
    .await;
    assert!(oldest.iter().all(|p| p.len() <= 5));
    assert_eq!(flat(oldest), ids);
    let newest = flat(
        walk(
            &srv,
            list("walk", JobFilter::default(), ListOrder::Unspecified, 4),
        )
        .await,
    );
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(newest, reversed, "newest first by default");
    // A job in the page is the whole job.
    let page = srv
        .admin
        .clone()
        .list_jobs(list(
            "walk",
            JobFilter::default(),
            ListOrder::OldestFirst,
            1,
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(page.jobs[0].id, ids[0]);
    assert!(page.jobs[0].payload.starts_with(b"k-"));
    assert_eq!(page.jobs[0].state, i32::from(JobState::Queued));
    // Another queue, and an unknown one, list nothing of these.
    submit(&srv.job, submit_request("walk-other", "k", "x")).await;
    let other = flat(
        walk(
            &srv,
            list(
                "walk-none",
                JobFilter::default(),
                ListOrder::Unspecified,
                10,
            ),
        )
        .await,
    );
    assert!(other.is_empty());
}

async fn list_jobs_filters_by_state_kind_labels_and_creation_time(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let mut early = Vec::new();
    for (i, kind) in ["a", "b", "a", "b"].iter().enumerate() {
        let tier = if i % 2 == 0 { "gold" } else { "free" };
        early.push(
            submit(
                &srv.job,
                SubmitRequest {
                    labels: labels(&[("tier", tier), ("n", &i.to_string())]),
                    ..submit_request("filt", kind, format!("{i}"))
                },
            )
            .await,
        );
    }
    // A creation time between the two groups, to the millisecond.
    let cut = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
        + 1;
    while (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64)
        < cut
    {
        std::hint::spin_loop();
    }
    let late = submit_n(&srv, "filt", "a", 3).await;
    // One of the early ones runs, one succeeds.
    let running = lease_one(&srv.worker, "filt").await;
    let done = lease_one(&srv.worker, "filt").await;
    complete(&srv.worker, &done, b"ok").await;
    assert_eq!(running.job_id, early[0]);
    assert_eq!(done.job_id, early[1]);

    let ids = |filter: JobFilter| {
        let srv = &srv;
        async move {
            let mut v = flat(walk(srv, list("filt", filter, ListOrder::OldestFirst, 2)).await);
            v.sort();
            v
        }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ids(JobFilter {
            kind: "b".into(),
            ..JobFilter::default()
        })
        .await,
        sorted(vec![early[1].clone(), early[3].clone()])
    );
    assert_eq!(
        ids(JobFilter {
            labels: labels(&[("tier", "gold")]),
            ..JobFilter::default()
        })
        .await,
        sorted(vec![early[0].clone(), early[2].clone()])
    );
    assert_eq!(
        ids(JobFilter {
            labels: labels(&[("tier", "gold"), ("n", "2")]),
            kind: "a".into(),
            ..JobFilter::default()
        })
        .await,
        vec![early[2].clone()]
    );
    assert_eq!(
        ids(JobFilter {
            states: states(&[JobState::Running]),
            ..JobFilter::default()
        })
        .await,
        vec![early[0].clone()]
    );
    assert_eq!(
        ids(JobFilter {
            states: states(&[JobState::Succeeded, JobState::Running]),
            ..JobFilter::default()
        })
        .await,
        sorted(vec![early[0].clone(), early[1].clone()])
    );
    let mut queued = vec![early[2].clone(), early[3].clone()];
    queued.extend(late.iter().cloned());
    assert_eq!(
        ids(JobFilter {
            states: states(&[JobState::Queued]),
            ..JobFilter::default()
        })
        .await,
        sorted(queued)
    );
    let cut_ts = pb_timestamp(UNIX_EPOCH + Duration::from_millis(cut));
    assert_eq!(
        ids(JobFilter {
            created_after: Some(cut_ts),
            ..JobFilter::default()
        })
        .await,
        sorted(late.clone())
    );
    assert_eq!(
        ids(JobFilter {
            created_before: Some(cut_ts),
            ..JobFilter::default()
        })
        .await,
        sorted(early.clone())
    );
    assert_eq!(
        ids(JobFilter {
            created_before: Some(cut_ts),
            kind: "a".into(),
            states: states(&[JobState::Queued]),
            ..JobFilter::default()
        })
        .await,
        vec![early[2].clone()]
    );
    // Newest first inside a time range.
    let newest = flat(
        walk(
            &srv,
            list(
                "filt",
                JobFilter {
                    created_after: Some(cut_ts),
                    ..JobFilter::default()
                },
                ListOrder::NewestFirst,
                1,
            ),
        )
        .await,
    );
    let mut expected = late.clone();
    expected.sort();
    expected.reverse();
    assert_eq!(newest, expected);
}

async fn list_jobs_walk_shows_no_job_twice_while_jobs_change_state(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let ids = submit_n(&srv, "moving", "k", 40).await;
    let mut everything: HashSet<String> = ids.iter().cloned().collect();
    for (order, filter) in [
        (ListOrder::OldestFirst, JobFilter::default()),
        (ListOrder::NewestFirst, JobFilter::default()),
        (
            ListOrder::OldestFirst,
            JobFilter {
                states: states(&[
                    JobState::Queued,
                    JobState::Running,
                    JobState::Succeeded,
                    JobState::Failed,
                    JobState::Scheduled,
                ]),
                ..JobFilter::default()
            },
        ),
    ] {
        // Between pages, jobs are leased, completed, failed (and retried:
        // they go back to QUEUED with a new place in the ready set) and new
        // ones are submitted.
        let mut request = list("moving", filter, order, 3);
        let mut seen = Vec::new();
        let mut added = Vec::new();
        loop {
            let page = srv
                .admin
                .clone()
                .list_jobs(request.clone())
                .await
                .expect("list")
                .into_inner();
            seen.extend(page.jobs.iter().map(|j| j.id.clone()));
            for leased in lease(&srv.worker, "moving", 2).await {
                if leased.payload.ends_with(b"7") {
                    srv.worker
                        .clone()
                        .fail(fail_request(&leased, "again", true))
                        .await
                        .expect("fail");
                } else {
                    complete(&srv.worker, &leased, b"").await;
                }
            }
            added.push(submit(&srv.job, submit_request("moving", "k", "late")).await);
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "no job listed twice: {seen:?}");
        // Every job that existed when the walk began is listed (it was in a
        // listed state throughout).
        assert!(
            everything.is_subset(&unique),
            "{:?} missing",
            everything.difference(&unique).collect::<Vec<_>>()
        );
        assert!(
            unique
                .iter()
                .all(|id| everything.contains(id) || added.contains(id)),
            "only jobs of the queue"
        );
        everything.extend(added);
    }

    // A walk of one state while its jobs leave it: each job at most once,
    // and every job that stays QUEUED throughout is listed.
    let queued = submit_n(&srv, "moving-q", "k", 20).await;
    let mut request = list(
        "moving-q",
        JobFilter {
            states: states(&[JobState::Queued]),
            ..JobFilter::default()
        },
        ListOrder::OldestFirst,
        3,
    );
    let mut seen = Vec::new();
    let mut taken = HashSet::new();
    loop {
        let page = srv
            .admin
            .clone()
            .list_jobs(request.clone())
            .await
            .expect("list")
            .into_inner();
        for job in &page.jobs {
            assert_eq!(job.state, i32::from(JobState::Queued));
        }
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        for leased in lease(&srv.worker, "moving-q", 1).await {
            taken.insert(leased.job_id);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        request.page_token = page.next_page_token;
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no job listed twice");
    for id in &queued {
        if !taken.contains(id) {
            assert!(unique.contains(id), "{id} stayed queued but was not listed");
        }
    }
}

async fn list_jobs_pages_look_at_a_bounded_number_of_jobs(backend: Backend) {
    let srv = TestServer::start_on(&backend, &["--list-scan-limit", "10"]).await;
    let rare = submit(&srv.job, submit_request("scan", "rare", "r")).await;
    submit_n(&srv, "scan", "common", 35).await;
    // Newest first, the rare job is the last of 36: the pages before it are
    // empty, each with a token, as SCAN's are.
    let pages = walk(
        &srv,
        list(
            "scan",
            JobFilter {
                kind: "rare".into(),
                ..JobFilter::default()
            },
            ListOrder::NewestFirst,
            50,
        ),
    )
    .await;
    assert!(
        pages.len() >= 4,
        "at most 10 jobs looked at per page: {pages:?}"
    );
    assert_eq!(flat(pages), vec![rare.clone()]);
    // A page without a filter is at most the scan limit long.
    let pages = walk(
        &srv,
        list("scan", JobFilter::default(), ListOrder::OldestFirst, 50),
    )
    .await;
    assert!(pages.iter().all(|p| p.len() <= 10));
    assert_eq!(flat(pages).len(), 36);
    // One state with a small set is cut from that set, in one page.
    let running = lease_one(&srv.worker, "scan").await;
    let pages = walk(
        &srv,
        list(
            "scan",
            JobFilter {
                states: states(&[JobState::Running]),
                ..JobFilter::default()
            },
            ListOrder::NewestFirst,
            50,
        ),
    )
    .await;
    assert_eq!(pages, vec![vec![running.job_id]]);
}

async fn list_jobs_refuses_bad_requests_naming_the_field(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    submit_n(&srv, "bad", "k", 3).await;
    let first = srv
        .admin
        .clone()
        .list_jobs(list("bad", JobFilter::default(), ListOrder::NewestFirst, 1))
        .await
        .expect("list")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let now = pb_timestamp(SystemTime::now());
    let earlier = pb_timestamp(SystemTime::now() - Duration::from_secs(60));
    let cases: Vec<(&str, ListJobsRequest)> = vec![
        (
            "queue",
            list("", JobFilter::default(), ListOrder::NewestFirst, 1),
        ),
        (
            "queue",
            list("a b", JobFilter::default(), ListOrder::NewestFirst, 1),
        ),
        (
            "page_size",
            list("bad", JobFilter::default(), ListOrder::NewestFirst, 1001),
        ),
        (
            "page_token",
            ListJobsRequest {
                page_token: "nope".into(),
                ..list("bad", JobFilter::default(), ListOrder::NewestFirst, 1)
            },
        ),
        (
            "page_token",
            ListJobsRequest {
                page_token: first.next_page_token.clone(),
                ..list("bad", JobFilter::default(), ListOrder::OldestFirst, 1)
            },
        ),
        (
            "order",
            ListJobsRequest {
                order: 99,
                ..list("bad", JobFilter::default(), ListOrder::NewestFirst, 1)
            },
        ),
        (
            "filter.states",
            list(
                "bad",
                JobFilter {
                    states: vec![0],
                    ..JobFilter::default()
                },
                ListOrder::NewestFirst,
                1,
            ),
        ),
        (
            "filter.created_before",
            list(
                "bad",
                JobFilter {
                    created_after: Some(now),
                    created_before: Some(earlier),
                    ..JobFilter::default()
                },
                ListOrder::NewestFirst,
                1,
            ),
        ),
        (
            "filter.kind",
            list(
                "bad",
                JobFilter {
                    kind: "k".repeat(100),
                    ..JobFilter::default()
                },
                ListOrder::NewestFirst,
                1,
            ),
        ),
    ];
    for (field, request) in cases {
        let status = expect_code(
            srv.admin.clone().list_jobs(request).await,
            Code::InvalidArgument,
            field,
        );
        assert!(status_mentions(&status, field), "{field}: {status:?}");
    }
}

async fn paused_queue_hands_out_no_leases_until_resumed(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let stats = |srv: &TestServer| {
        let mut admin = srv.admin.clone();
        async move {
            admin
                .get_queue_stats(GetQueueStatsRequest { queue: "pq".into() })
                .await
                .expect("stats")
                .into_inner()
        }
    };
    srv.admin
        .clone()
        .pause_queue(PauseQueueRequest { queue: "pq".into() })
        .await
        .expect("pause");
    assert!(stats(&srv).await.paused);
    let id = submit(&srv.job, submit_request("pq", "k", "x")).await;
    assert!(lease(&srv.worker, "pq", 5).await.is_empty(), "paused");
    // Another queue is not paused.
    submit(&srv.job, submit_request("pq-other", "k", "x")).await;
    assert_eq!(lease(&srv.worker, "pq-other", 5).await.len(), 1);
    // A long poll waits (a submit to the paused queue does not hand it
    // anything) and is woken by the resume.
    let mut worker = srv.worker.clone();
    let polling = tokio::spawn(async move {
        worker
            .lease(LeaseRequest {
                worker_id: "poller".into(),
                queues: vec!["pq".into()],
                max_jobs: 5,
                wait: Some(pb_duration(Duration::from_secs(20))),
            })
            .await
    });
    let second = submit(&srv.job, submit_request("pq", "k", "y")).await;
    // Part of the scenario (the poll must be waiting), not a readiness wait.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!polling.is_finished(), "a paused queue's long poll waits");
    assert_eq!(stats(&srv).await.queued, 2);
    let resumed_at = Instant::now();
    srv.admin
        .clone()
        .resume_queue(ResumeQueueRequest { queue: "pq".into() })
        .await
        .expect("resume");
    let jobs = tokio::time::timeout(Duration::from_secs(15), polling)
        .await
        .expect("the resume wakes the long poll")
        .expect("task")
        .expect("lease")
        .into_inner()
        .jobs;
    let mut got: Vec<String> = jobs.into_iter().map(|j| j.job_id).collect();
    got.sort();
    let mut want = vec![id, second];
    want.sort();
    assert_eq!(got, want);
    assert!(resumed_at.elapsed() < Duration::from_secs(15));
    assert!(!stats(&srv).await.paused);
    // Pausing twice, resuming a queue that is not paused: both fine.
    for _ in 0..2 {
        srv.admin
            .clone()
            .resume_queue(ResumeQueueRequest { queue: "pq".into() })
            .await
            .expect("resume");
    }
    let status = expect_code(
        srv.admin
            .clone()
            .pause_queue(PauseQueueRequest { queue: "".into() })
            .await,
        Code::InvalidArgument,
        "empty queue",
    );
    assert!(status_mentions(&status, "queue"));
}

async fn delete_job_removes_only_finished_jobs(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let id = submit(&srv.job, submit_request("del", "k", "x")).await;
    let delete = |id: &str| {
        let mut admin = srv.admin.clone();
        let id = id.to_owned();
        async move { admin.delete_job(DeleteJobRequest { job_id: id }).await }
    };
    let status = expect_code(delete(&id).await, Code::FailedPrecondition, "queued");
    assert!(status.message().contains("QUEUED"), "{status:?}");
    let leased = lease_one(&srv.worker, "del").await;
    expect_code(delete(&id).await, Code::FailedPrecondition, "running");
    complete(&srv.worker, &leased, b"r").await;
    delete(&id).await.expect("delete a finished job");
    expect_code(try_get_job(&srv.job, &id).await, Code::NotFound, "deleted");
    expect_code(delete(&id).await, Code::NotFound, "deleted twice");
    expect_code(delete("del:nope").await, Code::NotFound, "malformed");
    expect_code(delete("").await, Code::InvalidArgument, "empty");
    let listed = flat(
        walk(
            &srv,
            list("del", JobFilter::default(), ListOrder::NewestFirst, 10),
        )
        .await,
    );
    assert!(listed.is_empty(), "{listed:?}");
    let stats = srv
        .admin
        .clone()
        .get_queue_stats(GetQueueStatsRequest {
            queue: "del".into(),
        })
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.finished, 0);
    if let Some(redis) = backend.redis() {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*del*")
            .query_async(&mut redis.conn().await)
            .await
            .expect("keys");
        assert!(
            keys.iter().all(|k| !k.contains(split_job_id(&id).1)),
            "no key of the job is left: {keys:?}"
        );
    }
    // A cancelled job can be deleted too.
    let cancelled = submit(&srv.job, submit_request("del", "k", "y")).await;
    srv.job
        .clone()
        .cancel(CancelRequest {
            job_id: cancelled.clone(),
            reason: "no".into(),
        })
        .await
        .expect("cancel");
    delete(&cancelled).await.expect("delete a cancelled job");
}

async fn purge_jobs_deletes_finished_jobs_page_by_page(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    let ids = submit_n(&srv, "purge", "k", 12).await;
    for _ in 0..10 {
        let leased = lease_one(&srv.worker, "purge").await;
        complete(&srv.worker, &leased, b"").await;
    }
    // The last two: one cancelled, one still queued.
    srv.job
        .clone()
        .cancel(CancelRequest {
            job_id: ids[10].clone(),
            reason: "no".into(),
        })
        .await
        .expect("cancel");
    let purge = |filter: JobFilter, token: String| {
        let mut admin = srv.admin.clone();
        async move {
            admin
                .purge_jobs(PurgeJobsRequest {
                    queue: "purge".into(),
                    filter: Some(filter),
                    page_size: 4,
                    page_token: token,
                })
                .await
        }
    };
    let succeeded = JobFilter {
        states: states(&[JobState::Succeeded]),
        ..JobFilter::default()
    };
    let mut token = String::new();
    let mut deleted = 0;
    let mut calls = 0;
    loop {
        let r = purge(succeeded.clone(), token)
            .await
            .expect("purge")
            .into_inner();
        assert!(r.deleted <= 4);
        deleted += r.deleted;
        calls += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    assert_eq!(deleted, 10);
    assert!(calls >= 3);
    let left = flat(
        walk(
            &srv,
            list("purge", JobFilter::default(), ListOrder::OldestFirst, 10),
        )
        .await,
    );
    // (Ids order by creation time to the millisecond, so sort.)
    let mut last_two = vec![ids[10].clone(), ids[11].clone()];
    last_two.sort();
    assert_eq!(left, last_two);
    // Every finished job, by default: the cancelled one; the queued stays.
    let r = purge(JobFilter::default(), String::new())
        .await
        .expect("purge")
        .into_inner();
    assert_eq!(r.deleted, 1);
    get_job(&srv.job, &ids[11]).await;
    let status = expect_code(
        purge(
            JobFilter {
                states: states(&[JobState::Queued]),
                ..JobFilter::default()
            },
            String::new(),
        )
        .await,
        Code::InvalidArgument,
        "queued jobs are not purged",
    );
    assert!(status_mentions(&status, "filter.states"));
}

async fn requeue_failed_requeues_dead_letters_in_bulk(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    submit_n(&srv, "dlq", "k", 5).await;
    for _ in 0..5 {
        let leased = lease_one(&srv.worker, "dlq").await;
        srv.worker
            .clone()
            .fail(fail_request(&leased, "broken", false))
            .await
            .expect("fail");
    }
    let requeue = |limit: u32| {
        let mut admin = srv.admin.clone();
        async move {
            admin
                .requeue_failed(RequeueFailedRequest {
                    queue: "dlq".into(),
                    limit,
                })
                .await
                .expect("requeue failed")
                .into_inner()
        }
    };
    let first = requeue(3).await;
    assert_eq!((first.requeued, first.remaining), (3, 2));
    let second = requeue(0).await;
    assert_eq!((second.requeued, second.remaining), (2, 0));
    let again = requeue(0).await;
    assert_eq!((again.requeued, again.remaining), (0, 0));
    assert_eq!(lease(&srv.worker, "dlq", 10).await.len(), 5);
    let status = expect_code(
        srv.admin
            .clone()
            .requeue_failed(RequeueFailedRequest {
                queue: "dlq".into(),
                limit: 10_001,
            })
            .await,
        Code::InvalidArgument,
        "limit",
    );
    assert!(status_mentions(&status, "limit"));
}

async fn list_queues_reports_every_queue_of_the_namespace(backend: Backend) {
    let srv = TestServer::start_on(&backend, &[]).await;
    submit_n(&srv, "lq-b", "k", 2).await;
    submit_n(&srv, "lq-a", "k", 1).await;
    srv.admin
        .clone()
        .pause_queue(PauseQueueRequest {
            queue: "lq-b".into(),
        })
        .await
        .expect("pause");
    let queues = srv
        .admin
        .clone()
        .list_queues(ListQueuesRequest {})
        .await
        .expect("list queues")
        .into_inner()
        .queues;
    let seen: Vec<(String, u64, bool)> = queues
        .iter()
        .map(|q| (q.queue.clone(), q.queued, q.paused))
        .collect();
    assert_eq!(
        seen,
        vec![("lq-a".into(), 1, false), ("lq-b".into(), 2, true)]
    );
}
