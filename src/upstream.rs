//! How Iris reaches Kratos and Hydra: one way to build the HTTP clients, and the extra CA
//! certificates of `upstream.ca_path`, read once at start.

use std::path::Path;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Extra CA certificates, in the forms reqwest and rustls take.
#[derive(Default)]
pub struct Roots {
    /// For the reqwest clients (Kratos, Hydra's APIs).
    pub reqwest: Vec<reqwest::Certificate>,
    /// For the pass-through's rustls client.
    pub der: Vec<CertificateDer<'static>>,
}

impl Roots {
    /// The certificates of a PEM bundle; none without a path.
    pub fn load(path: Option<&Path>) -> Result<Roots, String> {
        let Some(path) = path else {
            return Ok(Roots::default());
        };
        let problem =
            |e: &dyn std::fmt::Display| format!("upstream.ca_path {}: {e}", path.display());
        let der = CertificateDer::pem_file_iter(path)
            .map_err(|e| problem(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| problem(&e))?;
        if der.is_empty() {
            return Err(problem(&"no certificate in the file"));
        }
        let reqwest = der
            .iter()
            .map(|cert| reqwest::Certificate::from_der(cert))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| problem(&e))?;
        Ok(Roots { reqwest, der })
    }
}

thread_local! {
    /// The public worker this thread is (server::workers), if it is one.
    static WORKER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Marks the current thread as public worker `index`; called once by each worker thread.
pub fn set_worker(index: usize) {
    WORKER.with(|worker| worker.set(Some(index)));
}

/// One value per public worker thread, and one shared by every other thread. A pooled HTTP
/// client runs each of its connections as a task on the runtime that opened it: with a client
/// per worker, a worker's calls to Kratos use connections its own thread drives, instead of
/// waking another worker twice per call.
pub struct PerWorker<T>(Vec<T>);

impl<T> PerWorker<T> {
    /// `make(Some(i))` for each worker `i` of `workers`, and `make(None)` for the other threads.
    pub fn new<E>(
        workers: usize,
        mut make: impl FnMut(Option<usize>) -> Result<T, E>,
    ) -> Result<Self, E> {
        std::iter::once(None)
            .chain((0..workers).map(Some))
            .map(&mut make)
            .collect::<Result<_, _>>()
            .map(PerWorker)
    }

    /// As [`PerWorker::new`], for values whose making cannot fail.
    pub fn each(workers: usize, mut make: impl FnMut(Option<usize>) -> T) -> Self {
        let made: Result<Self, std::convert::Infallible> =
            PerWorker::new(workers, |worker| Ok(make(worker)));
        made.unwrap_or_else(|never| match never {})
    }

    /// The current thread's value.
    pub fn get(&self) -> &T {
        let index = WORKER
            .with(std::cell::Cell::get)
            .map_or(0, |worker| worker + 1);
        &self.0[index % self.0.len()]
    }
}

/// A pooled client for an upstream: a per-call timeout, no redirects (an answer is Kratos's or
/// Hydra's own, never a page it points to), no system proxy, and the extra roots.
pub fn http_client(timeout: Duration, roots: &Roots) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .tls_certs_merge(roots.reqwest.iter().cloned())
        .no_proxy()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_thread_has_its_own_value_and_others_share_one() {
        let values = PerWorker::new(2, Ok::<_, ()>).unwrap();
        assert_eq!(*values.get(), None, "not a worker");
        std::thread::scope(|scope| {
            for (worker, expected) in [(0, Some(0)), (1, Some(1))] {
                let values = &values;
                scope.spawn(move || {
                    set_worker(worker);
                    assert_eq!(*values.get(), expected);
                });
            }
            scope.spawn(|| assert_eq!(*values.get(), None));
        });
    }
}
