//! Logging to stderr as `log.level` and `log.format` say. Fields never carry token material: the
//! request line has the path without its query, and credentials are wrapped in [`crate::secret::Secret`].

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, LogLevel};

mod batch;
mod text;

pub use batch::{flush_all, on_park};

/// Installs the global subscriber; a second call (tests) keeps the first.
pub fn init(log: &LogConfig) {
    let level = match log.level {
        LogLevel::Trace => "trace",
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Dependencies log at their own verbosity only when asked for with trace.
    let directives = if log.level == LogLevel::Trace {
        level.to_owned()
    } else {
        format!("warn,iris={level}")
    };
    let filter = EnvFilter::new(directives);
    // Colours only on a terminal: escape codes in a log file or a collector are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(batch::BatchedStderr);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.event_format(text::TextLine::default()).try_init(),
    };
}

/// What identifies one request across Iris's log lines and its calls to Kratos and Hydra.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// `X-Request-Id`: the caller's when usable, else generated.
    pub request_id: String,
    /// The caller's W3C `traceparent`, passed on unchanged.
    pub traceparent: Option<String>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Runs `work` with `context` as the current request.
///
/// Not an `async fn`: that would hold `work` twice (the argument and the scope around it), and
/// the request future is copied whole on every move.
pub fn in_request<F: std::future::Future>(
    context: RequestContext,
    work: F,
) -> impl std::future::Future<Output = F::Output> {
    REQUEST.scope(context, work)
}

/// The request being served, if any.
pub fn current_request() -> Option<RequestContext> {
    REQUEST.try_with(Clone::clone).ok()
}

/// The caller's `X-Request-Id` when it is short printable ASCII; otherwise a new random one.
pub fn request_id(header: Option<&str>) -> String {
    match header {
        Some(id)
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            id.to_owned()
        }
        _ => {
            // Unique, not secret: a random per-process prefix and a counter, with no syscall
            // and no allocation per byte on the hot path.
            static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
            static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let prefix =
                *PREFIX.get_or_init(|| rand_core::RngCore::next_u64(&mut rand_core::OsRng));
            let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // `{prefix:016x}{count:016x}`, without the formatting machinery (a sixth of a
            // pass-through's instructions went to formatting, callgrind).
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&prefix.to_be_bytes());
            id[8..].copy_from_slice(&count.to_be_bytes());
            hex::encode(id)
        }
    }
}

/// Adds the current request's `X-Request-Id` and `traceparent` to a call to Kratos or Hydra.
pub fn propagate(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match current_request() {
        Some(context) => {
            let request = request.header("x-request-id", context.request_id);
            match context.traceparent {
                Some(traceparent) => request.header("traceparent", traceparent),
                None => request,
            }
        }
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_request_ids_are_kept_and_others_replaced() {
        assert_eq!(request_id(Some("abc-123")), "abc-123");
        for bad in [None, Some(""), Some("has space"), Some("\u{e9}")] {
            let id = request_id(bad);
            assert_eq!(id.len(), 32, "{bad:?}");
            assert_ne!(Some(id.as_str()), bad);
        }
        assert_ne!(request_id(None), request_id(None));
        // A per-process prefix, then a counter: the same first half, a different second half.
        let (first, second) = (request_id(None), request_id(None));
        assert_eq!(first[..16], second[..16]);
        let count = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        assert!(count(&second) > count(&first));
        assert!(
            first
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
    }
}
