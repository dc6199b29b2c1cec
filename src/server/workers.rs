//! The public listener's connections run on single-threaded runtimes, one per core, handed out
//! in turn: a connection and its lane to Hydra stay on one thread for their whole life, as in
//! nginx's worker processes.
//!
//! On Tokio's work-stealing runtime every wake-up of a connection could move it to the other
//! worker, and an idle worker was woken (a futex call) to steal whatever the busy one had just
//! queued; with the load generator and Hydra on the same cores, a stolen task often waited for a
//! descheduled thread. Measured on two cores (benches/load.rs, pass-through, 64 connections):
//! one worker thread instead of two gave p99 2.05 ms instead of 4.64 ms and 6 % more requests
//! per second; per-core runtimes keep that and use every core.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Single-threaded runtimes on threads of their own; dropping this stops them, and the
/// connections still on them close.
pub(super) struct Workers {
    runtimes: Vec<Handle>,
    next: AtomicUsize,
    /// Dropped with the pool: each runtime's thread then leaves its `block_on`.
    _stops: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// `count` runtimes (at least one), each with I/O and timers, each on its own thread.
    pub(super) fn start(count: usize) -> io::Result<Workers> {
        let count = count.max(1);
        let mut runtimes = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = Builder::new_current_thread()
                .enable_all()
                .on_thread_park(crate::telemetry::on_park)
                .build()?;
            runtimes.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("iris-public-{index}"))
                .spawn(move || {
                    crate::upstream::set_worker(index);
                    runtime.block_on(async {
                        // Err too: the pool was dropped.
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Workers {
            runtimes,
            next: AtomicUsize::new(0),
            _stops: stops,
        })
    }

    /// The number of runtimes for this machine: `TOKIO_WORKER_THREADS` when set (as Tokio's own
    /// runtime reads it), else one per core.
    pub(super) fn per_core() -> usize {
        std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|value| value.trim().parse().ok())
            .filter(|&count: &usize| count > 0)
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1)
    }

    /// Runs `task` on the next runtime in turn.
    pub(super) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.runtimes.len();
        drop(self.runtimes[index].spawn(task));
    }

    /// How many runtimes serve connections.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.runtimes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn tasks_are_dealt_to_every_runtime_in_turn() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let threads = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..4 {
            let (done, finished) = oneshot::channel();
            let threads = threads.clone();
            workers.spawn(async move {
                let name = std::thread::current().name().map(String::from);
                threads.lock().unwrap().push(name);
                let _ = done.send(());
            });
            finished.await.unwrap();
        }
        let threads = threads.lock().unwrap().clone();
        let distinct: HashSet<_> = threads.iter().collect();
        assert_eq!(distinct.len(), 2, "{threads:?}");
        assert_ne!(threads[0], threads[1]);
        assert_eq!(threads[0], threads[2]);
    }

    #[tokio::test]
    async fn dropping_the_pool_stops_its_tasks() {
        let workers = Workers::start(1).unwrap();
        let (held, dropped) = oneshot::channel::<()>();
        workers.spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The sender is dropped with the task when the runtime shuts down (10 s: a hang guard).
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), dropped).await;
        assert!(ended.expect("the runtime stopped").is_err());
    }
}
