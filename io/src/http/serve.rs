//! The real server's connection handling for `rockhound serve`: a connection cap, header,
//! body and idle timeouts, and a bounded shutdown grace period. The simulated server (in
//! [`crate::net`]) keeps none of these, so that its timing is the simulation's alone.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The limits of `rockhound serve`'s connections. Every one is a command-line option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// The most connections open at once; one more is answered 503 and closed.
    pub connections_max: usize,
    /// How long a client may take to send a request's headers, from the connection's
    /// start (first request) or the request's first byte (later requests).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a request's body once its headers arrived.
    pub body_read_timeout: Duration,
    /// How long a connection may carry no byte either way before it is closed.
    pub idle_timeout: Duration,
    /// How long open requests may take to finish after SIGINT or SIGTERM.
    pub shutdown_grace: Duration,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            connections_max: 512,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// hyper's own header count limit, beyond which it answers a bare 431.
const HYPER_HEADER_COUNT_MAX: usize = 8 * super::HEADER_COUNT_MAX;
const _: () = assert!(HYPER_HEADER_COUNT_MAX > super::HEADER_COUNT_MAX);

/// The body of the answer to a connection over the cap.
const BUSY_BODY: &str =
    r#"{"error":"busy","message":"too many open connections; try again shortly"}"#;

/// How the accept loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every open request finished within the grace period.
    Drained,
    /// The grace period ran out with requests still open; they were dropped.
    GraceExpired,
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets open
/// requests finish for at most `limits.shutdown_grace`.
pub async fn serve_tcp(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<Stopped> {
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, a peer gone before the handshake finished: pause and
                // go on accepting, as axum does.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let activity = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let service = TowerToHyperService::new(router.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            // Far above the router's own limits (`HEADER_COUNT_MAX`), so that a request
            // over those gets the router's answer with its error body; only a request
            // beyond these gets hyper's bare 431.
            .max_headers(HYPER_HEADER_COUNT_MAX)
            .serve_connection(io, service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = idle(&activity, limits.idle_timeout) => {}
            }
            drop(permit);
        });
    }
    drop(listener);
    Ok(
        match tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await {
            Ok(()) => Stopped::Drained,
            Err(_) => Stopped::GraceExpired,
        },
    )
}

/// Answers 503 to a connection over the cap and closes it, giving up after a second.
async fn refuse_busy(mut stream: tokio::net::TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BUSY_BODY}",
            BUSY_BODY.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Completes once the connection has carried no byte for `timeout`.
async fn idle(activity: &AtomicU64, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(10));
    let mut quiet = Duration::ZERO;
    let mut seen = activity.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.load(Ordering::Relaxed);
        if now == seen {
            quiet += tick;
            if quiet >= timeout {
                return;
            }
        } else {
            seen = now;
            quiet = Duration::ZERO;
        }
    }
}

/// A stream that counts the reads and writes that moved bytes, for the idle timeout.
struct Watched<S> {
    inner: S,
    activity: Arc<AtomicU64>,
}

impl<S> Watched<S> {
    fn touch(&self, moved: bool) {
        if moved {
            self.activity.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let moved = buf.filled().len() > before;
        self.touch(moved);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, data);
        self.touch(matches!(poll, Poll::Ready(Ok(n)) if n > 0));
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
