"""cluster.yaml is checked by Ray's own cluster-launcher code: the defaults of its cloud
provider are merged in exactly as ``ray up`` does (``prepare_config``), then the result
is validated against the autoscaler's JSON schema (``validate_config``). A typo in a key
fails here, in CI, rather than on the first ``ray up``.

It is also closed by default, checked on the config as ``ray up`` will use it: every
``ray start`` runs under ``RAY_AUTH_MODE=token``, every node gets the token file at Ray's
own default token path, and the dashboard (job API, ``serve deploy``) binds loopback only.
Each check is also shown to catch the open variant it guards against."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validator(raw):
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    gpu = config["available_node_types"]["gpu_8x_h100"]
    assert gpu["resources"]["GPU"] == 8 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert config["head_node_type"] == "head"
    assert config["available_node_types"]["head"]["resources"].get("GPU", 0) == 0


def test_head_serves_dashboard_for_job_submission(raw):
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-port=8265" in start and "--head" in start


def test_setup_installs_the_project_like_the_readme(raw):
    readme = (REPO / "README.md").read_text()
    setup = "\n".join(raw["setup_commands"])
    assert 'pip install -q -e ".[test]"' in setup and 'pip install -e ".[test]"' in readme
    assert "torch==2.13.0" in setup
    assert raw["docker"]["image"].startswith("rayproject/ray:2.60.0")


@pytest.mark.parametrize("mutate, error", [
    (lambda c: c.update(max_worker=3), jsonschema.ValidationError),  # typo of max_workers
    (lambda c: c["available_node_types"]["gpu_8x_h100"].update(min_worker=1), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="missing"), ValueError),
])
def test_a_typo_fails_validation(raw, mutate, error):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(error):
        validate_config(prepare_config(broken))


# -- closed by default ---------------------------------------------------------------------
IMAGE_HOME = "/home/ray"  # the home of rayproject/ray images' user, where Ray looks for the token


def ray_starts(config: dict) -> list[tuple[str, str]]:
    """(node kind, shell command) for every command that runs ``ray start``."""
    return [(kind, cmd) for kind in ("head", "worker") for cmd in config[f"{kind}_start_ray_commands"]
            if re.search(r"\bray start\b", cmd)]


def unauthenticated_starts(config: dict) -> list[str]:
    """``ray start`` commands not preceded, in the same shell, by RAY_AUTH_MODE=token."""
    bad = []
    for kind, cmd in ray_starts(config):
        before = cmd[:re.search(r"\bray start\b", cmd).start()]
        if not re.search(r"(^|[;&\s])(export\s+)?RAY_AUTH_MODE=token\b", before):
            bad.append(f"{kind}: {cmd}")
    return bad


def open_dashboards(config: dict) -> list[str]:
    """Head ``ray start`` commands whose dashboard would listen beyond loopback (Ray's own
    default, without --dashboard-host, is loopback too, but say it explicitly)."""
    bad = []
    for kind, cmd in ray_starts(config):
        if kind != "head":
            continue
        words = shlex.split(cmd.replace(";", " ; "))
        hosts = [w.split("=", 1)[1] for w in words if w.startswith("--dashboard-host=")]
        hosts += [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--dashboard-host"]
        if hosts != ["127.0.0.1"]:
            bad.append(cmd)
    return bad


def token_mount(config: dict, monkeypatch) -> tuple[str, str]:
    """(path on the nodes, local source) of the token file mount, the node path being
    what Ray itself computes as its default token path for the image's user."""
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    monkeypatch.setenv("HOME", IMAGE_HOME)
    remote = str(_get_default_token_path())
    return remote, config["file_mounts"].get(remote)


def test_every_ray_start_has_token_auth(raw):
    config = prepare_config(copy.deepcopy(raw))
    assert {kind for kind, _ in ray_starts(config)} == {"head", "worker"}
    assert unauthenticated_starts(config) == []


def test_every_ray_start_runs_serve_in_throughput_mode(raw):
    """Serve's processes read the mode when they start, so every node's ``ray start``
    carries it (the same mode ``ecomtl serve`` starts a local Ray in)."""
    from ecomtl.ray_env import SERVE_FAST_PATH

    starts = ray_starts(prepare_config(copy.deepcopy(raw)))
    for key, value in SERVE_FAST_PATH.items():
        assert all(re.search(rf"\bexport {key}={value};", cmd) for _, cmd in starts), key


def test_every_node_gets_the_token_the_launcher_generated(raw, monkeypatch):
    """``file_mounts`` go to the head with ``ray up`` and from the head to every worker
    the autoscaler launches: one token on all nodes, the one ``ray get-auth-token
    --generate`` wrote on the launching machine."""
    config = prepare_config(copy.deepcopy(raw))
    remote, local = token_mount(config, monkeypatch)
    assert remote == f"{IMAGE_HOME}/.ray/auth_token" and local == "~/.ray/auth_token"
    assert raw["docker"]["image"].startswith("rayproject/ray:")  # whose user's home is IMAGE_HOME
    # shells on the nodes (ray exec, `serve deploy` run on the head, job drivers) use token auth too
    assert "export RAY_AUTH_MODE=token" in "\n".join(raw["setup_commands"])


def test_dashboard_and_job_api_on_loopback_only(raw):
    config = prepare_config(copy.deepcopy(raw))
    assert open_dashboards(config) == []
    everything = yaml.safe_dump(raw)
    assert "0.0.0.0" not in everything


@pytest.mark.parametrize("open_it, check", [
    (lambda c: c["head_start_ray_commands"].__setitem__(1, c["head_start_ray_commands"][1].replace(
        "export RAY_AUTH_MODE=token;", "")), unauthenticated_starts),
    (lambda c: c["worker_start_ray_commands"].__setitem__(1, c["worker_start_ray_commands"][1].replace(
        "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")), unauthenticated_starts),
    (lambda c: c["head_start_ray_commands"].__setitem__(1, c["head_start_ray_commands"][1].replace(
        "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")), open_dashboards),
    (lambda c: c["head_start_ray_commands"].__setitem__(1, c["head_start_ray_commands"][1].replace(
        "--dashboard-host=127.0.0.1", "--dashboard-host 0.0.0.0")), open_dashboards),
])
def test_the_checks_catch_an_open_cluster(raw, open_it, check):
    opened = copy.deepcopy(raw)
    open_it(opened)
    assert opened != raw  # the mutation found its text
    assert check(prepare_config(opened)) != []


def test_readme_cluster_steps_match(raw):
    """The README's cluster section walks the same closed path: a token first, the
    dashboard through the tunnel, the token in the client's environment."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### A GPU cluster in the cloud"):]
    section = section[:section.index("\n## ")]
    steps = section[section.index("```bash"):]
    order = ["ray get-auth-token --generate", "ray up cluster.yaml", "ray dashboard cluster.yaml",
             "RAY_AUTH_MODE=token", "ray job submit --address http://127.0.0.1:8265"]
    at = [steps.find(s) for s in order]
    assert -1 not in at and at == sorted(at), dict(zip(order, at))
    assert "0.0.0.0" not in section
