"""Shared fixtures. Integration tests use a real local Ray instance (never a mock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Serve under test runs in the mode `ecomtl serve` and cluster.yaml ship (Ray Serve's
# throughput mode), set before anything imports ray.serve or starts Ray.
from ecomtl.ray_env import serve_fast_path_defaults  # noqa: E402

serve_fast_path_defaults()
# Throughput mode's direct ingress keeps a stopping ingress replica draining for at least
# 30 s so that an external load balancer can deregister it (production keeps that). Tests
# talk to Serve on loopback with no such balancer, and each serve.delete waited out those
# 30 s (measured: 31.1 s against 3.0 s per app deleted).
os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "0")


def pytest_configure(config):
    from ecomtl.config.schema import resolve_data_root

    root = Path(resolve_data_root())
    if not (root / "clothing_reviews").is_dir():
        raise pytest.UsageError(f"real data not found at {root}: put ../shared beside the repo or set ECOMTL_DATA_ROOT")


@pytest.fixture(scope="session")
def data_root() -> str:
    from ecomtl.config.schema import resolve_data_root

    return resolve_data_root()


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session. ``address="local"`` always starts a fresh
    instance, never joining a cluster that another process started with ``ray start``."""
    import ray

    from ecomtl.ray_env import runtime_env

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env=runtime_env(),
                 log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_label_infos() -> dict:
    """Label spaces for the heads of jobs/configs/tiny.yaml: build a model without
    reading the data."""
    return {"rating": {"names": ["1", "2", "3"], "counts": [1, 1, 1]}, "stars": {"mean": 0.0, "std": 1.0},
            "attributes": {"names": ["O", "B-x", "I-x"], "types": ["x"]},
            "match": {"names": ["0", "1"], "counts": [1, 1]}}


@pytest.fixture
def tiny_cfg(tmp_path, data_root):
    """The shipped tiny config, writing under a per-test directory."""
    from ecomtl.config.load import load_config

    return load_config(CONFIGS / "tiny.yaml", [f"output.storage_path={tmp_path / 'runs'}", f"data_root={data_root}"])


@pytest.fixture(scope="session")
def decoder_tokenizer_dir(tmp_path_factory, data_root) -> str:
    """A small byte-level BPE tokenizer trained on real titles, saved like a decoder's
    (an EOS token, *no pad token*): stands in for a Llama/Qwen tokenizer without a hub."""
    import csv

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with open(Path(data_root) / "flipkart_titles" / "train.csv", newline="") as f:
        titles = [row["title"] for _, row in zip(range(3000), csv.DictReader(f))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(titles, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  model_input_names=["input_ids", "attention_mask"])
    assert tok.pad_token is None
    out = tmp_path_factory.mktemp("decoder_tok")
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture
def tiny_decoder_cfg(tmp_path, data_root, decoder_tokenizer_dir):
    """The tiny config on a random Llama with per-task LoRA over a frozen base."""
    from ecomtl.config.load import load_config

    return load_config(CONFIGS / "tiny.yaml", [
        f"output.storage_path={tmp_path / 'runs'}", f"data_root={data_root}",
        "model.backbone=decoder", f"model.pretrained={decoder_tokenizer_dir}",
        "model.tiny={family: llama, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
        "num_key_value_heads: 2, intermediate_size: 64}",
        "model.adapter.kind=lora", "model.adapter.options={r: 4, alpha: 8, dropout: 0.0}",
    ])
