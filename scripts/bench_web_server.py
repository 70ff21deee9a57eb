"""Static server for the browser benchmark (scripts/bench-web.sh), standard library only.

Serves, under fixed URL prefixes:

* `/www/`    the repository's www/ (the page www/bench/, our bindings in www/pkg/);
* `/models/` target/bench-web/ (models, inputs, the bindings built without +simd128 in pkg-nosimd/);
* `/ort/`    .tools/node_modules/onnxruntime-web/dist/;
* `/data/`   the real tasks (MTPATH_DATA, default ../shared/data), read in place.

Every response carries `Cross-Origin-Opener-Policy: same-origin` and
`Cross-Origin-Embedder-Policy: require-corp` (cross-origin isolation, which onnxruntime-web's
threads need for SharedArrayBuffer) and `Cache-Control: no-store`; .wasm is served as
application/wasm and .mjs/.js as text/javascript. Binds 127.0.0.1 on a free port.

    python3 scripts/bench_web_server.py     # serve until interrupted; prints the page URL
"""
import http.server
import os
import pathlib
import posixpath
import sys
import threading
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[1]
MOUNTS = {
    "/www/": ROOT / "www",
    "/models/": ROOT / "target" / "bench-web",
    "/ort/": ROOT / ".tools" / "node_modules" / "onnxruntime-web" / "dist",
    "/data/": pathlib.Path(os.environ.get("MTPATH_DATA", ROOT.parent / "shared" / "data")),
}


class Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {
        **http.server.SimpleHTTPRequestHandler.extensions_map,
        ".wasm": "application/wasm",
        ".mjs": "text/javascript",
        ".js": "text/javascript",
        ".json": "application/json",
        ".onnx": "application/octet-stream",
        ".safetensors": "application/octet-stream",
        ".bin": "application/octet-stream",
        ".tif": "image/tiff",
        ".tiff": "image/tiff",
    }

    def translate_path(self, path):
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        for prefix, base in MOUNTS.items():
            if path.startswith(prefix):
                rest = posixpath.normpath(path[len(prefix):]).lstrip("/")
                if rest.startswith(".."):
                    break
                return str(base / rest) if rest not in ("", ".") else str(base) + "/"
        return str(ROOT / "nonexistent")  # 404 for everything outside the mounts

    def end_headers(self):
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, fmt, *args):
        if os.environ.get("BENCH_WEB_LOG"):
            super().log_message(fmt, *args)


def start():
    """Start serving in a daemon thread; returns (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


if __name__ == "__main__":
    server, base = start()
    print(f"{base}/www/bench/index.html", file=sys.stderr)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.shutdown()
