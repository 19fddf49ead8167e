"""Certificates for the TLS tests, made with the openssl command line.

One private CA signs: a server certificate for localhost / 127.0.0.1 / ::1, a
client certificate, a certificate for another host name, and one that
expired in 2020. EC P-256 keys, so making them all takes a fraction of a
second.
"""

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass

_CA_CONF = """\
[ ca ]
default_ca = test_ca
[ test_ca ]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[ any ]
commonName = supplied
[ ext ]
basicConstraints = CA:FALSE
subjectAltName = @alt
[ alt ]
DNS.1 = localhost
IP.1 = 127.0.0.1
"""


@dataclass
class Certs:
    dir: str
    ca: str             # the CA certificate
    server: str         # cert + key, for localhost/127.0.0.1
    client: str         # cert + key, a client certificate
    other_host: str     # cert + key, for other.example only
    expired: str        # cert + key, localhost, expired in 2020

    def server_context(self, certfile=None, *, require_client_cert=False,
                       version=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile or self.server)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.ca)
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        return ctx

    def client_context(self, *, certfile=None, version=None):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(self.ca)
        if certfile:
            ctx.load_cert_chain(certfile)
        if version is not None:
            ctx.minimum_version = ctx.maximum_version = version
        return ctx


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _leaf(d, name, cn, sans, *, startdate=None, enddate=None):
    """cert + key of `name` signed by the CA, as one PEM file."""
    conf = os.path.join(d, f"{name}.cnf")
    with open(os.path.join(d, "ca.cnf")) as f:
        text = f.read()
    alt = "\n".join(sans)
    with open(conf, "w") as f:
        f.write(text.split("[ alt ]")[0] + "[ alt ]\n" + alt + "\n")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr",
             cwd=d)
    dates = []
    if startdate:
        dates += ["-startdate", startdate, "-enddate", enddate]
    else:
        dates += ["-days", "3650"]
    _openssl("ca", "-batch", "-config", conf, "-extensions", "ext", "-cert", "ca.pem",
             "-keyfile", "ca.key", "-in", f"{name}.csr", "-out", f"{name}.crt", "-notext",
             *dates, cwd=d)
    pem = os.path.join(d, f"{name}.pem")
    with open(pem, "w") as out:
        for part in (f"{name}.crt", f"{name}.key"):
            with open(os.path.join(d, part)) as f:
                out.write(f.read())
    return pem


def make_certs(d):
    if shutil.which("openssl") is None:
        return None
    with open(os.path.join(d, "ca.cnf"), "w") as f:
        f.write(_CA_CONF.format(dir=d))
    open(os.path.join(d, "index.txt"), "w").close()
    with open(os.path.join(d, "serial"), "w") as f:
        f.write("1000\n")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=tonio_loop test CA",
             "-days", "3650", "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    local = ["DNS.1 = localhost", "IP.1 = 127.0.0.1", "IP.2 = ::1"]
    return Certs(
        dir=d,
        ca=os.path.join(d, "ca.pem"),
        server=_leaf(d, "server", "localhost", local),
        client=_leaf(d, "client", "tonio client", ["DNS.1 = client.example"]),
        other_host=_leaf(d, "other", "other.example", ["DNS.1 = other.example"]),
        expired=_leaf(d, "expired", "localhost", local, startdate="20190101000000Z",
                      enddate="20200101000000Z"),
    )
