//! Log lines written to stderr in batches by the runtime threads that serve requests.
//!
//! A thread joins the first time its runtime parks it (Tokio's park hook, [`on_park`]); from then
//! on it holds its lines and writes them in one call when it runs out of work, when they pass
//! [`FLUSH_AT`] bytes, or at once for a warning or an error. Every other thread writes each line as
//! it comes. A thread with nothing left to do parks at once, so a line waits only while its thread
//! still has requests to answer: under load, tens of lines go out in one write(2) instead of one
//! each, and an idle server's lines appear as promptly as before.
//!
//! Why: in pass-through at 64 connections the request log line was 14.6 % of Iris's CPU, two
//! thirds of it the write itself (perf under benches/load.rs).

use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// How many bytes a thread holds before it writes them whatever else it has to do.
pub const FLUSH_AT: usize = 16 * 1024;

/// Where a batch's lines end up: stderr, or a test's buffer.
type Sink = fn(&[u8]) -> io::Result<()>;

fn to_stderr(bytes: &[u8]) -> io::Result<()> {
    io::stderr().lock().write_all(bytes)
}

/// The lines one thread holds.
struct Batch {
    lines: Mutex<Vec<u8>>,
    sink: Sink,
}

impl Batch {
    fn new(sink: Sink) -> Batch {
        Batch {
            lines: Mutex::new(Vec::with_capacity(FLUSH_AT * 2)),
            sink,
        }
    }

    /// Holds `line`, writing everything held when it is urgent or the batch is full.
    fn push(&self, line: &[u8], urgent: bool) -> io::Result<()> {
        let mut lines = lock(&self.lines);
        lines.extend_from_slice(line);
        if urgent || lines.len() >= FLUSH_AT {
            return self.write_out(&mut lines);
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.write_out(&mut lock(&self.lines))
    }

    fn write_out(&self, lines: &mut Vec<u8>) -> io::Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let written = (self.sink)(lines);
        // Dropped even when the write failed: a stuck stderr must not grow the batch forever.
        lines.clear();
        written
    }
}

impl Drop for Batch {
    /// A thread that ends writes what it still holds.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Poisoning only means another thread panicked mid-line; the bytes are still worth writing.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every batching thread's batch, so [`flush_all`] reaches threads that will not park again.
static BATCHES: Mutex<Vec<Weak<Batch>>> = Mutex::new(Vec::new());

thread_local! {
    static THIS_THREAD: std::cell::OnceCell<Arc<Batch>> = const { std::cell::OnceCell::new() };
}

/// Tokio's park hook: the thread writes what it holds, and holds its lines from now on.
pub fn on_park() {
    // try_with: a runtime can park while its thread's locals are being torn down.
    let _ = THIS_THREAD.try_with(|batch| match batch.get() {
        Some(batch) => {
            let _ = batch.flush();
        }
        None => {
            let batch = batch.get_or_init(|| Arc::new(Batch::new(to_stderr)));
            let mut all = lock(&BATCHES);
            all.retain(|held| held.strong_count() > 0);
            all.push(Arc::downgrade(batch));
        }
    });
}

/// Writes the lines every thread holds: before the process exits.
pub fn flush_all() {
    let all: Vec<Arc<Batch>> = lock(&BATCHES).iter().filter_map(Weak::upgrade).collect();
    for batch in all {
        let _ = batch.flush();
    }
}

/// The subscriber's writer: this thread's batch when it has one, else stderr directly.
pub struct BatchedStderr;

/// One log line on its way out.
pub struct Line {
    urgent: bool,
}

impl<'a> MakeWriter<'a> for BatchedStderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        // Warnings and errors are rare and wanted at once.
        Line {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    /// The formatter hands over each whole line in one call.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let batched = THIS_THREAD.try_with(|batch| batch.get().map(|b| b.push(bytes, self.urgent)));
        match batched {
            Ok(Some(pushed)) => pushed,
            _ => to_stderr(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static WRITES: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    fn recorded(bytes: &[u8]) -> io::Result<()> {
        WRITES.lock().unwrap().push(bytes.to_vec());
        Ok(())
    }

    fn take_writes() -> Vec<Vec<u8>> {
        std::mem::take(&mut *WRITES.lock().unwrap())
    }

    // One test, so nothing else writes to WRITES meanwhile.
    #[test]
    fn lines_are_held_until_a_flush_a_full_batch_an_urgent_line_or_the_end() {
        let batch = Batch::new(recorded);
        batch.push(b"one\n", false).unwrap();
        batch.push(b"two\n", false).unwrap();
        assert!(take_writes().is_empty(), "held");
        batch.flush().unwrap();
        assert_eq!(take_writes(), vec![b"one\ntwo\n".to_vec()], "one write");
        batch.flush().unwrap();
        assert!(take_writes().is_empty(), "nothing held, nothing written");

        batch.push(b"info\n", false).unwrap();
        batch.push(b"warn\n", true).unwrap();
        assert_eq!(take_writes(), vec![b"info\nwarn\n".to_vec()], "in order");

        let line = [b'x'; 100];
        let mut pushed = 0;
        while take_writes().is_empty() {
            batch.push(&line, false).unwrap();
            pushed += line.len();
        }
        assert_eq!(pushed, FLUSH_AT.div_ceil(line.len()) * line.len(), "full");

        batch.push(b"last\n", false).unwrap();
        drop(batch);
        assert_eq!(
            take_writes(),
            vec![b"last\n".to_vec()],
            "written at the end"
        );
    }
}
