"""`make cluster`: N server processes behind nginx on RabbitMQ and one MongoDB.

    python -m deploy.cluster [--servers 2] [--port 8080] [--first-port 8001] [--brokers 3]

With --brokers N it starts a RabbitMQ cluster of N nodes of its own
(deploy/rabbit.py: own node names and ports, data in a temp folder) and gives
every server process all of them; else it uses CHAT_BROKER_URL or the local
RabbitMQ on 5672.

Uses CHAT_MONGO_URL when set, else the MongoDB wire server nx-27017 on
--mongo-port (started under data/cluster-mongo unless one answers there).
The secret is CHAT_SECRET, else the one `make run` keeps in data/secret.
nginx runs as a foreground child with the site of deploy/nginx.conf and its
own pid, log and temp paths in a temporary folder, never as the system
service. Ctrl-C stops all of it.

The tests use `Nginx` from here, so they run the same nginx.conf.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chat.embedded import stored_secret, wire_server_command
from deploy.rabbit import RabbitCluster, port_open, wait_for_port

__all__ = ["port_open", "wait_for_port"]  # the tests and the bench import them from here

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx.conf"


def site_config(listen_port: int, upstream_ports: list[int], access_log: Path,
                error_log: Path) -> str:
    """deploy/nginx.conf listening on loopback:listen_port, for these server ports."""
    text = SITE.read_text()
    servers = "".join(f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;\n"
                      for port in upstream_ports)
    text, found = re.subn(r"(upstream chat_servers \{\n)(?:.*\n)*?(    keepalive)",
                          lambda m: m.group(1) + servers + m.group(2), text)
    assert found == 1, "deploy/nginx.conf: upstream chat_servers block not found"
    text, found = re.subn(r"^    listen 80;$", f"    listen 127.0.0.1:{listen_port};", text,
                          flags=re.MULTILINE)
    assert found == 1, "deploy/nginx.conf: 'listen 80;' not found"
    text, found = re.subn(r"access_log \S+ chat_no_query;", f"access_log {access_log} chat_no_query;",
                          text)
    assert found == 1, "deploy/nginx.conf: access_log not found"
    text, found = re.subn(r"error_log \S+ crit;", f"error_log {error_log} crit;", text)
    assert found == 1, "deploy/nginx.conf: error_log not found"
    return text


class Nginx:
    """nginx in the foreground with its own prefix folder; start() then stop()."""

    def __init__(self, listen_port: int, upstream_ports: list[int]):
        self.port = listen_port
        self.upstream_ports = upstream_ports
        self.dir = Path(tempfile.mkdtemp(prefix="chat-nginx-"))
        # Workers run as an unprivileged user when nginx starts as root: let them in.
        self.dir.chmod(0o755)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def write_config(self) -> Path:
        (self.dir / "site.conf").write_text(
            site_config(self.port, self.upstream_ports, self.access_log, self.error_log))
        temp = "\n".join(f"    {kind}_temp_path {self.dir / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = self.dir / "nginx.conf"
        conf.write_text(f"""daemon off;
worker_processes 1;
pid {self.dir / "nginx.pid"};
error_log {self.error_log} warn;
events {{ worker_connections 4096; }}
http {{
{temp}
    include {self.dir / "site.conf"};
}}
""")
        return conf

    def start(self) -> Nginx:
        program = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
        if program is None:
            raise RuntimeError("nginx is not installed: `make nginx` installs Debian's package")
        conf = self.write_config()
        self.process = subprocess.Popen(
            [program, "-p", str(self.dir), "-c", str(conf), "-e", str(self.error_log)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process, "nginx", self.error_log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def secret() -> str:
    return os.environ.get("CHAT_SECRET") or stored_secret(ROOT / "data")


def start_mongo(port: int) -> subprocess.Popen:
    folder = ROOT / "data" / "cluster-mongo"
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(wire_server_command(port, folder), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, process, "nx-27017", folder / "nx.log")
    return process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chat server processes behind nginx.")
    parser.add_argument("--servers", type=int, default=2, help="server processes (default 2)")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port (default 8080)")
    parser.add_argument("--first-port", type=int, default=8001,
                        help="the first server's port; the others follow (default 8001)")
    parser.add_argument("--brokers", type=int, default=0,
                        help="start a RabbitMQ cluster of this many nodes of its own "
                             "(default 0: the local RabbitMQ or CHAT_BROKER_URL)")
    parser.add_argument("--mongo-port", type=int, default=27018,
                        help="nx-27017's port when CHAT_MONGO_URL is unset (default 27018)")
    args = parser.parse_args(argv)

    children: list[subprocess.Popen] = []
    nginx: Nginx | None = None
    brokers: RabbitCluster | None = None
    # Ctrl-C reaches every child of the terminal; a TERM from elsewhere should too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        mongo_url = os.environ.get("CHAT_MONGO_URL")
        if not mongo_url:
            if not port_open(args.mongo_port):  # else one is running there already: use it
                children.append(start_mongo(args.mongo_port))
            mongo_url = f"mongodb://127.0.0.1:{args.mongo_port}/chat"
        env = {**os.environ, "CHAT_MONGO_URL": mongo_url, "CHAT_SECRET": secret(),
               "CHAT_BEHIND_PROXY": "true"}
        if args.brokers:
            print(f"starting {args.brokers} RabbitMQ nodes", flush=True)
            brokers = RabbitCluster(args.brokers, prefix="chat-cluster").start()
            env["CHAT_BROKER_URL"] = ",".join(brokers.urls)
            for node in brokers.nodes:
                print(f"  RabbitMQ node {node.name} on port {node.port}, pid {node.process.pid}",
                      flush=True)
        ports = [args.first_port + i for i in range(args.servers)]
        for port in ports:
            process = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(port)],
                                       cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
            children.append(process)
            wait_for_port(port, process, f"server on port {port}")
        nginx = Nginx(args.port, ports).start()
        print(f"\n  {len(ports)} chat servers (ports {ports[0]}-{ports[-1]}) behind nginx: "
              f"open {nginx.url}/\n  (Ctrl-C stops all of it)\n", flush=True)
        while all(child.poll() is None for child in children) and nginx.process.poll() is None:
            time.sleep(0.5)
        print("cluster: a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except RuntimeError as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        if nginx is not None:
            nginx.stop()
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if brokers is not None:
            brokers.stop()


if __name__ == "__main__":
    sys.exit(main())
