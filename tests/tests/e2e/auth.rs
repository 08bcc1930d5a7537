//! Authentication, tenant isolation and hardening: API keys, JWTs, mTLS,
//! roles, namespaces, transport limits, Redis ACL users and `rediss://`.
//!
//! Every test starts its own `redis-server`; certificates are made in the
//! test ([`TestPki`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobctl_client::{Client, ConnectOptions, Credentials};
use jobctl_proto::v1::admin_service_client::AdminServiceClient;
use jobctl_proto::v1::job_service_client::JobServiceClient;
use jobctl_proto::v1::worker_service_client::WorkerServiceClient;
use jobctl_proto::v1::{
    CancelRequest, CompleteBatchRequest, DeleteJobRequest, GetQueueStatsRequest, GetStatusRequest,
    JobFilter, JobState, LeaseRequest, LeasedJob, ListFailedRequest, ListJobsRequest,
    ListQueuesRequest, PauseQueueRequest, PurgeJobsRequest, ReleaseRequest, RequeueFailedRequest,
    RequeueRequest, ResumeQueueRequest, SubmitBatchRequest, WatchProgressRequest,
};
use jobctl_tests::*;
use jobctl_worker::{JobContext, Worker};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use sha2::{Digest, Sha256};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Status};

// --- identities ---------------------------------------------------------------

/// (name, token, namespace, roles): the API keys of the tests.
const KEYS: &[(&str, &str, &str, &str)] = &[
    (
        "a-client",
        "a-client-3f9c2e71b05d48aa",
        "tenant-a",
        "client",
    ),
    (
        "a-worker",
        "a-worker-8d1e6b2c94f07a35",
        "tenant-a",
        "worker",
    ),
    (
        "a-operator",
        "a-operator-52c7e0d9b13f6a84",
        "tenant-a",
        "operator",
    ),
    (
        "b-client",
        "b-client-e4a19f3706c25bd8",
        "tenant-b",
        "client",
    ),
    (
        "b-worker",
        "b-worker-17b58c2e9a4d03f6",
        "tenant-b",
        "worker",
    ),
    (
        "b-operator",
        "b-operator-c03d7e5a81f29b46",
        "tenant-b",
        "operator",
    ),
    (
        "b-all",
        "b-all-6e2f0a9d4c18b57e",
        "tenant-b",
        "client,worker,operator",
    ),
];

fn token(name: &str) -> &'static str {
    KEYS.iter()
        .find(|k| k.0 == name)
        .map(|k| k.1)
        .unwrap_or_else(|| panic!("no key {name}"))
}

/// Writes the API key file: every other key hashed, the rest in the clear.
fn write_keys(dir: &Path) -> PathBuf {
    let mut text = String::from("# name-less and named keys, hashed and in the clear\n");
    for (i, (name, token, ns, roles)) in KEYS.iter().enumerate() {
        let key = if i % 2 == 0 {
            format!("sha256:{}", hex::encode(Sha256::digest(token.as_bytes())))
        } else {
            (*token).to_owned()
        };
        text.push_str(&format!("{key} {ns} {roles} {name}\n"));
    }
    let path = dir.join("api-keys");
    std::fs::write(&path, text).expect("write the key file");
    path
}

type Authed = InterceptedService<Channel, Credentials>;

/// The three service clients of one identity.
#[derive(Clone)]
struct Caller {
    name: String,
    job: JobServiceClient<Authed>,
    worker: WorkerServiceClient<Authed>,
    admin: AdminServiceClient<Authed>,
}

fn caller(channel: &Channel, name: &str, token: Option<&str>) -> Caller {
    let creds = match token {
        Some(t) => Credentials::bearer(t).expect("token"),
        None => Credentials::none(),
    };
    let authed = InterceptedService::new(channel.clone(), creds);
    Caller {
        name: name.to_owned(),
        job: JobServiceClient::new(authed.clone()),
        worker: WorkerServiceClient::new(authed.clone()),
        admin: AdminServiceClient::new(authed),
    }
}

fn keyed(srv: &TestServer, name: &str) -> Caller {
    caller(&srv.channel(), name, Some(token(name)))
}

struct Setup {
    _redis: RedisServer,
    srv: TestServer,
    _dir: tempfile::TempDir,
}

async fn start_with_keys(extra: &[&str]) -> Setup {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = write_keys(dir.path());
    let mut flags = vec!["--api-keys-file", keys.to_str().expect("utf-8 path")];
    flags.extend_from_slice(extra);
    let srv = TestServer::start(&redis, &flags).await;
    Setup {
        _redis: redis,
        srv,
        _dir: dir,
    }
}

// --- the RPCs -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rpc {
    Submit,
    GetStatus,
    Cancel,
    WatchProgress,
    Lease,
    Heartbeat,
    Complete,
    Fail,
    Release,
    ListFailed,
    Requeue,
    GetQueueStats,
    SubmitBatch,
    CompleteBatch,
    ListJobs,
    ListQueues,
    PauseQueue,
    ResumeQueue,
    DeleteJob,
    PurgeJobs,
    RequeueFailed,
}

impl Rpc {
    /// In the order of `jobctl_tests::METHODS`.
    const ALL: [Rpc; 21] = [
        Rpc::Submit,
        Rpc::GetStatus,
        Rpc::Cancel,
        Rpc::WatchProgress,
        Rpc::Lease,
        Rpc::Heartbeat,
        Rpc::Complete,
        Rpc::Fail,
        Rpc::Release,
        Rpc::ListFailed,
        Rpc::Requeue,
        Rpc::GetQueueStats,
        Rpc::SubmitBatch,
        Rpc::CompleteBatch,
        Rpc::ListJobs,
        Rpc::ListQueues,
        Rpc::PauseQueue,
        Rpc::ResumeQueue,
        Rpc::DeleteJob,
        Rpc::PurgeJobs,
        Rpc::RequeueFailed,
    ];

    /// The role the RPC needs.
    fn role(self) -> &'static str {
        match self {
            Rpc::Submit | Rpc::SubmitBatch | Rpc::GetStatus | Rpc::Cancel | Rpc::WatchProgress => {
                "client"
            }
            Rpc::Lease
            | Rpc::Heartbeat
            | Rpc::Complete
            | Rpc::CompleteBatch
            | Rpc::Fail
            | Rpc::Release => "worker",
            Rpc::ListFailed
            | Rpc::Requeue
            | Rpc::GetQueueStats
            | Rpc::ListJobs
            | Rpc::ListQueues
            | Rpc::PauseQueue
            | Rpc::ResumeQueue
            | Rpc::DeleteJob
            | Rpc::PurgeJobs
            | Rpc::RequeueFailed => "operator",
        }
    }

    /// Whether it names one job (so another namespace's job is not found).
    fn names_a_job(self) -> bool {
        !matches!(
            self,
            Rpc::Submit
                | Rpc::SubmitBatch
                | Rpc::Lease
                | Rpc::ListFailed
                | Rpc::GetQueueStats
                | Rpc::ListJobs
                | Rpc::ListQueues
                | Rpc::PauseQueue
                | Rpc::ResumeQueue
                | Rpc::PurgeJobs
                | Rpc::RequeueFailed
        )
    }
}

/// Jobs of tenant A the calls aim at.
struct Targets {
    queued: String,
    running: LeasedJob,
    failed: String,
}

/// Makes tenant A's jobs: one QUEUED (queue `q`), one RUNNING (queue `run`,
/// with its real lease token), one FAILED (queue `dead`).
async fn tenant_a_jobs(srv: &TestServer) -> Targets {
    let a_client = keyed(srv, "a-client");
    let a_worker = keyed(srv, "a-worker");
    let queued = submit_as(&a_client, "q").await;
    let running_id = submit_as(&a_client, "run").await;
    let running = lease_as(&a_worker, "run").await;
    assert_eq!(running.job_id, running_id);
    let mut dead = submit_request("dead", "k", "x");
    dead.max_attempts = 1;
    let failed = a_client
        .job
        .clone()
        .submit(dead)
        .await
        .expect("submit")
        .into_inner()
        .job_id;
    let leased = lease_as(&a_worker, "dead").await;
    a_worker
        .worker
        .clone()
        .fail(fail_request(&leased, "boom", false))
        .await
        .expect("fail");
    Targets {
        queued,
        running,
        failed,
    }
}

async fn submit_as(c: &Caller, queue: &str) -> String {
    c.job
        .clone()
        .submit(submit_request(queue, "k", "payload"))
        .await
        .expect("submit")
        .into_inner()
        .job_id
}

async fn lease_as(c: &Caller, queue: &str) -> LeasedJob {
    let mut jobs = c
        .worker
        .clone()
        .lease(LeaseRequest {
            worker_id: format!("{}-worker", c.name),
            queues: vec![queue.to_owned()],
            max_jobs: 1,
            wait: Some(pb_duration(Duration::from_secs(5))),
        })
        .await
        .expect("lease")
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "one job leased from {queue}");
    jobs.remove(0)
}

/// Calls `rpc` aimed at tenant A's jobs and queues. A call that answers but
/// shows or changes tenant A's work is an `INTERNAL` error here.
async fn call(c: &Caller, rpc: Rpc, t: &Targets) -> Result<(), Status> {
    let leak = |what: &str| Err(Status::internal(format!("{what}: tenant A's work leaked")));
    match rpc {
        Rpc::Submit => {
            let id = c
                .job
                .clone()
                .submit(submit_request("q", "k", "x"))
                .await?
                .into_inner()
                .job_id;
            if id == t.queued {
                return leak("submit");
            }
            Ok(())
        }
        Rpc::SubmitBatch => {
            let results = c
                .job
                .clone()
                .submit_batch(SubmitBatchRequest {
                    jobs: vec![submit_request("q", "k", "x")],
                })
                .await?
                .into_inner()
                .results;
            if results.iter().any(|r| r.job_id == t.queued) {
                return leak("submit batch");
            }
            Ok(())
        }
        Rpc::CompleteBatch => {
            let results = c
                .worker
                .clone()
                .complete_batch(CompleteBatchRequest {
                    completions: vec![complete_request(&t.running, b"stolen")],
                    lease_max_jobs: 0,
                    worker_id: String::new(),
                    queues: Vec::new(),
                })
                .await?
                .into_inner()
                .results;
            // The per-item answer is what Complete would have said.
            match results.as_slice() {
                [one] if one.code == 0 => Ok(()),
                [one] => Err(Status::new(Code::from_i32(one.code), one.message.clone())),
                _ => Err(Status::internal(format!(
                    "{} results for one",
                    results.len()
                ))),
            }
        }
        Rpc::GetStatus => c
            .job
            .clone()
            .get_status(GetStatusRequest {
                job_id: t.queued.clone(),
            })
            .await
            .map(drop),
        Rpc::Cancel => c
            .job
            .clone()
            .cancel(CancelRequest {
                job_id: t.queued.clone(),
                reason: "not yours".into(),
            })
            .await
            .map(drop),
        Rpc::WatchProgress => {
            let watch = async {
                let mut stream = c
                    .job
                    .clone()
                    .watch_progress(WatchProgressRequest {
                        job_id: t.running.job_id.clone(),
                        after_seq: 0,
                    })
                    .await?
                    .into_inner();
                match stream.message().await? {
                    Some(_) => leak("watch"),
                    None => Ok(()),
                }
            };
            tokio::time::timeout(Duration::from_secs(10), watch)
                .await
                .unwrap_or_else(|_| leak("the watch stayed open"))
        }
        Rpc::Lease => {
            let jobs = c
                .worker
                .clone()
                .lease(LeaseRequest {
                    worker_id: "intruder".into(),
                    queues: vec!["q".into(), "run".into(), "dead".into()],
                    max_jobs: 10,
                    wait: None,
                })
                .await?
                .into_inner()
                .jobs;
            if jobs
                .iter()
                .any(|j| [&t.queued, &t.failed].contains(&&j.job_id))
            {
                return leak("lease");
            }
            Ok(())
        }
        Rpc::Heartbeat => c
            .worker
            .clone()
            .heartbeat(heartbeat_request(&t.running))
            .await
            .map(drop),
        Rpc::Complete => c
            .worker
            .clone()
            .complete(complete_request(&t.running, b"stolen"))
            .await
            .map(drop),
        Rpc::Fail => c
            .worker
            .clone()
            .fail(fail_request(&t.running, "sabotage", false))
            .await
            .map(drop),
        Rpc::Release => c
            .worker
            .clone()
            .release(ReleaseRequest {
                job_id: t.running.job_id.clone(),
                lease_token: t.running.lease_token.clone(),
                checkpoint: None,
            })
            .await
            .map(drop),
        Rpc::ListFailed => {
            let jobs = c
                .admin
                .clone()
                .list_failed(ListFailedRequest {
                    queue: "dead".into(),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await?
                .into_inner()
                .jobs;
            if jobs.is_empty() {
                Ok(())
            } else {
                leak("list failed")
            }
        }
        Rpc::Requeue => c
            .admin
            .clone()
            .requeue(RequeueRequest {
                job_id: t.failed.clone(),
            })
            .await
            .map(drop),
        Rpc::GetQueueStats => {
            let stats = c
                .admin
                .clone()
                .get_queue_stats(GetQueueStatsRequest {
                    queue: "dead".into(),
                })
                .await?
                .into_inner();
            // Tenant B never uses queue `dead`; tenant A has a dead letter there.
            if stats.queued + stats.running + stats.failed + stats.finished + stats.scheduled > 0 {
                return leak("stats");
            }
            Ok(())
        }
        Rpc::ListJobs => {
            let page = c
                .admin
                .clone()
                .list_jobs(ListJobsRequest {
                    queue: "dead".into(),
                    filter: Some(JobFilter::default()),
                    page_size: 100,
                    ..ListJobsRequest::default()
                })
                .await?
                .into_inner();
            if page.jobs.is_empty() {
                Ok(())
            } else {
                leak("list jobs")
            }
        }
        Rpc::ListQueues => {
            let queues = c
                .admin
                .clone()
                .list_queues(ListQueuesRequest {})
                .await?
                .into_inner()
                .queues;
            // Tenant B never uses queue `dead`; tenant A has a dead letter there.
            if queues.iter().any(|q| q.queue == "dead") {
                return leak("list queues");
            }
            Ok(())
        }
        Rpc::PauseQueue => c
            .admin
            .clone()
            .pause_queue(PauseQueueRequest {
                queue: "run".into(),
            })
            .await
            .map(drop),
        Rpc::ResumeQueue => c
            .admin
            .clone()
            .resume_queue(ResumeQueueRequest {
                queue: "run".into(),
            })
            .await
            .map(drop),
        Rpc::DeleteJob => c
            .admin
            .clone()
            .delete_job(DeleteJobRequest {
                job_id: t.failed.clone(),
            })
            .await
            .map(drop),
        Rpc::PurgeJobs => {
            let r = c
                .admin
                .clone()
                .purge_jobs(PurgeJobsRequest {
                    queue: "dead".into(),
                    ..PurgeJobsRequest::default()
                })
                .await?
                .into_inner();
            if r.deleted > 0 {
                return leak("purge");
            }
            Ok(())
        }
        Rpc::RequeueFailed => {
            let r = c
                .admin
                .clone()
                .requeue_failed(RequeueFailedRequest {
                    queue: "dead".into(),
                    limit: 10,
                })
                .await?
                .into_inner();
            if r.requeued + r.remaining > 0 {
                return leak("requeue failed");
            }
            Ok(())
        }
    }
}

/// Every key of tenant A (its hash tags start with `{tenant-a:`).
async fn tenant_a_keys(redis: &RedisServer) -> Snapshot {
    let mut snapshot = Snapshot::take(&mut redis.conn().await).await;
    snapshot.keys.retain(|k, _| k.contains("{tenant-a:"));
    snapshot
}

// --- authorization matrix ------------------------------------------------------

/// Every RPC × every identity: no credentials and unknown tokens are
/// UNAUTHENTICATED, a role that may not call is PERMISSION_DENIED, and
/// another namespace's job is NOT_FOUND (with its real lease token too);
/// nothing of tenant A changes.
#[tokio::test]
async fn every_rpc_answers_by_identity_role_and_namespace() {
    let setup = start_with_keys(&[]).await;
    let srv = &setup.srv;
    let targets = tenant_a_jobs(srv).await;
    let before = tenant_a_keys(&setup._redis).await;

    let mut callers = vec![
        (caller(&srv.channel(), "anonymous", None), None, ""),
        (
            caller(
                &srv.channel(),
                "unknown",
                Some("not-a-key-0123456789abcdef"),
            ),
            None,
            "",
        ),
        (
            caller(&srv.channel(), "jwt-shaped", Some("a.b.c")),
            None,
            "",
        ),
    ];
    for name in [
        "b-client",
        "b-worker",
        "b-operator",
        "b-all",
        "a-client",
        "a-worker",
        "a-operator",
    ] {
        let roles = KEYS.iter().find(|k| k.0 == name).map(|k| k.3).unwrap_or("");
        callers.push((keyed(srv, name), Some(roles), name));
    }
    let mut problems = Vec::new();
    for (c, roles, name) in &callers {
        for rpc in Rpc::ALL {
            let expected = match roles {
                None => Some(Code::Unauthenticated),
                Some(roles) if !roles.contains(rpc.role()) => Some(Code::PermissionDenied),
                // Tenant A with the right role: covered by the lifecycle test.
                Some(_) if name.starts_with("a-") => continue,
                Some(_) if rpc.names_a_job() => Some(Code::NotFound),
                Some(_) => None,
            };
            let got = call(c, rpc, &targets).await;
            let ok = match (&got, expected) {
                (Ok(()), None) => true,
                (Err(s), Some(code)) => s.code() == code,
                _ => false,
            };
            if !ok {
                problems.push(format!(
                    "{} {rpc:?}: expected {expected:?}, got {:?}",
                    c.name,
                    got.map_err(|s| (s.code(), s.message().to_owned()))
                ));
            }
        }
    }
    let after = tenant_a_keys(&setup._redis).await;
    let diff = before.diff(&after);
    if !diff.is_empty() {
        problems.push(format!("tenant A's keys changed:\n{diff}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Tenant B's own job lives under its own hash tag.
    let b_job = submit_as(&keyed(srv, "b-client"), "q").await;
    let keys = Snapshot::take(&mut setup._redis.conn().await).await;
    assert!(
        keys.key_names()
            .iter()
            .any(|k| k.contains("{tenant-b:q}") && k.contains(split_job_id(&b_job).1)),
        "tenant B's job is under {{tenant-b:q}}"
    );
    // Health checking and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(srv.channel());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health needs no credentials");
    assert_no_panics();
}

/// A tenant runs the whole lifecycle with the client library (bearer token)
/// and the worker SDK (bearer token); its operator lists and re-queues its
/// dead letters.
#[tokio::test]
async fn a_tenant_runs_the_lifecycle_with_the_client_library_and_the_worker_sdk() {
    let setup = start_with_keys(&[]).await;
    let srv = &setup.srv;
    let client = Client::connect_with(
        srv.endpoint.clone(),
        ConnectOptions::new().bearer_token(token("a-client")),
    )
    .await
    .expect("connect");
    let operator = Client::connect_with(
        srv.endpoint.clone(),
        ConnectOptions::new().bearer_token(token("a-operator")),
    )
    .await
    .expect("connect");
    let ok = client
        .submit(jobctl_client::SubmitOptions::new("work", "echo").payload(b"hi".to_vec()))
        .await
        .expect("submit");
    let bad = client
        .submit(
            jobctl_client::SubmitOptions::new("work", "explode")
                .max_attempts(1)
                .payload(b"x".to_vec()),
        )
        .await
        .expect("submit");
    // The client may not do an operator's work.
    let denied = client
        .queue_stats("work")
        .await
        .expect_err("no operator role");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");

    let worker = Worker::builder(srv.endpoint.clone())
        .bearer_token(token("a-worker"))
        .queues(["work"])
        .lease_wait(Duration::from_millis(500))
        .handler("echo", |ctx: JobContext| async move {
            Ok(ctx.payload().to_vec())
        })
        .handler("explode", |_ctx: JobContext| async move {
            Err(jobctl_worker::HandlerError::fatal("exploded"))
        })
        .build()
        .expect("worker");
    let stop = tokio_util_cancel();
    let run = tokio::spawn(worker.run({
        let stop = stop.clone();
        async move { stop.notified().await }
    }));
    let mut watch = client.watch(&ok.job_id, 0).await.expect("watch");
    let mut last = None;
    while let Some(event) = watch.next().await.expect("event") {
        last = Some(event.state());
    }
    assert_eq!(last, Some(JobState::Succeeded));
    assert_eq!(
        client.status(&ok.job_id).await.expect("status").result,
        b"hi"
    );
    eventually(
        "the exploding job is FAILED",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            let id = bad.job_id.clone();
            async move {
                let job = client.status(&id).await.map_err(|e| e.to_string())?;
                (job.state() == JobState::Failed)
                    .then_some(())
                    .ok_or(job.state())
                    .map_err(|s| format!("{s:?}"))
            }
        },
    )
    .await;
    let failed = operator.list_failed("work", 10, "").await.expect("list");
    assert_eq!(failed.jobs.len(), 1);
    assert_eq!(
        operator.requeue(&bad.job_id).await.expect("requeue"),
        JobState::Queued
    );
    // Another tenant's operator sees none of it.
    let other = Client::connect_with(
        srv.endpoint.clone(),
        ConnectOptions::new().bearer_token(token("b-operator")),
    )
    .await
    .expect("connect");
    assert!(
        other
            .list_failed("work", 10, "")
            .await
            .expect("list")
            .jobs
            .is_empty()
    );
    assert_eq!(
        other
            .requeue(&bad.job_id)
            .await
            .expect_err("not found")
            .code(),
        Code::NotFound
    );
    stop.notify_one();
    run.await.expect("worker task").expect("worker run");
    assert_no_panics();
}

/// A one-shot stop signal for a worker.
fn tokio_util_cancel() -> std::sync::Arc<tokio::sync::Notify> {
    std::sync::Arc::new(tokio::sync::Notify::new())
}

// --- JWT ------------------------------------------------------------------------

const AUDIENCE: &str = "jobctl-test";
const ISSUER: &str = "https://issuer.test";
const HS_SECRET: &[u8] = b"an hs256 secret of at least 32 bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn claims(ns: &str, roles: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "sub": "svc-1",
        "namespace": ns,
        "roles": roles,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "exp": now() + 600,
        "nbf": now() - 10,
    })
}

fn hs256(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(HS_SECRET).expect("key"),
    )
    .expect("sign")
}

/// HS256 and ES256 tokens (a PEM key and a JWKS file) authenticate; expired,
/// early, wrong-audience, wrong-issuer, unsigned, wrongly signed and
/// namespace-less tokens are UNAUTHENTICATED; the roles claim decides.
#[tokio::test]
async fn jwts_authenticate_and_bad_ones_are_refused() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("hs256");
    std::fs::write(&secret, HS_SECRET).expect("write secret");
    // An ES256 key pair; the public half as a PEM file and as a JWKS.
    let es_key = rcgen::KeyPair::generate().expect("ES256 key");
    let public_pem = dir.path().join("es256.pub.pem");
    std::fs::write(&public_pem, es_key.public_key_pem()).expect("write public key");
    let raw = es_key.public_key_raw();
    assert_eq!(raw.len(), 65, "uncompressed P-256 point");
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64.encode(&raw[1..33]), "y": b64.encode(&raw[33..65]),
    }]});
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, jwks.to_string()).expect("write jwks");
    let es_encoding =
        EncodingKey::from_ec_pem(es_key.serialize_pem().as_bytes()).expect("ES256 signing key");
    let es256 = |claims: &serde_json::Value, kid: Option<&str>| {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &es_encoding).expect("sign")
    };

    for (what, key_flag, key_path) in [
        ("hs256 + es256 pem", "--jwt-public-key-file", &public_pem),
        ("hs256 + es256 jwks", "--jwt-jwks-file", &jwks_path),
    ] {
        let srv = TestServer::start(
            &redis,
            &[
                "--jwt-hs256-secret-file",
                secret.to_str().expect("path"),
                key_flag,
                key_path.to_str().expect("path"),
                "--jwt-audience",
                AUDIENCE,
                "--jwt-issuer",
                ISSUER,
            ],
        )
        .await;
        let as_token = |t: String| caller(&srv.channel(), what, Some(&t));
        // Good tokens.
        for good in [
            hs256(&claims("jwt-ns", &["client"])),
            es256(&claims("jwt-ns", &["client", "worker"]), Some("k1")),
            es256(&claims("jwt-ns", &["client"]), None),
        ] {
            submit_as(&as_token(good), "q").await;
        }
        // Roles as a string; a role the token lacks.
        let mut spaced = claims("jwt-ns", &[]);
        spaced["roles"] = "worker operator".into();
        let worker = as_token(hs256(&spaced));
        let denied = worker
            .job
            .clone()
            .submit(submit_request("q", "k", "x"))
            .await
            .expect_err("a worker may not submit");
        assert_eq!(denied.code(), Code::PermissionDenied, "{what}: {denied:?}");
        worker
            .admin
            .clone()
            .get_queue_stats(GetQueueStatsRequest { queue: "q".into() })
            .await
            .expect("an operator may read stats");

        let mut bad: Vec<(&str, String)> = Vec::new();
        let mut c = claims("jwt-ns", &["client"]);
        c["exp"] = (now() - 3600).into();
        bad.push(("expired", hs256(&c)));
        let mut c = claims("jwt-ns", &["client"]);
        c["nbf"] = (now() + 3600).into();
        bad.push(("not yet valid", hs256(&c)));
        let mut c = claims("jwt-ns", &["client"]);
        c["aud"] = "someone-else".into();
        bad.push(("wrong audience", hs256(&c)));
        let mut c = claims("jwt-ns", &["client"]);
        c["iss"] = "https://evil.test".into();
        bad.push(("wrong issuer", hs256(&c)));
        let mut c = claims("jwt-ns", &["client"]);
        c.as_object_mut().expect("object").remove("exp");
        bad.push(("no exp", hs256(&c)));
        let mut c = claims("jwt-ns", &["client"]);
        c["exp"] = "tomorrow".into();
        bad.push(("exp not a number", hs256(&c)));
        let mut c = claims("jwt-ns", &["client"]);
        c.as_object_mut().expect("object").remove("namespace");
        bad.push(("no namespace", hs256(&c)));
        let mut c = claims("jwt-ns", &["client"]);
        c["namespace"] = "a:b}".into();
        bad.push(("bad namespace", hs256(&c)));
        bad.push((
            "other secret",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims("jwt-ns", &["client"]),
                &EncodingKey::from_secret(b"another secret of at least 32 bytes!!!").expect("key"),
            )
            .expect("sign"),
        ));
        if key_flag == "--jwt-jwks-file" {
            // A kid-less PEM key verifies any kid; a JWKS picks by kid.
            bad.push((
                "unknown kid",
                es256(&claims("jwt-ns", &["client"]), Some("k9")),
            ));
        }
        let good = hs256(&claims("jwt-ns", &["client"]));
        let (head, rest) = good.split_once('.').expect("jwt");
        let (_, sig) = rest.split_once('.').expect("jwt");
        let forged = b64.encode(
            serde_json::to_vec(&claims("other-ns", &["client", "worker", "operator"]))
                .expect("json"),
        );
        bad.push(("payload swapped", format!("{head}.{forged}.{sig}")));
        let none_header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
        bad.push(("alg none", format!("{none_header}.{forged}.")));
        for (why, t) in bad {
            let err = as_token(t)
                .job
                .clone()
                .submit(submit_request("q", "k", "x"))
                .await
                .expect_err(why);
            assert_eq!(err.code(), Code::Unauthenticated, "{what} {why}: {err:?}");
        }
        srv.shutdown().await.expect("shutdown");
    }
    assert_no_panics();
}

// --- TLS and mTLS ---------------------------------------------------------------

fn tls_for(pki: &TestPki, client: Option<&CertFiles>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca.cert_pem))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(&c.cert_pem, &c.key_pem));
    }
    tls
}

async fn tls_channel(srv: &TestServer, tls: ClientTlsConfig) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", srv.addr.port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy()
}

/// With only mTLS on, the certificate's CN is the namespace and its OUs the
/// roles; a client without a certificate does not get through the
/// handshake, and one from another CA neither.
#[tokio::test]
async fn mtls_certificates_name_the_caller_and_clients_without_one_are_refused() {
    let redis = RedisServer::start().await;
    let pki = TestPki::new();
    let server = pki.server("server");
    let a_client = pki.client("a-client", "tenant-a", &["client"]);
    let a_worker = pki.client("a-worker", "tenant-a", &["worker"]);
    let b_client = pki.client("b-client", "tenant-b", &["client"]);
    let config = jobctl_tests::server::config(
        &redis.url(),
        &[
            "--tls-cert",
            server.cert_path.to_str().expect("path"),
            "--tls-key",
            server.key_path.to_str().expect("path"),
            "--tls-client-ca",
            pki.ca.cert_path.to_str().expect("path"),
        ],
    );
    let srv = TestServer::start_with_tls(config, Some(tls_for(&pki, Some(&a_client)))).await;
    let a = caller(&srv.channel(), "a-client", None);
    let id = submit_as(&a, "q").await;
    let w = caller(
        &tls_channel(&srv, tls_for(&pki, Some(&a_worker))).await,
        "a-worker",
        None,
    );
    assert_eq!(
        w.job
            .clone()
            .submit(submit_request("q", "k", "x"))
            .await
            .expect_err("a worker certificate may not submit")
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(lease_as(&w, "q").await.job_id, id);
    let b = caller(
        &tls_channel(&srv, tls_for(&pki, Some(&b_client))).await,
        "b-client",
        None,
    );
    let err = b
        .job
        .clone()
        .get_status(GetStatusRequest { job_id: id.clone() })
        .await
        .expect_err("another tenant");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // No certificate: refused in the handshake (no call gets through).
    let anonymous = caller(&tls_channel(&srv, tls_for(&pki, None)).await, "none", None);
    let err = anonymous
        .job
        .clone()
        .get_status(GetStatusRequest { job_id: id.clone() })
        .await
        .expect_err("no client certificate");
    assert!(
        matches!(
            err.code(),
            Code::Unavailable | Code::Unknown | Code::Internal
        ),
        "{err:?}"
    );
    // A certificate from another CA: refused too.
    let stranger_pki = TestPki::new();
    let stranger = stranger_pki.client("stranger", "tenant-a", &["client"]);
    let s = caller(
        &tls_channel(&srv, tls_for(&pki, Some(&stranger))).await,
        "stranger",
        None,
    );
    assert!(
        s.job
            .clone()
            .get_status(GetStatusRequest { job_id: id.clone() })
            .await
            .is_err()
    );
    // Plain HTTP/2 on the TLS port gets nowhere.
    let plain = caller(
        &tonic::transport::Endpoint::from_shared(format!("http://{}", srv.addr))
            .expect("endpoint")
            .connect_lazy(),
        "plain",
        None,
    );
    assert!(
        plain
            .job
            .clone()
            .get_status(GetStatusRequest { job_id: id })
            .await
            .is_err()
    );
    assert_no_panics();
}

/// API keys and mTLS together: the certificate is optional, a token over
/// TLS works without one, and no credentials at all is UNAUTHENTICATED.
#[tokio::test]
async fn tokens_and_certificates_work_together_over_tls() {
    let redis = RedisServer::start().await;
    let pki = TestPki::new();
    let server = pki.server("server");
    let a_client = pki.client("a-client", "tenant-a", &["client"]);
    let keys = write_keys(pki.dir());
    let config = jobctl_tests::server::config(
        &redis.url(),
        &[
            "--tls-cert",
            server.cert_path.to_str().expect("path"),
            "--tls-key",
            server.key_path.to_str().expect("path"),
            "--tls-client-ca",
            pki.ca.cert_path.to_str().expect("path"),
            "--api-keys-file",
            keys.to_str().expect("path"),
        ],
    );
    let srv = TestServer::start_with_tls(config, Some(tls_for(&pki, None))).await;
    let by_cert = caller(
        &tls_channel(&srv, tls_for(&pki, Some(&a_client))).await,
        "cert",
        None,
    );
    let id = submit_as(&by_cert, "q").await;
    // The client library over TLS with a token, no certificate.
    let client = Client::connect_with(
        format!("https://localhost:{}", srv.addr.port()),
        ConnectOptions::new()
            .bearer_token(token("a-client"))
            .ca_certificate_pem(pki.ca.cert_pem.clone()),
    )
    .await
    .expect("connect over TLS");
    assert_eq!(client.status(&id).await.expect("status").id, id);
    // The client library with a client certificate, no token.
    let with_cert = Client::connect_with(
        format!("https://localhost:{}", srv.addr.port()),
        ConnectOptions::new()
            .ca_certificate_pem(pki.ca.cert_pem.clone())
            .client_identity_pem(a_client.cert_pem.clone(), a_client.key_pem.clone()),
    )
    .await
    .expect("connect with a certificate");
    assert_eq!(with_cert.status(&id).await.expect("status").id, id);
    let nobody = caller(&srv.channel(), "nobody", None);
    let err = nobody
        .job
        .clone()
        .get_status(GetStatusRequest { job_id: id })
        .await
        .expect_err("no credentials");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_no_panics();
}

// --- logs, start-up ---------------------------------------------------------------

/// The server binary, at trace level, never prints a token it was sent
/// (valid or not, API key or JWT), and says at start-up whether
/// authentication is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_reach_the_logs_and_start_up_says_whether_auth_is_on() {
    let redis = RedisServer::start().await;
    let off = ServerProcess::start(&redis.url(), &[]).await;
    eventually(
        "the start-up says auth is off",
        Duration::from_secs(10),
        || {
            let out = off.output();
            async move {
                out.contains("authentication is off")
                    .then_some(())
                    .ok_or("not yet")
            }
        },
    )
    .await;
    drop(off);

    let dir = tempfile::tempdir().expect("temp dir");
    let keys = write_keys(dir.path());
    let secret = dir.path().join("hs256");
    std::fs::write(&secret, HS_SECRET).expect("write secret");
    let srv = ServerProcess::start_wrapped(
        &[],
        &[("RUST_LOG", "trace")],
        &redis.url(),
        &[
            "--api-keys-file",
            keys.to_str().expect("path"),
            "--jwt-hs256-secret-file",
            secret.to_str().expect("path"),
            "--jwt-audience",
            AUDIENCE,
            "--jwt-issuer",
            ISSUER,
        ],
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(srv.endpoint.clone())
        .expect("endpoint")
        .connect_lazy();
    let jwt = hs256(&claims("tenant-a", &["client"]));
    let mut expired = claims("tenant-a", &["client"]);
    expired["exp"] = (now() - 3600).into();
    let expired_jwt = hs256(&expired);
    let wrong_key = "wrong-key-91c3e5a7b2d4f608";
    let tokens = [
        token("a-client"),
        token("a-worker"),
        jwt.as_str(),
        expired_jwt.as_str(),
        wrong_key,
    ];
    for t in tokens {
        let c = caller(&channel, "t", Some(t));
        let _ = c.job.clone().submit(submit_request("q", "k", "x")).await;
        let _ = c
            .worker
            .clone()
            .lease(LeaseRequest {
                worker_id: "w".into(),
                queues: vec!["q".into()],
                max_jobs: 1,
                wait: None,
            })
            .await;
    }
    // Expired JWT and wrong key, two calls each: four refusals logged.
    let out = eventually(
        "the server logged the calls",
        Duration::from_secs(10),
        || {
            let out = srv.output();
            async move {
                (out.contains("authentication is on")
                    && out.matches("refused an unauthenticated call").count() >= 4)
                    .then_some(out)
                    .ok_or("not yet")
            }
        },
    )
    .await;
    for t in tokens {
        // The signature part alone is distinctive enough for a JWT.
        let needle = t.rsplit('.').next().unwrap_or(t);
        assert!(
            !out.contains(needle),
            "the server logged a token ({}...)",
            &t[..8]
        );
    }
    assert!(
        out.contains("refused an unauthenticated call"),
        "refusals are logged"
    );
}

/// Bad authentication settings stop the server at start-up with a clear
/// error instead of running open.
#[tokio::test]
async fn bad_auth_settings_stop_the_server_at_start_up() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let bad_keys = dir.path().join("keys");
    std::fs::write(&bad_keys, "short-secret tenant-a client\n").expect("write");
    let missing = dir.path().join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--auth".into(), "jwt".into()], "jwt"),
        (vec!["--auth".into(), "api-key".into()], "--api-keys-file"),
        (
            vec!["--api-keys-file".into(), bad_keys.display().to_string()],
            "line 1",
        ),
        (
            vec!["--api-keys-file".into(), missing.display().to_string()],
            "cannot read",
        ),
        (
            vec!["--auth".into(), "none,api-key".into()],
            "cannot be combined",
        ),
    ];
    for (flags, says) in cases {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let config = jobctl_tests::server::config(&redis.url(), &flags);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let result = tokio::time::timeout(
            Duration::from_secs(10),
            jobctl_server::serve(config, listener, std::future::pending()),
        )
        .await
        .expect("serve returns at once");
        let err = result.expect_err("refused");
        assert!(err.to_string().contains(says), "{flags:?}: {err}");
        assert!(!err.to_string().contains("short-secret"), "{err}");
    }
}

// --- transport limits ------------------------------------------------------------------

/// Protobuf groups nested `depth` deep (field 15, start and end tags).
fn nested_groups(depth: usize) -> Vec<u8> {
    let mut body = vec![0x7b; depth]; // field 15, wire type 3 (start group)
    body.extend(std::iter::repeat_n(0x7c, depth)); // end group
    body
}

/// Length-delimited messages nested `depth` deep in field 1.
fn nested_messages(depth: usize) -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..depth {
        let mut outer = vec![0x0a];
        let mut len = body.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                outer.push(byte);
                break;
            }
            outer.push(byte | 0x80);
        }
        outer.extend(body);
        body = outer;
    }
    body
}

/// Oversized messages are RESOURCE_EXHAUSTED (UNAUTHENTICATED without a
/// token, before the body is read); deeply nested ones are refused; huge
/// metadata is refused; the server never panics and keeps serving.
#[tokio::test]
async fn oversized_nested_and_huge_header_requests_are_refused_without_a_panic() {
    let setup = start_with_keys(&[
        "--max-decoding-message-bytes",
        "65536",
        "--max-header-list-bytes",
        "16384",
    ])
    .await;
    let srv = &setup.srv;
    let channel = srv.channel();
    let before = Snapshot::take(&mut setup._redis.conn().await).await;
    let big = {
        let mut r = submit_request("q", "k", vec![7u8; 100_000]);
        r.kind = "k".into();
        r
    };
    let c = keyed(srv, "a-client");
    let err = c
        .job
        .clone()
        .submit(big.clone())
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let anon = caller(&channel, "anon", None);
    let err = anon.job.clone().submit(big).await.expect_err("too big");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let mut problems = Vec::new();
    for (method, streaming) in METHODS {
        for (what, body) in [
            ("nested groups", nested_groups(100_000)),
            ("nested messages", nested_messages(2_000)),
        ] {
            for who in ["b-all", "a-client"] {
                match send_raw(&channel, Some(token(who)), method, streaming, body.clone()).await {
                    Err(s)
                        if matches!(
                            s.code(),
                            Code::Internal
                                | Code::InvalidArgument
                                | Code::PermissionDenied
                                | Code::NotFound
                                | Code::ResourceExhausted
                        ) => {}
                    // Fields that happen to decode into an empty request.
                    Ok(())
                        if method.ends_with("Lease")
                            || method.ends_with("Stats")
                            || method.ends_with("ListQueues") => {}
                    other => problems.push(format!("{who} {method} with {what}: {other:?}")),
                }
            }
        }
    }
    // Metadata over the header list limit.
    let mut request = tonic::Request::new(GetStatusRequest {
        job_id: "q:01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
    });
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(40_000).parse().expect("ascii"));
    let huge = keyed(srv, "a-client").job.clone().get_status(request).await;
    assert!(huge.is_err(), "huge metadata is refused");
    let after = Snapshot::take(&mut setup._redis.conn().await).await;
    before.assert_unchanged(&after, "refused requests");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Still serving.
    submit_as(&keyed(srv, "a-client"), "q").await;
    assert_no_panics();
}

/// With --max-concurrent-requests 1, a call that finds the only slot taken
/// (by a waiting Lease) is refused at once with UNAVAILABLE; once the slot
/// is free calls go through again.
#[tokio::test]
async fn load_is_shed_with_unavailable_beyond_the_concurrency_limit() {
    let setup = start_with_keys(&["--max-concurrent-requests", "1"]).await;
    let srv = &setup.srv;
    let worker = keyed(srv, "a-worker");
    let client = keyed(srv, "a-client");
    // Keeps a long poll in flight: a Lease that was itself shed tries again.
    let holder = tokio::spawn(async move {
        loop {
            let _ = worker
                .worker
                .clone()
                .lease(LeaseRequest {
                    worker_id: "w".into(),
                    queues: vec!["empty".into()],
                    max_jobs: 1,
                    wait: Some(pb_duration(Duration::from_secs(30))),
                })
                .await;
        }
    });
    // A GetStatus of an unknown job answers NOT_FOUND, unless it is shed.
    let status_code = || {
        let mut job = client.job.clone();
        async move {
            job.get_status(GetStatusRequest {
                job_id: "q:01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            })
            .await
            .map_or_else(|s| s.code(), |_| Code::Ok)
        }
    };
    eventually("a call is shed", Duration::from_secs(20), || async {
        let code = status_code().await;
        (code == Code::Unavailable).then_some(()).ok_or(code)
    })
    .await;
    holder.abort();
    eventually(
        "calls go through again",
        Duration::from_secs(20),
        || async {
            let code = status_code().await;
            (code == Code::NotFound).then_some(()).ok_or(code)
        },
    )
    .await;
    assert_no_panics();
}

// --- property tests -------------------------------------------------------------------

/// Random bytes to every RPC from callers without credentials, with unknown
/// tokens or without the RPC's role: always UNAUTHENTICATED or
/// PERMISSION_DENIED, no panic, and Redis is untouched.
#[test]
fn random_bytes_without_the_right_credentials_never_write() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let setup = runtime.block_on(start_with_keys(&[]));
    let channel = setup.srv.channel();
    let before = runtime.block_on(async { Snapshot::take(&mut setup._redis.conn().await).await });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..METHODS.len(),
        prop_oneof![
            Just(None),
            Just(Some("unknown-key-000000000000")),
            Just(Some("a.b.c")),
            Just(Some("a-worker")),
            Just(Some("a-client")),
            Just(Some("a-operator")),
        ],
        proptest::collection::vec(any::<u8>(), 0..512),
    );
    runner
        .run(&strategy, |(m, who, body)| {
            let (method, streaming) = METHODS[m];
            let role = Rpc::ALL[m].role();
            let token = who.map(|w| if w.starts_with("a-") { token(w) } else { w });
            // Callers whose role allows the RPC are the other property's.
            if who.is_some_and(|w| w == format!("a-{role}")) {
                return Ok(());
            }
            let got = runtime.block_on(send_raw(&channel, token, method, streaming, body));
            match got {
                Err(s) if matches!(s.code(), Code::Unauthenticated | Code::PermissionDenied) => {
                    Ok(())
                }
                other => Err(TestCaseError::fail(format!("{who:?} {method}: {other:?}"))),
            }
        })
        .expect("property");
    let after = runtime.block_on(async { Snapshot::take(&mut setup._redis.conn().await).await });
    before.assert_unchanged(&after, "random requests without the right credentials");
    assert_no_panics();
}

/// Random field values from tenant B's callers (every role) aimed at tenant
/// A's jobs (bent ids, the real lease token, random tokens and queues):
/// no panic, no status but the expected ones, and tenant A's keys are
/// untouched.
#[test]
fn random_requests_from_another_tenant_never_touch_its_jobs() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let setup = runtime.block_on(start_with_keys(&[]));
    let srv = &setup.srv;
    let targets = runtime.block_on(tenant_a_jobs(srv));
    let before = runtime.block_on(tenant_a_keys(&setup._redis));
    let b = keyed(srv, "b-all");
    let ids = [
        targets.queued.clone(),
        targets.running.job_id.clone(),
        targets.failed.clone(),
    ];
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (
        0..Rpc::ALL.len(),
        0..ids.len(),
        prop_oneof![
            Just(String::new()),
            "[a-z]{1,8}",
            "[ -~]{0,40}",
            Just("{tenant-a:q}".to_owned())
        ],
        prop_oneof![Just(targets.running.lease_token.clone()), "[ -~]{0,64}"],
    );
    runner
        .run(&strategy, |(r, i, noise, lease_token)| {
            let rpc = Rpc::ALL[r];
            let id = match noise.len() % 3 {
                0 => ids[i].clone(),
                1 => format!("{noise}:{}", split_job_id(&ids[i]).1),
                _ => format!("{}{noise}", ids[i]),
            };
            let mut running = targets.running.clone();
            running.job_id = id.clone();
            running.lease_token = lease_token;
            let t = Targets {
                queued: id.clone(),
                running,
                failed: id,
            };
            let result = runtime.block_on(call(&b, rpc, &t));
            match result {
                Ok(()) => Ok(()),
                Err(s)
                    if matches!(
                        s.code(),
                        Code::NotFound | Code::InvalidArgument | Code::ResourceExhausted
                    ) =>
                {
                    Ok(())
                }
                Err(s) => Err(TestCaseError::fail(format!("{rpc:?}: {s:?}"))),
            }
        })
        .expect("property");
    let after = runtime.block_on(tenant_a_keys(&setup._redis));
    before.assert_unchanged(&after, "tenant B's random requests");
    assert_no_panics();
}

// --- Redis: ACL users and TLS -----------------------------------------------------------

/// The minimal ACL of the README, for the default key prefix `jobctl`.
const MINIMAL_ACL: &str = "on >s3cret-jobctl-pass resetkeys ~jobctl:* resetchannels &jobctl:* \
    &jobctl:{*}:ev:* -@all +ping +time +evalsha +script|load +zrange +zrevrange +zcard \
    +xrange +exists +hget +hgetall +sadd +smembers +subscribe +psubscribe +unsubscribe \
    +punsubscribe +del +hdel +hincrby +hmget +hset +incr +persist +pexpire +publish +xadd \
    +zadd +zrem +zscore +incrby +zmscore +set";

async fn add_acl_user(redis: &RedisServer, user: &str, rules: &str) {
    let mut conn = redis.conn().await;
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER").arg(user);
    for rule in rules.split_whitespace() {
        cmd.arg(rule);
    }
    let _: () = cmd.query_async(&mut conn).await.expect("ACL SETUSER");
}

/// As a Redis user with only the README's minimal ACL, the server runs the
/// whole lifecycle: submit, schedule, lease, heartbeat, progress, watch,
/// cancel, fail, dead letters, re-queue, stats, expired leases, retention.
/// A wrong password is UNAVAILABLE, not a crash.
#[tokio::test]
async fn a_minimal_acl_redis_user_runs_the_whole_lifecycle() {
    let redis = RedisServer::start().await;
    add_acl_user(&redis, "jobctl", MINIMAL_ACL).await;
    let url = format!(
        "redis://jobctl:s3cret-jobctl-pass@127.0.0.1:{}/",
        redis.port()
    );
    let srv = TestServer::start_with_url(&url, &[]).await;
    let job = srv.job();
    let worker = srv.worker();
    // Scheduled, then promoted by the maintenance pass.
    let mut delayed = submit_request("acl", "k", "later");
    delayed.schedule = Some(jobctl_proto::v1::submit_request::Schedule::Delay(
        pb_duration(Duration::from_millis(200)),
    ));
    let delayed = submit(&job, delayed).await;
    let leased = lease_one(&worker, "acl").await;
    assert_eq!(leased.job_id, delayed);
    let mut hb = heartbeat_request(&leased);
    hb.progress = Some(jobctl_proto::v1::Progress {
        percent: 50.0,
        ..Default::default()
    });
    hb.checkpoint = Some(b"cp".to_vec());
    worker.clone().heartbeat(hb).await.expect("heartbeat");
    let mut watch = job
        .clone()
        .watch_progress(WatchProgressRequest {
            job_id: delayed.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch")
        .into_inner();
    complete(&worker, &leased, b"done").await;
    let mut states = Vec::new();
    while let Some(event) = watch.message().await.expect("event") {
        states.push(event.event.map(|e| e.state()));
    }
    assert_eq!(
        states.last().copied().flatten(),
        Some(JobState::Succeeded),
        "{states:?}"
    );
    // Cancel a queued job; fail one for good, list and re-queue it.
    let queued = submit(&job, submit_request("acl2", "k", "x")).await;
    job.clone()
        .cancel(CancelRequest {
            job_id: queued.clone(),
            reason: "no".into(),
        })
        .await
        .expect("cancel");
    let mut once = submit_request("acl3", "k", "x");
    once.max_attempts = 1;
    let doomed = submit(&job, once).await;
    let leased = lease_one(&worker, "acl3").await;
    worker
        .clone()
        .fail(fail_request(&leased, "boom", false))
        .await
        .expect("fail");
    let failed = srv
        .admin()
        .list_failed(ListFailedRequest {
            queue: "acl3".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("list failed")
        .into_inner();
    assert_eq!(failed.jobs.len(), 1);
    srv.admin()
        .requeue(RequeueRequest {
            job_id: doomed.clone(),
        })
        .await
        .expect("requeue");
    // An expired lease is reaped back to the queue.
    let mut short = submit_request("acl4", "k", "x");
    short.lease_ttl = Some(pb_duration(Duration::from_secs(1)));
    short.retention = Some(pb_duration(Duration::from_secs(1)));
    let short = submit(&job, short).await;
    let _abandoned = lease_one(&worker, "acl4").await;
    let again = lease_one(&worker, "acl4").await;
    assert_eq!(again.job_id, short);
    complete(&worker, &again, b"ok").await;
    srv.admin()
        .get_queue_stats(GetQueueStatsRequest {
            queue: "acl".into(),
        })
        .await
        .expect("stats");
    // The operators' calls: pause, resume, list, delete.
    srv.admin()
        .pause_queue(PauseQueueRequest {
            queue: "acl".into(),
        })
        .await
        .expect("pause");
    srv.admin()
        .resume_queue(ResumeQueueRequest {
            queue: "acl".into(),
        })
        .await
        .expect("resume");
    let listed = srv
        .admin()
        .list_jobs(ListJobsRequest {
            queue: "acl".into(),
            filter: Some(JobFilter {
                states: vec![JobState::Succeeded.into()],
                ..JobFilter::default()
            }),
            ..ListJobsRequest::default()
        })
        .await
        .expect("list jobs")
        .into_inner()
        .jobs;
    let first = listed.first().expect("a finished job of acl");
    srv.admin()
        .delete_job(DeleteJobRequest {
            job_id: first.id.clone(),
        })
        .await
        .expect("delete");
    // Retention: the finished job is deleted by the maintenance pass.
    eventually("the finished job expires", Duration::from_secs(20), || {
        let job = job.clone();
        let id = short.clone();
        async move {
            match try_get_job(&job, &id).await {
                Err(s) if s.code() == Code::NotFound => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    let denied: String = redis::cmd("ACL")
        .arg("LOG")
        .query_async::<redis::Value>(&mut redis.conn().await)
        .await
        .map(|v| format!("{v:?}"))
        .expect("ACL LOG");
    assert!(
        !denied.contains("jobctl"),
        "the minimal ACL denied something: {denied}"
    );
    srv.shutdown().await.expect("shutdown");

    // A wrong password: the server starts but answers UNAVAILABLE.
    let wrong = format!("redis://jobctl:wrong@127.0.0.1:{}/", redis.port());
    let config = jobctl_tests::server::config(&wrong, &[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(jobctl_server::serve(
        config,
        listener,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    eventually(
        "a wrong password is UNAVAILABLE",
        Duration::from_secs(20),
        || {
            let mut job = JobServiceClient::new(channel.clone());
            async move {
                match job.submit(submit_request("q", "k", "x")).await {
                    Err(s) if matches!(s.code(), Code::Unavailable | Code::Internal) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    task.abort();
    assert_no_panics();
}

/// `rediss://` to a redis-server with TLS, verified against a private CA
/// (`--redis-ca-cert`), with a client certificate Redis requires.
#[tokio::test]
async fn rediss_with_a_private_ca_and_a_client_certificate_works() {
    let pki = TestPki::new();
    let server_cert = pki.server("redis");
    let client_cert = pki.client("redis-client", "jobctl", &[]);
    let tls_port = jobctl_tests::redis_server::free_port();
    let redis = RedisServer::start_with(RedisOptions {
        extra_args: vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            server_cert.cert_path.display().to_string(),
            "--tls-key-file".into(),
            server_cert.key_path.display().to_string(),
            "--tls-ca-cert-file".into(),
            pki.ca.cert_path.display().to_string(),
            "--tls-auth-clients".into(),
            "yes".into(),
        ],
        ..RedisOptions::default()
    })
    .await;
    let url = format!("rediss://localhost:{tls_port}/");
    let srv = TestServer::start_with_url(
        &url,
        &[
            "--redis-ca-cert",
            pki.ca.cert_path.to_str().expect("path"),
            "--redis-client-cert",
            client_cert.cert_path.to_str().expect("path"),
            "--redis-client-key",
            client_cert.key_path.to_str().expect("path"),
        ],
    )
    .await;
    let id = submit(&srv.job, submit_request("tls", "k", "x")).await;
    let leased = lease_one(&srv.worker, "tls").await;
    complete(&srv.worker, &leased, b"ok").await;
    assert_eq!(get_job(&srv.job, &id).await.result, b"ok");
    // It really went over the TLS port: the job is in this Redis.
    let keys = Snapshot::take(&mut redis.conn().await).await;
    assert!(!keys.keys_containing(split_job_id(&id).1).is_empty());
    assert_no_panics();
}

// --- cost --------------------------------------------------------------------------------

/// Not a pass/fail test: prints the mean latency of GetStatus on the
/// embedded store with authentication off, an API key, an HS256 JWT and an
/// ES256 JWT. Run with
/// `cargo nextest run -p jobctl-tests --run-ignored only auth::measure --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn measure_authentication_cost_per_call() {
    const CALLS: u32 = 3000;
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = write_keys(dir.path());
    let secret = dir.path().join("hs256");
    std::fs::write(&secret, HS_SECRET).expect("write secret");
    let es_key = rcgen::KeyPair::generate().expect("ES256 key");
    let public_pem = dir.path().join("es256.pub.pem");
    std::fs::write(&public_pem, es_key.public_key_pem()).expect("write public key");
    let es_encoding =
        EncodingKey::from_ec_pem(es_key.serialize_pem().as_bytes()).expect("ES256 signing key");
    let es_jwt = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims("tenant-a", &["client"]),
        &es_encoding,
    )
    .expect("sign");
    let hs_jwt = hs256(&claims("tenant-a", &["client"]));
    let auth_flags = [
        "--api-keys-file",
        keys.to_str().expect("path"),
        "--jwt-hs256-secret-file",
        secret.to_str().expect("path"),
        "--jwt-public-key-file",
        public_pem.to_str().expect("path"),
        "--jwt-audience",
        AUDIENCE,
        "--jwt-issuer",
        ISSUER,
    ];
    let off = TestServer::start_with_config(jobctl_tests::server::embedded_config(&[])).await;
    let on =
        TestServer::start_with_config(jobctl_tests::server::embedded_config(&auth_flags)).await;
    let cases: [(&str, &TestServer, Option<&str>); 4] = [
        ("auth off", &off, None),
        ("api key", &on, Some(token("a-client"))),
        ("jwt hs256", &on, Some(hs_jwt.as_str())),
        ("jwt es256", &on, Some(es_jwt.as_str())),
    ];
    for (what, srv, token) in cases {
        let c = caller(&srv.channel(), what, token);
        let request = GetStatusRequest {
            job_id: "q:01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
        };
        for _ in 0..200 {
            let _ = c.job.clone().get_status(request.clone()).await;
        }
        let start = std::time::Instant::now();
        for _ in 0..CALLS {
            let err = c
                .job
                .clone()
                .get_status(request.clone())
                .await
                .expect_err("no such job");
            assert_eq!(err.code(), Code::NotFound, "{what}: {err:?}");
        }
        let mean = start.elapsed() / CALLS;
        println!("{what:>10}: {mean:?} per GetStatus ({CALLS} sequential calls)");
    }
}
