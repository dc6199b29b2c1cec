//! The `log.format: text` line, written for Iris's own events without going through the
//! formatting machinery field by field.
//!
//! tracing-subscriber's `Full` format spent about 11 000 instructions on a request line, a fifth
//! of a whole pass-through (callgrind): every field name went through a colour style even with
//! colours off, every string through `Debug`, the timestamp through seven padded integers. This
//! writes the same bytes for the common case (colours off, no span, Iris's own event, plain
//! ASCII strings) and hands everything else to the library: the whole line when colours are on,
//! a span is entered or the event is a dependency's, and a single field when it is an error, a
//! formatted message or a string that needs escaping. The tests compare both, line for line.

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::VisitOutput;
use tracing_subscriber::fmt::format::{DefaultVisitor, Format, Full, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime as LibraryTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The text line of `log.format: text`, as tracing-subscriber's default `Full` format writes it.
#[derive(Default)]
pub(super) struct TextLine {
    library: Format<Full, LibraryTime>,
}

impl<S, N> FormatEvent<S, N> for TextLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // Iris's own events only: a dependency's may come through `log`, whose metadata the
        // library normalizes first.
        if writer.has_ansi_escapes()
            || !meta.target().starts_with("iris")
            || ctx.event_scope().is_some()
        {
            return self.library.format_event(ctx, writer, event);
        }
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_str(level(meta.level()))?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        let mut fields = Fields {
            writer: writer.by_ref(),
            first: true,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

/// The level and the space after it, padded to five as the library pads it.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE ",
        Level::DEBUG => "DEBUG ",
        Level::INFO => " INFO ",
        Level::WARN => " WARN ",
        _ => "ERROR ",
    }
}

thread_local! {
    /// The last second this thread wrote a timestamp for, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<Option<(u64, [u8; 19])>> = const { Cell::new(None) };
}

/// `2026-12-04T17:09:36.264535Z ` (UTC, microseconds), as the library's `SystemTime` writes it.
fn write_timestamp(writer: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let Ok(since_epoch) = now.duration_since(UNIX_EPOCH) else {
        return library_timestamp(writer);
    };
    let seconds = since_epoch.as_secs();
    let date = match SECOND.get() {
        Some((second, date)) if second == seconds => date,
        _ => {
            let Some(date) = date_and_time(seconds) else {
                return library_timestamp(writer);
            };
            SECOND.set(Some((seconds, date)));
            date
        }
    };
    let mut fraction = *b".000000Z ";
    put_digits(&mut fraction[1..7], since_epoch.subsec_micros());
    // Both are ASCII digits and punctuation.
    writer.write_str(std::str::from_utf8(&date).map_err(|_| fmt::Error)?)?;
    writer.write_str(std::str::from_utf8(&fraction).map_err(|_| fmt::Error)?)
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time in UTC, for years 0 to 9999.
fn date_and_time(seconds: u64) -> Option<[u8; 19]> {
    let at = time::OffsetDateTime::from_unix_timestamp(i64::try_from(seconds).ok()?).ok()?;
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let mut text = *b"0000-00-00T00:00:00";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], u32::from(u8::from(at.month())));
    put_digits(&mut text[8..10], u32::from(at.day()));
    put_digits(&mut text[11..13], u32::from(at.hour()));
    put_digits(&mut text[14..16], u32::from(at.minute()));
    put_digits(&mut text[17..19], u32::from(at.second()));
    Some(text)
}

/// Writes `value` into `digits` in decimal, zero-padded to their width.
fn put_digits(digits: &mut [u8], mut value: u32) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The library's own timestamp, for times this module does not write itself.
fn library_timestamp(writer: &mut Writer<'_>) -> fmt::Result {
    if LibraryTime.format_time(writer).is_err() {
        writer.write_str("<unknown time>")?;
    }
    writer.write_char(' ')
}

/// Writes an event's fields as the library's `DefaultVisitor` does with colours off.
struct Fields<'w> {
    writer: Writer<'w>,
    /// No field written yet: the next needs no separating space.
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    /// Lets the library's visitor write one field: it knows every case this one does not.
    fn library(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.first);
        record(&mut visitor);
        self.result = visitor.finish();
        // Whatever it wrote, later fields are separated (it writes every field it is given:
        // the only ones it skips, `log.*`, come with dependencies' events, which never get here).
        self.first = false;
    }

    /// `name=` before a value, with the space before it when a field came first.
    fn name(&mut self, name: &str) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(name)?;
        self.writer.write_char('=')
    }
}

/// Fields the library writes as `name=value`; the others (`message`, raw identifiers, `log.*`)
/// it treats in ways of their own.
fn ordinary(name: &str) -> bool {
    name != "message" && !name.starts_with("r#") && !name.starts_with("log.")
}

/// A string whose `Debug` form is itself in quotes: printable ASCII without `"` or `\`.
fn plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        if !ordinary(field.name()) || !plain(value) {
            return self.library(|visitor| visitor.record_str(field, value));
        }
        self.result = self.name(field.name()).and_then(|()| {
            self.writer.write_char('"')?;
            self.writer.write_str(value)?;
            self.writer.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        if !ordinary(field.name()) {
            return self.library(|visitor| visitor.record_debug(field, value));
        }
        self.result = self
            .name(field.name())
            .and_then(|()| write!(self.writer, "{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        self.library(|visitor| visitor.record_error(field, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// The lines, each without its timestamp (the first word).
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| line.split_once(' ').unwrap().1.to_owned())
                .collect()
        }
    }

    #[derive(Debug)]
    struct Cause;
    impl fmt::Display for Cause {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the \"cause\"")
        }
    }
    impl std::error::Error for Cause {}

    #[derive(Debug)]
    struct Failure(Cause);
    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it failed")
        }
    }
    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// Every kind of event Iris writes, and some it might.
    fn events() {
        tracing::info!(
            target: "iris::request",
            request_id = "ab181b622730c4d40000000000000000",
            method = %http::Method::GET,
            path = "/health/alive",
            status = 200u16,
            duration_ms = 0.35856,
            "request"
        );
        tracing::info!(target: "iris::audit", client_id = "orders", subject = "-", audience = %"a b", outcome = "issued", duration_ms = 1.0, "token exchange");
        tracing::info!(
            path = "quote \" and \\ backslash",
            unicode = "caf\u{e9}",
            control = "\u{1b}[31mred",
            empty = ""
        );
        tracing::info!("a message with \u{1b}[31m colour and \u{85} C1");
        tracing::info!(message = "a message as a string field", n = -7i64);
        tracing::info!(message = "a string message with \u{1b} escape");
        tracing::warn!(
            big = u64::MAX,
            yes = true,
            tiny = 1e-7,
            nan = f64::NAN,
            whole = 2.0f64,
            wide = -170141183460469231731687303715884105728i128
        );
        tracing::error!(
            error = &Failure(Cause) as &(dyn std::error::Error + 'static),
            "with a source"
        );
        tracing::error!(error = &Cause as &(dyn std::error::Error + 'static));
        tracing::debug!(r#type = "raw", value = ?Some("debugged"), "raw identifier");
        tracing::trace!(only = 1);
        tracing::info!("only a message {}", 42);
        tracing::info!(target: "elsewhere", from = "a dependency");
        let span = tracing::info_span!("a span", key = "value");
        span.in_scope(|| tracing::info!(inside = "a span"));
    }

    fn capture(fast: bool) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let builder = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone());
        if fast {
            tracing::subscriber::with_default(
                builder.event_format(TextLine::default()).finish(),
                events,
            );
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        captured.lines()
    }

    #[test]
    fn lines_are_the_librarys_byte_for_byte() {
        let (ours, library) = (capture(true), capture(false));
        assert_eq!(ours.len(), 14);
        assert_eq!(ours, library);
        assert_eq!(
            ours[0],
            " INFO iris::request: request request_id=\"ab181b622730c4d40000000000000000\" method=GET path=\"/health/alive\" status=200 duration_ms=0.35856"
        );
    }

    fn timestamp(at: SystemTime) -> String {
        let mut text = String::new();
        write_timestamp(&mut Writer::new(&mut text), at).unwrap();
        text
    }

    #[test]
    fn timestamps_are_utc_to_the_microsecond() {
        let at = |secs: u64, micros: u64| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
        };
        for (secs, micros, text) in [
            (0, 0, "1970-01-01T00:00:00.000000Z "),
            (1_700_000_000, 123_456, "2023-11-14T22:13:20.123456Z "),
            // The cached second is reused within that second, with the new fraction.
            (1_700_000_000, 999_999, "2023-11-14T22:13:20.999999Z "),
            (1_709_164_800, 7, "2024-02-29T00:00:00.000007Z "),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000Z "),
        ] {
            assert_eq!(timestamp(at(secs, micros)), text);
        }
    }

    #[test]
    fn timestamps_match_the_librarys_clock() {
        // The same second read twice, unless a second boundary falls in between: then again.
        for _ in 0..3 {
            let mut library = String::new();
            LibraryTime
                .format_time(&mut Writer::new(&mut library))
                .unwrap();
            let ours = timestamp(SystemTime::now());
            if ours[..19] == library[..19] {
                assert_eq!(ours.len(), library.len() + 1);
                return;
            }
        }
        panic!("the clocks never agreed on a second");
    }
}
