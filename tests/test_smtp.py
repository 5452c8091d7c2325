"""The SMTP transport against a real mail server on a loopback port (aiosmtpd): STARTTLS,
implicit TLS and authentication, with the server's certificate verified.

The server's certificate is issued to 127.0.0.1 by a throwaway authority that the test
trusts through ``SSL_CERT_FILE``, as an operator trusts a private mail server's authority.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from idp.mail import MailError, Smtp

USER, PASSWORD = "idp@mail.test", "s3cret pass"


class Recorder:
    """Keeps each message with whether it came over TLS and who authenticated."""

    def __init__(self):
        self.received: list[dict] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        with self.lock:
            self.received.append({
                "tls": server.transport.get_extra_info("ssl_object") is not None,
                "login": session.auth_data.login.decode() if session.authenticated else None,
                "to": envelope.rcpt_tos,
            })
        return "250 OK"


def authenticate(server, session, envelope, mechanism, auth_data):
    return AuthResult(success=(auth_data.login.decode(), auth_data.password.decode())
                      == (USER, PASSWORD), handled=False, auth_data=auth_data)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """An authority (its PEM is what clients trust) and a server certificate for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def issue(subject, issuer, public_key, signer, *, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test mail authority")])
    authority = issue(authority_name, authority_name, authority_key.public_key(), authority_key,
                      ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]),
                   authority_name, server_key.public_key(), authority_key, ca=False)
    (folder / "authority.pem").write_bytes(authority.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return folder


@pytest.fixture
def server_context(certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate / "server.pem", certificate / "server.key")
    return context


@pytest.fixture
def trusted(certificate, monkeypatch):
    """Trust the test authority the way an operator would: ``SSL_CERT_FILE``."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate / "authority.pem"))


def serve(handler, port, **options):
    controller = Controller(handler, hostname="127.0.0.1", port=port,
                            authenticator=authenticate, **options)
    controller.start()
    return controller


def message() -> EmailMessage:
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = "idp@mail.test", "ada@example.com", "Hello"
    mail.set_content("A test message.")
    return mail


@pytest.fixture
def starttls_server(server_context, smtp_port):
    """Offers STARTTLS, requires it before anything, and offers AUTH only over TLS."""
    handler = Recorder()
    controller = serve(handler, smtp_port, tls_context=server_context, require_starttls=True,
                       auth_require_tls=True, auth_required=True)
    yield handler
    controller.stop()


def test_starttls_then_authentication_delivers(trusted, starttls_server, smtp_port):
    Smtp.from_url(f"smtp://idp%40mail.test:s3cret%20pass@127.0.0.1:{smtp_port}", 5).send(message())
    assert starttls_server.received == [{"tls": True, "login": USER, "to": ["ada@example.com"]}]


def test_starttls_required_also_delivers(trusted, starttls_server, smtp_port):
    url = f"smtp://idp%40mail.test:s3cret%20pass@127.0.0.1:{smtp_port}?starttls=required"
    Smtp.from_url(url, 5).send(message())
    assert [m["tls"] for m in starttls_server.received] == [True]


def test_a_wrong_password_is_a_delivery_failure(trusted, starttls_server, smtp_port):
    with pytest.raises(MailError, match="SMTPAuthenticationError"):
        Smtp.from_url(f"smtp://idp%40mail.test:wrong@127.0.0.1:{smtp_port}", 5).send(message())
    assert starttls_server.received == []


def test_a_certificate_nobody_vouches_for_is_refused_before_the_password_is_sent(
        starttls_server, smtp_port, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-authority.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    with pytest.raises(MailError, match="SSLCertVerificationError"):
        Smtp.from_url(f"smtp://idp%40mail.test:s3cret%20pass@127.0.0.1:{smtp_port}", 5
                      ).send(message())
    assert starttls_server.received == []


def test_starttls_required_refuses_a_server_without_it(smtp_port):
    handler = Recorder()
    controller = Controller(handler, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    try:
        with pytest.raises(MailError, match="does not offer STARTTLS"):
            Smtp.from_url(f"smtp://127.0.0.1:{smtp_port}?starttls=required", 5).send(message())
    finally:
        controller.stop()
    assert handler.received == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # it is TLS
def test_a_password_is_never_sent_to_a_server_without_starttls(smtp_port):
    handler = Recorder()
    controller = serve(handler, smtp_port, auth_require_tls=False)
    try:
        with pytest.raises(MailError, match="does not offer STARTTLS"):
            Smtp.from_url(f"smtp://idp%40mail.test:s3cret%20pass@127.0.0.1:{smtp_port}", 5
                          ).send(message())
    finally:
        controller.stop()
    assert handler.received == []


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # it is TLS
def test_implicit_tls_with_authentication_delivers(trusted, server_context, smtp_port):
    handler = Recorder()
    controller = serve(handler, smtp_port, ssl_context=server_context, auth_require_tls=False,
                       auth_required=True)
    try:
        Smtp.from_url(f"smtps://idp%40mail.test:s3cret%20pass@127.0.0.1:{smtp_port}", 5
                      ).send(message())
    finally:
        controller.stop()
    assert handler.received == [{"tls": True, "login": USER, "to": ["ada@example.com"]}]


def test_a_server_that_is_not_there_is_a_delivery_failure(smtp_port):
    with pytest.raises(MailError, match="ConnectionRefusedError"):
        Smtp.from_url(f"smtp://127.0.0.1:{smtp_port}", 5).send(message())
