//! Counting panics, to prove the server never panics on input.
//!
//! The in-process server runs on the test's runtime, so a panic in any of its
//! tasks goes through this process's panic hook.

use std::sync::Once;
use std::sync::atomic::{AtomicUsize, Ordering};

static PANICS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// Installs (once) a panic hook that counts panics, then calls the previous
/// hook.
pub fn install_panic_counter() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// How many panics happened in this process since the counter was installed.
pub fn count_panics() -> usize {
    PANICS.load(Ordering::SeqCst)
}

/// Fails if anything in this process panicked (for example a server task).
pub fn assert_no_panics() {
    let n = count_panics();
    assert_eq!(
        n, 0,
        "{n} panic(s) happened in this test process (see the output above)"
    );
}
