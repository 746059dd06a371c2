//! Threads the server starts besides tiny_http's: one stack size and one
//! way to name and start them, so a thread's memory is stated once.

use std::io;
use std::thread::JoinHandle;

/// Stack for worker, stream, relay and background threads: handlers are
/// shallow, and 200 open streams must fit in a few tens of MiB.
pub const STACK_BYTES: usize = 256 * 1024;

/// Starts a named thread with `STACK_BYTES` of stack.
pub fn spawn<F>(name: &str, f: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .stack_size(STACK_BYTES)
        .spawn(f)
}
