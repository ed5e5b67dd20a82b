//! Logging, set up once from the configuration: JSON lines in production, readable lines in
//! `--dev`. `RUST_LOG` overrides the level.

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{FormatFields, Writer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured lines.
    Pretty,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Install the global subscriber. Logs go to standard output.
pub fn init(format: LogFormat, dev: bool) {
    // tokio_postgres logs query parameters (client IPs among them) at debug: keep it at info.
    let default = if dev { "debug,hyper=info,tokio_postgres=info,postgres=info" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(dev);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).fmt_fields(SpanFieldsJson).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// An error and its sources, joined for one log line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The fields of a span as one JSON object, written straight out. `JsonFields` (the crate's own)
/// gathers them into a map of `serde_json::Value`s first: formatting the request span that way
/// was about 4% of the workers' time under `POST /buy` load, for every request, logged or not.
/// The JSON event formatter reads the object back only when a line is written.
#[derive(Debug, Default)]
pub struct SpanFieldsJson;

impl<'writer> FormatFields<'writer> for SpanFieldsJson {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'writer>, fields: R) -> std::fmt::Result {
        writer.write_char('{')?;
        let mut visitor = JsonObject { writer: &mut writer, first: true, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }

    /// Fields recorded later go inside the object, before its closing brace.
    fn add_fields(&self, current: &'writer mut FormattedFields<Self>, fields: &Record<'_>) -> std::fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        let first = current.fields.ends_with("{}");
        current.fields.pop();
        let mut writer = current.as_writer();
        let mut visitor = JsonObject { writer: &mut writer, first, result: Ok(()) };
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }
}

/// Writes each field as `"name":value`, comma-separated.
struct JsonObject<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: std::fmt::Result,
}

impl JsonObject<'_, '_> {
    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> std::fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.writer.write_char(',')?;
            }
            json_string(self.writer, field.name())?;
            self.writer.write_char(':')?;
            value(self.writer)
        })();
    }
}

impl Visit for JsonObject<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |w| json_string(w, value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.entry(field, |w| write!(w, "{value}"));
        } else {
            self.entry(field, |w| json_string(w, &value.to_string()));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.entry(field, |w| json_string(w, &format!("{value:?}")));
    }
}

/// `text` as a JSON string, escaped by serde_json.
fn json_string(writer: &mut impl std::fmt::Write, text: &str) -> std::fmt::Result {
    writer.write_str(&serde_json::to_string(text).map_err(|_| std::fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Log lines written to memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_the_spans_fields_as_json() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .fmt_fields(SpanFieldsJson)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "a\"b\\c\nd\u{1}",
                method = %"POST",
                attempt = 3_i64,
                size = 7_u64,
                ratio = 0.5_f64,
                later = tracing::field::Empty,
            );
            span.record("later", true);
            span.in_scope(|| tracing::error!(cause = "x", "internal error"));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let span = &line["span"];
        assert_eq!(span["request_id"], "a\"b\\c\nd\u{1}");
        assert_eq!(span["method"], "POST");
        assert_eq!(span["attempt"], 3);
        assert_eq!(span["size"], 7);
        assert_eq!(span["ratio"], 0.5);
        assert_eq!(span["later"], true);
        assert_eq!(span["name"], "request");
        assert_eq!(line["cause"], "x");
        assert_eq!(line["spans"][0]["request_id"], span["request_id"]);
    }

    #[test]
    fn a_span_without_fields_is_an_empty_object_until_one_is_recorded() {
        let mut text = String::new();
        json_string(&mut text, "plain").unwrap();
        assert_eq!(text, "\"plain\"");
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber =
            tracing_subscriber::fmt().json().fmt_fields(SpanFieldsJson).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("bare", late = tracing::field::Empty);
            span.in_scope(|| tracing::info!("first"));
            span.record("late", 1_i64);
            span.in_scope(|| tracing::info!("second"));
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["span"], serde_json::json!({"name": "bare"}));
        assert_eq!(lines[1]["span"], serde_json::json!({"name": "bare", "late": 1}));
    }
}
