"""``ecomtl serve``: argument errors end with a message and exit 2, before Ray starts;
the real command fits the machine and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ecomtl.cli import build_parser, main

PLATFORM = Path(__file__).resolve().parents[2] / "platform"


def test_serve_is_a_command():
    args = build_parser().parse_args(["serve", "/some/bundle", "--port", "8123"])
    assert (args.bundle, args.port, args.layout, args.host) == ("/some/bundle", 8123, "shared", "127.0.0.1")


def test_serve_refuses_a_directory_that_is_no_bundle(tmp_path, capsys):
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a complete bundle" in capsys.readouterr().err


def test_serve_option_cpus_is_parsed():
    assert build_parser().parse_args(["serve", "/b", "--cpus", "1.5"]).cpus == 1.5


@pytest.mark.integration
def test_serve_fits_this_machine_and_stops_on_sigterm(tiny_bundle, tmp_path, port):
    """The real command in its own process (and its own local Ray): sized to the CPUs it
    finds, up and answering, then SIGTERM: a clean exit with status 0."""
    env = {**os.environ, "PYTHONPATH": str(PLATFORM) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RAY_ADDRESS": ""}
    proc = subprocess.Popen([sys.executable, "-m", "ecomtl.cli", "serve", tiny_bundle, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
    try:
        deadline, up = time.monotonic() + 180, False
        while time.monotonic() < deadline and proc.poll() is None and not up:
            try:
                up = requests.post(f"http://127.0.0.1:{port}/v1/tasks/rating", json={"inputs": "ok"},
                                   timeout=30).status_code == 200
            except requests.RequestException:  # not listening yet, or still starting
                time.sleep(1)
        assert up, f"not up (exit {proc.poll()})"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:]
    assert f"sized for {os.cpu_count():g} CPUs" in out, out[-3000:]
    assert "stopping" in out
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
