//! What the server answers: the web app's files, the models and their index, behind the
//! checks every request passes (Host, method, time) and with the security headers on every
//! response.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use tower_http::services::fs::ServeDir;
use tower_http::services::ServeFile;
use tower_http::timeout::TimeoutLayer;

use super::confine::Confined;
use super::host;
use super::listen::LocalAddr;
use super::models::{index_json, ServedModel};
use super::SECURITY_HEADERS;

/// What is served.
pub struct Site {
    /// The web app folder.
    pub root: Confined,
    /// The models, in the order of the index (the page loads the first).
    pub models: Vec<ServedModel>,
    /// `Host` values accepted besides the loopback names, in [`host::host_form`].
    pub extra_hosts: Vec<String>,
    /// Log one line per request on stderr unless set.
    pub quiet: bool,
    /// A response must start within this (else 408).
    pub timeout: Duration,
}

struct Served {
    dir: ServeDir<tower_http::services::fs::DefaultServeDirFallback, Confined>,
    models: HashMap<String, ServeFile>,
    index: Vec<ServedModel>,
    extra_hosts: Vec<String>,
}

/// The whole application: routing and the layers around it.
pub fn router(site: Site) -> Router {
    let dir = ServeDir::with_backend(site.root.root(), site.root.clone())
        .precompressed_br()
        .precompressed_gzip();
    let models = site
        .models
        .iter()
        .map(|m| {
            let file = ServeFile::new_with_mime(&m.file, &mime::APPLICATION_OCTET_STREAM)
                .precompressed_br()
                .precompressed_gzip();
            (m.name.clone(), file)
        })
        .collect();
    let served = Arc::new(Served {
        dir,
        models,
        index: site.models,
        extra_hosts: site.extra_hosts,
    });
    // Layers run outside-in from the last added: headers, log, Host, method, timeout.
    let app = Router::new()
        .fallback(dispatch)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            site.timeout,
        ))
        .layer(middleware::from_fn(get_and_head_only))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&served),
            check_host,
        ))
        .with_state(served);
    let app = if site.quiet {
        app
    } else {
        app.layer(middleware::from_fn(log))
    };
    app.layer(middleware::map_response(security_headers))
}

/// The `Content-Type` of a file served from the web app folder, by extension.
pub fn content_type(path: &Path) -> &'static str {
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

fn text(status: StatusCode, body: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// `/models/index.json`, `/models/NAME`, else a file of the web app.
async fn dispatch(State(served): State<Arc<Served>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    if path == "/models/index.json" {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            index_json(&served.index),
        )
            .into_response();
    }
    if let Some(name) = path.strip_prefix("/models/") {
        return match served.models.get(name) {
            Some(file) => match file.clone().oneshot(req).await {
                Ok(res) => res.map(Body::new),
                Err(never) => match never {},
            },
            None => not_found(),
        };
    }
    let mut res = match served.dir.clone().oneshot(req).await {
        Ok(res) => res.map(Body::new),
        Err(never) => match never {},
    };
    match res.status() {
        StatusCode::NOT_FOUND => not_found(),
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
            let file = if path.ends_with('/') {
                format!("{path}index.html")
            } else {
                path
            };
            let ctype = HeaderValue::from_static(content_type(Path::new(&file)));
            res.headers_mut().insert(header::CONTENT_TYPE, ctype);
            res
        }
        _ => res,
    }
}

/// 405 with `Allow: GET, HEAD` for any other method: nothing is uploaded or changed.
async fn get_and_head_only(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return next.run(req).await;
    }
    let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    res
}

/// 421 unless `Host` (and the authority of an absolute-form target, which HTTP/1.1 puts
/// before `Host`) names this server (see [`host::allowed`]); 400 without a `Host`.
async fn check_host(State(served): State<Arc<Served>>, req: Request, next: Next) -> Response {
    let local = req.extensions().get::<LocalAddr>().map(|a| a.0.ip());
    let Some(value) = req.headers().get(header::HOST) else {
        return text(StatusCode::BAD_REQUEST, "a Host header is required\n");
    };
    let mut names = vec![String::from_utf8_lossy(value.as_bytes()).into_owned()];
    names.extend(req.uri().authority().map(|a| a.host().to_string()));
    match names
        .iter()
        .find(|name| !host::allowed(name, &served.extra_hosts, local))
    {
        None => next.run(req).await,
        Some(refused) => misdirected(refused, &served.extra_hosts),
    }
}

/// 421 Misdirected Request, saying which names are served and why others are not.
fn misdirected(host: &str, extra_hosts: &[String]) -> Response {
    let mut names: Vec<&str> = host::LOOPBACK_NAMES.to_vec();
    for extra in extra_hosts {
        if !names.contains(&extra.as_str()) {
            names.push(extra);
        }
    }
    text(
        StatusCode::MISDIRECTED_REQUEST,
        &format!(
            "this server answers to {} (any port), not to Host {host:?}: pages reached \
             through other names are refused against DNS rebinding; open the URL the server \
             printed, or name this address with --host\n",
            names.join(", ")
        ),
    )
}

/// One line per request on stderr: method, target, status.
async fn log(req: Request, next: Next) -> Response {
    let line = format!("{} {}", req.method(), req.uri());
    let res = next.run(req).await;
    eprintln!("{line} {}", res.status().as_u16());
    res
}

/// [`SECURITY_HEADERS`] on every response the application gives.
async fn security_headers(mut res: Response) -> Response {
    let headers = res.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wasm_and_modules_get_the_right_types() {
        assert_eq!(content_type(Path::new("x.wasm")), "application/wasm");
        assert!(content_type(Path::new("x.mjs")).starts_with("text/javascript"));
        assert!(content_type(Path::new("/index.html")).starts_with("text/html"));
    }
}
