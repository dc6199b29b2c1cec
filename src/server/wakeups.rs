//! Several futures in one task, each polled only when it was woken.
//!
//! A plain HTTP/1 connection's task drives the client's hyper connection, its lane to Hydra, an
//! idle tick and the stop signal. Polled together (`tokio::select!`), every wake-up of the task
//! polled all four, and the lane and the client's connection woke each other through the task:
//! hyper's client hands a request to its connection through a channel and answers through a
//! oneshot, each wake-up of the task's own waker while it runs, so each queued the task for
//! another full poll. A pass-through took four polls of everything, one of them with nothing to
//! do. Here each future gets a waker of its own that marks it as woken; a wake-up from inside
//! the task's poll is served in the same poll, and only the futures that were woken are polled.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Set while the task is inside [`Wakeups::poll`]: a wake-up then only marks its future.
const POLLING: u32 = 1 << 31;

/// Rounds of polling woken futures in one poll of the task. Bounded: a future that wakes itself
/// to yield (Tokio's cooperative budget does) must go back through the run queue, or it would
/// spin here.
const MAX_ROUNDS: usize = 4;

/// What the task and its futures' wakers share.
struct Shared {
    /// One bit per future woken since it was last polled, and [`POLLING`].
    woken: AtomicU32,
    /// The task's own waker.
    task: AtomicWaker,
}

/// The waker handed to one of the task's futures.
struct FutureWaker {
    shared: Arc<Shared>,
    bit: u32,
}

impl Wake for FutureWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let before = self.shared.woken.fetch_or(self.bit, Ordering::AcqRel);
        if before & POLLING == 0 {
            self.shared.task.wake();
        }
    }
}

/// The wakers of `N` futures driven by one task, and which of them are due a poll.
pub(super) struct Wakeups<const N: usize> {
    shared: Arc<Shared>,
    wakers: [Waker; N],
}

impl<const N: usize> Wakeups<N> {
    /// Wakers for `N` futures (at most 31), each due its first poll.
    pub(super) fn new() -> Self {
        const { assert!(N >= 1 && N < 32) };
        let shared = Arc::new(Shared {
            woken: AtomicU32::new(all::<N>()),
            task: AtomicWaker::new(),
        });
        let wakers = std::array::from_fn(|index| {
            Waker::from(Arc::new(FutureWaker {
                shared: shared.clone(),
                bit: 1 << index,
            }))
        });
        Wakeups { shared, wakers }
    }

    /// Marks future `index` as due a poll: something outside it changed what it would do.
    pub(super) fn wake(&self, index: usize) {
        self.wakers[index].wake_by_ref();
    }

    /// The waker of future `index`, for polling it outside [`Wakeups::poll`].
    pub(super) fn waker(&self, index: usize) -> &Waker {
        &self.wakers[index]
    }

    /// Polls the woken futures in index order with their own wakers, `poll_future(index, cx)`,
    /// again while polling one wakes another, until none is due or one is ready. Futures that
    /// were due but not polled yet when one is ready stay due.
    pub(super) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll_future: impl FnMut(usize, &mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.shared.task.register(cx.waker());
        for _ in 0..MAX_ROUNDS {
            let due = self.shared.woken.swap(POLLING, Ordering::AcqRel) & !POLLING;
            if due == 0 {
                // Done, unless a future was woken from another thread since the swap.
                match self.shared.woken.compare_exchange(
                    POLLING,
                    0,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Poll::Pending,
                    Err(_) => continue,
                }
            }
            for index in 0..N {
                if due & (1 << index) == 0 {
                    continue;
                }
                let mut future_cx = Context::from_waker(&self.wakers[index]);
                if let Poll::Ready(value) = poll_future(index, &mut future_cx) {
                    let still_due = due & !((2 << index) - 1);
                    self.shared.woken.fetch_or(still_due, Ordering::AcqRel);
                    self.shared.woken.fetch_and(!POLLING, Ordering::AcqRel);
                    return Poll::Ready(value);
                }
            }
        }
        // Still busy after MAX_ROUNDS: leave the poll and come back through the run queue.
        let due = self.shared.woken.fetch_and(!POLLING, Ordering::AcqRel) & !POLLING;
        if due != 0 {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

/// The bits of futures `0..N`.
const fn all<const N: usize>() -> u32 {
    (1 << N) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts the task's wake-ups.
    struct CountingTask(AtomicUsize);

    impl Wake for CountingTask {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<CountingTask>, Waker) {
        let task = Arc::new(CountingTask(AtomicUsize::new(0)));
        (task.clone(), Waker::from(task))
    }

    #[test]
    fn every_future_gets_its_first_poll_then_only_woken_ones_are_polled() {
        let wakeups = Wakeups::<3>::new();
        let (_, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut polled = Vec::new();
        let first: Poll<()> = wakeups.poll(&mut cx, |index, _| {
            polled.push(index);
            Poll::Pending
        });
        assert!(first.is_pending());
        assert_eq!(polled, [0, 1, 2]);

        polled.clear();
        wakeups.waker(2).wake_by_ref();
        let _ = wakeups.poll(&mut cx, |index, _| {
            polled.push(index);
            Poll::<()>::Pending
        });
        assert_eq!(polled, [2]);
    }

    #[test]
    fn a_future_woken_by_another_during_the_poll_is_polled_in_the_same_poll_without_waking_the_task()
     {
        let wakeups = Wakeups::<2>::new();
        let (counted, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let _ = wakeups.poll(&mut cx, |_, _| Poll::<()>::Pending);

        // Future 1 is woken from outside (the reactor): the task is woken.
        wakeups.waker(1).wake_by_ref();
        assert_eq!(counted.0.load(Ordering::SeqCst), 1);
        // Polling it wakes future 0 (a oneshot answered): 0 is polled next, the task is not woken.
        let mut polled = Vec::new();
        let _ = wakeups.poll(&mut cx, |index, future_cx| {
            polled.push(index);
            if index == 1 {
                wakeups.waker(0).wake_by_ref();
            }
            // The future holds the waker it was polled with.
            assert!(future_cx.waker().will_wake(wakeups.waker(index)));
            Poll::<()>::Pending
        });
        assert_eq!(polled, [1, 0]);
        assert_eq!(counted.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_ready_future_leaves_the_later_due_ones_due() {
        let wakeups = Wakeups::<3>::new();
        let (_, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let ready = wakeups.poll(&mut cx, |index, _| {
            if index == 0 {
                Poll::Ready("zero")
            } else {
                Poll::Pending
            }
        });
        assert_eq!(ready, Poll::Ready("zero"));
        let mut polled = Vec::new();
        let _ = wakeups.poll(&mut cx, |index, _| {
            polled.push(index);
            Poll::<()>::Pending
        });
        assert_eq!(polled, [1, 2]);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_goes_back_through_the_task() {
        let wakeups = Wakeups::<1>::new();
        let (counted, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let _ = wakeups.poll(&mut cx, |_, future_cx| {
            polls += 1;
            future_cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert_eq!(polls, MAX_ROUNDS);
        assert_eq!(counted.0.load(Ordering::SeqCst), 1);
        // Still due: the next poll of the task polls it.
        let mut again = 0;
        let _ = wakeups.poll(&mut cx, |_, _| {
            again += 1;
            Poll::<()>::Pending
        });
        assert_eq!(again, 1);
    }

    #[test]
    fn a_wake_up_from_another_thread_after_the_poll_wakes_the_task() {
        let wakeups = Wakeups::<2>::new();
        let (counted, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let _ = wakeups.poll(&mut cx, |_, _| Poll::<()>::Pending);
        let future_waker = wakeups.waker(0).clone();
        std::thread::spawn(move || future_waker.wake())
            .join()
            .unwrap();
        assert_eq!(counted.0.load(Ordering::SeqCst), 1);
    }
}
