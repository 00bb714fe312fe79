//! The connector libSQL's remote client opens its HTTP connections with:
//! its own (HTTPS or plain HTTP, TLS by rustls), with a deadline on the
//! connect and on every read and write of the socket. libSQL sets no timeout
//! of its own, so without this a stalled server would hold a request for ever.
//!
//! A socket with a read pending and no byte for `timeout` fails: an answer
//! that stops halfway, or a server that took the request and went silent.
//! An idle pooled connection fails the same way after `timeout` without
//! traffic, and the client opens a new one for its next request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper014::client::connect::{Connected, Connection};
use hyper014::client::HttpConnector;
use hyper014::Uri;
use hyper_rustls025::{HttpsConnector, MaybeHttpsStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// HTTPS or HTTP connections with deadlines (see the module's doc).
#[derive(Clone)]
pub struct TimeoutConnector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
    /// Every host reached at this address instead (`TURSO_CONNECT_TO`): only
    /// the socket goes there; the request keeps its URL's host in `Host`.
    connect_to: Option<Uri>,
}

impl TimeoutConnector {
    pub fn new(timeout: Duration, connect_to: Option<std::net::SocketAddr>) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let inner = hyper_rustls025::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let connect_to = connect_to.and_then(|addr| format!("http://{addr}").parse().ok());
        Self { inner, timeout, connect_to }
    }
}

impl tower::Service<Uri> for TimeoutConnector {
    type Response = TimeoutStream<MaybeHttpsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let uri = self.connect_to.clone().unwrap_or(uri);
        let (connecting, timeout) = (self.inner.call(uri), self.timeout);
        Box::pin(async move {
            let stream = tokio::time::timeout(timeout, connecting)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting to the database timed out"))??;
            Ok(TimeoutStream { inner: stream, timeout, read_deadline: None, write_deadline: None })
        })
    }
}

/// A socket whose reads and writes fail after `timeout` without progress.
pub struct TimeoutStream<S> {
    inner: S,
    timeout: Duration,
    read_deadline: Option<Pin<Box<Sleep>>>,
    write_deadline: Option<Pin<Box<Sleep>>>,
}

/// Whether `deadline` (armed now if it was not) has passed.
fn expired(deadline: &mut Option<Pin<Box<Sleep>>>, timeout: Duration, cx: &mut Context<'_>) -> bool {
    deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout))).as_mut().poll(cx).is_ready()
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the database did not answer in time")
}

impl<S: AsyncRead + Unpin> AsyncRead for TimeoutStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.read_deadline = None;
                Poll::Ready(result)
            }
            Poll::Pending if expired(&mut this.read_deadline, this.timeout, cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimeoutStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(result) => {
                this.write_deadline = None;
                // A request sent: its answer gets a whole `timeout` from now
                // (reset in place: a read waiting on it stays registered).
                if let Some(deadline) = &mut this.read_deadline {
                    deadline.as_mut().reset(tokio::time::Instant::now() + this.timeout);
                }
                Poll::Ready(result)
            }
            Poll::Pending if expired(&mut this.write_deadline, this.timeout, cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connection> Connection for TimeoutStream<S> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}
