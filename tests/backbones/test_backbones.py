"""Backbone plug-ins: pooling, pad-token policy, tiny random decoders of each family."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ecomtl.backbones import BACKBONES, pool
from ecomtl.backbones.decoder import ensure_pad_token
from ecomtl.data.collate import pad_rows


def test_last_token_pooling_ignores_padding_side():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "last").squeeze(-1).tolist() == [1.0, 7.0]
    assert pool(hidden, left, "last").squeeze(-1).tolist() == [3.0, 7.0]
    assert pool(hidden, right, "mean").squeeze(-1).tolist() == [0.5, 5.5]


def test_decoder_tokenizer_without_pad_gets_eos(decoder_tokenizer_dir):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(decoder_tokenizer_dir)
    assert raw.pad_token is None
    tok = BACKBONES.get("decoder").load_tokenizer(decoder_tokenizer_dir)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "right"
    with pytest.raises(ValueError, match="no pad, eos or unk"):
        raw.eos_token = None
        raw.unk_token = None
        ensure_pad_token(raw)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_tiny_decoder_pools_the_last_real_token(family, decoder_tokenizer_dir):
    kind = BACKBONES.get("decoder")
    tok = kind.load_tokenizer(decoder_tokenizer_dir)
    tiny = kind.Tiny(family=family).model_dump()
    torch.manual_seed(0)
    backbone = kind(kind.random(tiny, len(tok), 0.0), "last").eval()
    short, long = tok("red shoes")["input_ids"], tok("red shoes for men, size nine")["input_ids"]
    batch = pad_rows([short, long], tok.pad_token_id)
    alone = pad_rows([short], tok.pad_token_id)
    with torch.no_grad():
        together = pool(backbone.token_states(batch["input_ids"], batch["attention_mask"]), batch["attention_mask"], "last")
        single = pool(backbone.token_states(alone["input_ids"], alone["attention_mask"]), alone["attention_mask"], "last")
    # a causal model: right padding cannot change the short row's last-token vector
    torch.testing.assert_close(together[0], single[0], rtol=1e-5, atol=1e-5)


def test_plugins_command_lists_every_registry():
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "ecomtl.cli", "plugins", "--json"], cwd=repo, capture_output=True,
                       text=True, env={"PYTHONPATH": str(repo / "platform"), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout)
    assert set(out) == {"backbones", "adapters", "sharing", "heads", "weightings", "samplers"}
    lora = next(x for x in out["adapters"] if x["name"] == "lora")
    assert lora["options"]["r"]["default"] == 16 and lora["description"]
    assert {x["name"] for x in out["backbones"]} == {"encoder", "decoder"}


def test_a_converted_gguf_folder_saves_like_any_model(tmp_path):
    """A dequantised GGUF model saved with its config still marked ``quant_method:
    gguf`` loads, but refuses ``save_pretrained`` (so no bundle could be written from
    it): the converted cache must not keep that mark, and old caches are repaired."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ecomtl.backbones.packaged import drop_quantization_config

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "cache")
    cfg_file = tmp_path / "cache" / "config.json"
    marked = json.loads(cfg_file.read_text()) | {
        "quantization_config": {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}}
    cfg_file.write_text(json.dumps(marked))
    with pytest.raises(ValueError, match="gguf"):
        BACKBONES.get("decoder").pretrained(str(tmp_path / "cache")).save_pretrained(tmp_path / "out0")
    drop_quantization_config(cfg_file)
    assert "quantization_config" not in json.loads(cfg_file.read_text())
    BACKBONES.get("decoder").pretrained(str(tmp_path / "cache")).save_pretrained(tmp_path / "out1")
    assert (tmp_path / "out1" / "model.safetensors").is_file()


@pytest.mark.parametrize("kind_name", ["encoder", "decoder"])
def test_attention_kernels_agree_in_value_and_gradient(kind_name):
    """``model.attention``: eager and sdpa are the same function (only speed differs), with
    padded rows in the batch; the switch is not written into a saved model."""
    from ecomtl.backbones.base import training_attention

    kind = BACKBONES.get(kind_name)
    torch.manual_seed(0)
    backbone = kind(kind.random(kind.Tiny().model_dump(), 100, 0.0), kind.poolings[0]).eval()
    ids = torch.randint(3, 100, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 2:] = 0

    def run(kernel):
        backbone.set_attention(kernel)
        backbone.zero_grad()
        out = pool(backbone.token_states(ids, mask), mask, backbone.pooling)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    (sdpa, g_sdpa), (eager, g_eager) = run("sdpa"), run("eager")
    torch.testing.assert_close(eager, sdpa, rtol=1e-4, atol=1e-5)
    assert len(g_eager) == len(g_sdpa) > 0
    for a, b in zip(g_eager, g_sdpa):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert backbone.config._attn_implementation == "eager"
    assert "attn_implementation" not in backbone.config.to_json_string()
    assert training_attention("auto", on_gpu=False) == "eager"
    assert training_attention("auto", on_gpu=True) == "sdpa"
    assert training_attention("sdpa", on_gpu=False) == "sdpa"
