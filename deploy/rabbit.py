"""RabbitMQ nodes of our own: one node or a cluster, on loopback, data in a temp folder.

`make cluster BROKERS=3` and the broker failover tests start their nodes
through here, so both run the same thing. It runs Debian's rabbitmq-server
with its own node names, AMQP and distribution ports, data, logs, config and
Erlang cookie (shared by the nodes of one cluster); the system node
(rabbit@localhost on 5672) is never touched.

    with RabbitCluster(3) as cluster:
        cluster.urls        # one amqp:// URL per node
        cluster.nodes[0].kill()      # SIGKILL, as a crash would
        cluster.nodes[0].start()     # same name, port and data: it rejoins
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

# Not /usr/sbin's wrappers: run as root, they switch to the rabbitmq user,
# which cannot read our temp folder, and they hide the node's pid.
SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
BOOT_SECONDS = 60
START_SECONDS = 30  # what other processes (servers, nginx, nx-27017) get


def available() -> bool:
    return os.access(SERVER, os.X_OK) and os.access(CTL, os.X_OK)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique_name(prefix: str) -> str:
    """A node name no other run on this machine uses: nodes share the local epmd."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, process: subprocess.Popen, what: str,
                  log: Path | Callable[[], str] | None = None,
                  seconds: float = START_SECONDS) -> None:
    """Until the process accepts connections on port; RuntimeError with the
    tail of `log` (a file, or a function giving the text) when it exits first
    or takes longer than `seconds`."""
    deadline = time.monotonic() + seconds
    while not port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            if callable(log):
                detail = log()
            else:
                detail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not start on port {port}\n{detail}")
        time.sleep(0.1)


class RabbitNode:
    """One rabbitmq-server in the foreground; start(), kill() or stop(), start() again."""

    def __init__(self, name: str, home: Path, peers: list[str] | None = None):
        self.name = f"{name}@localhost"
        self.home = home  # holds the cookie, shared with the cluster's other nodes
        self.dir = home / name
        self.port = free_port()
        self.dist_port = free_port()
        self.peers = peers or []  # node names to join at first boot
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.home),  # the CLI and the node read .erlang.cookie here
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            # exec the VM in place of the script, so our pid is the node's.
            "RUNNING_UNDER_SYSTEMD": "true",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        })
        return env

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = ["loopback_users.guest = true", "log.console = false",
                 "log.file.level = warning"]
        if self.peers:
            lines += ["cluster_formation.peer_discovery_backend = classic_config"]
            lines += [f"cluster_formation.classic_config.nodes.{i} = {peer}"
                      for i, peer in enumerate(self.peers, 1)]
        (self.dir / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.dir / "advanced.config").write_text("[].\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    def launch(self) -> RabbitNode:
        """Start the VM without waiting for it (see wait_started)."""
        self.write_config()
        log = open(self.dir / "stdout.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen([SERVER], env=self.env(), stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # a terminal's Ctrl-C is ours
        log.close()
        return self

    def wait_started(self, seconds: float = BOOT_SECONDS) -> None:
        """Until the node accepts AMQP connections (its last boot step)."""
        wait_for_port(self.port, self.process, f"RabbitMQ node {self.name}", self.log, seconds)

    def start(self) -> RabbitNode:
        self.launch().wait_started()
        return self

    def log(self) -> str:
        texts = [path.read_text(errors="replace") for path in
                 [self.dir / "stdout.log", *sorted((self.dir / "log").glob("*.log"))]
                 if path.exists()]
        return "\n".join(texts)[-3000:]

    def ctl(self, *args: str, timeout: float = 60) -> str:
        result = subprocess.run([CTL, "-q", "-n", self.name, *args], env=self.env(),
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: "
                               f"{result.stderr or result.stdout}")
        return result.stdout

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash or a lost machine would."""
        if self.running:
            self.process.kill()
            self.process.wait()

    def stop(self, seconds: float = 30) -> None:
        if self.running:
            self.process.send_signal(signal.SIGTERM)  # the VM stops the node cleanly
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                self.kill()


class RabbitCluster:
    """`size` clustered nodes under one temp folder; stop() removes everything."""

    def __init__(self, size: int = 3, prefix: str = "chat"):
        self.home = Path(tempfile.mkdtemp(prefix=f"{prefix}-rabbit-"))
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(20))
        cookie.chmod(0o400)
        name = unique_name(prefix)
        first = f"{name}-1@localhost"
        self.nodes = [RabbitNode(f"{name}-{i}", self.home, [first] if i > 1 else None)
                      for i in range(1, size + 1)]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self) -> RabbitCluster:
        try:
            # The first node alone, then the others at once: each joins it at
            # first boot (classic config peer discovery), no CLI round trips.
            self.nodes[0].start()
            for node in self.nodes[1:]:
                node.launch()
            for node in self.nodes[1:]:
                node.wait_started()
            self.check_clustered()
        except BaseException:
            self.stop()
            raise
        return self

    def check_clustered(self) -> None:
        status = json.loads(self.nodes[0].ctl("cluster_status", "--formatter", "json"))
        running = set(status.get("running_nodes", []))
        missing = {node.name for node in self.nodes} - running
        if missing:
            raise RuntimeError(f"RabbitMQ nodes {sorted(missing)} did not join the cluster")

    def stop(self) -> None:
        for node in self.nodes:
            if node.running:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
