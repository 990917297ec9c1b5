"""Hostile download servers (issue 23.8): a broken chunked body, an endless body, a trickle and
silence. The downloader gives up with a DownloadError within its limits and leaves no ``.part-*``
file. The server is a real one on the loopback interface, in a thread; each of its bodies ends
after a while, so that a downloader without limits completes (and the test fails) instead of
hanging."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dyhead_serve.checkpoint import DownloadError, download
from dyhead_serve.checkpoint.downloader import MAX_BYTES_VARIABLE, max_download_bytes

WEIGHTS = b"w" * 3000


class _Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked bodies need it

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the downloader gave up
            getattr(self, "_" + self.path.strip("/").replace("-", "_"))()

    def _head(self, **headers: str) -> None:
        self.send_response(200)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()

    def _ok(self) -> None:
        self._head(Content_Length=str(len(WEIGHTS)))
        self.wfile.write(WEIGHTS)

    def _broken_chunked(self) -> None:
        """One whole chunk, then a chunk that promises 4096 bytes and brings 10 before the close."""
        self._head(Transfer_Encoding="chunked")
        self.wfile.write(b"10\r\n" + b"x" * 16 + b"\r\n" + b"1000\r\n" + b"y" * 10)
        self.wfile.flush()
        self.close_connection = True

    def _endless(self) -> None:
        """No length, 64 MiB of body (endless as far as a 1 MiB limit is concerned)."""
        self._head(Connection="close")
        block = b"z" * 65536
        for _ in range(1024):
            self.wfile.write(block)
        self.close_connection = True

    def _announces_too_much(self) -> None:
        self._head(Content_Length=str(2**40))
        self.wfile.write(b"a" * 1000)
        self.close_connection = True

    def _trickle(self) -> None:
        """A byte every 0.2 s, 40 bytes in all (8 s)."""
        self._head(Content_Length="40")
        for _ in range(40):
            self.wfile.write(b"t")
            self.wfile.flush()
            time.sleep(0.2)

    def _silent(self) -> None:
        """Headers and one byte, then 5 s of silence, then the rest."""
        self._head(Content_Length="2")
        self.wfile.write(b"s")
        self.wfile.flush()
        time.sleep(5)
        self.wfile.write(b"s")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _fails(url: str, target: Path, match: str, **limits: float) -> float:
    """Download, expect a DownloadError matching ``match`` and no file left; the seconds it took."""
    start = time.monotonic()
    with pytest.raises(DownloadError, match=match) as caught:
        download(url, target, progress=False, **limits)  # type: ignore[arg-type]
    elapsed = time.monotonic() - start
    assert "by hand" in str(caught.value)
    assert sorted(p.name for p in target.parent.iterdir()) == [], "a .part-* file was left behind"
    return elapsed


def test_a_well_behaved_server_still_works(server: str, tmp_path: Path) -> None:
    target = tmp_path / "w.pth"
    assert download(f"{server}/ok", target, progress=False, expected_size=len(WEIGHTS)) == target
    assert target.read_bytes() == WEIGHTS
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def test_broken_chunked_body(server: str, tmp_path: Path) -> None:
    _fails(f"{server}/broken-chunked", tmp_path / "w.pth", r"broke off \(IncompleteRead")


def test_endless_body_stops_at_the_size_limit(server: str, tmp_path: Path) -> None:
    _fails(f"{server}/endless", tmp_path / "w.pth", "exceeds 1048576 bytes", max_bytes=2**20)


def test_endless_body_stops_at_the_expected_size(server: str, tmp_path: Path) -> None:
    _fails(f"{server}/endless", tmp_path / "w.pth", "exceeds 3000 bytes", expected_size=3000)


def test_announced_size_over_the_limit_is_refused_before_reading(server: str, tmp_path: Path) -> None:
    _fails(f"{server}/announces-too-much", tmp_path / "w.pth", "announces 1099511627776 bytes, more than")


def test_a_trickle_meets_the_total_deadline(server: str, tmp_path: Path) -> None:
    elapsed = _fails(f"{server}/trickle", tmp_path / "w.pth", "takes longer than 1 s", total_timeout=1.0)
    assert elapsed < 6  # the trickle itself lasts 8 s


def test_silence_meets_the_stall_deadline(server: str, tmp_path: Path) -> None:
    elapsed = _fails(f"{server}/silent", tmp_path / "w.pth", "no data for too long", timeout=0.5)
    assert elapsed < 4  # the silence lasts 5 s


def test_the_size_cap_is_configurable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert max_download_bytes() == 4 * 2**30
    monkeypatch.setenv(MAX_BYTES_VARIABLE, "12345")
    assert max_download_bytes() == 12345
    monkeypatch.setenv(MAX_BYTES_VARIABLE, "lots")
    with pytest.raises(DownloadError, match=f"{MAX_BYTES_VARIABLE}='lots': expected a positive number"):
        max_download_bytes()
