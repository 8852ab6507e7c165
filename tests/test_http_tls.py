"""TLS through the standard ssl module, with a self-signed certificate made by the openssl CLI."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.test_http_server import running_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_https_request_with_a_self_signed_certificate(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    async with running_server(ssl_context=server_context) as server:
        assert server.url.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(base_url=server.url, verify=client_context) as client:
            first = await client.get("/hello")
            second = await client.post("/echo", content=b"over tls")
        async with httpx.AsyncClient(base_url=server.url, verify=False) as plain_http:
            with pytest.raises(httpx.HTTPError):
                await plain_http.get(server.url.replace("https://", "http://") + "/hello")
    assert first.status_code == 200 and first.json()["hello"] == "world"
    assert second.content == b"over tls"
