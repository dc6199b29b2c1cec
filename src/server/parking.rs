//! Idle HTTP/1 keep-alive connections, parked. hyper holds a connection's read and write buffers
//! (8 KiB each) and its state for as long as the connection is open, serving or idle; with
//! 10 000 keep-alive clients that was most of Iris's memory. After [`PARK_IDLE_AFTER`] without a
//! request, hyper hands the socket back and the connection waits for its next bytes holding only
//! the socket; those bytes start a fresh hyper connection. nginx treats its keep-alive
//! connections the same way (it frees a request's buffers and waits with a small read).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::wakeups::Wakeups;
use super::{BoxError, Peer, ResponseBody};
use crate::proxy::Lane;

/// An HTTP/1 connection idle this long is parked: longer than a busy client's gap between
/// requests, so a loaded connection keeps its buffers, and far shorter than
/// `serve.public.header_read_timeout`, which still ends an idle connection.
pub const PARK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The server's stop signal, as one connection sees it.
pub(super) struct Stopping {
    /// Turns `true` when the server starts stopping.
    pub signal: watch::Receiver<bool>,
    /// Held for the connection's life, so the graceful shutdown waits for it.
    pub _watcher: hyper_util::server::graceful::Watcher,
}

/// Serves a plain HTTP/1 connection until the client closes it, it stays idle for
/// `idle_timeout` after its last response, or the server stops; idle stretches are spent parked.
pub(super) async fn serve<H, F>(
    stream: TcpStream,
    http1: &http1::Builder,
    handler: H,
    peer: SocketAddr,
    stopping: Stopping,
    idle_timeout: Duration,
    parked: Gauge,
) -> Result<(), BoxError>
where
    H: Fn(Request<Incoming>, Peer) -> F + Clone + Send + Unpin + 'static,
    F: Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    // Dropped with the connection, which hands its upstream connection to the idle pool.
    let lane = Lane::default();
    let Stopping { signal, _watcher } = stopping;
    let mut stop = pin!(stopped(signal));
    let mut io = Rewind::new(stream, Bytes::new());
    let peer = Peer::new(peer, Some(lane.clone()));
    loop {
        let handler = handler.clone();
        let requests = activity.clone();
        let peer = peer.clone();
        let service = service_fn(move |req| {
            let in_flight = InFlight::start(&requests);
            let response = handler(req, peer.clone());
            // Boxed: the connection then holds a pointer, not a full-size handler future.
            Box::pin(async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                    body,
                    _in_flight: in_flight,
                }))
            })
        });
        // Boxed: freed while the connection is parked, instead of a hole in this future.
        let mut connection = Box::new(http1.serve_connection(TokioIo::new(io), service));
        let outcome = serve_until_idle(&mut connection, &activity, &lane, stop.as_mut()).await?;
        // Parked or closing: no request will use the upstream connection for a while.
        lane.release();
        let parts = connection.into_parts();
        let (mut stream, unread) = parts.io.into_inner().into_parts();
        if outcome == Outcome::Closed {
            // hyper shuts the socket down itself only when it owns the whole connection.
            let _ = stream.shutdown().await;
            return Ok(());
        }
        let pending = join(parts.read_buf, unread);
        if pending.is_empty() {
            parked.inc();
            let woke = tokio::select! {
                biased;
                () = stop.as_mut() => false,
                readable = stream.readable() => readable.is_ok(),
                () = tokio::time::sleep_until(activity.last_done() + idle_timeout) => false,
            };
            parked.dec();
            if !woke {
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
        io = Rewind::new(stream, pending);
    }
}

/// How a hyper connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Idle, handed back with the socket still open.
    Parked,
    /// The client closed, a request asked for `Connection: close`, or the server is stopping.
    Closed,
}

/// Drives `connection` until it ends or has been idle for [`PARK_IDLE_AFTER`].
async fn serve_until_idle<S, B>(
    connection: &mut http1::Connection<TokioIo<Rewind>, S>,
    activity: &Activity,
    lane: &Lane,
    mut stop: Pin<&mut impl Future<Output = ()>>,
) -> Result<Outcome, hyper::Error>
where
    S: hyper::service::HttpService<Incoming, ResBody = B> + Unpin,
    S::Future: Unpin,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    enum Event {
        Done(Result<(), hyper::Error>),
        Tick,
        Stop,
    }
    // The futures this task drives, each polled only when woken (see `wakeups`), in this order:
    // the client's connection first, as `select!`'s `biased` did.
    const CONNECTION: usize = 0;
    const LANE: usize = 1;
    const TICK: usize = 2;
    const STOP: usize = 3;
    let wakeups = Wakeups::<4>::new();
    let mut tick = pin!(tokio::time::sleep(PARK_IDLE_AFTER));
    // hyper counts a connection as idle only between exchanges, not before its first: one
    // waiting for (or reading) its first request head is never parked.
    let answered_before = activity.answered();
    // Once keep-alive is off, the connection ends by itself after its current exchange.
    let mut ending = false;
    loop {
        let event = poll_fn(|cx| {
            wakeups.poll(cx, |future, cx| match future {
                CONNECTION => connection.poll_without_shutdown(cx).map(Event::Done),
                // The lane's upstream connection moves in this task, next to the client's.
                LANE => lane.poll_drive(cx).map(|never| match never {}),
                TICK if !ending => tick.as_mut().poll(cx).map(|()| Event::Tick),
                STOP if !ending => stop.as_mut().poll(cx).map(|()| Event::Stop),
                _ => Poll::Pending,
            })
        })
        .await;
        match event {
            Event::Done(done) => {
                done?;
                return Ok(Outcome::Closed);
            }
            Event::Stop => {
                ending = true;
                Pin::new(&mut *connection).graceful_shutdown();
                wakeups.wake(CONNECTION);
            }
            Event::Tick => {
                let now = Instant::now();
                match activity.idle_since() {
                    _ if activity.answered() == answered_before => {
                        tick.as_mut().reset(now + PARK_IDLE_AFTER);
                    }
                    Some(since) if now >= since + PARK_IDLE_AFTER => {
                        // Idle, hyper closes its side at once; mid-exchange (a response body
                        // stalled after its handler finished), it finishes and then ends.
                        Pin::new(&mut *connection).graceful_shutdown();
                        let mut cx = Context::from_waker(wakeups.waker(CONNECTION));
                        match connection.poll_without_shutdown(&mut cx) {
                            Poll::Ready(done) => {
                                done?;
                                return Ok(Outcome::Parked);
                            }
                            Poll::Pending => ending = true,
                        }
                    }
                    Some(since) => tick.as_mut().reset(since + PARK_IDLE_AFTER),
                    None => tick.as_mut().reset(now + PARK_IDLE_AFTER),
                }
                // Polled again for its new deadline.
                wakeups.wake(TICK);
            }
        }
    }
}

/// Resolves once the server starts stopping.
async fn stopped(mut stopping: watch::Receiver<bool>) {
    while !*stopping.borrow_and_update() {
        if stopping.changed().await.is_err() {
            return;
        }
    }
}

/// Bytes hyper had read but not parsed, then any the previous connection never read. Empty
/// views are replaced: they still hold hyper's whole read buffer (8 KiB) alive.
fn join(read: Bytes, unread: Bytes) -> Bytes {
    match (read.is_empty(), unread.is_empty()) {
        (true, true) => Bytes::new(),
        (false, true) => read,
        (true, false) => unread,
        (false, false) => {
            let mut both = BytesMut::with_capacity(read.len() + unread.len());
            both.extend_from_slice(&read);
            both.extend_from_slice(&unread);
            both.freeze()
        }
    }
}

/// A connection's exchanges in flight and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    /// Exchanges answered so far.
    answered: AtomicU64,
    /// When the last response was fully handed to hyper, in microseconds after `opened`.
    last_done_micros: AtomicU64,
    opened: Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            answered: AtomicU64::new(0),
            last_done_micros: AtomicU64::new(0),
            opened: Instant::now(),
        }
    }

    fn last_done(&self) -> Instant {
        self.opened + Duration::from_micros(self.last_done_micros.load(Ordering::Acquire))
    }

    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    /// Since when the connection has had nothing in flight; `None` while it has.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| self.last_done())
    }
}

/// One exchange in flight, from the request until hyper drops its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let micros = self.0.opened.elapsed().as_micros();
        self.0
            .last_done_micros
            .store(u64::try_from(micros).unwrap_or(u64::MAX), Ordering::Release);
        self.0.answered.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its exchange counted as in flight until hyper has written it.
struct Tracked<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A socket with bytes already taken from it in front: what a parked connection's next hyper
/// connection reads first.
struct Rewind {
    unread: Bytes,
    stream: TcpStream,
}

impl Rewind {
    fn new(stream: TcpStream, unread: Bytes) -> Rewind {
        Rewind { unread, stream }
    }

    fn into_parts(self) -> (TcpStream, Bytes) {
        (self.stream, self.unread)
    }
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_bytes_keep_their_order() {
        assert_eq!(
            join(
                Bytes::from_static(b"GET / HT"),
                Bytes::from_static(b"TP/1.1")
            ),
            Bytes::from_static(b"GET / HTTP/1.1")
        );
        assert_eq!(join(Bytes::new(), Bytes::from_static(b"x")), "x");
        assert_eq!(join(Bytes::from_static(b"y"), Bytes::new()), "y");
    }

    #[test]
    fn a_parked_connection_keeps_no_read_buffer() {
        let mut buffer = BytesMut::with_capacity(8192);
        buffer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let start = buffer.as_ptr() as usize;
        let parsed = buffer.split();
        let emptied = buffer.freeze();
        assert!(emptied.is_empty());
        drop(parsed);
        // An empty view into the buffer would keep all 8 KiB allocated; `join` lets it go.
        let kept = join(emptied, Bytes::new()).as_ptr() as usize;
        assert!(!(start..start + 8192).contains(&kept));
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_once_every_response_body_is_written() {
        let activity = Arc::new(Activity::new());
        assert!(activity.idle_since().is_some(), "a new connection is idle");
        let body = Tracked {
            body: http_body_util::Empty::<Bytes>::new(),
            _in_flight: InFlight::start(&activity),
        };
        let second = InFlight::start(&activity);
        assert!(activity.idle_since().is_none());
        drop(second);
        assert!(
            activity.idle_since().is_none(),
            "one body is still unwritten"
        );
        let before = Instant::now();
        assert_eq!(body._in_flight.0.in_flight.load(Ordering::Acquire), 1);
        drop(body);
        let since = activity
            .idle_since()
            .expect("idle once the body is dropped");
        assert!(since + Duration::from_millis(1) >= before);
    }
}
