//! Logging to stderr as `log.level` and `log.format` say. Fields never carry token material: the
//! request line has the path without its query, and credentials are wrapped in [`crate::secret::Secret`].

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, LogLevel};

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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
