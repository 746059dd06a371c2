//! SIGTERM and SIGINT without a signal handler: the main thread blocks
//! both before any other thread exists (threads inherit the mask), and a
//! dedicated thread takes them with `sigwait`, so nothing async-signal-
//! unsafe ever runs in a handler.

use std::sync::mpsc::{channel, Receiver};

/// Blocks SIGTERM/SIGINT in this thread (call first thing in `main`).
pub fn block_shutdown_signals() {
    // SAFETY: plain libc calls on a local, zero-initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Ignores SIGXFSZ: writes past RLIMIT_FSIZE then fail with EFBIG, which
/// SQLite reports as a full disk (503), instead of killing the server.
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Starts the thread that waits for SIGTERM/SIGINT; the receiver gets the
/// signal number once.
pub fn wait_for_shutdown() -> Receiver<i32> {
    let (tx, rx) = channel();
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // SAFETY: as above; sigwait writes the signal into `sig`.
            let sig = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGINT);
                let mut sig: libc::c_int = 0;
                libc::sigwait(&set, &mut sig);
                sig
            };
            let _ = tx.send(sig);
        });
    rx
}
