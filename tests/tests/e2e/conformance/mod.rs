//! The conformance suite: every scenario here runs on both stores, the Redis
//! store and the embedded one (`jobctl_server::Config` without `redis_url`).
//!
//! A scenario is an `async fn name(backend: Backend)` that starts its servers
//! with `TestServer::start_on(&backend, flags)`; `conformance!` turns it into
//! `name::redis` and `name::embedded`. What only Redis can show (its keys, its
//! clock) is checked under `backend.redis()`; "nothing was written" is proven
//! with `StateSnapshot` (the API view on both stores, every key on Redis).
//!
//! Redis-only tests live outside this module: `availability` (Redis down,
//! replicas killed), `invariants` (8: Redis's clock, 9: Redis Cluster) and
//! `performance` (Redis connections and commands).

mod admin;
mod batches;
mod invariants;
pub(crate) mod lifecycle;
mod limits;
mod malformed;
mod model;
pub(crate) mod watch;
mod worker_processes;
mod worker_sdk;
