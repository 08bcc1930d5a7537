//! Counting panics, to prove the server never panics on input.
//!
//! The in-process server runs on the test's runtime, so a panic in any of its
//! tasks goes through this process's panic hook on one of the runtime's
//! worker threads. Only those are counted: a test's own failed assertions
//! panic on the test's thread, and must not fail other tests that share the
//! process under `cargo test`.

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

static PANICS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// Installs (once) a panic hook that counts panics on tokio worker threads,
/// then calls the previous hook.
pub fn install_panic_counter() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // "tokio-rt-worker" (older tokio: "tokio-runtime-worker").
            let on_runtime = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"));
            if on_runtime {
                PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// How many panics happened on tokio worker threads of this process since
/// the counter was installed.
pub fn count_panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// Fails if a task in this process panicked (for example a server task).
pub fn assert_no_panics() {
    let n = count_panics();
    assert_eq!(
        n, 0,
        "{n} panic(s) happened in this test process (see the output above)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_in_a_runtime_task_is_counted() {
        install_panic_counter();
        let before = count_panics();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let result =
            runtime.block_on(async { tokio::spawn(async { panic!("a task panics") }).await });
        assert!(result.is_err());
        assert_eq!(count_panics(), before + 1);
    }
}
