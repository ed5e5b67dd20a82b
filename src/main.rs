//! The `buy-tracker` binary: parse the command line, set up logging, run until a signal.

use std::process::ExitCode;

use buy_tracker::app::Application;
use buy_tracker::cli::Cli;
use clap::Parser;

// The request path allocates many small, short-lived buffers across threads; mimalloc handles
// that with less contention than glibc's allocator (malloc/free were ~10% of a profile under load).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Cli::try_parse().and_then(Cli::into_config) {
        Ok(config) => config,
        Err(e) => usage_exit(e),
    };
    buy_tracker::telemetry::init(config.log_format, config.dev);
    if let Some(buy_tracker::cli::Command::RebuildViews) = config.command {
        return rebuild_views(&config);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime with --n-workers {}: {e}", config.workers);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = shutdown_signal();
        let app = match Application::build(&config).await {
            Ok(app) => app,
            Err(e) => {
                // One line: what could not start, then its causes.
                eprintln!("error: {}", buy_tracker::telemetry::error_chain(&e));
                return ExitCode::FAILURE;
            }
        };
        match app.run_until(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `buy-tracker rebuild-views`: every view again from the facts, with the time it took.
fn rebuild_views(config: &buy_tracker::cli::Config) -> ExitCode {
    let started = std::time::Instant::now();
    match buy_tracker::store::rebuild_views(&config.database_url, config.views_path.as_deref()) {
        Ok(facts) => {
            println!("rebuilt the views from {facts} facts in {:.1} s", started.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", buy_tracker::telemetry::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `--help` and `--version` print in full; a usage error prints only its first line (`docs/reference.md` §1:
/// one clear line naming the option), without clap's usage and `--help` hints.
fn usage_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let rendered = e.render().to_string();
    eprintln!("{}", rendered.lines().find(|l| !l.trim().is_empty()).unwrap_or("error: invalid command line"));
    std::process::exit(e.exit_code());
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are registered when this is called, not
/// when the future is first polled: a signal that arrives right after the `listening on` line
/// must already be caught (the default action would kill the process mid-write).
fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT received; shutting down"),
                _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
            },
            _ => {
                tracing::warn!("cannot install signal handlers; falling back to Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
