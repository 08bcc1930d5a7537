//! Waiting by polling, never by sleeping a guessed time.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] and [`holds_for`] look again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Ok`, and returns that value; panics with
/// `what` and the last `Err` after `timeout`.
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                if start.elapsed() >= timeout {
                    panic!("timed out after {timeout:?} waiting for {what}; last: {last:?}");
                }
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Checks that `check` keeps returning `Ok` for all of `duration`, polling
/// it; panics with `what` at the first `Err`. For "this must not happen"
/// assertions, where some waiting is unavoidable.
pub async fn holds_for<E, F, Fut>(what: &str, duration: Duration, mut check: F)
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let start = Instant::now();
    loop {
        if let Err(e) = check().await {
            panic!("{what} stopped holding after {:?}: {e:?}", start.elapsed());
        }
        if start.elapsed() >= duration {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
