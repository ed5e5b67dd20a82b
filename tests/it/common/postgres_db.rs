//! PostgreSQL for tests: each test gets a database of its own on the server named by
//! `BUY_TRACKER_TEST_POSTGRES_URL`, created fresh and dropped when the test ends (best effort).
//!
//! Without that variable PostgreSQL tests print a SKIP line and pass, unless
//! `BUY_TRACKER_REQUIRE_POSTGRES=1` (as in CI with a server), where they fail.
//!
//! The blocking `postgres` client drives a runtime of its own, which must not run on an async
//! worker; every call here runs on a thread of its own.

use std::sync::Mutex;

/// The variable naming the test server, e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub const URL_VAR: &str = "BUY_TRACKER_TEST_POSTGRES_URL";
/// Set to `1` to make a missing server a failure rather than a skip.
pub const REQUIRE_VAR: &str = "BUY_TRACKER_REQUIRE_POSTGRES";

/// The test server's URL, or `None` after printing why the test is skipped.
pub fn server_or_skip() -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => {
            panic!("{REQUIRE_VAR}=1 but {URL_VAR} is not set")
        }
        _ => {
            println!("SKIP postgres: set {URL_VAR}");
            None
        }
    }
}

/// A database created for one test; dropping this drops the database (with `FORCE`, so
/// connections still open from the test's servers do not keep it alive).
pub struct TestDatabase {
    /// `postgres://…/bt_test_…`, for `--database-url`.
    pub url: String,
    server: String,
    name: String,
}

/// Run `f` with a client of the test server, on a thread of its own.
fn with_server<T: Send>(server: &str, f: impl FnOnce(&mut postgres::Client) -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut client = postgres::Client::connect(server, postgres::NoTls)
                    .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {server}: {e}"));
                f(&mut client)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl TestDatabase {
    /// Create `bt_test_<random>` on `server`.
    pub fn create(server: &str) -> TestDatabase {
        let name = format!("bt_test_{}", uuid::Uuid::new_v4().simple());
        with_server(server, |client| {
            client.batch_execute(&format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
        });
        let mut url: url_parts::Parts = url_parts::Parts::parse(server);
        url.path = format!("/{name}");
        TestDatabase { url: url.to_string(), server: server.to_string(), name }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Best effort: a test that already failed should report its own failure, not this one.
        let server = self.server.clone();
        let dropped = std::thread::spawn(move || {
            postgres::Client::connect(&server, postgres::NoTls).and_then(|mut client| client.batch_execute(&sql))
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

tokio::task_local! {
    /// The databases the running test created, dropped when it ends.
    static DATABASES: Mutex<Vec<TestDatabase>>;
}

/// Run a test body, then drop every database it created with [`fresh_database_url`] (also when
/// it panics: the list is dropped while unwinding).
pub async fn scope<F: std::future::Future<Output = ()>>(body: F) {
    DATABASES.scope(Mutex::new(Vec::new()), body).await
}

/// A fresh database on the test server, dropped at the end of the enclosing [`scope`] (outside
/// one it is left behind). Panics when no server is configured: callers check
/// [`server_or_skip`] first.
pub fn fresh_database_url() -> String {
    let server = std::env::var(URL_VAR).unwrap_or_else(|_| panic!("{URL_VAR} is not set"));
    let database = TestDatabase::create(&server);
    let url = database.url.clone();
    let kept = DATABASES.try_with(|list| list.lock().unwrap_or_else(|p| p.into_inner()).push(database));
    if let Err(e) = kept {
        eprintln!("test database {url} is left behind: {e}");
    }
    url
}

/// Just enough URL handling to swap the database name of a `postgres://` URL.
mod url_parts {
    /// `scheme://authority` + `path` + `?query`.
    pub struct Parts {
        prefix: String,
        pub path: String,
        query: String,
    }

    impl Parts {
        pub fn parse(url: &str) -> Parts {
            let (base, query) = match url.split_once('?') {
                Some((base, query)) => (base, format!("?{query}")),
                None => (url, String::new()),
            };
            let after_scheme = base.find("://").map_or(0, |i| i + 3);
            let (prefix, path) = match base[after_scheme..].find('/') {
                Some(i) => base.split_at(after_scheme + i),
                None => (base, ""),
            };
            Parts { prefix: prefix.to_string(), path: path.to_string(), query }
        }
    }

    impl std::fmt::Display for Parts {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}{}{}", self.prefix, self.path, self.query)
        }
    }
}
