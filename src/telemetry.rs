//! Logging, set up once from the configuration: JSON lines in production, readable lines in
//! `--dev`. `RUST_LOG` overrides the level.

use tracing_subscriber::EnvFilter;

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
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
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
