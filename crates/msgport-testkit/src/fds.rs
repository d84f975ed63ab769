//! Descriptor counts, and the leak check that ends every child role.
//!
//! Sockets are what a port holds, so the check counts sockets: msgport's own runtime
//! descriptors (the reactor's epoll and eventfd, made once per process) are not sockets and do
//! not disturb it.

use std::time::{Duration, Instant};

/// Descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// Sockets this process has open.
pub fn open_sockets() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Waits up to `within` for the socket count to fall to `baseline` (ports close on msgport's
/// I/O thread, a moment after their last user drops them); panics with both counts if it
/// does not.
pub fn assert_sockets_back_to(baseline: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = open_sockets();
        if now <= baseline {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "descriptor leak: {now} sockets open, {baseline} before (after waiting {within:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
