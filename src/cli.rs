//! The command line and environment (`docs/reference.md` §1), parsed once into [`Config`].

use std::num::NonZeroUsize;

use axum::http::HeaderName;
use clap::{CommandFactory, Parser, error::ErrorKind};
use ipnet::IpNet;

use crate::client_ip::{TrustedProxies, parse_cidr};
use crate::store::StoreUrl;
use crate::telemetry::LogFormat;

const EXAMPLES: &str = "\
Examples:
  buy-tracker                                   # port 8080, data in data/buy-tracker.db
  buy-tracker --dev --port 0                    # one worker, readable logs, any free port
  buy-tracker --database-url memory:            # keep nothing (demos, tests)
  buy-tracker --database-url sqlite:/var/lib/buy-tracker/buys.db --n-workers 4
  buy-tracker --write-key s3cret --read-key dashboard-key
  buy-tracker --trusted-proxy 10.0.0.0/8 --trusted-proxy 2001:db8::/32
  buy-tracker --trusted-proxy 10.0.0.5 --client-ip-header X-Real-IP   # behind one nginx
  BUY_TRACKER_PORT=9000 DATABASE_URL=memory: buy-tracker";

/// buy-tracker records purchases on e-commerce promotion pages and serves live analytics on them.
#[derive(Debug, Clone, Parser)]
#[command(name = "buy-tracker", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do instead of serving (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to bind (an IP address or host name).
    #[arg(long, env = "BUY_TRACKER_HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on; 0 picks a free one (the bound address is logged as
    /// `listening on http://ADDR:PORT`).
    #[arg(long, env = "BUY_TRACKER_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Runtime worker threads [default: the number of CPU cores].
    #[arg(long = "n-workers", visible_alias = "workers", env = "BUY_TRACKER_WORKERS")]
    pub n_workers: Option<NonZeroUsize>,

    /// Development mode: one worker and human-readable debug logs. Refuses --n-workers other than 1.
    #[arg(long)]
    pub dev: bool,

    /// Where buys are stored: sqlite:PATH (file and folder created if missing), memory: (nothing
    /// kept) or postgres://USER@HOST/DB.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite:data/buy-tracker.db", value_parser = StoreUrl::parse, global = true)]
    pub database_url: StoreUrl,

    /// A key that allows writes (repeatable; env: comma-separated). When any is set, POST /buy and
    /// POST /buys need one, sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
    #[arg(long = "write-key", env = "BUY_TRACKER_WRITE_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub write_keys: Vec<String>,

    /// A key that allows analytics reads (repeatable; env: comma-separated). A write key also reads.
    #[arg(long = "read-key", env = "BUY_TRACKER_READ_KEYS", value_delimiter = ',', hide_env_values = true)]
    pub read_keys: Vec<String>,

    /// A peer (CIDR or address) whose forwarding headers are believed (repeatable; env:
    /// comma-separated) [default: loopback, private and link-local ranges].
    #[arg(long = "trusted-proxy", env = "BUY_TRACKER_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_cidr)]
    pub trusted_proxies: Vec<IpNet>,

    /// Behind a trusted proxy that sets exactly one header with the client's address, read the
    /// client from that header alone (for a list, its rightmost address that is not a trusted
    /// proxy) and ignore every other forwarding header, such as X-Real-IP behind nginx with
    /// `proxy_set_header X-Real-IP $remote_addr` [default: the forwarding headers in turn].
    #[arg(long, env = "BUY_TRACKER_CLIENT_IP_HEADER", value_parser = parse_header_name)]
    pub client_ip_header: Option<HeaderName>,

    /// An origin whose browser pages may call the API, such as `https://shop.example` (repeatable;
    /// env: comma-separated; `*` for any) [default: none, same origin only].
    #[arg(long = "cors-origin", env = "BUY_TRACKER_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Per-client rate limit in requests per second, keyed by client IP (an IPv6 client by its
    /// /64; off by default). It applies to the write and analytics routes; over it, requests get
    /// 429 with Retry-After. Health, metrics, pages and documentation are never limited.
    #[arg(long, env = "BUY_TRACKER_RATE_LIMIT", value_parser = parse_rate)]
    pub rate_limit: Option<f64>,

    /// Requests a client may send at once before the rate limit applies [default: 2 × the rate,
    /// at least 1].
    #[arg(long, env = "BUY_TRACKER_RATE_LIMIT_BURST", requires = "rate_limit", value_parser = parse_rate)]
    pub rate_limit_burst: Option<f64>,

    /// Seconds an idle keep-alive connection is kept open. Keep it above the idle timeout of the
    /// load balancer in front (60 s on common ones), so that it closes idle connections first.
    #[arg(long, env = "BUY_TRACKER_IDLE_TIMEOUT", default_value = "75", value_parser = parse_seconds)]
    pub idle_timeout: std::time::Duration,

    /// Seconds a shutdown (SIGTERM, SIGINT) waits for requests in progress before it closes their
    /// connections; event streams and exports end at once. Keep it below the grace period of
    /// your orchestrator (10 s by default on Kubernetes and ECS), which then kills the process.
    #[arg(long, env = "BUY_TRACKER_SHUTDOWN_TIMEOUT", default_value = "8", value_parser = parse_seconds)]
    pub shutdown_timeout: std::time::Duration,

    /// Where the views (every analytic, kept from the log of buys) live [default: beside a
    /// SQLite store, as NAME.views.db; a temporary file for memory: and PostgreSQL, built from the log at
    /// every start]. Give each PostgreSQL replica one of its own to restart without replaying the
    /// whole log.
    #[arg(long, env = "BUY_TRACKER_VIEWS_PATH", global = true)]
    pub views_path: Option<std::path::PathBuf>,

    /// Log format [default: pretty with --dev, else json].
    #[arg(long, env = "BUY_TRACKER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
}

/// A maintenance command, run instead of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Rebuild every view from the facts: deletes the views file (beside a SQLite
    /// store, or at --views-path) and applies the whole log again, then exits. Refused while a
    /// service uses those views.
    RebuildViews,
}

/// The validated configuration the rest of the program reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// A maintenance command to run instead of serving.
    pub command: Option<Command>,
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free one).
    pub port: u16,
    /// Runtime worker threads.
    pub workers: usize,
    /// Development mode.
    pub dev: bool,
    /// The store.
    pub database_url: StoreUrl,
    /// Keys that allow writes (and reads); empty: writes are open.
    pub write_keys: Vec<String>,
    /// Keys that allow reads; with no read and no write keys, reads are open.
    pub read_keys: Vec<String>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// Origins allowed by CORS.
    pub cors_origins: Vec<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Per-client rate limit, if any.
    pub rate_limit: Option<crate::http::rate_limit::Rate>,
    /// How analytics are kept.
    /// Where the views live, if not at their default place.
    pub views_path: Option<std::path::PathBuf>,
    /// Time allowed for a request's head (not a CLI option: tests shorten it).
    pub header_timeout: std::time::Duration,
    /// Time an idle keep-alive connection is kept.
    pub idle_timeout: std::time::Duration,
    /// Time a shutdown waits for requests in progress.
    pub shutdown_timeout: std::time::Duration,
    /// Time allowed for a request body.
    pub body_timeout: std::time::Duration,
}

/// An origin as browsers send it (`https://shop.example`, `http://localhost:3000`), or `*`.
fn parse_origin(s: &str) -> Result<String, String> {
    let origin = s.trim();
    let host = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    let valid = origin == "*"
        || origin.is_empty()
        || host.is_some_and(|h| {
            let h = h.trim_end_matches('/');
            !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
    if valid { Ok(origin.to_string()) } else { Err(format!("'{s}' is not an origin such as https://shop.example")) }
}

/// A header name, as `--client-ip-header` takes it.
fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.trim().to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("'{s}' is not a header name (such as X-Real-IP)"))
}

/// A number of seconds (fractions allowed), at least a millisecond.
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.001..=86_400.0).contains(&v) => Ok(std::time::Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}' is not a number of seconds from 0.001 to 86400")),
    }
}

/// A positive, finite number (rates and bursts).
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

impl Cli {
    /// Check the rules clap cannot express and build the [`Config`]; a broken rule is a usage
    /// error (exit code 2) naming the option.
    pub fn into_config(self) -> Result<Config, clap::Error> {
        if self.dev && self.n_workers.is_some_and(|n| n.get() != 1) {
            return Err(Cli::command().error(
                ErrorKind::ArgumentConflict,
                "--dev runs exactly one worker: drop --n-workers (or set it to 1)",
            ));
        }
        let workers = match (self.dev, self.n_workers) {
            (true, _) => 1,
            (false, Some(n)) => n.get(),
            (false, None) => std::thread::available_parallelism().map_or(1, NonZeroUsize::get),
        };
        let keys = |v: Vec<String>| v.into_iter().map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect();
        let mut trusted = if self.trusted_proxies.is_empty() {
            TrustedProxies::default()
        } else {
            TrustedProxies::new(self.trusted_proxies)
        };
        if let Some(header) = self.client_ip_header {
            trusted = trusted.with_only_header(header);
        }
        Ok(Config {
            command: self.command,
            host: self.host,
            port: self.port,
            workers,
            dev: self.dev,
            database_url: self.database_url,
            write_keys: keys(self.write_keys),
            read_keys: keys(self.read_keys),
            trusted_proxies: trusted,
            cors_origins: self.cors_origins.into_iter().filter(|o| !o.trim().is_empty()).collect(),
            log_format: self.log_format.unwrap_or(if self.dev { LogFormat::Pretty } else { LogFormat::Json }),
            rate_limit: self.rate_limit.map(|per_second| crate::http::rate_limit::Rate {
                per_second,
                burst: self.rate_limit_burst.unwrap_or((2.0 * per_second).max(1.0)),
            }),
            views_path: self.views_path,
            header_timeout: crate::server::HEADER_READ_TIMEOUT,
            idle_timeout: self.idle_timeout,
            shutdown_timeout: self.shutdown_timeout,
            body_timeout: crate::server::BODY_READ_TIMEOUT,
        })
    }
}

impl Config {
    /// A configuration for tests and embedding: the given store, port 0 on loopback, no keys.
    pub fn for_tests(database_url: StoreUrl) -> Config {
        Config {
            command: None,
            host: "127.0.0.1".into(),
            port: 0,
            workers: 2,
            dev: false,
            database_url,
            write_keys: Vec::new(),
            read_keys: Vec::new(),
            trusted_proxies: TrustedProxies::default(),
            cors_origins: Vec::new(),
            log_format: LogFormat::Json,
            rate_limit: None,
            views_path: None,
            header_timeout: crate::server::HEADER_READ_TIMEOUT,
            idle_timeout: crate::server::IDLE_TIMEOUT,
            shutdown_timeout: crate::server::DRAIN_TIMEOUT,
            body_timeout: crate::server::BODY_READ_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["buy-tracker"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)?.into_config()
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("0.0.0.0", 8080));
        assert_eq!(c.database_url, StoreUrl::Sqlite("data/buy-tracker.db".into()));
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(c.workers >= 1);
    }

    #[test]
    fn dev_refuses_other_worker_counts() {
        let e = parse(&["--dev", "--n-workers", "4"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--n-workers"));
        assert_eq!(parse(&["--dev", "--workers", "1"]).unwrap().workers, 1);
        let c = parse(&["--dev"]).unwrap();
        assert_eq!((c.workers, c.log_format), (1, LogFormat::Pretty));
    }

    #[test]
    fn bad_values_name_the_option() {
        for (args, option) in [
            (&["--port", "70000"][..], "--port"),
            (&["--database-url", "mysql://x"][..], "--database-url"),
            (&["--trusted-proxy", "10.0.0.0/33"][..], "--trusted-proxy"),
            (&["--n-workers", "0"][..], "--n-workers"),
            (&["--rate-limit", "0"][..], "--rate-limit"),
            (&["--client-ip-header", "bad header"][..], "--client-ip-header"),
            (&["--idle-timeout", "0"][..], "--idle-timeout"),
            (&["--cors-origin", "shop.example/path"][..], "--cors-origin"),
            (&["--shutdown-timeout", "x"][..], "--shutdown-timeout"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.to_string().contains(option), "{e}");
        }
    }

    #[test]
    fn repeatable_keys_and_alias() {
        let c = parse(&["--write-key", "a", "--write-key", "b", "--workers", "3"]).unwrap();
        assert_eq!(c.write_keys, vec!["a", "b"]);
        assert_eq!(c.workers, 3);
    }
}
