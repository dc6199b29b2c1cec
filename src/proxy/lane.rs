//! A client connection's own connection to Hydra, driven by the client connection's task.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own: each request
//! crosses from the client connection's task to the upstream connection's task and back, and on
//! a multi-threaded runtime the two usually sit on different threads, so every pass-through paid
//! for cross-thread wake-ups (a futex call and an idle worker woken) and the pool's lock. nginx
//! drives the upstream connection from the same event loop as the client's. A [`Lane`] does the
//! same: an HTTP/1 client connection keeps one upstream connection for its requests (HTTP/1 has
//! one request in flight at a time), and the client connection's task polls it alongside its own
//! hyper connection. When the client connection parks or closes, its upstream connection goes to
//! its worker thread's small idle pool for the next client connection on that thread to take.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::{Request, Response};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use super::ForwardBody;
use crate::upstream::PerWorker;

/// Idle upstream connections kept for client connections to come, at most, across all public
/// worker threads. More are closed: a burst of client connections should not leave Hydra holding
/// as many idle ones.
pub const MAX_IDLE_UPSTREAMS: usize = 128;

/// An idle upstream connection older than this is closed rather than reused, as hyper-util's
/// pool did (it is not polled while idle, so a close from Hydra's side goes unnoticed longer).
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The byte stream to Hydra: plain TCP or TLS.
type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// One HTTP/1 connection to Hydra: the half requests are sent on, and the half that must be
/// polled to move them.
pub struct Upstream {
    sender: SendRequest<ForwardBody>,
    // Boxed: hyper's connection state is large, and the lane is moved in and out of the pool.
    connection: Pin<Box<Connection<Stream, ForwardBody>>>,
    idle_since: Instant,
}

impl Upstream {
    /// The halves of a connection after hyper's handshake.
    pub fn new(
        sender: SendRequest<ForwardBody>,
        connection: Connection<Stream, ForwardBody>,
    ) -> Self {
        Upstream {
            sender,
            connection: Box::pin(connection),
            idle_since: Instant::now(),
        }
    }

    /// Polls the connection once; `true` once it has ended (closed by either side or broken).
    fn poll_ended(&mut self, cx: &mut Context<'_>) -> bool {
        match self.connection.as_mut().poll(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "upstream connection to Hydra ended");
                true
            }
            Poll::Pending => self.sender.is_closed(),
        }
    }
}

/// Upstream connections no client connection holds right now, on one public worker thread.
///
/// One pool per worker (see [`per_worker`]): a connection's socket is registered with the reactor
/// of the runtime that opened it, so a connection handed to a client connection on another
/// worker would have every readiness event relayed across threads, and wait whenever the other
/// runtime is busy.
pub struct IdlePool {
    idle: Mutex<Vec<Upstream>>,
    /// How many this pool keeps at most.
    capacity: usize,
    /// `iris_upstream_idle_connections`, shared by every worker's pool: the number all hold.
    gauge: Gauge,
}

/// A pool for each public worker, their capacities adding up to [`MAX_IDLE_UPSTREAMS`], and one
/// with worker 0's share for other threads (unused by `iris serve`, whose lanes all live on
/// workers), all counted on `gauge`.
pub fn per_worker(gauge: &Gauge, workers: usize) -> PerWorker<Arc<IdlePool>> {
    gauge.set(0);
    let workers = workers.max(1);
    PerWorker::each(workers, |worker| {
        // The first MAX % workers workers keep one more, so that the shares add up exactly.
        let index = worker.unwrap_or(0);
        let capacity =
            MAX_IDLE_UPSTREAMS / workers + usize::from(index < MAX_IDLE_UPSTREAMS % workers);
        Arc::new(IdlePool {
            idle: Mutex::default(),
            capacity,
            gauge: gauge.clone(),
        })
    })
}

impl IdlePool {
    /// The most recently idle connection that is still open, if any.
    fn take(&self) -> Option<Upstream> {
        let mut idle = lock(&self.idle);
        let before = idle.len();
        let taken = take_open(&mut idle);
        self.gauge.dec_by(gauge_value(before - idle.len()));
        taken
    }

    /// Keeps an idle connection for later, or closes it when the pool is full.
    fn put(&self, mut upstream: Upstream) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.capacity {
            upstream.idle_since = Instant::now();
            idle.push(upstream);
            self.gauge.inc();
        }
    }
}

/// Pops idle connections, closing the expired and the ended ones, until one is still open.
fn take_open(idle: &mut Vec<Upstream>) -> Option<Upstream> {
    while let Some(mut upstream) = idle.pop() {
        // One poll notices a connection Hydra closed while it sat here (hyper reads for EOF
        // between exchanges). The task that polls it next registers its own waker.
        let mut cx = Context::from_waker(Waker::noop());
        if upstream.idle_since.elapsed() < UPSTREAM_IDLE_TIMEOUT
            && !upstream.poll_ended(&mut cx)
            && upstream.sender.is_ready()
        {
            return Some(upstream);
        }
    }
    None
}

/// A count as a gauge value; the pools never hold more than [`MAX_IDLE_UPSTREAMS`].
fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[derive(Default)]
struct LaneState {
    upstream: Option<Upstream>,
    /// Where the upstream connection goes when this lane lets it go.
    pool: Option<Arc<IdlePool>>,
    /// The client connection's task, woken when a new upstream connection needs its first poll.
    driver: Option<Waker>,
}

impl LaneState {
    /// Hands an idle upstream connection to the pool; a busy one (a response body the client
    /// stopped reading) is closed.
    fn release(&mut self) {
        if let (Some(upstream), Some(pool)) = (self.upstream.take(), &self.pool)
            && upstream.sender.is_ready()
        {
            pool.put(upstream);
        }
    }
}

impl Drop for LaneState {
    fn drop(&mut self) {
        self.release();
    }
}

/// The upstream side of one HTTP/1 client connection. Clones share the lane.
#[derive(Clone, Default)]
pub struct Lane(Arc<Mutex<LaneState>>);

impl Lane {
    /// Drives the lane's upstream connection; called from the client connection's task on every
    /// poll of it. Never completes.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<Infallible> {
        let mut state = lock(&self.0);
        if !state
            .driver
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.driver = Some(cx.waker().clone());
        }
        if let Some(upstream) = state.upstream.as_mut()
            && upstream.poll_ended(cx)
        {
            state.upstream = None;
        }
        Poll::Pending
    }

    /// Lets the upstream connection go to the idle pool: the client connection is parking or
    /// closing.
    pub fn release(&self) {
        lock(&self.0).release();
    }

    /// Sends `request` on the lane's upstream connection when it has one, else hands the request
    /// back. A connection still busy with an earlier response hands it back through the result.
    #[allow(clippy::result_large_err)]
    fn try_send(
        &self,
        request: Request<ForwardBody>,
    ) -> Result<impl Future<Output = SendResult> + use<>, Request<ForwardBody>> {
        let mut state = lock(&self.0);
        match state.upstream.as_mut() {
            // A fresh connection takes one request before its first poll; a used one once it
            // has finished the previous exchange.
            Some(upstream) => Ok(upstream.sender.try_send_request(request)),
            None => Err(request),
        }
    }

    /// Makes `upstream` this lane's connection (closing one it still had) and wakes the driver
    /// for its first poll.
    fn install(&self, upstream: Upstream, pool: &Arc<IdlePool>) {
        let mut state = lock(&self.0);
        state.upstream = Some(upstream);
        state.pool = Some(pool.clone());
        if let Some(driver) = &state.driver {
            driver.wake_by_ref();
        }
    }

    /// Closes the lane's upstream connection (it failed a request).
    fn discard(&self) {
        lock(&self.0).upstream = None;
    }
}

/// What sending on an upstream connection gives: the response head, or an error with the request
/// when it never left.
type SendResult =
    Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ForwardBody>>>;

/// Why a request could not be sent on a lane.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// No connection to Hydra could be opened.
    #[error("connecting: {0}")]
    Connect(String),
    /// The connection broke while the request was on it.
    #[error("{0}")]
    Exchange(hyper::Error),
}

/// Sends `request` on the lane: on its own upstream connection, else on one from the idle pool,
/// else on a new one from `connect`. A request that never left because its connection had
/// closed is sent again on the next; one that broke a fresh connection is not.
pub async fn send<C, F>(
    lane: &Lane,
    pool: &Arc<IdlePool>,
    connect: C,
    mut request: Request<ForwardBody>,
) -> Result<Response<Incoming>, LaneError>
where
    C: Fn() -> F,
    F: Future<Output = Result<Upstream, String>>,
{
    loop {
        let (sending, fresh) = match lane.try_send(request) {
            Ok(sending) => (sending, false),
            Err(unsent) => {
                let (upstream, fresh) = match pool.take() {
                    Some(upstream) => (upstream, false),
                    None => (connect().await.map_err(LaneError::Connect)?, true),
                };
                lane.install(upstream, pool);
                match lane.try_send(unsent) {
                    Ok(sending) => (sending, fresh),
                    Err(_) => {
                        return Err(LaneError::Connect("the new connection is not ready".into()));
                    }
                }
            }
        };
        match sending.await {
            Ok(response) => return Ok(response),
            Err(mut error) => {
                lane.discard();
                match error.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(LaneError::Exchange(error.into_error())),
                }
            }
        }
    }
}

/// The lock, also after a panic elsewhere: the state is a set of connections, valid either way.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_pools_share_the_bound_exactly() {
        for workers in [1, 2, 3, 7, 128, 200] {
            let pools = per_worker(&Gauge::default(), workers);
            let mut shares = Vec::new();
            std::thread::scope(|scope| {
                for worker in 0..workers {
                    let pools = &pools;
                    let share = scope.spawn(move || {
                        crate::upstream::set_worker(worker);
                        pools.get().capacity
                    });
                    shares.push(share.join().unwrap());
                }
            });
            assert_eq!(
                shares.iter().sum::<usize>(),
                MAX_IDLE_UPSTREAMS,
                "{workers}"
            );
            let (least, most) = (shares.iter().min(), shares.iter().max());
            assert!(most.unwrap() - least.unwrap() <= 1, "{workers}: {shares:?}");
        }
    }
}
