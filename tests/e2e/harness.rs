//! What the browser end-to-end tests share: the `mtpath` binary, the explorer served by
//! `mtpath serve`, and a headless Chromium session through chromedriver.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::webdriver::Session;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The binary under test: MTPATH_BIN, else target/debug/mtpath.
pub fn mtpath_bin() -> PathBuf {
    std::env::var_os("MTPATH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/debug/mtpath"))
}

/// Run `cmd`, fail with its stderr unless it succeeds, and return its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Kills the child when dropped.
pub struct Guard(pub Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mtpath serve www --model DIR` on a free port: the process, the page's URL and the
/// server's log lines.
pub fn serve(www: &Path, model_dir: &Path) -> (Guard, String, Arc<Mutex<Vec<String>>>) {
    let mut server = Guard(
        Command::new(mtpath_bin())
            .arg("serve")
            .arg(www)
            .arg("--model")
            .arg(model_dir)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mtpath serve"),
    );
    let mut first = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .split_whitespace()
        .nth(1)
        .expect("serve prints its URL")
        .to_string();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&log);
    let stderr = server.0.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    (server, url, log)
}

/// chromedriver on a free port and a headless Chromium session through it.
pub fn chromium() -> (Guard, Session) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let chromedriver = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let driver = Guard(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("start {chromedriver}: {e} (apt-get install chromium-driver)")
            }),
    );
    for _ in 0..100 {
        if let Ok(s) = Session::chromium(port, "/usr/bin/chromium") {
            return (driver, s);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no chromedriver session");
}
