"""The prebuilt OHIF Viewer (npm `@ohif/app` 3.13, its `dist/`) and Orthanc on one origin.

Serves `dist/` at the site root (its index.html hard-codes PUBLIC_URL "/"), answers unknown
paths such as `/viewer` with index.html (client-side routes), replaces `app-config.js` with one
DICOMweb data source, and proxies `/dicom-web/*` and `/wado*` to Orthanc passing the browser's
Host header through (Orthanc builds bulk-data URLs from it). Only for tests: a hospital serves
OHIF with its own web server.
"""

from __future__ import annotations

import http.client
import mimetypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.environment import ROOT

OHIF_DIST = ROOT / "var" / "ohif" / "package" / "dist"
PROXIED = ("/dicom-web/", "/wado")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}

APP_CONFIG = """window.config = {
  routerBasename: null,
  extensions: [],
  modes: [],
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  showErrorDetails: 'always',
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (ainode tests)',
      name: 'orthanc',
      qidoRoot: '/dicom-web',
      wadoRoot: '/dicom-web',
      wadoUriRoot: '/wado',
      qidoSupportsIncludeField: false,
      imageRendering: 'wadors',
      thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true,
      supportsFuzzyMatching: false,
      supportsWildcard: true,
      omitQuotationForMultipartRequest: true,
      bulkDataURI: { enabled: true },
    },
  }],
};
"""


def _handler(orthanc_port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            if self.path.startswith(PROXIED):
                self._proxy()
            else:
                self._static()

        def do_POST(self) -> None:
            self._proxy()

        def _static(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/app-config.js":
                self._reply(200, APP_CONFIG.encode(), "application/javascript")
                return
            target = (OHIF_DIST / path.lstrip("/")).resolve()
            if not target.is_relative_to(OHIF_DIST.resolve()) or not target.is_file():
                target = OHIF_DIST / "index.html"  # client-side routes (/viewer, ...)
            content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
            if target.suffix == ".wasm":
                content_type = "application/wasm"
            self._reply(200, target.read_bytes(), content_type)

        def _proxy(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=120)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                payload = response.read()
                kept = [(k, v) for k, v in response.getheaders()
                        if k.lower() not in HOP_BY_HOP | {"content-length"}]
                self.send_response(response.status)
                for key, value in kept:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            finally:
                upstream.close()

        def _reply(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


@contextmanager
def ohif_site(orthanc_http_port: int, port: int = 0) -> Iterator[str]:
    """Serve OHIF + Orthanc on one loopback origin; yields its base URL."""
    if not (OHIF_DIST / "index.html").is_file():
        raise FileNotFoundError(f"OHIF is not installed at {OHIF_DIST}: run `make viewer-deps`")
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(orthanc_http_port))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ohif-site", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
