//! `mtpath serve`: the browser explorer and models on 127.0.0.1, with the headers that make the
//! page cross-origin isolated (wasm threads) and keep every request on the page's own origin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Serve the web explorer (the `www/` folder after `bash scripts/build-web.sh`) and models.
///
/// Every response carries Cross-Origin-Opener-Policy: same-origin and
/// Cross-Origin-Embedder-Policy: require-corp (wasm threads need them), and a
/// Content-Security-Policy that allows no request outside this origin.
///
/// Example: mtpath serve www --model export/ --port 8000
#[derive(Parser)]
pub struct Args {
    /// The web app folder (index.html and pkg/).
    #[arg(default_value = "www")]
    dir: PathBuf,
    /// A model to offer the page: a safetensors file or an `mtpath export` folder
    /// (model.safetensors + card.json). Repeatable; the first loads automatically.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Port (0: any free port; the URL is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Address to bind. Keep 127.0.0.1 unless you know why: there is no authentication.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Do not log requests.
    #[arg(long)]
    quiet: bool,
}

/// The headers every response carries.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; \
         img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; connect-src 'self' blob: data:; \
         object-src 'none'; base-uri 'self'; form-action 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
];

/// A model offered under `/models/NAME`.
struct ServedModel {
    name: String,
    file: PathBuf,
    card: Option<serde_json::Value>,
}

struct Site {
    root: PathBuf,
    models: Vec<ServedModel>,
    quiet: bool,
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("tif" | "tiff") => "image/tiff",
        Some("ico") => "image/x-icon",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        Some("csv") => "text/csv; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `url_path` (already without query) as a file under `root`, refusing `..`, absolute parts
/// and hidden names.
pub fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(url_path)?;
    let rel = decoded.trim_start_matches('/');
    let mut out = root.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(p) => {
                if p.to_str()?.starts_with('.') {
                    return None;
                }
                out.push(p)
            }
            Component::CurDir => {}
            _ => return None,
        }
    }
    if out.is_dir() {
        out.push("index.html");
    }
    Some(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in SECURITY_HEADERS {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

fn models_index(site: &Site) -> Vec<u8> {
    let list: Vec<serde_json::Value> = site
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "url": format!("models/{}", m.name),
                "bytes": std::fs::metadata(&m.file).map(|x| x.len()).unwrap_or(0),
                "card": m.card,
            })
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({ "models": list })).unwrap_or_default()
}

fn handle(site: &Site, mut stream: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers (bodies are not accepted).
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target.split(['?', '#']).next().unwrap_or("/");
    if !site.quiet {
        eprintln!("{method} {target}");
    }
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET and HEAD\n",
            false,
        );
    }
    if path == "/models/index.json" {
        return respond(
            &mut stream,
            "200 OK",
            "application/json",
            &models_index(site),
            head_only,
        );
    }
    let file = if let Some(name) = path.strip_prefix("/models/") {
        site.models
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.file.clone())
    } else {
        resolve(&site.root, path)
    };
    match file.and_then(|f| {
        let mut bytes = Vec::new();
        std::fs::File::open(&f)
            .and_then(|mut h| h.read_to_end(&mut bytes))
            .ok()
            .map(|_| (f, bytes))
    }) {
        Some((f, bytes)) => respond(&mut stream, "200 OK", content_type(&f), &bytes, head_only),
        None => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"not found\n",
            head_only,
        ),
    }
}

fn served_model(path: &Path) -> Result<ServedModel> {
    let (file, card_path) = if path.is_dir() {
        (path.join("model.safetensors"), Some(path.join("card.json")))
    } else {
        (path.to_path_buf(), None)
    };
    if !file.is_file() {
        bail!(
            "model {}: no such file; give a .safetensors file or an `mtpath export` folder",
            file.display()
        );
    }
    let card = card_path
        .filter(|c| c.is_file())
        .map(|c| -> Result<serde_json::Value> {
            let text =
                std::fs::read_to_string(&c).with_context(|| format!("reading {}", c.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", c.display()))
        })
        .transpose()?;
    let stem = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .trim_end_matches(".safetensors");
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(ServedModel {
        name: format!("{clean}.safetensors"),
        file,
        card,
    })
}

pub fn run(args: Args) -> Result<()> {
    if !args.dir.join("index.html").is_file() {
        bail!(
            "{}: no index.html; serve the repository's www/ folder",
            args.dir.display()
        );
    }
    if !args.dir.join("pkg").join("mtpath_web.js").is_file() {
        bail!(
            "{}: no pkg/mtpath_web.js; build the WebAssembly bindings first: bash scripts/build-web.sh",
            args.dir.display()
        );
    }
    let mut models = Vec::new();
    // With no --model, the released trunk (when present) is offered and loads by default.
    let released: Vec<PathBuf> = if args.models.is_empty() {
        crate::released::find(crate::released::DEFAULT)
            .into_iter()
            .collect()
    } else {
        Vec::new()
    };
    for m in args.models.iter().chain(&released) {
        let served = served_model(m)?;
        if models.iter().any(|x: &ServedModel| x.name == served.name) {
            bail!(
                "two models are named {}; rename one of the files",
                served.name
            );
        }
        models.push(served);
    }
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .with_context(|| format!("binding {}:{}; try another --port", args.host, args.port))?;
    let addr = listener.local_addr()?;
    println!("serving http://{addr}/ (Ctrl-C stops)");
    std::io::stdout().flush().ok();
    let site = Arc::new(Site {
        root: args.dir.clone(),
        models,
        quiet: args.quiet,
    });
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = Arc::clone(&site);
        std::thread::spawn(move || {
            if let Err(e) = handle(&site, stream) {
                if !site.quiet {
                    eprintln!("connection: {e}");
                }
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_refuses_escapes_and_hidden_files() {
        let root = Path::new("/srv/www");
        assert_eq!(
            resolve(root, "/pkg/a.js"),
            Some(PathBuf::from("/srv/www/pkg/a.js"))
        );
        assert_eq!(
            resolve(root, "/a%20b.js"),
            Some(PathBuf::from("/srv/www/a b.js"))
        );
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/%2e%2e/etc/passwd"), None);
        assert_eq!(resolve(root, "/.git/config"), None);
        assert_eq!(resolve(root, "/%zz"), None);
    }

    #[test]
    fn wasm_and_modules_get_the_right_types() {
        assert_eq!(content_type(Path::new("x.wasm")), "application/wasm");
        assert!(content_type(Path::new("x.mjs")).starts_with("text/javascript"));
    }
}
