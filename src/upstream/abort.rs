//! Aborting one upstream request from another thread.
//!
//! A thread blocked in a socket read inside ureq cannot be woken through
//! ureq's request API, and a per-read timeout is no way out either: a
//! timeout while waiting for the response head ends the call, and ureq does
//! not promise that a body read can resume after one. What does wake a
//! blocked read at once is `shutdown(Both)` on the socket. ureq 3.5 exposes
//! exactly that hook: its `TcpConnector` hands a `ShutdownHandle` (the
//! shared `TcpStream`) to `ConnectionDetails::register_shutdown`, which
//! `Agent::shutdown` uses to interrupt every request of an agent.
//!
//! We need it per request, with one shared agent (so upstream connections
//! are pooled and reused). So:
//! - `AbortableConnector` wraps ureq's `DefaultConnector` and intercepts
//!   `register_shutdown` (still forwarding it), keeping the socket's handle
//!   in the `AbortableTransport` it returns around ureq's transport.
//! - A thread that runs an abortable request enters an `Abort` scope (a
//!   thread-local). While inside a transport read or write, the transport
//!   publishes its handle to the scope of the thread doing the I/O, and
//!   withdraws it when the call returns. ureq is synchronous: connecting,
//!   sending, reading the head and the body all happen on the calling
//!   thread, so "the connection this thread is doing I/O on" is exactly the
//!   connection of this request, pooled or new.
//! - `Abort::abort` (from the stream thread) sets a flag and shuts the
//!   published socket down. A transport that starts I/O after the flag is
//!   set shuts itself down first, so an abort during connect or between
//!   reads is not lost.
//!
//! Because a handle is only published for the duration of one I/O call on
//! the request's own thread, an abort can never reach a connection that
//! has gone back to the pool and serves someone else. Threads without a
//! scope (non-streaming calls on workers) pay one thread-local lookup.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, ShutdownHandle, Transport,
};

thread_local! {
    static SCOPE: RefCell<Option<Arc<Shared>>> = const { RefCell::new(None) };
    static TRACE: Cell<Trace> = const { Cell::new(Trace { connected: false, received: false }) };
}

/// What the current thread's upstream call did on the wire: whether it
/// opened a connection (else it used a pooled one) and whether any byte of
/// an answer arrived. A call that failed on a pooled connection before any
/// byte arrived met a connection the upstream had already closed (a
/// server that answers and then closes without `Connection: close`, as
/// uvicorn does after a 500), and is safe to send again on a new one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub connected: bool,
    pub received: bool,
}

impl Trace {
    /// Starts tracing a call on this thread.
    pub fn start() {
        TRACE.with(|t| t.set(Trace::default()));
    }

    /// What the call on this thread did since `start`.
    pub fn get() -> Trace {
        TRACE.with(Cell::get)
    }

    fn note(f: impl FnOnce(&mut Trace)) {
        TRACE.with(|t| {
            let mut v = t.get();
            f(&mut v);
            t.set(v);
        });
    }
}

#[derive(Default)]
struct Shared {
    aborted: AtomicBool,
    /// The socket this request's thread is doing I/O on right now, if any.
    active: Mutex<Option<Weak<dyn ShutdownHandle>>>,
}

/// A switch that stops one upstream request, from any thread, promptly.
#[derive(Clone, Default)]
pub struct Abort(Arc<Shared>);

/// While alive, I/O of upstream transports on this thread is abortable by
/// the `Abort` it came from.
pub struct ScopeGuard(());

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| *s.borrow_mut() = None);
    }
}

impl Abort {
    pub fn new() -> Abort {
        Abort::default()
    }

    /// Makes upstream requests made on the current thread abortable by
    /// `self` until the guard drops.
    pub fn enter(&self) -> ScopeGuard {
        SCOPE.with(|s| *s.borrow_mut() = Some(self.0.clone()));
        ScopeGuard(())
    }

    /// Stops the request: a read or write blocked on its socket returns at
    /// once, and later I/O fails. Idempotent.
    pub fn abort(&self) {
        let handle = {
            let active = self.0.active.lock().unwrap_or_else(|e| e.into_inner());
            self.0.aborted.store(true, Ordering::SeqCst);
            active.as_ref().and_then(Weak::upgrade)
        };
        if let Some(h) = handle {
            h.shutdown();
        }
    }

    pub fn is_aborted(&self) -> bool {
        self.0.aborted.load(Ordering::SeqCst)
    }
}

/// Whether the current thread's scope (if any) was aborted: its client
/// left, so no further upstream call should be tried for it.
pub fn scope_aborted() -> bool {
    SCOPE.with(|s| {
        s.borrow()
            .as_ref()
            .is_some_and(|shared| shared.aborted.load(Ordering::SeqCst))
    })
}

/// Publishes `handles` to the current thread's scope for one I/O call.
/// Returns the scope to withdraw from afterwards.
fn publish(handles: &[Weak<dyn ShutdownHandle>]) -> Option<Arc<Shared>> {
    let shared = SCOPE.with(|s| s.borrow().clone())?;
    let handle = handles.first()?.clone();
    let aborted = {
        let mut active = shared.active.lock().unwrap_or_else(|e| e.into_inner());
        *active = Some(handle.clone());
        shared.aborted.load(Ordering::SeqCst)
    };
    if aborted {
        if let Some(h) = handle.upgrade() {
            h.shutdown();
        }
    }
    Some(shared)
}

fn withdraw(shared: Option<Arc<Shared>>) {
    if let Some(shared) = shared {
        *shared.active.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// ureq's default connector (TCP, TLS), producing abortable transports.
pub struct AbortableConnector {
    inner: DefaultConnector,
}

impl AbortableConnector {
    pub fn new() -> AbortableConnector {
        AbortableConnector {
            inner: DefaultConnector::new(),
        }
    }
}

impl Default for AbortableConnector {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for AbortableConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AbortableConnector")
    }
}

type Captured = Arc<Mutex<Vec<Weak<dyn ShutdownHandle>>>>;

impl Connector<()> for AbortableConnector {
    type Out = AbortableTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        Trace::note(|t| t.connected = true);
        if chained.is_none() && details.uri.scheme_str() == Some("http") {
            let tcp = super::plain_tcp::PlainTcp::connect(details)?;
            let handle = tcp.shutdown_handle();
            (details.register_shutdown)(handle.clone())?;
            return Ok(Some(AbortableTransport {
                inner: Box::new(tcp),
                handles: vec![handle],
                pending: Vec::new(),
                pending_timeout: None,
            }));
        }
        let captured: Captured = Arc::default();
        let forward = details.register_shutdown.clone();
        let keep = captured.clone();
        let ours = ConnectionDetails {
            uri: details.uri,
            addrs: details.addrs.clone(),
            config: details.config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: Arc::new(move |h: Weak<dyn ShutdownHandle>| {
                keep.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(h.clone());
                forward(h)
            }),
        };
        let transport = self.inner.connect(&ours, chained)?;
        let handles = std::mem::take(&mut *captured.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(transport.map(|inner| AbortableTransport {
            inner,
            handles,
            pending: Vec::new(),
            pending_timeout: None,
        }))
    }
}

/// ureq's transport plus the handle that shuts its socket down.
pub struct AbortableTransport {
    inner: Box<dyn Transport>,
    handles: Vec<Weak<dyn ShutdownHandle>>,
    /// Output held back until the next read, so a request's head and body
    /// leave in one write: ureq transmits them separately, which costs the
    /// upstream an extra wake-up (measured on loopback: tens of µs per
    /// relayed request).
    pending: Vec<u8>,
    pending_timeout: Option<NextTimeout>,
}

impl AbortableTransport {
    /// Marks the thread's call as answered once input is waiting.
    fn note_received(&mut self) {
        if !self.inner.buffers().input().is_empty() {
            Trace::note(|t| t.received = true);
        }
    }

    /// Sends what `transmit_output` held back.
    fn flush_pending(&mut self) -> Result<(), ureq::Error> {
        let Some(timeout) = self.pending_timeout.take() else {
            return Ok(());
        };
        let mut sent = 0;
        while sent < self.pending.len() {
            let out = self.inner.buffers().output();
            let n = out.len().min(self.pending.len() - sent);
            if n == 0 {
                break;
            }
            out[..n].copy_from_slice(&self.pending[sent..sent + n]);
            self.inner.transmit_output(n, timeout)?;
            sent += n;
        }
        self.pending.clear();
        Ok(())
    }
}

impl fmt::Debug for AbortableTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AbortableTransport")
            .field("inner", &self.inner)
            .finish()
    }
}

/// Held-back output above this is sent without waiting for a read.
const COALESCE_MAX_BYTES: usize = 64 * 1024;

impl Transport for AbortableTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        // Held back (see `pending`); a large body goes out as it comes.
        let out = &self.inner.buffers().output()[..amount];
        self.pending.extend_from_slice(out);
        self.pending_timeout = Some(timeout);
        if self.pending.len() < COALESCE_MAX_BYTES {
            return Ok(());
        }
        let scope = publish(&self.handles);
        let r = self.flush_pending();
        withdraw(scope);
        r
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let scope = publish(&self.handles);
        let r = self
            .flush_pending()
            .and_then(|_| self.inner.maybe_await_input(timeout));
        withdraw(scope);
        self.note_received();
        r
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let scope = publish(&self.handles);
        let r = self
            .flush_pending()
            .and_then(|_| self.inner.await_input(timeout));
        withdraw(scope);
        self.note_received();
        r
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    fn agent() -> ureq::Agent {
        let cfg = ureq::Agent::config_builder().proxy(None).build();
        ureq::Agent::with_parts(
            cfg,
            AbortableConnector::new(),
            ureq::unversioned::resolver::DefaultResolver::default(),
        )
    }

    /// A server that accepts one connection, reads the request head, writes
    /// `answer` and then holds the socket until the peer closes it; reports
    /// how long after accepting the close was seen.
    fn serve(answer: &'static [u8]) -> (String, std::sync::mpsc::Receiver<Duration>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let t = Instant::now();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            s.write_all(answer).unwrap();
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            let _ = tx.send(t.elapsed());
        });
        (url, rx)
    }

    #[test]
    fn abort_wakes_a_read_waiting_for_the_head() {
        let (url, closed) = serve(b"");
        let agent = agent();
        let abort = Abort::new();
        let a2 = abort.clone();
        let t = std::thread::spawn(move || {
            let _g = a2.enter();
            agent.get(&url).call().map(|_| ())
        });
        std::thread::sleep(Duration::from_millis(200));
        abort.abort();
        assert!(t.join().unwrap().is_err());
        let seen = closed
            .recv_timeout(Duration::from_secs(2))
            .expect("server saw the close");
        assert!(seen < Duration::from_secs(2));
    }

    #[test]
    fn abort_wakes_a_body_read_and_spares_other_threads() {
        let (url, closed) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
        let agent = agent();
        let abort = Abort::new();
        let a2 = abort.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let _g = a2.enter();
            let mut res = agent.get(&url).call()?;
            tx.send(()).unwrap();
            res.body_mut().read_to_string()
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        abort.abort();
        assert!(t.join().unwrap().is_err());
        closed
            .recv_timeout(Duration::from_secs(2))
            .expect("server saw the close");
    }

    #[test]
    fn abort_before_the_request_starts_is_not_lost() {
        let (url, _closed) = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let abort = Abort::new();
        abort.abort();
        let _g = abort.enter();
        assert!(agent().get(&url).call().is_err());
    }
}
