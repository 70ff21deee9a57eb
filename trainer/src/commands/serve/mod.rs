//! `mtpath serve`: the browser explorer and models on 127.0.0.1, with the headers that make the
//! page cross-origin isolated (wasm threads) and keep every request on the page's own origin.
//!
//! hyper serves HTTP/1 with bounded request heads and timeouts ([`listen`]); axum and
//! tower-http route and stream the files ([`app`]), confined to the folder ([`confine`]);
//! requests for other host names are refused ([`host`]).

mod app;
mod confine;
mod host;
mod listen;
mod models;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Serve the web explorer (the `www/` folder after `bash scripts/build-web.sh`) and models.
///
/// Every response carries Cross-Origin-Opener-Policy: same-origin and
/// Cross-Origin-Embedder-Policy: require-corp (wasm threads need them), and a
/// Content-Security-Policy that allows no request outside this origin. Only requests whose
/// Host is localhost, 127.0.0.1, [::1] or the --host address are answered (DNS rebinding);
/// files are streamed, with Range, ETag / Last-Modified and precompressed NAME.br / NAME.gz
/// variants when present; request heads are limited to 64 KiB and 64 headers, idle
/// connections closed after 30 s, and at most 64 connections served at once.
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
    /// Seconds a connection may move no byte (and a request head may take) before it is closed.
    #[arg(long, default_value_t = 30, hide = true, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,
    /// Connections served at once; later ones wait until one closes.
    #[arg(long, default_value_t = 64, hide = true, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_connections: u64,
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

/// Checks the folder and models, binds, prints the URL and serves until the process ends.
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
    let models = models::collect(&args.models)?;
    let root = confine::Confined::new(&args.dir)
        .with_context(|| format!("resolving {}", args.dir.display()))?;
    let limits = listen::Limits {
        max_connections: usize::try_from(args.max_connections).unwrap_or(64),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
    };
    let site = app::Site {
        root,
        models,
        extra_hosts: vec![host::host_form(&args.host)],
        quiet: args.quiet,
        timeout: limits.idle_timeout,
    };
    // A small runtime: one thread serves every connection; file reads run on a few blocking
    // threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(8)
        .build()
        .context("starting the server's runtime")?;
    runtime.block_on(async {
        let std_listener = std::net::TcpListener::bind((args.host.as_str(), args.port))
            .with_context(|| format!("binding {}:{}; try another --port", args.host, args.port))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let addr = listener.local_addr()?;
        println!("serving http://{addr}/ (Ctrl-C stops)");
        std::io::stdout().flush().ok();
        listen::serve(listener, app::router(site), limits, args.quiet).await;
        Ok(())
    })
}
