"""A throwaway Redis Cluster whose nodes serve clients over TLS only, for `rediss+cluster://`.

`make_certificates` has the `openssl` command line make a certificate authority of its own and a
server certificate for 127.0.0.1 that it signs, so nothing beyond the standard library is needed.
`tls_cluster` starts `redis-server` nodes with `--port 0` (no plain-text listener at all) and a
`--tls-port`, with TLS on the cluster bus and for replication too (`tls-cluster`,
`tls-replication`): a node then announces its TLS port, so CLUSTER SLOTS and the `MOVED`/`ASK`
redirections send clients to TLS ports. It joins the nodes with `redis_cluster.create_cluster`,
whose commands go over TLS inside `redis_cluster.over_tls`. Clients need no certificate of their
own (`tls-auth-clients no`), but must trust the authority (`Certificates.ca`).
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis_cluster
import services

__all__ = ["Certificates", "TlsCluster", "client_context", "make_certificates", "tls_cluster"]

CERTIFICATE_DAYS = 2
# Extensions Python's strict verification (VERIFY_X509_STRICT, on by default from 3.13) accepts.
OPENSSL_CONFIG = """\
[req]
distinguished_name = name
prompt = no
[name]
CN = retrysafe throwaway test CA
[authority]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
# P-256 keys: generated at once, where RSA keys take a noticeable moment.
NEW_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


@dataclass(frozen=True)
class Certificates:
    """The files of a throwaway authority and of the server certificate it signed (PEM)."""

    ca: Path
    certificate: Path
    key: Path


@dataclass(frozen=True)
class TlsCluster:
    """A running TLS-only cluster: `masters[i]` is followed by `replicas[i]`.

    `url` is `rediss+cluster://` with the masters as seeds; `pids` maps each port to its process.
    """

    url: str
    masters: list[int]
    replicas: list[int]
    pids: dict[int, int]
    certificates: Certificates


def make_certificates(directory: Path) -> Certificates:
    """Make a new authority and a certificate for 127.0.0.1 it signed, in `directory`.

    Raises RuntimeError when there is no `openssl` binary or it refuses a step.
    """
    openssl = shutil.which("openssl")
    if not openssl:
        raise RuntimeError("no local 'openssl' binary")
    config = directory / "openssl.cnf"
    config.write_text(OPENSSL_CONFIG)
    files = Certificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    ca_key, request = directory / "ca.key", directory / "server.csr"
    days = str(CERTIFICATE_DAYS)
    authority = ["req", "-x509", "-config", config, "-extensions", "authority", *NEW_KEY]
    server = ["req", "-new", "-config", config, "-subj", "/CN=127.0.0.1", *NEW_KEY]
    signing = ["x509", "-req", "-CA", files.ca, "-CAkey", ca_key, "-set_serial", "2"]
    extensions = ["-extfile", config, "-extensions", "server"]
    steps = [
        [*authority, "-keyout", ca_key, "-out", files.ca, "-days", days],
        [*server, "-keyout", files.key, "-out", request],
        [*signing, *extensions, "-in", request, "-out", files.certificate, "-days", days],
    ]
    for step in steps:
        done = subprocess.run(
            [openssl, *map(str, step)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"openssl {step[0]} failed: {done.stderr.strip()}")
    return files


def client_context(ca: Path) -> ssl.SSLContext:
    """A client's TLS context that trusts `ca` alone and checks the server's name (127.0.0.1)."""
    return ssl.create_default_context(cafile=str(ca))


def start_tls_node(
    binary: str, port: int, workdir: Path, certificates: Certificates
) -> subprocess.Popen[bytes]:
    """Start one empty cluster node serving TLS only on `port`, in a directory of its own."""
    directory = workdir / str(port)
    directory.mkdir()
    options = {
        "port": "0",  # no plain-text listener: clients and administration use TLS
        "tls-port": str(port),
        "bind": "127.0.0.1",
        "tls-cert-file": str(certificates.certificate),
        "tls-key-file": str(certificates.key),
        "tls-ca-cert-file": str(certificates.ca),
        "tls-auth-clients": "no",
        # The bus and replication over TLS too; the node announces its TLS port.
        "tls-cluster": "yes",
        "tls-replication": "yes",
        "dir": str(directory),
        "logfile": str(directory / "redis.log"),
        "cluster-enabled": "yes",
        "cluster-config-file": "nodes.conf",
        "cluster-node-timeout": str(services.CLUSTER_NODE_TIMEOUT_MS),
        "cluster-replica-validity-factor": "0",
        "repl-diskless-sync-delay": "0",
        "save": "",
        "appendonly": "no",
    }
    arguments = [part for name, value in options.items() for part in (f"--{name}", value)]
    return subprocess.Popen([binary, *arguments], stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def tls_cluster(workdir: Path, *, masters: int = 3) -> Iterator[TlsCluster]:
    """Start a TLS-only cluster of `masters` masters, each with one replica, in `workdir`.

    Every node is stopped when the block ends. Raises RuntimeError when `redis-server` or
    `openssl` is missing, and `redis_cluster.ClusterError` when the cluster does not form.
    """
    binary = shutil.which("redis-server")
    if not binary:
        raise RuntimeError("no local 'redis-server' binary")
    certificates = make_certificates(workdir)
    ports = services.cluster_ports(2 * masters)  # each bus port (port + 10000) free too
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            processes.append(start_tls_node(binary, port, workdir, certificates))
        for port, process in zip(ports, processes, strict=True):
            services.wait_for_port(port, process, f"Redis Cluster TLS node {port}")
        with redis_cluster.over_tls(client_context(certificates.ca)):
            redis_cluster.create_cluster(
                ports[:masters], ports[masters:], timeout=services.CLUSTER_START_TIMEOUT
            )
        seeds = ",".join(f"127.0.0.1:{port}" for port in ports[:masters])
        yield TlsCluster(
            url=f"rediss+cluster://{seeds}/",
            masters=ports[:masters],
            replicas=ports[masters:],
            pids={port: process.pid for port, process in zip(ports, processes, strict=True)},
            certificates=certificates,
        )
    finally:
        services.stop_all(processes)
