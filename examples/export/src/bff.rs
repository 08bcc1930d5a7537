//! The backend-for-frontend: the HTTP service the page talks to.
//!
//! | route | does |
//! |---|---|
//! | `GET /` | the page ([`PAGE`]) |
//! | `POST /exports` | submits an export job; `202 Accepted`, `Location` and the job's URLs |
//! | `GET /exports/{id}` | the job's state and progress as JSON |
//! | `GET /exports/{id}/events` | `WatchProgress` as Server-Sent Events |
//! | `GET /exports/{id}/download` | the CSV, once the job SUCCEEDED (`409` before) |
//! | `POST /exports/{id}/cancel` | cancels the job |
//!
//! The event stream is a bridge and keeps no state: each SSE event's `id:`
//! is the job event's sequence number, so when the browser reconnects it
//! sends `Last-Event-ID: <seq>` and the service asks jobctl for the events
//! after it (`WatchProgress(after_seq)`), which jobctl keeps durably. Any
//! replica of this service can answer the reconnect.
//!
//! Job ids look like `exports:01JD…`; in URLs they are one percent-encoded
//! path segment (`exports%3A01JD…`), and the unencoded form works too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::{self, StreamExt as _};
use jobctl_client::{Client, SubmitOptions};
use jobctl_proto::v1::{EventKind, Job, JobEvent, JobState, WatchProgressRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;

use crate::worker::{ExportRequest, MAX_ROWS};
use crate::{KIND, QUEUE};

/// The page: one static HTML file with its script inline.
pub const PAGE: &str = include_str!("page.html");

/// How long the browser waits before reconnecting a broken event stream.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// How often an idle event stream carries a comment, so proxies keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The HTTP service.
#[derive(Clone)]
pub struct Bff {
    inner: Arc<Inner>,
}

/// How the service behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the worker writes the files.
    pub out_dir: PathBuf,
    /// Rows of an export whose request does not say.
    pub default_rows: u64,
    /// End each event stream after this many events, as a proxy with a short
    /// read timeout would; the browser then reconnects with `Last-Event-ID`.
    /// For seeing (and testing) the resume; `None` in earnest.
    pub cut_streams_after: Option<usize>,
}

struct Inner {
    client: Client,
    settings: Settings,
    /// Ends the open event streams when the service stops.
    stop: CancellationToken,
}

impl Bff {
    /// A service submitting to and watching jobctl through `client`.
    pub fn new(client: Client, settings: Settings) -> Bff {
        Bff {
            inner: Arc::new(Inner {
                client,
                settings,
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(page))
            .route("/exports", post(submit))
            .route("/exports/{id}", get(status))
            .route("/exports/{id}/events", get(events))
            .route("/exports/{id}/download", get(download))
            .route("/exports/{id}/cancel", post(cancel))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `stop` fires; open event streams end then,
    /// and browsers reconnect (with `Last-Event-ID`) to whichever replica
    /// answers next.
    pub async fn serve(
        self,
        listener: TcpListener,
        stop: CancellationToken,
    ) -> std::io::Result<()> {
        let streams = self.inner.stop.clone();
        let router = self.router();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                stop.cancelled().await;
                streams.cancel();
            })
            .await
    }
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

/// The HTTP status for a gRPC code from jobctl.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::ResourceExhausted => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        // The events after the resume point are no longer kept.
        Code::OutOfRange => StatusCode::GONE,
        Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    }
}

impl From<jobctl_client::Error> for ApiError {
    fn from(e: jobctl_client::Error) -> ApiError {
        ApiError::new(http_status(e.code()), e.to_string())
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> ApiError {
        ApiError::new(http_status(s.code()), s.message())
    }
}

/// Percent-encodes `s` as one URL path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URLs of one export.
#[derive(Debug, Serialize)]
struct Urls {
    status_url: String,
    events_url: String,
    download_url: String,
    cancel_url: String,
}

impl Urls {
    fn of(job_id: &str) -> Urls {
        let base = format!("/exports/{}", encode_segment(job_id));
        Urls {
            events_url: format!("{base}/events"),
            download_url: format!("{base}/download"),
            cancel_url: format!("{base}/cancel"),
            status_url: base,
        }
    }
}

fn state_name(state: JobState) -> &'static str {
    state.as_str_name().trim_start_matches("JOB_STATE_")
}

fn is_terminal(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

async fn page() -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(PAGE),
    )
}

/// The body of `POST /exports`, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    rows: Option<u64>,
}

/// `POST /exports`: hands the export to jobctl and answers at once.
async fn submit(
    State(bff): State<Bff>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: SubmitBody = if body.iter().all(u8::is_ascii_whitespace) {
        SubmitBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the body must be {{\"rows\": N}} or empty: {e}"),
            )
        })?
    };
    let rows = body.rows.unwrap_or(bff.inner.settings.default_rows);
    if rows > MAX_ROWS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("rows: at most {MAX_ROWS}, got {rows}"),
        ));
    }
    let payload = serde_json::to_vec(&ExportRequest { rows }).unwrap_or_default();
    let mut options = SubmitOptions::new(QUEUE, KIND).payload(payload);
    // A double-clicked button or a retried request makes one job, not two.
    if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
        options = options.idempotency_key(key);
    }
    let submitted = bff.inner.client.submit(options).await?;
    tracing::info!(job_id = %submitted.job_id, rows, "export submitted");
    let urls = Urls::of(&submitted.job_id);
    let location = HeaderValue::from_str(&urls.status_url)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        axum::Json(json!({
            "job_id": submitted.job_id,
            "deduplicated": submitted.deduplicated,
            "rows": rows,
            "urls": urls,
        })),
    )
        .into_response())
}

/// The progress part of the JSON the page reads.
#[derive(Debug, Serialize)]
struct ProgressJson {
    percent: f64,
    current: u64,
    total: u64,
    message: String,
}

impl ProgressJson {
    fn of(progress: Option<&jobctl_proto::v1::Progress>) -> ProgressJson {
        let p = progress.cloned().unwrap_or_default();
        ProgressJson {
            percent: p.percent,
            current: p.current,
            total: p.total,
            message: p.message,
        }
    }
}

/// `GET /exports/{id}`: where the export is.
async fn status(State(bff): State<Bff>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job: Job = bff.inner.client.status(&id).await?;
    let state = job.state();
    Ok(axum::Json(json!({
        "job_id": job.id,
        "state": state_name(state),
        "progress": ProgressJson::of(job.progress.as_ref()),
        "attempt": job.attempt,
        "last_seq": job.last_seq,
        "error": job.error.map(|e| e.message),
        "file": (state == JobState::Succeeded).then(|| String::from_utf8_lossy(&job.result).into_owned()),
        "urls": Urls::of(&id),
    }))
    .into_response())
}

/// One job event as the `data:` of an SSE event.
#[derive(Debug, Serialize)]
struct EventJson {
    seq: u64,
    kind: &'static str,
    state: &'static str,
    progress: ProgressJson,
    attempt: u32,
    time: Option<String>,
    error: Option<String>,
    /// The file's name, on SUCCEEDED.
    file: Option<String>,
    /// Where to fetch the file, on SUCCEEDED.
    download_url: Option<String>,
}

/// The SSE event for a job event: `id:` is its sequence number, `event:`
/// is `progress` or `state` (a state change or a cancel request).
fn sse_event(event: &JobEvent, urls: &Urls) -> Result<Event, axum::Error> {
    let state = event.state();
    let succeeded = event.kind() == EventKind::StateChanged && state == JobState::Succeeded;
    let data = EventJson {
        seq: event.seq,
        kind: event.kind().as_str_name().trim_start_matches("EVENT_KIND_"),
        state: state_name(state),
        progress: ProgressJson::of(event.progress.as_ref()),
        attempt: event.attempt,
        time: event.time.map(|t| t.to_string()),
        error: event.error.as_ref().map(|e| e.message.clone()),
        file: succeeded.then(|| String::from_utf8_lossy(&event.result).into_owned()),
        download_url: succeeded.then(|| urls.download_url.clone()),
    };
    let name = match event.kind() {
        EventKind::Progress => "progress",
        _ => "state",
    };
    Event::default()
        .id(event.seq.to_string())
        .event(name)
        .json_data(data)
}

/// `?after=<seq>`, for clients that cannot send `Last-Event-ID`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

/// `GET /exports/{id}/events`: the job's events after `Last-Event-ID` (or
/// `?after=`, or from the start) as Server-Sent Events, ending after the
/// terminal one.
async fn events(
    State(bff): State<Bff>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The browser's reconnect sends the header with the URL it first used,
    // so the header wins over the query.
    let after = match headers.get("last-event-id") {
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID must be an event sequence number",
                )
            })?,
        None => query.after.unwrap_or(0),
    };
    let job = bff.inner.client.status(&id).await?;
    if is_terminal(job.state()) && job.last_seq <= after {
        // Nothing will follow; 204 tells an EventSource not to reconnect.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let grpc = bff
        .inner
        .client
        .job_service()
        .watch_progress(WatchProgressRequest {
            job_id: id.clone(),
            after_seq: after,
        })
        .await?
        .into_inner();
    let urls = Urls::of(&id);
    let job_id = id.clone();
    let relayed = stream::unfold(grpc, move |mut grpc| {
        let job_id = job_id.clone();
        async move {
            loop {
                match grpc.message().await {
                    Ok(Some(message)) => {
                        if let Some(event) = message.event {
                            return Some((event, grpc));
                        }
                    }
                    // After the terminal event.
                    Ok(None) => return None,
                    Err(status) => {
                        // End the response; the browser reconnects with the
                        // last id it saw and resumes from there.
                        tracing::info!(job_id = %job_id, code = ?status.code(), message = status.message(), "watch stream broke");
                        return None;
                    }
                }
            }
        }
    })
    .take(
        bff.inner
            .settings
            .cut_streams_after
            .filter(|n| *n > 0)
            .unwrap_or(usize::MAX),
    )
    .map(move |event| sse_event(&event, &urls));
    let hello = Event::default()
        .comment(format!("export {id}, events after {after}"))
        .retry(RECONNECT_AFTER);
    let body = stream::once(async move { Ok(hello) })
        .chain(relayed)
        .take_until(bff.inner.stop.clone().cancelled_owned());
    let sse = Sse::new(body).keep_alive(KeepAlive::new().interval(KEEP_ALIVE));
    // Tells nginx-style proxies not to buffer the stream.
    Ok(([("x-accel-buffering", "no")], sse).into_response())
}

/// `GET /exports/{id}/download`: the file, once the export SUCCEEDED.
async fn download(State(bff): State<Bff>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = bff.inner.client.status(&id).await?;
    if job.state() != JobState::Succeeded {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "the export is {}; it can be downloaded once it has SUCCEEDED",
                state_name(job.state())
            ),
        ));
    }
    let name = String::from_utf8_lossy(&job.result).into_owned();
    // The result names a file in out-dir; never follow it anywhere else.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "the export's result is not a file name",
        ));
    }
    let path = bff.inner.settings.out_dir.join(&name);
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                StatusCode::GONE,
                format!("{name} is not in this service's output directory"),
            ));
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read {name}: {e}"),
            ));
        }
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    Ok((headers, Body::from_stream(ReaderStream::new(file))).into_response())
}

/// `POST /exports/{id}/cancel`: a queued export ends at once, a running one
/// is asked to stop (its event stream then ends with CANCELLED).
async fn cancel(State(bff): State<Bff>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let answer = bff
        .inner
        .client
        .cancel(&id, "cancelled from the export page")
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "job_id": id,
            "state": state_name(answer.state()),
            "cancel_requested": answer.cancel_requested,
        })),
    )
        .into_response())
}
