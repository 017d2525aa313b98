//! The `trading` binary as the README runs it: embedded defaults, first-start
//! seeding, a real TCP port, graceful shutdown on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// One HTTP/1.1 request on a fresh connection; returns the raw response.
async fn http_get(addr: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("service accepts connections");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn the_binary_starts_on_embedded_defaults_serves_and_shuts_down_cleanly() {
    let db = std::env::temp_dir().join(format!("{}.db", testkit::namespace()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_trading"))
        .args(["--addr", "127.0.0.1:0"])
        .env("LARDER_SQLITE_PATH", &db)
        .env("LARDER_SEED_USERS", "50")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("trading binary runs");
    // The service prints its URL once it listens.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("http://") {
                return line;
            }
        }
        panic!("service exited without printing its address");
    })
    .await
    .expect("service printed its address within 60 s");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();

    let response = http_get(&addr, "/api/users/1/portfolio").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"total_market_value\":\""), "{response}");
    let response = http_get(&addr, "/api/users/x/portfolio").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains("application/json"), "{response}");

    let pid = child.id().expect("child is running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("service stops within 10 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
}
