//! A full disk: writes answer 503 with a clear message, nothing acknowledged is lost or corrupted,
//! and writes succeed again once space is freed.
//!
//! The SQLite file lives on a small tmpfs the test mounts (needs root, as in CI). Without the
//! right to mount, the test prints a SKIP line, unless BUY_TRACKER_REQUIRE_MOUNT=1 (CI).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::{Server, buy};
use serde_json::Value;

/// Unmounts the tmpfs when the test ends, whatever happens.
struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

async fn post(client: &reqwest::Client, server: &Server, i: i64) -> (u16, Value) {
    let response = client.post(server.url("/buy")).json(&buy(i, i % 5, i % 50, 1)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mount)
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        let message = "SKIP disk-full test: cannot mount a tmpfs (needs root)";
        assert!(std::env::var("BUY_TRACKER_REQUIRE_MOUNT").as_deref() != Ok("1"), "{message}");
        eprintln!("{message}");
        return;
    }
    let _unmount = Mount(&mount);
    let db = mount.join("buys.db");
    let server = Server::start(&db, &[]);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    // Leave the store little room: a filler takes most of the file system.
    let filler = mount.join("filler");
    std::fs::write(&filler, vec![0u8; 3 * 1024 * 1024]).unwrap();

    let mut acknowledged = 0;
    let mut full = None;
    for i in 0..100_000 {
        let (status, body) = post(&client, &server, i).await;
        match status {
            200 => acknowledged += 1,
            503 => {
                full = Some(body);
                break;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    let body = full.expect("the disk filled up and a write was refused");
    let detail = body["detail"].as_str().unwrap_or_default().to_lowercase();
    assert!(detail.contains("full"), "the 503 says the disk is full: {body}");
    // Reads still work and the process is alive.
    let stats: Value = client.get(server.url("/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["total_buys"], acknowledged, "every acknowledged buy and nothing else is counted");

    std::fs::remove_file(&filler).unwrap();
    let (status, body) = post(&client, &server, 1_000_000).await;
    assert_eq!(status, 200, "writes succeed again once space is freed: {body}");
    assert_eq!(body["buy_count"], acknowledged + 1);
    eprintln!("disk full after {acknowledged} buys: 503 '{detail}'; recovered with buy_count {}", body["buy_count"]);

    // A restart finds a clean store holding everything acknowledged.
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)), Some(0));
    let server = Server::start(&db, &[]);
    let stats: Value = client.get(server.url("/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["total_buys"], acknowledged + 1);
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)), Some(0));
}
