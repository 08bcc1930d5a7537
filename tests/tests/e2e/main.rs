//! End-to-end tests of jobctl: real `redis-server` processes, the server on a
//! real socket, workers in-process (worker SDK) and as child processes.
//!
//! `conformance` runs every scenario on both stores (`…::redis` and
//! `…::embedded`); the other modules need Redis itself.
//!
//! Each test starts its own Redis, so the tests run in parallel. Nothing here
//! sleeps to wait for something to happen: conditions are polled
//! (`eventually`), and "must not happen" is checked over an interval
//! (`holds_for`).
//!
//! One test binary (with modules) rather than one per file, so the suite
//! links once.

mod auth;
mod availability;
mod browser;
mod cluster;
mod conformance;
mod dashboard;
mod invariants;
mod performance;
mod sentinel;
mod telemetry;
