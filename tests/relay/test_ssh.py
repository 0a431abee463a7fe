"""OpenSSH through a 2-hop chain on loopback: a command runs and a file arrives intact."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cluster, free_port, wait_listening

SSHD = "/usr/sbin/sshd"
pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("scp")),
        reason="needs OpenSSH (sshd, ssh, scp)",
    ),
]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An sshd on 127.0.0.1:<free port> with a generated host key and one authorized key."""
    d = tmp_path / "ssh"
    d.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "client"], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", d / "sshd_config"], stderr=subprocess.PIPE)
    try:
        wait_listening("127.0.0.1", port)
        yield port, d / "client"
    finally:
        proc.terminate()
        proc.wait(10)


def test_ssh_and_scp_through_two_hops(
    cluster: Cluster, sshd: tuple[int, Path], tmp_path: Path
) -> None:
    port, client_key = sshd
    cluster.agent("a", "127.0.0.2", "--allow", "127.0.0.1/32")
    cluster.agent("b", "127.0.0.3", "--allow", f"127.0.0.1/32:{port}")
    entry = cluster.entry("a,b", ("127.0.0.1", port))
    opts = [
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", str(client_key),
    ]  # fmt: skip
    out = subprocess.run(
        ["ssh", "-p", str(entry.port), *opts, "root@127.0.0.1", "echo ok; uname -s"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "Linux"]

    src = tmp_path / "blob"
    src.write_bytes(os.urandom(8 << 20))
    dst = tmp_path / "blob.copy"
    started = time.monotonic()
    up = subprocess.run(
        ["scp", "-P", str(entry.port), *opts, str(src), f"root@127.0.0.1:{dst}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 0, up.stderr
    back = tmp_path / "blob.back"
    down = subprocess.run(
        ["scp", "-P", str(entry.port), *opts, f"root@127.0.0.1:{dst}", str(back)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 0, down.stderr
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert hashlib.sha256(dst.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert time.monotonic() - started < 60
