"""Decoder LLMs (``AutoModelForCausalLM``: Llama, Qwen2, Mistral, SmolLM, ...). The LM
head is kept (generation heads need it) but classification never pays for it: token
states come from the inner transformer. Last-token pooling by default; a tokenizer
without a pad token gets its EOS (or UNK) as pad."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecomtl.backbones.base import BACKBONES, Backbone, check_complete


class TinyDecoder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    family: Literal["llama", "qwen2", "mistral"] = "llama"
    hidden_size: int = Field(32, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(64, ge=8)

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_attention_heads or self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("hidden_size must divide by num_attention_heads, and that by num_key_value_heads")
        return self


def ensure_pad_token(tokenizer):
    """Batches need a pad id; decoder tokenizers often have none. Padding on the right
    suits pooling and training (the mask finds the last real token); generation pads
    on the left itself."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ValueError("the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    tokenizer.padding_side = "right"
    return tokenizer


@BACKBONES.register("decoder")
class DecoderBackbone(Backbone):
    """A Hugging Face decoder LLM (AutoModelForCausalLM), last-token or mean pooling."""

    Tiny = TinyDecoder
    poolings = ("last", "mean")
    has_lm_head = True

    @classmethod
    def load_tokenizer(cls, location):
        from transformers import AutoTokenizer

        return ensure_pad_token(AutoTokenizer.from_pretrained(location))

    @classmethod
    def pretrained(cls, location):
        from transformers import AutoModelForCausalLM

        model, info = AutoModelForCausalLM.from_pretrained(location, use_safetensors=True, dtype="float32",
                                                           output_loading_info=True)
        tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
        check_complete(location, {"missing_keys": [k for k in info["missing_keys"] if k not in tied]})
        return model

    @classmethod
    def random(cls, tiny, vocab_size, dropout):
        from transformers import AutoConfig, AutoModelForCausalLM

        shape = dict(tiny)
        family = shape.pop("family")
        config = AutoConfig.for_model(family, vocab_size=vocab_size, max_position_embeddings=512,
                                      attention_dropout=dropout, tie_word_embeddings=True, **shape)
        return AutoModelForCausalLM.from_config(config)

    def lm_logits(self, hidden):
        return self.model.get_output_embeddings()(hidden)

    def token_states(self, input_ids, attention_mask, token_type_ids=None):
        # the inner transformer: hidden states without the [batch, seq, vocab] LM logits
        return self.model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                     use_cache=False).last_hidden_state
