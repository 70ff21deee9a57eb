//! `mtpath serve`: headers for cross-origin isolation and a same-origin-only CSP, models and
//! their index, refusals (path escapes, symlinks out of the folder, uploads, other Host names),
//! streaming (Range, conditional requests, precompressed files), limits and timeouts that keep
//! the server up, and clear errors for a missing build.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A response as the client read it: status, head (status line and headers) and body.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (case-insensitive), if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Every response carries the isolation headers and the CSP, errors included.
    fn assert_isolated(&self) {
        for (name, value) in [
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Cross-Origin-Embedder-Policy", "require-corp"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-cache"),
        ] {
            assert_eq!(self.header(name), Some(value), "{name}: {}", self.head);
        }
        let csp = self.header("Content-Security-Policy").unwrap_or("");
        assert!(csp.contains("connect-src 'self'"), "{}", self.head);
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends `request` as it is and reads the reply until the server closes.
fn raw(addr: &str, request: &str) -> Reply {
    let mut s = connect(addr);
    s.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no reply head: {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head,
        body: bytes[split + 4..].to_vec(),
    }
}

/// `METHOD path` with Host 127.0.0.1, `Connection: close` and `headers` (each ending in CRLF).
fn send(addr: &str, method: &str, path: &str, headers: &str) -> Reply {
    raw(
        addr,
        &format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n"
        ),
    )
}

fn get(addr: &str, path: &str) -> Reply {
    send(addr, "GET", path, "")
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `mtpath serve` and the address it printed.
struct Server {
    child: Kill,
    addr: String,
}

impl Server {
    /// `mtpath serve WWW --port 0 --quiet ARGS`.
    fn start(www: &Path, args: &[&str]) -> Server {
        Self::start_with(www, args, &[])
    }

    fn start_with(www: &Path, args: &[&str], env: &[(&str, &Path)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mtpath"));
        cmd.arg("serve")
            .arg(www)
            .args(["--port", "0", "--quiet"])
            .args(args)
            .stdout(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = Kill(cmd.spawn().unwrap());
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.split_whitespace().nth(1).unwrap_or("");
        assert!(url.starts_with("http://127.0.0.1:"), "{line}");
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        Server {
            addr: addr.to_string(),
            child,
        }
    }

    /// The server's resident memory in bytes (Linux).
    #[cfg(target_os = "linux")]
    fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kb * 1024
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.0.try_wait().unwrap().is_none(),
            "the server exited"
        );
        let r = get(&self.addr, "/");
        assert_eq!(r.status, 200, "{}", r.head);
    }
}

/// A web app folder (index.html, the bindings, a wasm and its gzip variant), a secret beside
/// it and an export folder with a model. Returns (tempdir, www, export).
fn site() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("pkg")).unwrap();
    std::fs::write(www.join("index.html"), "<!doctype html><p>hi").unwrap();
    std::fs::write(www.join("pkg/mtpath_web.js"), "export default 1;").unwrap();
    std::fs::write(www.join("pkg/mtpath_web_bg.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "do not serve").unwrap();
    let export = dir.path().join("export");
    std::fs::create_dir_all(&export).unwrap();
    std::fs::write(export.join("model.safetensors"), b"weights").unwrap();
    std::fs::write(export.join("card.json"), r#"{"architecture":"resnet18"}"#).unwrap();
    (dir, www, export)
}

#[test]
fn serve_isolates_the_page_and_serves_models() {
    let (dir, www, export) = site();
    let mut server = Server::start(&www, &["--model", export.to_str().unwrap()]);
    let addr = server.addr.clone();

    let r = get(&addr, "/");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"<!doctype html><p>hi");
    r.assert_isolated();
    assert!(
        r.head.contains("Cross-Origin-Opener-Policy: same-origin"),
        "{}",
        r.head
    );
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let r = get(&addr, "/pkg/mtpath_web_bg.wasm");
    assert_eq!(
        r.header("Content-Type"),
        Some("application/wasm"),
        "{}",
        r.head
    );
    let r = get(&addr, "/pkg/mtpath_web.js");
    assert!(r
        .header("Content-Type")
        .unwrap_or("")
        .starts_with("text/javascript"));
    let r = send(&addr, "HEAD", "/pkg/mtpath_web.js", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("17"));
    assert!(r.body.is_empty());

    let r = get(&addr, "/models/index.json");
    assert_eq!(r.status, 200);
    r.assert_isolated();
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(index["models"][0]["name"], "export.safetensors");
    assert_eq!(index["models"][0]["url"], "models/export.safetensors");
    assert_eq!(index["models"][0]["bytes"], 7);
    assert_eq!(index["models"][0]["card"]["architecture"], "resnet18");
    let r = send(&addr, "HEAD", "/models/index.json", "");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = get(&addr, "/models/export.safetensors");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"weights");
    assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
    r.assert_isolated();

    for bad in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/models/../../secret.txt",
        "/models/secret.txt",
        "/pkg/../../secret.txt",
        "/nothing-here.js",
    ] {
        let r = get(&addr, bad);
        assert_eq!(r.status, 404, "{bad}: {}", r.head);
        assert!(!String::from_utf8_lossy(&r.body).contains("do not serve"));
        r.assert_isolated();
    }
    // Hidden files stay private.
    std::fs::create_dir_all(www.join(".git")).unwrap();
    std::fs::write(www.join(".git/config"), "do not serve").unwrap();
    std::fs::write(www.join(".env"), "do not serve").unwrap();
    for bad in ["/.git/config", "/.env", "/%2egit/config"] {
        let r = get(&addr, bad);
        assert_eq!(r.status, 404, "{bad}: {}", r.head);
    }
    drop(dir);
    server.child.0.kill().ok();
}

#[test]
fn serve_refuses_other_methods_with_allow() {
    let (_dir, www, _) = site();
    let server = Server::start(&www, &[]);
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        let r = send(&server.addr, method, "/upload", "Content-Length: 0\r\n");
        assert_eq!(r.status, 405, "{method}: {}", r.head);
        assert_eq!(r.header("Allow"), Some("GET, HEAD"), "{method}: {}", r.head);
        r.assert_isolated();
    }
}

#[test]
fn serve_refuses_other_host_names() {
    let (_dir, www, _) = site();
    let server = Server::start(&www, &[]);
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
    ] {
        let r = raw(
            &server.addr,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 421, "{host}: {}", r.head);
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains("DNS rebinding") && body.contains("--host"),
            "{body}"
        );
        assert!(!body.contains("<!doctype"), "{body}");
        r.assert_isolated();
    }
    for host in [
        "127.0.0.1".to_string(),
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let r = raw(
            &server.addr,
            &format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 200, "{host}: {}", r.head);
    }
    // An absolute-form target names the host too.
    let r = raw(
        &server.addr,
        "GET http://evil.example/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 421, "{}", r.head);
    let r = raw(&server.addr, "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head);
    r.assert_isolated();
}

#[test]
fn serve_answers_ranges_and_conditional_requests() {
    let (_dir, www, export) = site();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("pkg/data.bin"), &data).unwrap();
    std::fs::write(export.join("model.safetensors"), &data).unwrap();
    let server = Server::start(&www, &["--model", export.to_str().unwrap()]);
    for path in ["/pkg/data.bin", "/models/export.safetensors"] {
        let r = send(&server.addr, "GET", path, "Range: bytes=100-199\r\n");
        assert_eq!(r.status, 206, "{path}: {}", r.head);
        assert_eq!(r.header("Content-Range"), Some("bytes 100-199/1000"));
        assert_eq!(r.body, &data[100..200]);
        r.assert_isolated();
        let r = send(&server.addr, "GET", path, "Range: bytes=-10\r\n");
        assert_eq!(r.status, 206, "{path}: {}", r.head);
        assert_eq!(r.body, &data[990..]);
        let r = send(&server.addr, "GET", path, "Range: bytes=5000-\r\n");
        assert_eq!(r.status, 416, "{path}: {}", r.head);
        r.assert_isolated();

        let full = get(&server.addr, path);
        assert_eq!(full.status, 200);
        assert_eq!(full.body, data);
        let etag = full.header("ETag").expect("an ETag").to_string();
        let modified = full
            .header("Last-Modified")
            .expect("a Last-Modified")
            .to_string();
        let r = send(
            &server.addr,
            "GET",
            path,
            &format!("If-None-Match: {etag}\r\n"),
        );
        assert_eq!(r.status, 304, "{path}: {}", r.head);
        assert!(r.body.is_empty());
        r.assert_isolated();
        let r = send(
            &server.addr,
            "GET",
            path,
            &format!("If-Modified-Since: {modified}\r\n"),
        );
        assert_eq!(r.status, 304, "{path}: {}", r.head);
        let r = send(&server.addr, "GET", path, "If-None-Match: \"other\"\r\n");
        assert_eq!(r.status, 200, "{path}: {}", r.head);
    }
}

#[test]
fn serve_sends_precompressed_variants_when_accepted() {
    let (_dir, www, export) = site();
    std::fs::write(www.join("pkg/mtpath_web_bg.wasm.gz"), b"gzip bytes").unwrap();
    std::fs::write(www.join("pkg/mtpath_web_bg.wasm.br"), b"brotli bytes").unwrap();
    std::fs::write(export.join("model.safetensors.gz"), b"gzip weights").unwrap();
    let server = Server::start(&www, &["--model", export.to_str().unwrap()]);
    let wasm = "/pkg/mtpath_web_bg.wasm";

    let r = send(&server.addr, "GET", wasm, "Accept-Encoding: gzip\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"gzip bytes");
    assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{}", r.head);
    assert_eq!(
        r.header("Content-Type"),
        Some("application/wasm"),
        "{}",
        r.head
    );
    assert!(r
        .header("Vary")
        .unwrap_or("")
        .to_ascii_lowercase()
        .contains("accept-encoding"));
    r.assert_isolated();
    let r = send(&server.addr, "GET", wasm, "Accept-Encoding: br\r\n");
    assert_eq!(r.body, b"brotli bytes");
    assert_eq!(r.header("Content-Encoding"), Some("br"), "{}", r.head);
    let r = get(&server.addr, wasm);
    assert_eq!(r.body, b"\0asm\x01\0\0\0");
    assert_eq!(r.header("Content-Encoding"), None, "{}", r.head);
    assert!(r
        .header("Vary")
        .unwrap_or("")
        .to_ascii_lowercase()
        .contains("accept-encoding"));
    // No variant: the file itself whatever the client accepts.
    let r = send(
        &server.addr,
        "GET",
        "/pkg/mtpath_web.js",
        "Accept-Encoding: gzip, br\r\n",
    );
    assert_eq!(r.body, b"export default 1;");
    assert_eq!(r.header("Content-Encoding"), None);

    let model = "/models/export.safetensors";
    let r = send(
        &server.addr,
        "GET",
        model,
        "Accept-Encoding: gzip, deflate\r\n",
    );
    assert_eq!(r.body, b"gzip weights");
    assert_eq!(r.header("Content-Encoding"), Some("gzip"), "{}", r.head);
    let r = get(&server.addr, model);
    assert_eq!(r.body, b"weights");
}

#[cfg(unix)]
#[test]
fn serve_refuses_symlinks_out_of_the_folder() {
    use std::os::unix::fs::symlink;
    let (dir, www, _) = site();
    symlink(dir.path().join("secret.txt"), www.join("out.txt")).unwrap();
    symlink(dir.path(), www.join("up")).unwrap();
    symlink(www.join("index.html"), www.join("alias.html")).unwrap();
    std::fs::write(www.join("pkg/mtpath_web.js.gz"), b"zip").unwrap();
    // A precompressed variant that points out of the folder is not used either.
    symlink(dir.path().join("secret.txt"), www.join("index.html.gz")).unwrap();
    let server = Server::start(&www, &[]);
    for bad in ["/out.txt", "/up/secret.txt"] {
        let r = get(&server.addr, bad);
        assert_eq!(r.status, 404, "{bad}: {}", r.head);
        assert!(!String::from_utf8_lossy(&r.body).contains("do not serve"));
        r.assert_isolated();
    }
    let r = get(&server.addr, "/alias.html");
    assert_eq!(r.status, 200, "{}", r.head);
    let r = send(&server.addr, "GET", "/", "Accept-Encoding: gzip\r\n");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"<!doctype html><p>hi");
    assert_eq!(r.header("Content-Encoding"), None);
}

#[test]
fn serve_refuses_oversized_request_heads_and_stays_up() {
    let (_dir, www, _) = site();
    let mut server = Server::start(&www, &[]);

    // A header line past the limit: refused (431), or the connection closed, never served.
    let mut s = connect(&server.addr);
    let line = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = s.write_all(line.as_bytes());
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431") || reply.starts_with("HTTP/1.1 400"),
        "{reply}"
    );
    // Too many headers.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let mut s = connect(&server.addr);
    let _ = s.write_all(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{many}\r\n").as_bytes());
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "{reply}"
    );
    server.assert_alive();

    // A 256 MB header line: the server stops reading early and its memory does not follow.
    #[cfg(target_os = "linux")]
    let before = server.rss();
    let mut s = connect(&server.addr);
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ");
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..256 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    assert!(
        sent < 64 << 20,
        "the server read {sent} bytes of one header line"
    );
    drop(s);
    #[cfg(target_os = "linux")]
    {
        let after = server.rss();
        assert!(
            after < before + (32 << 20),
            "resident memory grew from {before} to {after} bytes"
        );
    }
    server.assert_alive();
}

#[test]
fn serve_drops_silent_connections_and_serves_others_meanwhile() {
    let (_dir, www, _) = site();
    let mut server = Server::start(&www, &["--idle-timeout-secs", "3"]);
    let start = Instant::now();
    let mut silent = connect(&server.addr);
    // Half a request head, then nothing: also dropped.
    let mut slow = connect(&server.addr);
    slow.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    // Others are served at once meanwhile.
    for _ in 0..5 {
        let r = get(&server.addr, "/");
        assert_eq!(r.status, 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    for s in [&mut silent, &mut slow] {
        let mut buf = Vec::new();
        // Closed (maybe after a 408): read_to_end ends; a server that keeps it open makes the
        // 20 s read timeout fail this.
        match s.read_to_end(&mut buf) {
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(15),
        "dropped after {waited:?}"
    );
    server.assert_alive();
}

#[test]
fn serve_drops_clients_that_stop_reading() {
    let (_dir, www, _) = site();
    let size = 64usize << 20;
    std::fs::write(www.join("big.bin"), vec![7u8; size]).unwrap();
    let mut server = Server::start(&www, &["--idle-timeout-secs", "2"]);
    let mut s = connect(&server.addr);
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    // Read nothing past the idle timeout: the server gives up on this client.
    std::thread::sleep(Duration::from_secs(5));
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("after {got} bytes: {e}"),
        }
    }
    assert!(got < size, "the whole file came after a stall: {got} bytes");
    server.assert_alive();
}

#[test]
fn serve_keeps_serving_past_the_connection_cap() {
    let (_dir, www, _) = site();
    let mut server = Server::start(
        &www,
        &["--idle-timeout-secs", "2", "--max-connections", "4"],
    );
    // Twelve idle connections, three times the cap: they wait their turn, are dropped after
    // the idle timeout, and a real request gets through after them.
    let idle: Vec<TcpStream> = (0..12).map(|_| connect(&server.addr)).collect();
    let start = Instant::now();
    let r = get(&server.addr, "/");
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    drop(idle);
    // Connections closed by their clients free their slots.
    let closed: Vec<TcpStream> = (0..12).map(|_| connect(&server.addr)).collect();
    drop(closed);
    let start = Instant::now();
    for _ in 0..8 {
        assert_eq!(get(&server.addr, "/").status, 200);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    server.assert_alive();
}

#[test]
fn serve_without_a_build_says_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mtpath"))
        .arg("serve")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("scripts/build-web.sh"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_mtpath"))
        .args(["serve", "www", "--model", "/no/such/model.safetensors"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// A features file as `mtpath features` writes it (without metadata): `rows × cols` f32.
fn write_features(path: &std::path::Path, values: &[f32], rows: usize, cols: usize) {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![rows, cols], &data)
            .unwrap();
    std::fs::write(
        path,
        safetensors::serialize([("features", view)], None).unwrap(),
    )
    .unwrap();
}

fn predict(probe: &std::path::Path, features: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mtpath"))
        .arg("predict")
        .arg("--probe")
        .arg(probe)
        .arg("--features")
        .arg(features)
        .output()
        .unwrap()
}

#[test]
fn predict_rejects_a_probe_for_other_features() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe.json");
    std::fs::write(
        &probe,
        r#"{"format":"mtpath-probe/1","kind":"logistic","classes":["a","b"],"c":1.0,"n_features":3,"coef":[[1.0,0.0,-1.0]],"intercept":[0.5]}"#,
    )
    .unwrap();
    // Features of dimension 2: a clear error naming the probe.
    let feats = dir.path().join("f.safetensors");
    write_features(&feats, &[1f32, 2., 3., 4.], 2, 2);
    let out = predict(&probe, &feats);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3-d features") && err.contains("probe.json"),
        "{err}"
    );

    // Matching features: one row per image, probabilities summing to one.
    write_features(&feats, &[1f32, 0., 0., 0., 0., 2.], 2, 3);
    let out = predict(&probe, &feats);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "file,predicted,p_a,p_b");
    // row0: z = 1 + 0.5 > 0 → b; row1: z = -2 + 0.5 < 0 → a.
    assert!(lines[1].starts_with("row0,b,"), "{csv}");
    assert!(lines[2].starts_with("row1,a,"), "{csv}");

    std::fs::write(&probe, "{not json").unwrap();
    let out = predict(&probe, &feats);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a probe file"));
}

#[test]
fn serve_offers_the_released_trunk_when_no_model_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("pkg")).unwrap();
    std::fs::write(www.join("index.html"), "<!doctype html>").unwrap();
    std::fs::write(www.join("pkg/mtpath_web.js"), "export default 1;").unwrap();
    let released = dir.path().join("models/pool-r18");
    std::fs::create_dir_all(&released).unwrap();
    std::fs::write(released.join("model.safetensors"), b"released weights").unwrap();
    std::fs::write(released.join("card.json"), r#"{"architecture":"resnet18"}"#).unwrap();
    let models = dir.path().join("models");
    let server = Server::start_with(&www, &[], &[("MTPATH_MODELS", &models)]);
    let r = get(&server.addr, "/models/index.json");
    let index: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        index["models"][0]["name"], "pool-r18.safetensors",
        "{index}"
    );
    let r = get(&server.addr, "/models/pool-r18.safetensors");
    assert_eq!(r.body, b"released weights");
}
