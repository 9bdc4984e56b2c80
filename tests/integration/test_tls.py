"""TLS: llm-es on a nats-server that requires TLS, with a CA and certificate made here.

With `nats.tls_ca` it connects and works; a plaintext client is refused by the server;
a CA that did not sign the server's certificate gives the clear "TLS: certificate verify
failed" message, in seconds.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import pathlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from llm_es.app import Plugin
from llm_es.config import NatsConfig
from llm_es.embedded import EmbeddedNatsServer
from llm_es.store.connection import connect
from projections.runner import build_view_runner
from tests.support.cli import console_script, run_script
from tests.support.fake_llm import FakeLLMServer
from tests.support.harness import command, make_config

pytestmark = pytest.mark.timeout(120)

VALID_FOR = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pki:
    ca: pathlib.Path
    other_ca: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate_authority(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    """A CA, a server certificate it signed for 127.0.0.1, and an unrelated second CA."""
    ca_key, ca = _certificate_authority("llm-es test CA")
    _, other = _certificate_authority("someone else's CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = Pki(
        ca=tmp_path / "ca.pem",
        other_ca=tmp_path / "other-ca.pem",
        cert=tmp_path / "server.pem",
        key=tmp_path / "server-key.pem",
    )
    files.ca.write_bytes(_pem(ca))
    files.other_ca.write_bytes(_pem(other))
    files.cert.write_bytes(_pem(server))
    files.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


@pytest.fixture
async def tls_server(tmp_path: pathlib.Path, pki: Pki) -> AsyncIterator[EmbeddedNatsServer]:
    arguments = ("--tls", "--tlscert", str(pki.cert), "--tlskey", str(pki.key))
    server = EmbeddedNatsServer(tmp_path / "nats", port=0, extra_arguments=arguments)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def tls_url(server: EmbeddedNatsServer) -> str:
    return f"tls://127.0.0.1:{server.port}"


def write_config(path: pathlib.Path, url: str, ca: pathlib.Path) -> str:
    path.write_bytes(
        orjson.dumps({"nats": {"url": url, "tls_ca": str(ca)}, "http": {"listen": None}})
    )
    return str(path)


async def test_llm_es_works_over_tls_with_the_configured_ca(
    tls_server: EmbeddedNatsServer, pki: Pki, fake_llm: FakeLLMServer, tmp_path: pathlib.Path
) -> None:
    """The plugin and a client connect with nats.tls_ca; a chat turn goes through, and
    `llm-es status` over the same TLS settings reads the log."""
    settings = NatsConfig(url=tls_url(tls_server), tls_ca=str(pki.ca))
    plugin_nc = await connect(settings, None, "llm-es")
    plugin = Plugin(
        make_config(fake_llm.base_url), plugin_nc, view_runner_factory=build_view_runner
    )
    await plugin.start()
    client = await connect(settings, None, "bot", keep_reconnecting=False)
    try:
        assert client.connected_url is not None
        assert client.connected_url.scheme == "tls"
        assert (await command(client, "Hello over TLS"))["success"] is True
        config = write_config(tmp_path / "config.json", tls_url(tls_server), pki.ca)
        status = await run_script(console_script("llm-es"), "status", "--json", "--config", config)
        assert status.returncode == 0, status.stderr
        assert status.json()["stream"]["messages"] >= 3
    finally:
        await client.close()
        await plugin.stop()
        await plugin_nc.drain()


async def test_a_plaintext_client_is_refused(tls_server: EmbeddedNatsServer) -> None:
    """A client that speaks NATS without TLS is cut off: no PONG, the connection closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", tls_server.port)
    try:
        async with asyncio.timeout(10):
            info = await reader.readline()
            assert info.startswith(b"INFO ")
            assert orjson.loads(info[len(b"INFO ") :])["tls_required"] is True
            writer.write(b'CONNECT {"verbose":false}\r\nPING\r\n')
            await writer.drain()
            answer = await reader.read()  # to the end: the server closes the connection
    finally:
        writer.close()
    assert b"PONG" not in answer
    assert answer == b"" or answer.startswith(b"\x15"), answer  # nothing, or a TLS alert


async def test_a_wrong_ca_says_certificate_verify_failed(
    tls_server: EmbeddedNatsServer, pki: Pki, tmp_path: pathlib.Path
) -> None:
    """A CA that did not sign the server's certificate: one clear line naming the TLS
    failure and the setting to check, in seconds, for llm-es and llm-replay alike."""
    config = write_config(tmp_path / "wrong.json", tls_url(tls_server), pki.other_ca)
    for script, args in (("llm-es", ("status",)), ("llm-replay", ("verify",))):
        result = await run_script(console_script(script), *args, "--config", config, within=15)
        assert result.returncode != 0
        assert "TLS: certificate verify failed (" in result.stderr, result.stderr
        assert "check nats.tls_ca" in result.stderr
        assert "Traceback" not in result.stderr
