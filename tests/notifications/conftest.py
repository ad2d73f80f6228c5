from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from tests.helpers import free_port
from tests.notifications.helpers import (
    HOST,
    RecordingHandler,
    SmtpServer,
    StartSmtp,
)


@pytest.fixture
def start_smtp() -> Iterator[StartSmtp]:
    """Start real SMTP servers on loopback (keywords go to aiosmtpd) and stop them afterwards."""
    controllers: list[Controller] = []

    def start(*, port: int | None = None, **smtp_options: Any) -> SmtpServer:
        handler = RecordingHandler()
        port = port or free_port()
        controller = Controller(
            handler,
            hostname=HOST,
            port=port,
            server_hostname="localhost",
            ready_timeout=5.0,
            **smtp_options,
        )
        controller.start()
        controllers.append(controller)
        return SmtpServer(handler=handler, port=port)

    yield start
    for controller in reversed(controllers):
        controller.stop()


@pytest.fixture
def smtp_server(start_smtp: StartSmtp) -> SmtpServer:
    return start_smtp()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Mint a throwaway self-signed certificate for localhost and 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command is needed to mint a test certificate: "
                    "apt-get install -y openssl")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-nodes", "-days", "1",
            "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-keyout", str(key), "-out", str(cert),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
