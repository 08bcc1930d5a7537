//! The end-to-end test harness of jobctl.
//!
//! Every test starts real things and talks to them over the wire:
//!
//! - [`Backend`]: the store a scenario runs on, a [`RedisServer`] or the
//!   embedded in-process store; [`conformance!`] turns a scenario into one
//!   test per store.
//! - [`RedisCluster`]: a Redis Cluster of such processes (3 masters with a
//!   replica each by default), made with `CLUSTER ADDSLOTSRANGE`/`MEET`/
//!   `REPLICATE` and ready once every node says so.
//! - [`RedisSentinels`]: a master, its replica and three
//!   `redis-server --sentinel` processes watching it.
//! - [`RedisServer`]: a `redis-server` process on a free port in its own
//!   temporary directory (optionally under libfaketime, or in cluster mode),
//!   killed when dropped. Each test gets its own, so tests run in parallel and
//!   nothing is ever flushed.
//! - [`TestServer`]: `jobctl_server::serve` in-process on `127.0.0.1:0`, with
//!   connected job, worker and admin clients ([`TestServer::start_on`] a
//!   [`Backend`]).
//! - [`ServerProcess`] and [`WorkerProcess`]: the `jobctl-server` binary and
//!   the `jobctl-test-worker` binary (built on the worker SDK) as child
//!   processes, for tests that kill them with SIGKILL.
//! - [`OtlpReceiver`]: an OTLP/gRPC trace receiver that keeps the spans a
//!   server or worker process exports to it.
//! - [`eventually`] and [`holds_for`]: poll a condition until it is met (or
//!   for as long as it must keep holding) instead of sleeping.
//! - [`TestPki`]: a throw-away CA that issues server and client
//!   certificates (PEM files) for the TLS and mTLS tests.
//! - [`Snapshot`]: every Redis key with its type and value, to prove that a
//!   refused request wrote nothing; [`StateSnapshot`] proves it on either
//!   store (through the API, plus every key on Redis).
//!
//! The redis on port 6379 is never used.

pub mod api;
pub mod backend;
pub mod cluster;
pub mod otlp;
pub mod panics;
pub mod pki;
pub mod process;
pub mod raw;
pub mod redis_server;
pub mod sentinel;
pub mod server;
pub mod snapshot;
pub mod state;
pub mod wait;

pub use api::*;
pub use backend::{Backend, BackendKind, Scenario};
pub use cluster::{ClusterOptions, RedisCluster, Shard};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use panics::{assert_no_panics, count_panics};
pub use pki::{CertFiles, TestPki};
pub use process::{ServerProcess, WorkerProcess, server_binary};
pub use raw::{METHODS, RawCodec, send_raw};
pub use redis_server::{RedisOptions, RedisServer};
pub use sentinel::RedisSentinels;
pub use server::TestServer;
pub use snapshot::{Snapshot, StoredValue};
pub use state::StateSnapshot;
pub use wait::{eventually, holds_for};

/// The path of the `jobctl-test-worker` binary, for [`WorkerProcess::spawn`].
///
/// A macro because Cargo only tells integration tests (not this library)
/// where the package's binaries are.
#[macro_export]
macro_rules! test_worker_bin {
    () => {
        env!("CARGO_BIN_EXE_jobctl-test-worker")
    };
}

/// Sets up logging for a test once: `RUST_LOG` (default `warn`), written
/// through the test harness so it only shows for failing tests.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
