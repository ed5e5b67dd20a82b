//! Schemathesis (from PyPI) against `/openapi.json` of the running service: every generated
//! request gets a response that matches the documented schema, and no 5xx.
//!
//! Needs the `schemathesis` command (`pip install schemathesis`); without it the test prints a
//! SKIP line, unless BUY_TRACKER_REQUIRE_SCHEMATHESIS=1 (CI), which makes a missing tool a failure.

use std::process::Command;

use crate::common::{StoreKind, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_match_the_schema_and_never_fail_the_server() {
    let available = Command::new("schemathesis").arg("--version").output().is_ok_and(|o| o.status.success());
    if !available {
        let message = "SKIP schemathesis test: the schemathesis command is missing (pip install schemathesis)";
        assert!(std::env::var("BUY_TRACKER_REQUIRE_SCHEMATHESIS").as_deref() != Ok("1"), "{message}");
        eprintln!("{message}");
        return;
    }
    let app = TestApp::spawn(StoreKind::Sqlite).await;
    let url = app.url("/openapi.json");
    // Positive-data acceptance is left out: a reused Idempotency-Key with another body is
    // refused (422) by contract, although the request itself matches the schema. /events never
    // ends, so it is left out too (tests/it/analytics.rs covers it).
    let output = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .args(["run", &url, "--max-examples", "25", "--exclude-path", "/events", "--seed", "1"])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"])
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Vec<&str> = stdout.lines().filter(|l| l.contains("generated") || l.contains("passed")).collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
