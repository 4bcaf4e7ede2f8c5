"""A writer process killed (SIGKILL, no cleanup runs) in the middle of writing a bundle
leaves the previous complete bundle in place and loadable; the half-written copy is a
hidden temporary directory that is never taken for a bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ecomtl.data.prepare import prepare_data
from ecomtl.model.bundle import BundleError, check_bundle, copy_bundle, load_bundle, save_bundle
from ecomtl.model.build import build_model, load_tokenizer

PLATFORM = Path(__file__).resolve().parents[2] / "platform"

# Copy a bundle over ``dst`` file by file, slowly, announcing each file once written.
SLOW_COPY = textwrap.dedent("""
    import shutil, sys, time
    from ecomtl.model import bundle

    real_copy = shutil.copy2
    def slow_copy(src, dst, **kw):
        out = real_copy(src, dst, **kw)
        print("wrote", dst, flush=True)
        time.sleep(0.3)
        return out
    real_copytree = shutil.copytree
    def slow_copytree(src, dst, *args, **kw):
        if not args:  # the top call (from copy_bundle); recursive calls pass theirs on
            kw.setdefault("copy_function", slow_copy)
        return real_copytree(src, dst, *args, **kw)
    shutil.copytree = slow_copytree
    bundle.copy_bundle(sys.argv[1], sys.argv[2], metrics={"aggregate": 0.9})
    print("done", flush=True)
""")


@pytest.fixture
def two_bundles(tiny_cfg, tmp_path):
    tok = load_tokenizer(tiny_cfg.model)
    data = prepare_data(tiny_cfg, tok, splits=("validation",))
    torch.manual_seed(0)
    model = build_model(tiny_cfg, data.label_infos, tok).eval()
    old = save_bundle(tmp_path / "bundle", model, tok, tiny_cfg, data.label_infos, data.max_lengths, {"aggregate": 0.1})
    new = save_bundle(tmp_path / "candidate", model, tok, tiny_cfg, data.label_infos, data.max_lengths, {})
    return old, new


def test_writer_killed_mid_copy_keeps_previous_bundle(two_bundles):
    old, new = two_bundles
    env = dict(os.environ, PYTHONPATH=str(PLATFORM))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_COPY, str(new), str(old)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    written, output = [], []
    for line in proc.stdout:
        output.append(line)
        if line.startswith("wrote"):
            written.append(line)
        if len(written) == 3:  # a few files in, far from done
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(output)[-3000:]

    # The previous bundle is untouched and loads.
    assert load_bundle(old).metrics == {"aggregate": 0.1}
    # What the killed writer left is a hidden temporary directory, refused as a bundle.
    leftovers = [p for p in old.parent.iterdir() if p.name.startswith(".bundle.tmp-")]
    assert len(leftovers) == 1
    with pytest.raises(BundleError):
        check_bundle(leftovers[0])
    # Writing again succeeds and replaces the bundle as a whole.
    copy_bundle(new, old, metrics={"aggregate": 0.9})
    assert json.loads((old / "metrics.json").read_text()) == {"aggregate": 0.9}


def test_crash_between_the_two_renames_is_recovered(two_bundles):
    """Replacing a directory takes two renames (old aside, new in). A crash between
    them leaves ``.bundle.old-*`` and no bundle; the next write puts it back first."""
    old, new = two_bundles
    aside = old.parent / ".bundle.old-deadbeef"
    os.replace(old, aside)
    with pytest.raises(RuntimeError):
        from ecomtl.model.bundle import atomic_directory

        with atomic_directory(old):
            raise RuntimeError("crash before the new bundle is complete")
    assert load_bundle(old).metrics == {"aggregate": 0.1} and not aside.exists()
