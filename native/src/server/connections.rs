//! Connections: the server's own accept loop over hyper's HTTP/1 connection, so that no client
//! can hold what the others need.
//!
//! - At most [`ConnectionLimits::max_connections`] connections at once, kept below the process's
//!   descriptor limit (raised to its hard limit at start where the OS lets us): past the cap a
//!   new connection waits in the kernel's backlog instead of failing `accept` for everyone, and
//!   idle keep-alive connections are closed at once to make room.
//! - hyper's header-read timeout (with a timer): a client that sends half a request head, or
//!   nothing, is disconnected.
//! - An idle keep-alive connection (no request in flight, no byte moved) is closed after the
//!   idle timeout.
//! - A response the client stops reading (a stalled download) is dropped once a write has
//!   waited for the send timeout.
//! - On shutdown no connection is accepted; open ones finish their request (hyper's graceful
//!   shutdown) within the grace period, and are dropped after it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// What a connection may hold, and for how long.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once (lowered to fit the descriptor limit).
    pub max_connections: usize,
    /// A request head must arrive within this from when the server starts waiting for it.
    pub header_timeout: Duration,
    /// A keep-alive connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// A write the client does not read for this long drops the connection.
    pub send_timeout: Duration,
    /// After SIGTERM/SIGINT, open connections and the running job get this long, then the
    /// server exits whatever they do.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Descriptors kept for everything that is not a connection: model files, the runtime, logs.
const RESERVED_DESCRIPTORS: u64 = 64;

/// How long a connection must have been idle to be closed while the server is at its cap.
const IDLE_AT_CAP: Duration = Duration::from_secs(1);

/// Raise the soft descriptor limit to the hard one (at most 65 536) where the OS allows;
/// the soft limit in force afterwards.
// `rlim_t` is u64 on Linux but not on every unix.
#[allow(clippy::unnecessary_cast)]
pub fn raise_descriptor_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit write/read the struct we pass, nothing else.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            let wanted = limit.rlim_max.min(65_536);
            if limit.rlim_cur < wanted {
                let raised = libc::rlimit {
                    rlim_cur: wanted,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    return Some(wanted as u64);
                }
            }
        }
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    None
}

/// The connection cap: `requested`, lowered to leave [`RESERVED_DESCRIPTORS`] free under
/// `descriptors` (and never below 8).
pub fn connection_cap(requested: usize, descriptors: Option<u64>) -> usize {
    let room = descriptors.map_or(usize::MAX, |d| {
        usize::try_from(d.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX)
    });
    requested.min(room).max(8)
}

/// What a connection has done lately, for its watchdog.
struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last byte read or written.
    last: AtomicU64,
    /// Milliseconds since `started` (plus one) since which a write has been waiting; 0: none.
    write_blocked: AtomicU64,
    /// Requests whose answer is not ready yet.
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            last: AtomicU64::new(0),
            write_blocked: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn moved(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    fn wrote<T>(&self, poll: &Poll<T>) {
        match poll {
            Poll::Ready(_) => {
                self.write_blocked.store(0, Ordering::Relaxed);
                self.moved();
            }
            Poll::Pending => {
                let now = self.now_ms() + 1;
                let _ = self.write_blocked.compare_exchange(
                    0,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    /// Why the connection should be dropped now, if it should.
    fn verdict(&self, limits: &ConnectionLimits, at_cap: bool) -> Option<&'static str> {
        let now = self.now_ms();
        let blocked = self.write_blocked.load(Ordering::Relaxed);
        if blocked != 0 && now + 1 - blocked > limits.send_timeout.as_millis() as u64 {
            return Some("the client stopped reading");
        }
        let idle_for = now.saturating_sub(self.last.load(Ordering::Relaxed));
        let idle_limit = if at_cap {
            IDLE_AT_CAP.min(limits.idle_timeout)
        } else {
            limits.idle_timeout
        };
        let idle = self.in_flight.load(Ordering::Relaxed) == 0 && blocked == 0;
        (idle && idle_for > idle_limit.as_millis() as u64).then_some("idle")
    }
}

/// A socket that records its activity.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.moved();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.wrote(&poll);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.wrote(&poll);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.activity.wrote(&poll);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Counts a request in flight until its answer is ready.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.moved();
    }
}

/// Serve `app` on `listener` within `limits` until `shutdown` completes, then drain the open
/// connections for at most the grace period; when the shutdown began. Requests carry
/// `ConnectInfo<SocketAddr>`.
pub async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> Instant {
    let cap = limits.max_connections.max(1);
    let slots = Arc::new(Semaphore::new(cap));
    let (stop, stopping) = watch::channel(false);
    let limits = Arc::new(limits);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: not fatal.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let app = app.clone();
        let limits = limits.clone();
        let stopping = stopping.clone();
        let slots = slots.clone();
        tokio::spawn(async move {
            connection(stream, peer, app, &limits, stopping, &slots).await;
            drop(slot);
        });
    }
    let since = Instant::now();
    drop(listener);
    let _ = stop.send(true);
    // Every slot back means every connection has ended.
    let all = u32::try_from(cap).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.shutdown_grace, slots.acquire_many(all))
        .await
        .is_err()
    {
        let open = cap - slots.available_permits();
        eprintln!(
            "orfeas: {open} connection(s) still open after the {} s grace period: closing them",
            limits.shutdown_grace.as_secs()
        );
    }
    since
}

/// One connection, until it ends, its watchdog drops it, or shutdown's drain ends it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: &ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
    slots: &Semaphore,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let for_requests = activity.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let in_flight = InFlight::new(&for_requests);
            let answer = app.clone().oneshot(request);
            async move {
                let response = answer.await;
                drop(in_flight);
                response
            }
        });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut watchdog = tokio::time::interval(Duration::from_millis(250));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => break,
            changed = stopping.changed(), if !draining => {
                if changed.is_err() || *stopping.borrow() {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
            _ = watchdog.tick() => {
                let at_cap = slots.available_permits() == 0;
                if let Some(why) = activity.verdict(limits, at_cap) {
                    tracing::debug!("closing the connection from {peer}: {why}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_descriptors_for_the_rest() {
        assert_eq!(connection_cap(512, Some(256)), 192);
        assert_eq!(connection_cap(512, Some(1 << 20)), 512);
        assert_eq!(connection_cap(512, None), 512);
        assert_eq!(connection_cap(512, Some(10)), 8);
    }

    #[test]
    fn a_connection_is_idle_only_with_nothing_in_flight() {
        let limits = ConnectionLimits {
            idle_timeout: Duration::ZERO,
            send_timeout: Duration::from_secs(3600),
            ..ConnectionLimits::default()
        };
        let activity = Activity::new();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(activity.verdict(&limits, false), Some("idle"));
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        assert_eq!(activity.verdict(&limits, false), None);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        activity.wrote::<()>(&Poll::Pending);
        assert_eq!(activity.verdict(&limits, false), None, "a write waits");
        let strict = ConnectionLimits {
            send_timeout: Duration::ZERO,
            ..limits
        };
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            activity.verdict(&strict, false),
            Some("the client stopped reading")
        );
    }
}
