"""A real multi-process Ray cluster on this machine, started the way a user starts one
(``ray start --head`` plus ``ray start --address`` nodes), isolated from everyone else's.

Why not ``ray stop``: it kills every Ray process of the user on the machine, including
other people's clusters. Each node here is a ``ray start --block`` child process; it is
stopped by signalling that process tree, by pid. Every port is picked free and passed
explicitly, and the temp dir is our own, so a plain ``ray.init()`` elsewhere never joins.

Auth: Ray 2.60 turns token authentication on for local clusters. We keep it on and use
a fresh per-cluster token (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``) passed to the
nodes and to every ``ray job`` command, which is what a user does with
``ray get-auth-token``; no test disables auth.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Optional

import psutil

RAY_BIN = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parents[2]


def free_ports(n: int, avoid: Collection[int] = ()) -> list[int]:
    """``n`` distinct free ports outside ``avoid``: every socket stays bound until all are
    picked, since the OS may hand the same ephemeral port to two calls in a row (ray start
    then refused it: "port ... is used by other components")."""
    held, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for s in held:
            s.close()


def free_port_range(width: int = 40) -> tuple[int, int]:
    """``width`` consecutive free ports (for a node's worker processes)."""
    for _ in range(200):
        start = 20000 + secrets.randbelow(20000)
        ok = True
        for p in range(start, start + width):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return start, start + width - 1
    raise RuntimeError("no free port range")


@dataclass
class Node:
    proc: subprocess.Popen
    log: Path
    tree: list[int] = field(default_factory=list)  # pids seen under the node, for cleanup

    def pids(self) -> list[int]:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            kids = []
        self.tree = sorted(set(self.tree) | {self.proc.pid} | {k.pid for k in kids})
        return self.tree

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop the whole node at once (raylet, workers, agents), as a lost machine does."""
        pids = self.pids()
        for pid in reversed(pids):  # children first, so --block does not clean up gracefully
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


class LocalCluster:
    def __init__(self, head_cpus: int = 2, root: Optional[str] = None):
        self.token = secrets.token_hex(32)
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = root or f"/tmp/ecomtl-rc-{uuid.uuid4().hex[:6]}"
        # the head's fixed ports, picked together so that no two are the same
        self.port, self.dashboard_port, self.client_port = free_ports(3)
        self.nodes: list[Node] = []
        self.head_cpus = head_cpus

    # -- environment for anything that talks to this cluster ---------------------------
    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
            env.pop(k, None)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   TOKENIZERS_PARALLELISM="false")
        env.update(extra)
        return env

    # -- nodes -----------------------------------------------------------------------
    def _start(self, args: list[str], name: str, wait_for: str, temp_dir: Optional[str] = None) -> Node:
        lo, hi = free_port_range()
        ports = free_ports(6, avoid={*range(lo, hi + 1), self.port, self.dashboard_port, self.client_port})
        cmd = [RAY_BIN, "start", "--block", "--node-ip-address", "127.0.0.1", "--disable-usage-stats",
               "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
               "--min-worker-port", str(lo), "--max-worker-port", str(hi),
               "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
               "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
               "--object-store-memory", str(300 * 1024**2), "--temp-dir", temp_dir or self.temp_dir, *args]
        log = Path(f"{self.temp_dir}-{name}.log")
        proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env(),
                                start_new_session=True)
        node = Node(proc, log)
        self.nodes.append(node)
        deadline = time.time() + 120
        while wait_for not in log.read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        node.pids()
        return node

    def start_head(self) -> Node:
        return self._start(["--head", "--port", str(self.port), "--num-cpus", str(self.head_cpus),
                            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                            "--dashboard-port", str(self.dashboard_port),
                            "--ray-client-server-port", str(self.client_port)], "head", "block forever")

    def add_node(self, num_cpus: int = 1, resources: str = "{}") -> Node:
        """Its own temp dir, as on a separate machine: nodes sharing one would share the
        unpacked job packages, and one node's runtime-env cleanup would delete another's."""
        name = f"node{len(self.nodes)}"
        return self._start(["--address", self.gcs_address, "--num-cpus", str(num_cpus), "--resources", resources],
                           name, "block forever", temp_dir=f"{self.temp_dir}-{name}")

    def wait_for_jobs_api(self, timeout: float = 120) -> None:
        """The dashboard's job module starts a little after the head's GCS."""
        deadline = time.time() + timeout
        while True:
            r = self.ray("job", "list", check=False, timeout=60)
            if r.returncode == 0:
                return
            if time.time() > deadline:
                raise RuntimeError(f"job API not ready: {r.stdout[-2000:]}")
            time.sleep(2)

    def ray(self, *args: str, check: bool = True, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this cluster (stdout and stderr together)."""
        cmd = [RAY_BIN, *args]
        if args and args[0] == "job":
            cmd[3:3] = ["--address", self.dashboard_url]  # after `ray job <verb>`
        r = subprocess.run(cmd, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-4000:]}")
        return r

    def stop(self) -> None:
        for node in reversed(self.nodes):
            pids = node.pids()
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)  # --block shuts its node down on exit
                try:
                    node.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.nodes.clear()
        for d in [self.temp_dir, *Path(self.temp_dir).parent.glob(Path(self.temp_dir).name + "-node*")]:
            if Path(d).is_dir():
                shutil.rmtree(d, ignore_errors=True)


# -- the jobs the tests submit -----------------------------------------------------
def runtime_env_json(data_root: str) -> str:
    """What a user passes with ``--runtime-env-json``: the uploaded working dir has no
    ../shared next to it, so the data root travels as an environment variable."""
    return json.dumps({"env_vars": {"ECOMTL_DATA_ROOT": data_root}})


# The training job the job-submission and recovery tests both run (same seed), so the
# uninterrupted run doubles as the reference for the interrupted one.
# Long enough (tens of seconds of training on the tiny model) that a failure injected after
# the first committed checkpoint still lands in the middle of the run.
RECOVERY_STEPS, RECOVERY_EVAL = 120, 20
RECOVERY_OVERRIDES = [f"training.steps={RECOVERY_STEPS}", f"training.eval_every={RECOVERY_EVAL}",
                      "training.log_every=1", "training.keep_checkpoints=4", "distributed.num_workers=2",
                      "distributed.zero_stage=2", "distributed.max_failures=1"]


def train_command(runs: Path, name: str, extra: list[str] = ()) -> list[str]:
    return ["python", "jobs/train.py", "jobs/configs/tiny.yaml", f"output.storage_path={runs}",
            *RECOVERY_OVERRIDES, *extra, "--resume", name]


def committed_checkpoint_step(run_dir: Path) -> Optional[int]:
    """The step of the latest checkpoint Ray Train has *registered*, read from the
    controller's ``checkpoint_manager_snapshot.json``. A ``step_N`` folder on disk is not
    enough: a checkpoint counts only once every rank has reported it, so a worker killed
    while the folder is being written makes Ray Train restart from the one before."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    latest = snap.get("latest_checkpoint_result") or {}
    name = latest.get("checkpoint_dir_name") or ""
    return int(name.rsplit("_", 1)[1]) if name.startswith("step_") else None


def wait_for_committed_checkpoint(run_dir: Path, job: "StreamedJob", timeout: float = 600) -> int:
    deadline = time.time() + timeout
    while (step := committed_checkpoint_step(run_dir)) is None:
        assert time.time() < deadline and job.proc.poll() is None, job.text[-3000:]
        time.sleep(0.05)
    return step


def bundle_metrics(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "bundle" / "metrics.json").read_text())


class StreamedJob:
    """``ray job submit`` (which streams the job's logs and exits with its outcome) in the
    background, each output line stamped with the time it arrived."""

    def __init__(self, cluster: LocalCluster, args: list[str], cwd: Path):
        import threading

        self.t0 = time.time()
        self.lines: list[tuple[float, str]] = []
        cmd = [RAY_BIN, "job", "submit", "--address", cluster.dashboard_url, *args]
        self.proc = subprocess.Popen(cmd, env=cluster.env(), cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.time() - self.t0, line.rstrip("\n")))

    def wait_for(self, pattern: str, timeout: float = 600) -> tuple[float, "re.Match"]:
        import re

        deadline = time.time() + timeout
        seen = 0
        while time.time() < deadline:
            for t, line in self.lines[seen:]:
                m = re.search(pattern, line)
                if m:
                    return t, m
            seen = len(self.lines)
            if self.proc.poll() is not None and seen == len(self.lines):
                self._reader.join(5)
                if seen == len(self.lines):
                    break
            time.sleep(0.2)
        raise AssertionError(f"never saw {pattern!r}; last lines:\n" + "\n".join(l for _, l in self.lines[-40:]))

    def wait(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(10)
        return rc

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)
