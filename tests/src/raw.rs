//! Raw gRPC calls: any bytes as the request message of any jobctl method,
//! to prove that malformed or hostile input is refused without a panic.

use std::time::Duration;

use bytes::{Buf, BufMut};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Every jobctl RPC's path, and whether it is server-streaming.
pub const METHODS: [(&str, bool); 21] = [
    ("/jobctl.v1.JobService/Submit", false),
    ("/jobctl.v1.JobService/GetStatus", false),
    ("/jobctl.v1.JobService/Cancel", false),
    ("/jobctl.v1.JobService/WatchProgress", true),
    ("/jobctl.v1.WorkerService/Lease", false),
    ("/jobctl.v1.WorkerService/Heartbeat", false),
    ("/jobctl.v1.WorkerService/Complete", false),
    ("/jobctl.v1.WorkerService/Fail", false),
    ("/jobctl.v1.WorkerService/Release", false),
    ("/jobctl.v1.AdminService/ListFailed", false),
    ("/jobctl.v1.AdminService/Requeue", false),
    ("/jobctl.v1.AdminService/GetQueueStats", false),
    ("/jobctl.v1.JobService/SubmitBatch", false),
    ("/jobctl.v1.WorkerService/CompleteBatch", false),
    ("/jobctl.v1.AdminService/ListJobs", false),
    ("/jobctl.v1.AdminService/ListQueues", false),
    ("/jobctl.v1.AdminService/PauseQueue", false),
    ("/jobctl.v1.AdminService/ResumeQueue", false),
    ("/jobctl.v1.AdminService/DeleteJob", false),
    ("/jobctl.v1.AdminService/PurgeJobs", false),
    ("/jobctl.v1.AdminService/RequeueFailed", false),
];

/// A codec that sends and receives raw bytes, so a test can put any bytes
/// in a gRPC frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Sends `body` as the one message of `method` (with `authorization: Bearer
/// <token>` when given); the status the call ends with (`Ok` for a unary
/// success or a stream that ended cleanly; `DEADLINE_EXCEEDED` when nothing
/// answers within 10 s).
pub async fn send_raw(
    channel: &Channel,
    token: Option<&str>,
    method: &'static str,
    streaming: bool,
    body: Vec<u8>,
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(body);
    if let Some(token) = token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::invalid_argument("the token is not a header value"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let path = PathAndQuery::from_static(method);
    let call = async {
        if streaming {
            let mut stream = grpc
                .server_streaming(request, path, RawCodec)
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        } else {
            grpc.unary(request, path, RawCodec).await.map(drop)
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(format!(
                "{method}: no answer within 10s"
            )))
        })
}
