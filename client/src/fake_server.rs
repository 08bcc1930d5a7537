//! Tests of [`Watch`](crate::Watch) against a scripted in-process
//! `JobService`, and through a TCP proxy whose connections can be cut.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt as _};
use jobctl_proto::v1::{
    self as pb, EventKind, JobEvent, JobState,
    job_service_server::{JobService, JobServiceServer},
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

use crate::{Client, Error, ReconnectPolicy};

/// What one `WatchProgress` call does.
enum Call {
    /// The call itself fails.
    Refuse(Status),
    /// The stream sends these, then ends.
    Send(Vec<Result<JobEvent, Status>>),
    /// The stream sends these, then stays open without sending more.
    SendThenHang(Vec<JobEvent>),
}

#[derive(Default)]
struct Script {
    calls: Mutex<VecDeque<Call>>,
    /// The `after_seq` of each `WatchProgress` call, in order.
    seen: Mutex<Vec<u64>>,
    /// What `GetStatus` answers; NOT_FOUND when unset.
    job: Mutex<Option<pb::Job>>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Script>);

impl Fake {
    fn script(calls: impl IntoIterator<Item = Call>) -> Self {
        let fake = Fake::default();
        fake.0.calls.lock().unwrap().extend(calls);
        fake
    }

    fn seen(&self) -> Vec<u64> {
        self.0.seen.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl JobService for Fake {
    async fn submit(
        &self,
        _: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        match self.0.job.lock().unwrap().clone() {
            Some(job) if job.id == request.get_ref().job_id => {
                Ok(Response::new(pb::GetStatusResponse { job: Some(job) }))
            }
            _ => Err(Status::not_found("no such job")),
        }
    }

    async fn cancel(
        &self,
        _: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn submit_batch(
        &self,
        _: Request<pb::SubmitBatchRequest>,
    ) -> Result<Response<pb::SubmitBatchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    type WatchProgressStream = BoxStream<'static, Result<pb::WatchProgressResponse, Status>>;

    async fn watch_progress(
        &self,
        request: Request<pb::WatchProgressRequest>,
    ) -> Result<Response<Self::WatchProgressStream>, Status> {
        self.0
            .seen
            .lock()
            .unwrap()
            .push(request.get_ref().after_seq);
        let call = self.0.calls.lock().unwrap().pop_front();
        let wrap = |event| pb::WatchProgressResponse { event: Some(event) };
        let stream = match call {
            None => return Err(Status::internal("the script has no more calls")),
            Some(Call::Refuse(status)) => return Err(status),
            Some(Call::Send(items)) => stream::iter(items).map(move |item| item.map(wrap)).boxed(),
            Some(Call::SendThenHang(events)) => stream::iter(events)
                .map(move |event| Ok(wrap(event)))
                .chain(stream::pending())
                .boxed(),
        };
        Ok(Response::new(stream))
    }
}

async fn serve(fake: Fake) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(JobServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// A TCP proxy to `target` whose open connections [`Proxy::cut`] drops.
struct Proxy {
    addr: SocketAddr,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let list = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                list.lock().unwrap().push(task);
            }
        });
        Proxy { addr, connections }
    }

    /// Drops every open connection, as a crashed server or proxy would.
    fn cut(&self) {
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

fn event(seq: u64, kind: EventKind, state: JobState) -> JobEvent {
    JobEvent {
        seq,
        job_id: "j1".into(),
        kind: kind.into(),
        state: state.into(),
        ..Default::default()
    }
}

fn progress(seq: u64) -> JobEvent {
    event(seq, EventKind::Progress, JobState::Running)
}

fn running(seq: u64) -> JobEvent {
    event(seq, EventKind::StateChanged, JobState::Running)
}

fn succeeded(seq: u64) -> JobEvent {
    event(seq, EventKind::StateChanged, JobState::Succeeded)
}

fn quick() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_attempts: 3,
        max_elapsed: Some(Duration::from_secs(5)),
        jitter: 0.0,
    }
}

async fn client_of(fake: Fake) -> Client {
    Client::connect(format!("http://{}", serve(fake).await))
        .await
        .unwrap()
}

async fn drain(watch: &mut crate::Watch) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(event) = watch.next().await.unwrap() {
        seqs.push(event.seq);
    }
    seqs
}

#[tokio::test]
async fn a_stream_cut_by_the_server_is_resumed_after_the_last_event() {
    let fake = Fake::script([
        Call::Send(vec![
            Ok(running(1)),
            Ok(progress(2)),
            Ok(progress(3)),
            Err(Status::unavailable(
                "the server is shutting down; resume with after_seq=3",
            )),
        ]),
        // A server may repeat what was sent; the client drops repeats.
        Call::Send(vec![Ok(progress(3)), Ok(progress(4)), Ok(succeeded(6))]),
    ]);
    let client = client_of(fake.clone()).await;
    let mut watch = client.watch_with_policy("j1", 0, quick()).await.unwrap();
    assert_eq!(drain(&mut watch).await, [1, 2, 3, 4, 6]);
    assert_eq!(fake.seen(), [0, 3]);
    assert!(watch.is_finished());
    assert_eq!(watch.last_seq(), 6);
    assert_eq!(watch.reconnects(), 1);
    assert!(watch.next().await.unwrap().is_none());
}

#[tokio::test]
async fn a_stuck_reader_cut_off_and_an_early_end_are_resumed() {
    let fake = Fake::script([
        Call::Send(vec![
            Ok(running(5)),
            Err(Status::resource_exhausted(
                "the watcher fell too far behind; resume with after_seq=5",
            )),
        ]),
        // Ends without the terminal event.
        Call::Send(vec![Ok(progress(6))]),
        Call::Refuse(Status::unavailable("redis down")),
        Call::Send(vec![Ok(succeeded(7))]),
    ]);
    let client = client_of(fake.clone()).await;
    let watch = client.watch_with_policy("j1", 4, quick()).await;
    // after_seq > 0 asks for the status first; this fake knows no job.
    assert!(matches!(watch, Err(Error::NotFound(_))), "{watch:?}");
    *fake.0.job.lock().unwrap() = Some(pb::Job {
        id: "j1".into(),
        state: JobState::Running.into(),
        last_seq: 5,
        ..Default::default()
    });
    let mut watch = client.watch_with_policy("j1", 4, quick()).await.unwrap();
    assert_eq!(drain(&mut watch).await, [5, 6, 7]);
    assert_eq!(fake.seen(), [4, 5, 6, 6]);
}

#[tokio::test]
async fn a_cut_connection_is_resumed() {
    let fake = Fake::script([
        Call::SendThenHang(vec![running(1), progress(2)]),
        Call::Send(vec![Ok(progress(2)), Ok(progress(3)), Ok(succeeded(4))]),
    ]);
    let proxy = Proxy::start(serve(fake.clone()).await).await;
    let client = Client::connect(format!("http://{}", proxy.addr))
        .await
        .unwrap();
    let mut watch = client.watch_with_policy("j1", 0, quick()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().seq, 1);
    assert_eq!(watch.next().await.unwrap().unwrap().seq, 2);
    proxy.cut();
    assert_eq!(drain(&mut watch).await, [3, 4]);
    assert_eq!(fake.seen(), [0, 2]);
}

#[tokio::test]
async fn refusals_about_the_request_are_not_retried() {
    let fake = Fake::script([Call::Refuse(Status::not_found("job 'j1' not found"))]);
    let client = client_of(fake.clone()).await;
    let err = client
        .watch_with_policy("j1", 0, quick())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert_eq!(fake.seen(), [0]);

    let fake = Fake::script([
        Call::Send(vec![
            Ok(running(1)),
            Err(Status::unavailable("resume with after_seq=1")),
        ]),
        Call::Refuse(Status::out_of_range("events after 1 are no longer kept")),
        Call::Send(vec![Ok(succeeded(2))]),
    ]);
    let client = client_of(fake.clone()).await;
    let mut watch = client.watch_with_policy("j1", 0, quick()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().seq, 1);
    let err = watch.next().await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(watch.next().await.unwrap().is_none(), "the watch is over");
    assert_eq!(fake.seen(), [0, 1]);
}

#[tokio::test]
async fn reconnection_gives_up_after_the_policy_s_attempts() {
    let fake = Fake::script([
        Call::Send(vec![Ok(running(1)), Err(Status::unavailable("bye"))]),
        Call::Refuse(Status::unavailable("down 1")),
        Call::Refuse(Status::unavailable("down 2")),
        Call::Refuse(Status::unavailable("down 3")),
        Call::Send(vec![Ok(succeeded(2))]),
    ]);
    let client = client_of(fake.clone()).await;
    let mut watch = client.watch_with_policy("j1", 0, quick()).await.unwrap();
    assert_eq!(watch.next().await.unwrap().unwrap().seq, 1);
    let err = watch.next().await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable(ref m) if m.contains("down 3")),
        "{err:?}"
    );
    assert_eq!(fake.seen(), [0, 1, 1, 1]);
    assert_eq!(watch.last_seq(), 1);
}

#[tokio::test]
async fn a_job_that_ended_before_after_seq_has_nothing_to_watch() {
    let fake = Fake::default();
    *fake.0.job.lock().unwrap() = Some(pb::Job {
        id: "j1".into(),
        state: JobState::Succeeded.into(),
        last_seq: 9,
        ..Default::default()
    });
    let client = client_of(fake.clone()).await;
    let mut watch = client.watch_with_policy("j1", 9, quick()).await.unwrap();
    assert!(watch.is_finished());
    assert!(watch.next().await.unwrap().is_none());
    assert!(fake.seen().is_empty(), "no WatchProgress call");
}

#[tokio::test]
async fn the_watch_is_a_stream_too() {
    let fake = Fake::script([Call::Send(vec![
        Ok(running(1)),
        Ok(progress(2)),
        Ok(succeeded(3)),
        // Anything after the terminal event is not delivered.
        Ok(progress(4)),
    ])]);
    let client = client_of(fake).await;
    let events: Vec<_> = client
        .watch("j1", 0)
        .await
        .unwrap()
        .into_stream()
        .collect()
        .await;
    let seqs: Vec<u64> = events.into_iter().map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
}
