//! `mtpath serve`: headers for cross-origin isolation and a same-origin-only CSP, models and
//! their index, refusals (path escapes, uploads), and clear errors for a missing build.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn get(addr: &str, request: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&raw[..split]).into_owned(),
        raw[split + 4..].to_vec(),
    )
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_isolates_the_page_and_serves_models() {
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

    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_mtpath"))
            .arg("serve")
            .arg(&www)
            .arg("--model")
            .arg(&export)
            .args(["--port", "0", "--quiet"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.split_whitespace().nth(1).unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let addr = url.trim_start_matches("http://").trim_end_matches('/');

    let (head, body) = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"<!doctype html><p>hi");
    for h in [
        "Cross-Origin-Opener-Policy: same-origin",
        "Cross-Origin-Embedder-Policy: require-corp",
        "connect-src 'self'",
        "Content-Type: text/html",
    ] {
        assert!(head.contains(h), "missing {h}: {head}");
    }
    let (head, _) = get(
        addr,
        "GET /pkg/mtpath_web_bg.wasm HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(head.contains("Content-Type: application/wasm"), "{head}");

    let (head, body) = get(addr, "GET /models/index.json HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200"));
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(index["models"][0]["name"], "export.safetensors");
    assert_eq!(index["models"][0]["card"]["architecture"], "resnet18");
    let (_, body) = get(
        addr,
        "GET /models/export.safetensors HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(body, b"weights");

    for bad in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/models/../../secret.txt",
    ] {
        let (head, body) = get(addr, &format!("GET {bad} HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head.starts_with("HTTP/1.1 404"), "{bad}: {head}");
        assert!(!String::from_utf8_lossy(&body).contains("do not serve"));
    }
    let (head, _) = get(
        addr,
        "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
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
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_mtpath"))
            .arg("serve")
            .arg(&www)
            .args(["--port", "0", "--quiet"])
            .env("MTPATH_MODELS", dir.path().join("models"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.split_whitespace().nth(1).unwrap();
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let (_, body) = get(addr, "GET /models/index.json HTTP/1.1\r\nHost: x\r\n\r\n");
    let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        index["models"][0]["name"], "pool-r18.safetensors",
        "{index}"
    );
    let (_, body) = get(
        addr,
        "GET /models/pool-r18.safetensors HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(body, b"released weights");
}
