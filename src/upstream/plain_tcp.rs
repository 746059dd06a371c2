//! The transport for plain `http://` upstreams (the usual case: a model
//! server on the same box or the same private network). ureq's own TCP
//! transport works, but costs a relayed request six extra system calls:
//! checking whether a pooled connection is still open switches the socket
//! to non-blocking, reads, and switches it back, once when the connection
//! returns to the pool and once when it is taken out; and each call sets
//! the socket's read and write timeouts afresh, because the remaining time
//! differs by a few microseconds from one call to the next. Here the check
//! is one `recv(MSG_PEEK | MSG_DONTWAIT)`, and a timeout already set is
//! kept while it lies between what is needed and 1/64 more (a 300 s budget
//! may overrun by under 5 s; a 1 s one by 16 ms). TLS upstreams keep
//! ureq's connector (`abort::AbortableConnector` chooses).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};
use ureq::Timeout;

pub struct PlainTcp {
    /// Shared (weakly) with the abort and agent shutdown handles.
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl std::fmt::Debug for PlainTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainTcp")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

impl PlainTcp {
    /// Connects to the first of the resolved addresses that answers, each
    /// within what is left of the connect timeout.
    pub fn connect(details: &ConnectionDetails) -> Result<PlainTcp, ureq::Error> {
        let budget = details.timeout.not_zero().map(|d| *d);
        let started = std::time::Instant::now();
        let mut last = None;
        for addr in details.addrs.iter() {
            let attempt = match budget {
                Some(total) => match total.checked_sub(started.elapsed()) {
                    Some(left) if !left.is_zero() => TcpStream::connect_timeout(addr, left),
                    _ => return Err(ureq::Error::Timeout(Timeout::Connect)),
                },
                None => TcpStream::connect(addr),
            };
            match attempt {
                Ok(stream) => {
                    if details.config.no_delay() {
                        stream.set_nodelay(true)?;
                    }
                    return Ok(PlainTcp {
                        stream: Arc::new(stream),
                        buffers: LazyBuffers::new(
                            details.config.input_buffer_size(),
                            details.config.output_buffer_size(),
                        ),
                        read_timeout: None,
                        write_timeout: None,
                    });
                }
                Err(e) if timed_out(&e) => last = Some(ureq::Error::Timeout(Timeout::Connect)),
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to connect to").into()
        }))
    }

    pub fn shutdown_handle(&self) -> Weak<dyn ShutdownHandle> {
        Arc::downgrade(&self.stream) as Weak<dyn ShutdownHandle>
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// What to wait for this I/O: None (no limit), or the time left; an
/// exhausted budget is the timeout itself.
fn wanted(timeout: NextTimeout) -> Result<Option<Duration>, ureq::Error> {
    if timeout.after.is_not_happening() {
        return Ok(None);
    }
    if timeout.after.is_zero() {
        return Err(ureq::Error::Timeout(timeout.reason));
    }
    Ok(Some(*timeout.after))
}

/// Whether a socket timeout already set can stay: same kind, at least what
/// is needed, at most 1/64 more.
fn close_enough(set: Option<Duration>, want: Option<Duration>) -> bool {
    match (set, want) {
        (None, None) => true,
        (Some(set), Some(want)) => set >= want && set - want <= want / 64,
        _ => false,
    }
}

impl Transport for PlainTcp {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        let want = wanted(timeout)?;
        if !close_enough(self.write_timeout, want) {
            self.stream.set_write_timeout(want)?;
            self.write_timeout = want;
        }
        let output = &self.buffers.output()[..amount];
        match (&*self.stream).write_all(output) {
            Ok(()) => Ok(()),
            Err(e) if timed_out(&e) => Err(ureq::Error::Timeout(timeout.reason)),
            Err(e) => Err(e.into()),
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        let want = wanted(timeout)?;
        if !close_enough(self.read_timeout, want) {
            self.stream.set_read_timeout(want)?;
            self.read_timeout = want;
        }
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match (&*self.stream).read(input) {
                Ok(n) => break n,
                // Signals are taken by one thread with sigwait, so an
                // interrupted read is rare; it simply reads again.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if timed_out(&e) => return Err(ureq::Error::Timeout(timeout.reason)),
                Err(e) => return Err(e.into()),
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    /// Open and clean: nothing to read (not even the end of the stream).
    /// One system call, the socket stays blocking.
    fn is_open(&mut self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer we own, on a socket this struct owns.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_timeout_is_kept_within_one_sixty_fourth() {
        let s = |ms| Some(Duration::from_millis(ms));
        assert!(close_enough(None, None));
        assert!(!close_enough(None, s(10)));
        assert!(!close_enough(s(10), None));
        assert!(close_enough(s(300_000), s(299_999)));
        assert!(close_enough(s(300_000), s(300_000 - 4_600)));
        assert!(!close_enough(s(300_000), s(300_000 - 4_700)));
        // Never shorter than needed: that would time out early.
        assert!(!close_enough(s(1_000), s(1_001)));
    }

    #[test]
    fn is_open_tells_a_closed_or_dirty_connection() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let wrap = |s: TcpStream| PlainTcp {
            stream: Arc::new(s),
            buffers: LazyBuffers::new(64, 64),
            read_timeout: None,
            write_timeout: None,
        };
        let mut open = wrap(TcpStream::connect(addr).unwrap());
        let (mut peer, _) = listener.accept().unwrap();
        assert!(open.is_open());
        peer.write_all(b"x").unwrap();
        // Wait until the byte is there (no sleep: a blocking peek).
        let mut b = [0u8; 1];
        open.stream.peek(&mut b).unwrap();
        assert!(!open.is_open(), "unexpected bytes: not reusable");

        let mut closed = wrap(TcpStream::connect(addr).unwrap());
        let (peer2, _) = listener.accept().unwrap();
        drop(peer2);
        closed.stream.peek(&mut b).unwrap();
        assert!(!closed.is_open(), "peer closed");
    }
}
