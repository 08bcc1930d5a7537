//! The store a scenario runs on: a real Redis, or the embedded in-process
//! store. The conformance suite (`tests/e2e/conformance/`) runs every
//! scenario on both, through [`conformance!`](crate::conformance).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use crate::{RedisCluster, RedisServer, Snapshot};

/// A scenario of the conformance suite, as [`conformance!`](crate::conformance)
/// lists them (for a run of many on one shared [`RedisCluster`]).
pub type Scenario = fn(Backend) -> Pin<Box<dyn Future<Output = ()>>>;

/// Which store a [`Backend`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// `RedisStore` against a `redis-server` of the test's own.
    Redis,
    /// `MemoryStore`: the server started without a Redis URL.
    Embedded,
    /// `RedisStore` on a Redis Cluster of several shards.
    Cluster,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Redis => "redis",
            BackendKind::Embedded => "embedded",
            BackendKind::Cluster => "cluster",
        })
    }
}

/// The store behind a scenario's servers. Start servers on it with
/// [`TestServer::start_on`](crate::TestServer::start_on).
///
/// Each embedded server has a store of its own (state lives in the server's
/// process), so only [`Backend::Redis`] can be shared by several servers.
pub enum Backend {
    /// A `redis-server` of this test, killed when the backend is dropped.
    Redis(RedisServer),
    /// The embedded store.
    Embedded,
    /// A Redis Cluster, shared with other scenarios: each server started
    /// on it gets this key prefix (`--key-prefix`), so scenarios stay
    /// apart.
    Cluster(Arc<RedisCluster>, String),
}

impl Backend {
    /// Starts the store: a new `redis-server` for [`BackendKind::Redis`],
    /// nothing for [`BackendKind::Embedded`].
    pub async fn start(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Redis => Backend::Redis(RedisServer::start().await),
            BackendKind::Embedded => Backend::Embedded,
            BackendKind::Cluster => {
                Backend::Cluster(Arc::new(RedisCluster::start().await), "jobctl".into())
            }
        }
    }

    /// Which store this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::Redis(_) => BackendKind::Redis,
            Backend::Embedded => BackendKind::Embedded,
            Backend::Cluster(..) => BackendKind::Cluster,
        }
    }

    /// The Redis, for checks that only make sense on one Redis (its keys,
    /// its clock); `None` on the embedded store and on a cluster.
    pub fn redis(&self) -> Option<&RedisServer> {
        match self {
            Backend::Redis(redis) => Some(redis),
            Backend::Embedded | Backend::Cluster(..) => None,
        }
    }

    /// The store's clock, the one lease deadlines and schedules are computed
    /// from: Redis `TIME`, or this process's clock for the embedded store.
    pub async fn time(&self) -> SystemTime {
        match self {
            Backend::Redis(redis) => redis.time().await,
            Backend::Embedded => SystemTime::now(),
            Backend::Cluster(cluster, _) => cluster.shards[0].master.time().await,
        }
    }

    /// Every Redis key with its value; `None` on the embedded store (prove
    /// "nothing written" with [`StateSnapshot`](crate::StateSnapshot)).
    pub async fn redis_snapshot(&self) -> Option<Snapshot> {
        match self {
            Backend::Redis(redis) => Some(Snapshot::take(&mut redis.conn().await).await),
            Backend::Embedded | Backend::Cluster(..) => None,
        }
    }
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Redis(redis) => write!(f, "Backend::Redis(port {})", redis.port()),
            Backend::Embedded => f.write_str("Backend::Embedded"),
            Backend::Cluster(_, prefix) => write!(f, "Backend::Cluster(prefix {prefix})"),
        }
    }
}

/// Turns each `async fn scenario(backend: Backend)` into a module of two
/// tests, `scenario::redis` and `scenario::embedded`, that run it on a new
/// [`Backend`] of each kind.
///
/// ```ignore
/// conformance! {
///     priority_orders_leases;
///     sdk_worker_runs_jobs, worker_threads = 4;
/// }
/// ```
///
/// The tests run on a multi-threaded runtime with 2 worker threads unless a
/// scenario asks for more. Each invocation also defines `scenarios()`,
/// every scenario it lists by name, so a test can run them all on one
/// shared [`Backend::Cluster`].
#[macro_export]
macro_rules! conformance {
    ($($scenario:ident $(, worker_threads = $threads:literal)?;)+) => {
        $(
            $crate::conformance!(@one $scenario, $($threads)? 2);
        )+

        /// Every scenario of this file, by name.
        #[allow(dead_code)]
        pub(crate) fn scenarios() -> Vec<(&'static str, $crate::Scenario)> {
            vec![$((stringify!($scenario), |b| Box::pin($scenario(b)))),+]
        }
    };
    (@one $scenario:ident, $threads:literal $($default:literal)?) => {
        #[doc = concat!("`", stringify!($scenario), "` on each store.")]
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn redis() {
                super::$scenario(
                    $crate::Backend::start($crate::BackendKind::Redis).await,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn embedded() {
                super::$scenario(
                    $crate::Backend::start($crate::BackendKind::Embedded).await,
                )
                .await;
            }
        }
    };
}
