//! The operations dashboard (`--dashboard`), served on the HTTP port under
//! `/dashboard/`: a static page (HTML, JS and CSS compiled in, no build
//! step) and the JSON it reads, `/dashboard/api/…`.
//!
//! The API calls the same service implementations as gRPC (`AdminApi`,
//! `JobApi`), with the identity the request's `Authorization: Bearer`
//! header proves (the gRPC port's `Authenticator`: API keys or JWTs). It
//! must hold the `operator` role; an operator may also cancel and watch
//! jobs here. No cookie is used, so a browser never attaches a credential
//! to a request another site makes. Actions (POST) are refused unless they
//! carry `Content-Type: application/json` and the `X-Jobctl-Dashboard`
//! header (neither of which a cross-site form can send, and a cross-site
//! `fetch` with them needs a CORS preflight this server never grants), and
//! unless their `Origin`, when sent, is this server's; so actions are safe
//! from cross-site requests even with authentication off.
//!
//! Live events are Server-Sent Events (`/dashboard/api/events`), read by
//! the page with `fetch` (so the header is sent) and resumed with
//! `Last-Event-ID` / `after`.

mod json;

use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use jobctl_proto::v1::admin_service_server::AdminService;
use jobctl_proto::v1::job_service_server::JobService;
use jobctl_proto::v1::{self, JobState, ListOrder};
use serde_json::{Value, json};
use tonic::{Code, Request};

use crate::api::{AdminApi, JobApi, Shared};
use crate::auth::{Authenticator, Identity, Role};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// The header every action must carry.
pub const ACTION_HEADER: &str = "x-jobctl-dashboard";

#[derive(Clone)]
struct Dashboard {
    shared: Arc<Shared>,
    auth: Arc<Authenticator>,
}

/// The dashboard's routes, to merge into the HTTP port's router.
pub fn router(shared: Arc<Shared>, auth: Arc<Authenticator>) -> Router {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/app.css", get(app_css))
        .route("/dashboard/api/whoami", get(whoami))
        .route("/dashboard/api/queues", get(queues))
        .route("/dashboard/api/jobs", get(jobs))
        .route("/dashboard/api/job", get(job))
        .route("/dashboard/api/events", get(events))
        .route("/dashboard/api/cancel", post(cancel))
        .route("/dashboard/api/requeue", post(requeue))
        .route("/dashboard/api/delete", post(delete))
        .route("/dashboard/api/pause", post(pause))
        .route("/dashboard/api/resume", post(resume))
        .route("/dashboard/api/requeue-failed", post(requeue_failed))
        .with_state(Dashboard { shared, auth })
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // The page runs only its own script and talks only to this server.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn app_js() -> Response {
    page("text/javascript; charset=utf-8", APP_JS)
}

async fn app_css() -> Response {
    page("text/css; charset=utf-8", APP_CSS)
}

/// A refusal as JSON: `{"error": …, "code": …}`.
struct Refusal(StatusCode, String, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1, "code": self.2 });
        (
            self.0,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<tonic::Status> for Refusal {
    fn from(s: tonic::Status) -> Self {
        let status = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match s.code() {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::NotFound => "NOT_FOUND",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Unauthenticated => "UNAUTHENTICATED",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::Unavailable => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        Refusal(status, s.message().to_owned(), code)
    }
}

fn ok(value: Value) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        value.to_string(),
    )
        .into_response()
}

type Answer = Result<Response, Refusal>;

impl Dashboard {
    /// The caller, who must be an operator.
    fn identity(&self, headers: &HeaderMap) -> Result<Identity, Refusal> {
        let mut identity = self
            .auth
            .authenticate(headers, None::<&[Vec<u8>]>)
            .map_err(|e| {
                Refusal(
                    StatusCode::UNAUTHORIZED,
                    format!("{e}: send Authorization: Bearer <an operator's API key or JWT>"),
                    "UNAUTHENTICATED",
                )
            })?;
        if !identity.roles.contains(Role::Operator) {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                format!(
                    "{} may not use the dashboard: it needs the operator role",
                    identity.subject
                ),
                "PERMISSION_DENIED",
            ));
        }
        // An operator may cancel and watch from the dashboard.
        identity.roles.insert(Role::Client);
        Ok(identity)
    }

    /// An action's caller: as [`Dashboard::identity`], from a request no
    /// other site could have made.
    fn actor(&self, headers: &HeaderMap) -> Result<Identity, Refusal> {
        same_site(headers)?;
        self.identity(headers)
    }

    fn request<T>(&self, identity: &Identity, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(identity.clone());
        request
    }

    fn admin(&self) -> AdminApi {
        AdminApi(self.shared.clone())
    }

    fn jobs(&self) -> JobApi {
        JobApi(self.shared.clone())
    }
}

/// Refuses what a cross-site page could send: no JSON content type, no
/// `X-Jobctl-Dashboard`, a foreign `Origin` or `Sec-Fetch-Site`.
fn same_site(headers: &HeaderMap) -> Result<(), Refusal> {
    let refuse = |why: &str| {
        Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("refused a cross-site action: {why}"),
            "PERMISSION_DENIED",
        ))
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return refuse("an action must be sent as application/json");
    }
    if headers.get(ACTION_HEADER).is_none() {
        return refuse("an action must carry the X-Jobctl-Dashboard header");
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return refuse("Sec-Fetch-Site is not same-origin");
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let origin = origin.to_str().unwrap_or_default();
        let origin_host = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or_default();
        if host.is_empty() || origin_host != host {
            return refuse("its Origin is not this server");
        }
    }
    Ok(())
}

/// The query string's pairs, decoded.
fn query_pairs(raw: &Option<String>) -> Vec<(String, String)> {
    raw.as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

fn one<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn bad(field: &str, why: &str) -> Refusal {
    Refusal(
        StatusCode::BAD_REQUEST,
        format!("{field}: {why}"),
        "INVALID_ARGUMENT",
    )
}

/// An action's JSON body, as an object.
fn body(bytes: &Bytes) -> Result<serde_json::Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(bad("body", "must be a JSON object")),
    }
}

fn field(map: &serde_json::Map<String, Value>, name: &str) -> Result<String, Refusal> {
    map.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| bad(name, "must be a string"))
}

async fn whoami(State(d): State<Dashboard>, headers: HeaderMap) -> Answer {
    let identity = d.identity(&headers)?;
    Ok(ok(json!({
        "subject": identity.subject,
        "namespace": identity.namespace,
        "auth": d.auth.is_on(),
    })))
}

async fn queues(State(d): State<Dashboard>, headers: HeaderMap) -> Answer {
    let identity = d.identity(&headers)?;
    let listed = d
        .admin()
        .list_queues(d.request(&identity, v1::ListQueuesRequest {}))
        .await?
        .into_inner();
    let metrics = &d.shared.metrics;
    let queues: Vec<Value> = listed
        .queues
        .iter()
        .map(|q| {
            let labels = crate::metrics::queue(&identity.namespace, &q.queue);
            let failed: u64 = ["SCHEDULED", "QUEUED", "FAILED", "CANCELLED"]
                .iter()
                .map(|state| {
                    metrics
                        .failed
                        .get_or_create(&crate::metrics::StateLabels {
                            namespace: identity.namespace.clone(),
                            queue: q.queue.clone(),
                            state: (*state).to_owned(),
                        })
                        .get()
                })
                .sum();
            let mut v = json::stats(q);
            v["counters"] = json!({
                "submitted": metrics.submitted.get_or_create(&labels).get(),
                "completed": metrics.completed.get_or_create(&labels).get(),
                "failed": failed,
            });
            v
        })
        .collect();
    Ok(ok(json!({ "queues": queues })))
}

fn state_named(name: &str) -> Option<JobState> {
    JobState::from_str_name(&format!("JOB_STATE_{}", name.to_ascii_uppercase()))
        .filter(|s| *s != JobState::Unspecified)
}

/// RFC 3339 or milliseconds since the epoch.
fn time_param(field: &str, value: &str) -> Result<Option<prost_types::Timestamp>, Refusal> {
    if value.is_empty() {
        return Ok(None);
    }
    let t = match value.parse::<u64>() {
        Ok(ms) => std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        Err(_) => humantime::parse_rfc3339_weak(value)
            .map_err(|_| bad(field, "must be an RFC 3339 time or ms since the epoch"))?,
    };
    Ok(Some(prost_types::Timestamp::from(t)))
}

async fn jobs(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    let identity = d.identity(&headers)?;
    let q = query_pairs(&raw);
    let mut filter = v1::JobFilter {
        kind: one(&q, "kind").to_owned(),
        created_after: time_param("after", one(&q, "after"))?,
        created_before: time_param("before", one(&q, "before"))?,
        ..v1::JobFilter::default()
    };
    for (k, v) in &q {
        match k.as_str() {
            "state" if !v.is_empty() => {
                let state = state_named(v).ok_or_else(|| bad("state", "is not a job state"))?;
                filter.states.push(state.into());
            }
            "label" if !v.is_empty() => {
                let (key, value) = v
                    .split_once('=')
                    .ok_or_else(|| bad("label", "must be key=value"))?;
                filter.labels.insert(key.to_owned(), value.to_owned());
            }
            _ => {}
        }
    }
    let order = match one(&q, "order") {
        "" | "newest" => ListOrder::NewestFirst,
        "oldest" => ListOrder::OldestFirst,
        _ => return Err(bad("order", "must be newest or oldest")),
    };
    let page_size = match one(&q, "page_size") {
        "" => 0,
        n => n
            .parse()
            .map_err(|_| bad("page_size", "must be a number"))?,
    };
    let page = d
        .admin()
        .list_jobs(d.request(
            &identity,
            v1::ListJobsRequest {
                queue: one(&q, "queue").to_owned(),
                filter: Some(filter),
                order: order.into(),
                page_size,
                page_token: one(&q, "page_token").to_owned(),
            },
        ))
        .await?
        .into_inner();
    Ok(ok(json!({
        "jobs": page.jobs.iter().map(json::job_summary).collect::<Vec<_>>(),
        "next_page_token": page.next_page_token,
    })))
}

async fn job(State(d): State<Dashboard>, headers: HeaderMap, RawQuery(raw): RawQuery) -> Answer {
    let identity = d.identity(&headers)?;
    let q = query_pairs(&raw);
    let job = d
        .jobs()
        .get_status(d.request(
            &identity,
            v1::GetStatusRequest {
                job_id: one(&q, "id").to_owned(),
            },
        ))
        .await?
        .into_inner()
        .job
        .unwrap_or_default();
    Ok(ok(json::job(&job)))
}

async fn events(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Refusal> {
    let identity = d.identity(&headers)?;
    let q = query_pairs(&raw);
    // A reconnecting EventSource says where it was; so may the page.
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(one(&q, "after"));
    let after_seq = match after {
        "" => 0,
        n => n.parse().map_err(|_| bad("after", "must be a number"))?,
    };
    let stream = d
        .jobs()
        .watch_progress(d.request(
            &identity,
            v1::WatchProgressRequest {
                job_id: one(&q, "id").to_owned(),
                after_seq,
            },
        ))
        .await?
        .into_inner();
    let events = stream.map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(v1::WatchProgressResponse { event: Some(e) }) => Event::default()
                .id(e.seq.to_string())
                .event("job")
                .data(json::event(&e).to_string()),
            Ok(_) => Event::default().comment("empty"),
            Err(s) => Event::default()
                .event("fault")
                .data(json!({ "error": s.message(), "code": s.code() as i32 }).to_string()),
        })
    });
    let done = futures::stream::once(async { Ok(Event::default().event("end").data("{}")) });
    Ok(Sse::new(events.chain(done))
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn cancel(State(d): State<Dashboard>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let identity = d.actor(&headers)?;
    let b = body(&bytes)?;
    let reason = b
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or("cancelled from the dashboard")
        .to_owned();
    let r = d
        .jobs()
        .cancel(d.request(
            &identity,
            v1::CancelRequest {
                job_id: field(&b, "job_id")?,
                reason,
            },
        ))
        .await?
        .into_inner();
    Ok(ok(json!({ "state": json::state(r.state) })))
}

async fn requeue(State(d): State<Dashboard>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let identity = d.actor(&headers)?;
    let b = body(&bytes)?;
    let r = d
        .admin()
        .requeue(d.request(
            &identity,
            v1::RequeueRequest {
                job_id: field(&b, "job_id")?,
            },
        ))
        .await?
        .into_inner();
    Ok(ok(json!({ "state": json::state(r.state) })))
}

async fn delete(State(d): State<Dashboard>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let identity = d.actor(&headers)?;
    let b = body(&bytes)?;
    d.admin()
        .delete_job(d.request(
            &identity,
            v1::DeleteJobRequest {
                job_id: field(&b, "job_id")?,
            },
        ))
        .await?;
    Ok(ok(json!({})))
}

async fn pause(State(d): State<Dashboard>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let identity = d.actor(&headers)?;
    let b = body(&bytes)?;
    d.admin()
        .pause_queue(d.request(
            &identity,
            v1::PauseQueueRequest {
                queue: field(&b, "queue")?,
            },
        ))
        .await?;
    Ok(ok(json!({ "paused": true })))
}

async fn resume(State(d): State<Dashboard>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let identity = d.actor(&headers)?;
    let b = body(&bytes)?;
    d.admin()
        .resume_queue(d.request(
            &identity,
            v1::ResumeQueueRequest {
                queue: field(&b, "queue")?,
            },
        ))
        .await?;
    Ok(ok(json!({ "paused": false })))
}

async fn requeue_failed(State(d): State<Dashboard>, headers: HeaderMap, bytes: Bytes) -> Answer {
    let identity = d.actor(&headers)?;
    let b = body(&bytes)?;
    let r = d
        .admin()
        .requeue_failed(d.request(
            &identity,
            v1::RequeueFailedRequest {
                queue: field(&b, "queue")?,
                limit: 0,
            },
        ))
        .await?
        .into_inner();
    Ok(ok(
        json!({ "requeued": r.requeued, "remaining": r.remaining }),
    ))
}
