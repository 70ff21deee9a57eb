//! A minimal W3C WebDriver client over plain HTTP (chromedriver on 127.0.0.1): just what the
//! explorer's end-to-end test needs, with no extra dependencies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A WebDriver session.
pub struct Session {
    port: u16,
    id: String,
}

fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(600))).ok();
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // Read the header, then exactly Content-Length bytes (chromedriver may keep the
    // connection open), or to the end for chunked / unsized bodies.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let k = s.read(&mut buf).map_err(|e| e.to_string())?;
        if k == 0 {
            return Err("connection closed before the HTTP header ended".into());
        }
        raw.extend_from_slice(&buf[..k]);
    };
    let length = String::from_utf8_lossy(&raw[..split])
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
    match length {
        Some(len) => {
            while raw.len() < split + 4 + len {
                let k = s.read(&mut buf).map_err(|e| e.to_string())?;
                if k == 0 {
                    break;
                }
                raw.extend_from_slice(&buf[..k]);
            }
        }
        None => {
            s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        }
    }
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("bad chunk")?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16)
                .map_err(|e| e.to_string())?;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[nl + 4 + size..];
        }
        body = out;
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "{method} {path}: bad JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })?;
    if let Some(err) = v["value"].get("error") {
        return Err(format!("{method} {path}: {err}: {}", v["value"]["message"]));
    }
    Ok(v["value"].clone())
}

impl Session {
    /// Open headless Chromium through chromedriver on `port`.
    pub fn chromium(port: u16, binary: &str) -> Result<Session, String> {
        let caps = json!({
            "capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
                "goog:chromeOptions": {
                    "binary": binary,
                    "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                             "--disable-gpu", "--window-size=1400,2200",
                             "--disable-background-networking", "--disable-component-update",
                             "--no-first-run", "--disable-sync"],
                    "perfLoggingPrefs": {"enableNetwork": true}
                }
            }}
        });
        let v = http(port, "POST", "/session", Some(&caps))?;
        let id = v["sessionId"].as_str().ok_or("no session id")?.to_string();
        Ok(Session { port, id })
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        http(
            self.port,
            method,
            &format!("/session/{}{path}", self.id),
            body.as_ref(),
        )
    }

    /// Navigate.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "/url", Some(json!({ "url": url })))
            .map(|_| ())
    }

    /// Run a synchronous script; `arguments` are passed in.
    pub fn eval(&self, script: &str, args: Value) -> Result<Value, String> {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Set the script timeout (ms).
    pub fn script_timeout(&self, ms: u64) -> Result<(), String> {
        self.cmd("POST", "/timeouts", Some(json!({ "script": ms })))
            .map(|_| ())
    }

    /// The element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<String, String> {
        let v = self.cmd(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        )?;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("no element {css}"))
    }

    /// Type into an element (for file inputs: the path(s), newline-separated).
    pub fn send_keys(&self, element: &str, text: &str) -> Result<(), String> {
        self.cmd(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .map(|_| ())
    }

    /// Click an element.
    pub fn click(&self, element: &str) -> Result<(), String> {
        self.cmd(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .map(|_| ())
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&self) -> Result<Vec<u8>, String> {
        let v = self.cmd("GET", "/screenshot", None)?;
        decode_base64(v.as_str().ok_or("no screenshot data")?)
    }

    /// Chromium's log of a type (`performance`, `browser`).
    pub fn log(&self, kind: &str) -> Result<Vec<Value>, String> {
        let v = self.cmd("POST", "/se/log", Some(json!({ "type": kind })))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Poll `condition` (a JS expression) until it is truthy or `timeout` passes; returns
    /// the value of `report` (a JS expression) on timeout in the error.
    pub fn wait_for(&self, condition: &str, timeout: Duration, report: &str) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let v = self.eval(&format!("return !!({condition});"), json!([]))?;
            if v.as_bool() == Some(true) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                let r = self
                    .eval(&format!("return {report};"), json!([]))
                    .unwrap_or_default();
                return Err(format!("timed out waiting for {condition}: {r}"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Close the browser.
    pub fn quit(&self) {
        let _ = self.cmd("DELETE", "", None);
    }
}

fn decode_base64(s: &str) -> Result<Vec<u8>, String> {
    let mut table = [255u8; 256];
    for (i, c) in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        .iter()
        .enumerate()
    {
        table[*c as usize] = i as u8;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s.as_bytes() {
        if c == b'=' || c == b'\n' || c == b'\r' {
            continue;
        }
        let v = table[c as usize];
        if v == 255 {
            return Err(format!("bad base64 byte {c}"));
        }
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}
