"""TLS for nine's links: mutually verified contexts, handshakes on gevent sockets, and a
throw-away PKI for tests and `nine tree`.

Both ends of a link show a certificate signed by the site's CA and check the other's:
server_context() requires the client's certificate (CERT_REQUIRED) and client_context()
checks the server's, and by default its host name.  TLS 1.3 only: both ends are nine.

The contexts are gevent.ssl.SSLContext objects: wrap_socket() on a gevent socket gives a
gevent SSLSocket whose handshake, reads and writes wait in the hub, so nothing needs
monkey patching.  accept() (server) and dial() (client) run the handshake under a time
limit and hand back that socket, blocking in the gevent sense (timeout None).  For code
that drives a non-blocking socket with its own hub watchers, after settimeout(0.0):
recv_into raises ssl.SSLWantReadError (or SSLWantWriteError) where a plain socket raises
BlockingIOError, send returns 0 when nothing could be written, and a retried send must
carry the same bytes again (OpenSSL's rule); and decrypted bytes can wait inside the
socket (pending()) with nothing left to read on the descriptor, so a reader that stops
while pending() > 0 hangs.

Where the links use them: nine.server.core.Server(tls=server context) makes accept()'s
handshake on every TCP connection itself (the server floor imports nothing above it),
nine.client.Connection(tls=client context) dials with dial(); a unix socket stays plain
at both ends (it never leaves the host, and its file mode guards it).

A site's certificate set is three files: the CA's certificate and this host's certificate
and key.  `nine serve` and `nine mux` take them as --tls-cert, --tls-key, --tls-ca (one
set to listen and to dial children: nine.assembly), the client verbs the same options
or $NINE_TLS_CERT, $NINE_TLS_KEY, $NINE_TLS_CA.  from_files() makes a context of
them, with errors meant for the user.

make_test_pki(directory, names) makes a CA and one certificate per name (with the name
as common name and subject alternative name, for both server and client use), with the
`cryptography` package when it is installed, else with the `openssl` command.
"""

import datetime
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile

from gevent import ssl as gssl

HANDSHAKE_TIMEOUT = 10.0


# --- contexts --------------------------------------------------------------------------

def from_files(cert, key, ca, server_side):
    """server_context() (server_side) or client_context() of a certificate set named on
    a command line or in a configuration; None when none of the three files is given.
    Only some of them, or a file that cannot be read or does not hold what it should,
    raise ValueError with a message for the user (a link meant to be TLS must not
    quietly go plain)."""
    files = (("certificate", cert), ("key", key), ("CA certificate", ca))
    missing = [what for what, path in files if not path]
    if len(missing) == 3:
        return None
    if missing:
        raise ValueError("TLS needs a certificate, its key and the CA's certificate: "
                         "no %s given" % " and no ".join(missing))
    for what, path in files:
        if not os.access(path, os.R_OK):
            raise ValueError("TLS %s %s: %s" % (what, path, "cannot read it"
                                                 if os.path.exists(path) else "no such file"))
    try:
        if server_side:
            return server_context(cert, key, ca)
        return client_context(cert, key, ca)
    except gssl.SSLError as ex:
        raise ValueError("TLS certificate %s, key %s, CA certificate %s: %s" % (
            cert, key, ca, ex.reason or ex)) from None


def server_context(cert, key, ca):
    """A context for the listening end: presents cert/key, requires a client certificate
    signed by the CA in the file ca."""
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = gssl.TLSVersion.TLSv1_3
    ctx.verify_mode = gssl.CERT_REQUIRED
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    return ctx


def client_context(cert, key, ca, check_hostname=True):
    """A context for the dialling end: presents cert/key (both None: no certificate,
    which a server_context() peer refuses) and requires the server's certificate to be
    signed by the CA in the file ca and, with check_hostname, to name the host dialled
    (dial()'s server_hostname)."""
    ctx = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = gssl.TLSVersion.TLSv1_3
    ctx.check_hostname = check_hostname
    ctx.verify_mode = gssl.CERT_REQUIRED
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=ca)
    return ctx


# --- handshakes ------------------------------------------------------------------------

def accept(sock, context, timeout=HANDSHAKE_TIMEOUT):
    """The server's handshake on an accepted gevent socket; returns the gevent SSLSocket.
    A peer that shows no valid certificate, or does not finish within timeout seconds,
    raises ssl.SSLError (an OSError) and sock is closed."""
    return _handshake(sock, context, timeout, server_side=True)


def dial(sock, context, server_hostname=None, timeout=HANDSHAKE_TIMEOUT):
    """The client's handshake on a connected gevent socket; returns the gevent SSLSocket.
    server_hostname is the name the server's certificate must carry (when the context
    checks host names).  A server the context does not trust raises
    ssl.SSLCertVerificationError; sock is then closed.  Under TLS 1.3 the server judges
    the client's certificate after the client's handshake is over: a refused client
    learns it on its first read (ssl.SSLError or end of file)."""
    return _handshake(sock, context, timeout, server_hostname=server_hostname)


def _handshake(sock, context, timeout, **how):
    if not isinstance(context, gssl.SSLContext):
        raise TypeError("need a gevent.ssl.SSLContext (server_context/client_context), "
                        "not %s: a standard one would block the hub" % type(context).__name__)
    try:
        sock.settimeout(timeout)
        tls = context.wrap_socket(sock, **how)
    except BaseException:
        sock.close()
        raise
    tls.settimeout(None)
    return tls


def peer_names(tls):
    """The names in the verified peer certificate of a TLS socket: its common name, then
    its DNS and IP subject alternative names (no duplicates)."""
    cert = tls.getpeercert() or {}
    names = [v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    names += [v for k, v in cert.get("subjectAltName", ()) if k in ("DNS", "IP Address")]
    return tuple(dict.fromkeys(names))


# --- a test PKI ------------------------------------------------------------------------

def make_test_pki(directory, names, days=3650):
    """Make a CA and a certificate for each name in directory (created 0700 if missing):
    ca.crt and ca.key, then NAME.crt and NAME.key per name; keys are ECDSA P-256, mode
    0600.  Each certificate is for server and client use, with the name as common name
    and subject alternative name (an IP SAN for an address).  Refuses to overwrite a
    file (FileExistsError).  Returns (ca_cert_path, {name: (cert_path, key_path)})."""
    names = list(names)
    ca_name = "nine test CA " + secrets.token_hex(4)    # two test CAs never share a name
    for name in names:
        if not name or "/" in name or name.startswith(".") or name == "ca":
            raise ValueError("%r cannot name a certificate file" % (name,))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    files = ["ca.crt", "ca.key"] + [n + ext for n in names for ext in (".crt", ".key")]
    for f in files:
        if os.path.lexists(os.path.join(directory, f)):
            raise FileExistsError("%s exists: refusing to overwrite it"
                                  % os.path.join(directory, f))
    try:
        pem = _pki_cryptography(ca_name, names, days)
    except ImportError:             # no cryptography package
        pem = _pki_openssl(ca_name, names, days)
    for f in files:
        _write(os.path.join(directory, f), pem[f], 0o600 if f.endswith(".key") else 0o644)
    certs = {n: (os.path.join(directory, n + ".crt"), os.path.join(directory, n + ".key"))
             for n in names}
    return os.path.join(directory, "ca.crt"), certs


def _write(path, data, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _ip(name):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _pki_cryptography(ca_name, names, days):
    """{file name: PEM bytes} made with the cryptography package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def key_pem(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def subject(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(cert_sign):
        return x509.KeyUsage(digital_signature=not cert_sign, content_commitment=False,
                             key_encipherment=False, data_encipherment=False,
                             key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
                             encipher_only=False, decipher_only=False)

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(subject(ca_name)).issuer_name(subject(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(True), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))
    pem = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": key_pem(ca_key)}
    for name in names:
        k = ec.generate_private_key(ec.SECP256R1())
        ip = _ip(name)
        san = x509.IPAddress(ip) if ip is not None else x509.DNSName(name)
        cert = (x509.CertificateBuilder().subject_name(subject(name))
                .issuer_name(ca.subject).public_key(k.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(usage(False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([san]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    ca_ski), critical=False)
                .sign(ca_key, hashes.SHA256()))
        pem[name + ".crt"] = cert.public_bytes(serialization.Encoding.PEM)
        pem[name + ".key"] = key_pem(k)
    return pem


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = %(cn)s
[ca]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = %(san)s
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


def _pki_openssl(ca_name, names, days):
    """{file name: PEM bytes} made with the openssl command (in a private scratch
    directory)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("make_test_pki needs the cryptography package or the openssl "
                           "command")

    def run(*args):
        subprocess.run((openssl,) + args, check=True, capture_output=True)

    def config(cn, san):
        path = os.path.join(tmp, "req.cnf")
        with open(path, "w") as f:
            f.write(_OPENSSL_CONFIG % {"cn": cn, "san": san})
        return path

    def newkey(path):
        run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", path)

    with tempfile.TemporaryDirectory() as tmp:
        ca_crt, ca_key = os.path.join(tmp, "ca.crt"), os.path.join(tmp, "ca.key")
        newkey(ca_key)
        run("req", "-x509", "-new", "-key", ca_key, "-config", config(ca_name, "DNS:ca"),
            "-extensions", "ca", "-days", str(days), "-sha256", "-out", ca_crt)
        for name in names:
            ip = _ip(name)
            cnf = config(name, ("IP:%s" % ip) if ip is not None else "DNS:" + name)
            key, csr = os.path.join(tmp, name + ".key"), os.path.join(tmp, "req.csr")
            newkey(key)
            run("req", "-new", "-key", key, "-config", cnf, "-out", csr)
            run("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                "-set_serial", "0x" + secrets.token_hex(16), "-days", str(days), "-sha256",
                "-extfile", cnf, "-extensions", "leaf", "-out", os.path.join(tmp, name + ".crt"))
        pem = {}
        for f in os.listdir(tmp):
            if f.endswith((".crt", ".key")):
                with open(os.path.join(tmp, f), "rb") as fh:
                    pem[f] = fh.read()
        return pem
