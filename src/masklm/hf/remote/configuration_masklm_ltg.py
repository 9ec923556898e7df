"""Hugging Face config for masklm's LTG-BERT / GPT-BERT model folders (loaded with trust_remote_code=True).

Standalone: imports only transformers. The field names are masklm's ``ModelConfig`` ones, so the same
``config.json`` is read by masklm and by transformers.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class MaskLMLtgConfig(PretrainedConfig):
    model_type = "masklm-ltg"

    def __init__(
        self,
        arch: str = "ltg-bert",
        vocab_size: int = 16384,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 2048,
        max_position_embeddings: int = 512,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        pad_token_id: int = 0,
        layer_norm_eps: float = 1e-7,
        position_bucket_size: int = 32,
        position_split: str = "contiguous",
        attention_gate: bool | None = None,
        dwa: bool | None = None,
        **kwargs,
    ):
        self.arch = arch
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.position_bucket_size = position_bucket_size
        self.position_split = position_split
        gpt = arch == "gpt-bert"
        self.attention_gate = gpt if attention_gate is None else bool(attention_gate)
        self.dwa = gpt if dwa is None else bool(dwa)
        # the MLM decoder is the word embedding; the model uses it directly, nothing to tie
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
