"""LTG-BERT / GPT-BERT for Hugging Face transformers, shipped inside masklm model folders.

Load with ``AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)`` (or ``AutoModel``);
masklm itself need not be installed: only torch, transformers and the standard library are imported.
The maths is masklm's own code (``models/ltg_bert.py``, ``models/attention.py``), and parameter names
are masklm's, so one ``model.safetensors`` serves both. In masklm, ``hf/remote_wrapper.py`` holds the
wrapper classes below; ``python -m masklm.hf.remote_gen`` writes ``hf/remote/modeling_masklm_ltg.py``
as that module with the masklm definitions it uses copied in ahead of it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from masklm.hf.remote.configuration_masklm_ltg import MaskLMLtgConfig
from masklm.models.ltg_bert import Embedding, Encoder, MaskClassifier


class MaskLMLtgPreTrainedModel(PreTrainedModel):
    config_class = MaskLMLtgConfig
    base_model_prefix = "masklm_ltg"  # no such submodule: both classes hold embedding/transformer directly
    supports_gradient_checkpointing = False
    _no_split_modules = ["Layer"]

    @torch.no_grad()
    def _init_weights(self, module):
        std = math.sqrt(2.0 / (5.0 * self.config.hidden_size))
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, Embedding):
            nn.init.trunc_normal_(module.relative_embedding, mean=0.0, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, MaskClassifier):
            nn.init.zeros_(module.bias)
        elif isinstance(module, Encoder) and module.dwa_alphas is not None:
            for alpha in module.dwa_alphas:
                alpha.zero_()
                alpha[-1] = 1.0

    def get_input_embeddings(self):
        return self.embedding.word_embedding

    def set_input_embeddings(self, value):
        self.embedding.word_embedding = value

    def _encode(self, input_ids, attention_mask=None, causal=False, collect=None):
        """input_ids ``[B, T]``, attention_mask ``[B, T]`` (1 = token) -> hidden ``[B, T, D]``; ``collect``
        (a list or None) gets the embedding output and every layer's output."""
        x, relative = self.embedding(input_ids)
        if collect is not None:
            collect.append(x)
        return self.transformer(x, relative, attention_mask, causal, layer_outputs=collect)


class MaskLMLtgModel(MaskLMLtgPreTrainedModel):
    """The encoder: ``last_hidden_state`` ``[B, T, D]`` (there is no final LayerNorm and no pooler)."""

    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]  # the MLM head of the shared weights file

    def __init__(self, config):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.transformer = Encoder(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, causal=False, output_hidden_states=None,
                return_dict=None, **kwargs):
        collect = [] if output_hidden_states else None
        hidden = self._encode(input_ids, attention_mask, causal, collect)
        out = BaseModelOutput(last_hidden_state=hidden,
                              hidden_states=tuple(collect) if collect is not None else None)
        return out if return_dict is not False else out.to_tuple()


class MaskLMLtgForMaskedLM(MaskLMLtgPreTrainedModel):
    """Encoder plus MLM head: logits ``[B, T, V]``; loss = mean cross-entropy over labels != -100."""

    def __init__(self, config):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.transformer = Encoder(config)
        self.classifier = MaskClassifier(config)
        self.post_init()

    def predict(self, hidden):
        """hidden ``[..., D]`` -> logits ``[..., V]``."""
        return self.classifier(hidden, self.embedding.word_embedding.weight)

    def forward(self, input_ids=None, attention_mask=None, labels=None, causal=False,
                output_hidden_states=None, return_dict=None, **kwargs):
        collect = [] if output_hidden_states else None
        logits = self.predict(self._encode(input_ids, attention_mask, causal, collect))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        out = MaskedLMOutput(loss=loss, logits=logits,
                             hidden_states=tuple(collect) if collect is not None else None)
        return out if return_dict is not False else out.to_tuple()
