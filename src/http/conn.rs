//! The API's connection loop: axum's `serve`, plus what it lacks against slow
//! and idle clients, so no client keeps a connection's place for ever. A
//! connection must send a request head within `HEADER_READ_TIMEOUT_SECS` of
//! its opening or of the next request's first byte; one with no request in
//! flight is closed after `IDLE_TIMEOUT_SECS` without a byte (a long-poll is
//! in flight, so it is never idle); a body must arrive in full within
//! `BODY_READ_TIMEOUT_SECS` of its head (plus a second per 16 KiB received,
//! so large bodies on slow links still arrive); a client that stops reading is
//! dropped after `WRITE_STALL_TIMEOUT_SECS` of writes making no progress,
//! request in flight or not. At most `MAX_CONNECTIONS` are open at once: past
//! that, new ones wait in the listen backlog (with a warning in the log)
//! until one closes, so the file-descriptor limit is never reached by
//! sockets alone. At shutdown, connections get `SHUTDOWN_GRACE_SECS` to
//! finish, then are closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long slow and idle connections may stay, and how many may be open.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// From the first byte of a request to the end of its head.
    pub header_read: Duration,
    /// With no request in flight and no byte received.
    pub idle: Duration,
    /// From the end of a request's head to the end of its body.
    pub body_read: Duration,
    /// A write making no progress (the client does not read).
    pub write_stall: Duration,
    /// At shutdown, before the connections still open are closed.
    pub shutdown_grace: Duration,
}

impl ConnLimits {
    /// How often a connection checks its deadlines.
    fn check_every(&self) -> Duration {
        (self.header_read.min(self.idle).min(self.write_stall) / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// The most a connection's read buffer grows to (hyper's default is
/// 400 KiB, and it grows with large bodies): every open connection keeps the
/// buffer its earlier bodies grew, idle or not. Bodies arrive in pieces of
/// this size; a request head must fit in it (else 431).
const READ_BUFFER_MAX: usize = 8 * 1024;

/// At most one "cap reached" warning this often.
const CAP_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then lets each
/// connection finish its requests in flight and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let stop = CancellationToken::new();
    let mut shutdown = pin!(shutdown);
    let mut warned: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if warned.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached: {} connections open (MAX_CONNECTIONS); new ones wait until one closes",
                        limits.max_connections
                    );
                    warned = Some(Instant::now());
                }
                metrics::counter!("echolia_connection_cap_reached_total").increment(1);
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::error!(error = %err, "accept error");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(250)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        // No Nagle: a streamed answer's events go out as written, not after
        // the client's delayed ACK of the response head (≈ 40 ms).
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        tokio::spawn(connection(tcp, peer, app.clone(), limits, stop.clone(), permit));
    }
    drop(listener);
    stop.cancel();
    // Every connection holds a permit until it ends, and each ends within
    // the grace period (plus one check); the bound is a backstop.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let backstop = limits.shutdown_grace + limits.check_every() * 2 + Duration::from_secs(1);
    if tokio::time::timeout(backstop, permits.acquire_many(all)).await.is_err() {
        tracing::warn!("shutdown: some connections did not close in time; leaving them");
    }
    Ok(())
}

/// What a connection's deadlines are computed from.
#[derive(Debug)]
struct Activity {
    in_flight: usize,
    /// When the last request ended (or the connection opened).
    idle_since: Instant,
    /// The first byte of the next request (or the connection's opening),
    /// while no request is in flight.
    head_started: Option<Instant>,
    /// Since when a write has made no progress, if one is waiting.
    write_stalled: Option<Instant>,
}

type Shared = Arc<Mutex<Activity>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Activity> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: ConnLimits,
    stop: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    let opened = Instant::now();
    // The head deadline runs from the opening: a connection that never
    // sends a byte is not given the (longer) idle deadline.
    let activity: Shared = Arc::new(Mutex::new(Activity {
        in_flight: 0,
        idle_since: opened,
        head_started: Some(opened),
        write_stalled: None,
    }));
    let io = TokioIo::new(Watched { inner: tcp, activity: activity.clone() });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let busy = InFlight::start(&requests);
        let mut req = req.map(|body| Deadline::new(body, limits.body_read));
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let response = app.oneshot(req).await?;
            Ok::<Response, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
        }
    });
    let mut conn =
        pin!(http1::Builder::new().max_buf_size(READ_BUFFER_MAX).serve_connection(io, service).with_upgrades());
    let mut checks = tokio::time::interval(limits.check_every());
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    let grace_over = tokio::time::sleep(Duration::MAX);
    let mut grace_over = pin!(grace_over);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
                grace_over.as_mut().reset(Instant::now() + limits.shutdown_grace);
            }
            () = grace_over.as_mut(), if stopping => {
                tracing::debug!("shutdown: closing a connection still busy after the grace period");
                return;
            }
            _ = checks.tick() => {
                if let Some(why) = overdue(&lock(&activity), limits) {
                    tracing::debug!(why, "closing a connection");
                    return;
                }
            }
        }
    }
}

/// Why a connection should be closed now, if it should.
fn overdue(activity: &Activity, limits: ConnLimits) -> Option<&'static str> {
    if activity.write_stalled.is_some_and(|at| at.elapsed() >= limits.write_stall) {
        return Some("the client stopped reading");
    }
    if activity.in_flight > 0 {
        return None;
    }
    match activity.head_started {
        Some(at) if at.elapsed() >= limits.header_read => Some("request head not received in time"),
        Some(_) => None,
        None if activity.idle_since.elapsed() >= limits.idle => Some("idle"),
        None => None,
    }
}

/// A request in flight on its connection, from its head to the end of its
/// response's body.
struct InFlight(Shared);

impl InFlight {
    fn start(shared: &Shared) -> Self {
        let mut activity = lock(shared);
        activity.in_flight += 1;
        activity.head_started = None;
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut activity = lock(&self.0);
        activity.in_flight = activity.in_flight.saturating_sub(1);
        if activity.in_flight == 0 {
            activity.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request in flight until it is sent.
struct Tracked {
    body: Body,
    _busy: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The rate a body earns time at, past `BODY_READ_TIMEOUT_SECS`: 16 KiB/s.
/// A large body on a slow link still arrives; a body dripped a byte at a
/// time does not hold its connection for long.
pub const BODY_MIN_RATE: u64 = 16 * 1024;

/// A request body that must arrive within a deadline set when its head was
/// read, extended by one second per [`BODY_MIN_RATE`] bytes received: a
/// per-frame timeout alone lets a client drip one byte at a time for ever.
struct Deadline {
    body: Incoming,
    started: Instant,
    within: Duration,
    received: u64,
    /// Made on the first wait, so a request without a body costs no timer.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Deadline {
    fn new(body: Incoming, within: Duration) -> Self {
        Self { body, started: Instant::now(), within, received: 0, timer: None }
    }

    fn deadline(&self) -> Instant {
        // At most a day: no body limit is that large, and the sum stays far from overflowing.
        let earned = Duration::from_secs((self.received / BODY_MIN_RATE).min(86_400));
        self.started + self.within.saturating_add(earned)
    }
}

/// The body did not arrive within `BODY_READ_TIMEOUT_SECS`.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimedOut;

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            if let Some(data) = frame.as_ref().and_then(|frame| frame.as_ref().ok()).and_then(Frame::data_ref) {
                self.received = self.received.saturating_add(data.len() as u64);
                let deadline = self.deadline();
                if let Some(timer) = self.timer.as_mut() {
                    timer.as_mut().reset(deadline);
                }
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = self.deadline();
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when the first byte of a request head arrives.
struct Watched {
    inner: TcpStream,
    activity: Shared,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let mut activity = lock(&self.activity);
            if activity.in_flight == 0 && activity.head_started.is_none() {
                activity.head_started = Some(Instant::now());
            }
        }
        polled
    }
}

impl Watched {
    /// Notes whether a write made progress: a pending one starts (or
    /// continues) a stall, any other outcome ends it.
    fn note_write<T>(&self, polled: Poll<T>) -> Poll<T> {
        let mut activity = lock(&self.activity);
        if polled.is_pending() {
            activity.write_stalled.get_or_insert_with(Instant::now);
        } else {
            activity.write_stalled = None;
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.note_write(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Raises this process's open-files limit (soft) to its hard limit, where
/// the OS allows: every connection and every open database holds files.
/// Returns the soft limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}
