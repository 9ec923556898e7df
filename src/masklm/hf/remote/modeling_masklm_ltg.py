"""LTG-BERT / GPT-BERT for Hugging Face transformers, shipped inside masklm model folders.

Load with ``AutoModelForMaskedLM.from_pretrained(folder, trust_remote_code=True)`` (or ``AutoModel``);
masklm itself need not be installed. Standalone: imports only torch, transformers and the standard library.

The maths is that of masklm's ``LtgBertForMaskedLM``: pre-LN layers, disentangled attention over
log-bucketed relative positions (optionally gated, GPT-BERT), a GEGLU feed-forward with an inner
LayerNorm, optional DenseFormer-style weighting (DWA), and an MLM head whose decoder is the word
embedding. Parameter names equal masklm's, so one ``model.safetensors`` serves both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .configuration_masklm_ltg import MaskLMLtgConfig

MAX_RELATIVE_POSITION = 512  # bucketing uses M = 512 for every length, as the reference does


def position_bucket(relative_pos: torch.Tensor, bucket_size: int, max_position: int = MAX_RELATIVE_POSITION):
    mid = bucket_size // 2
    abs_pos = relative_pos.abs().clamp(max=max_position - 1)
    scaled = torch.log(abs_pos.clamp(min=mid).double() / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    log_pos = (torch.ceil(scaled).long() + mid).clamp(max=bucket_size - 1)
    return torch.where(abs_pos <= mid, relative_pos, log_pos * relative_pos.sign())


def relative_position_indices(seq_len: int, bucket_size: int, device=None) -> torch.Tensor:
    """``[T, T]``: row of the relative table for query i and key j."""
    rel = torch.arange(-(seq_len - 1), seq_len)
    table = position_bucket(rel, bucket_size) + bucket_size - 1
    pos = torch.arange(seq_len)
    return table[pos[:, None] - pos[None, :] + seq_len - 1].to(device)


def _ln(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class Embedding(nn.Module):
    def __init__(self, config):
        super().__init__()
        D = config.hidden_size
        self.word_embedding = nn.Embedding(config.vocab_size, D)
        self.relative_embedding = nn.Parameter(torch.empty(2 * config.position_bucket_size - 1, D))
        self.relative_layer_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.eps = config.layer_norm_eps
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids):
        x = self.dropout(_ln(self.word_embedding(input_ids), self.eps))
        return x, self.relative_layer_norm(self.relative_embedding)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = D // self.num_heads
        self.scale = 1.0 / math.sqrt(3 * self.head_size)
        self.gated = bool(config.attention_gate)
        self.interleaved = config.position_split == "interleaved"
        self.eps = config.layer_norm_eps
        self.dropout_p = config.attention_probs_dropout_prob
        self.in_proj_qk = nn.Linear(D, 2 * D)
        if self.gated:
            self.in_proj_vg = nn.Linear(D, 2 * D)
        else:
            self.in_proj_v = nn.Linear(D, D)
            self.post_layer_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.out_proj = nn.Linear(D, D)

    def forward(self, x, relative, position_indices, mask, keep_rows):
        B, T, D = x.shape
        H, d = self.num_heads, self.head_size
        p = self.dropout_p if self.training else 0.0
        h = _ln(x, self.eps)
        q, k = self.in_proj_qk(h).view(B, T, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)
        if self.gated:
            v, gate = self.in_proj_vg(h).chunk(2, dim=-1)
        else:
            v = self.in_proj_v(h)
        v = v.view(B, T, H, d).transpose(1, 2)
        pos = self.in_proj_qk(F.dropout(relative, p, self.training))
        R = pos.shape[0]
        if self.interleaved:
            q_pos, k_pos = pos.view(R, H, 2, d).unbind(2)
        else:
            q_pos, k_pos = pos.view(R, 2, H, d).unbind(1)
        c2p = torch.matmul(q, k_pos.permute(1, 2, 0))  # [B, H, T, R]
        p2c = torch.matmul(q_pos.transpose(0, 1), k.transpose(-1, -2))  # [B, H, R, T]
        index = position_indices.expand(B, H, T, T)
        bias = (c2p.gather(3, index) + p2c.gather(2, index)) * self.scale
        if mask is not None:
            bias = bias + mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p, scale=self.scale)
        if keep_rows is not None:
            y = y * keep_rows
        y = y.transpose(1, 2).reshape(B, T, D)
        if self.gated:
            y = self.out_proj(_ln(y * F.gelu(gate), self.eps))
        else:
            y = self.post_layer_norm(self.out_proj(y))
        return F.dropout(y, p, self.training)


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.eps = config.layer_norm_eps
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x):
        value, gate = self.up_proj(_ln(x, self.eps)).chunk(2, dim=-1)
        return self.dropout(self.down_proj(_ln(value * F.gelu(gate, approximate="tanh"), self.eps)))


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = FeedForward(config)


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.dwa_alphas = (nn.ParameterList(nn.Parameter(torch.zeros(j + 2))
                                            for j in range(2 * config.num_hidden_layers))
                           if config.dwa else None)

    def forward(self, x, relative, position_indices, mask, keep_rows, collect=None):
        states = [x]
        for i, layer in enumerate(self.layers):
            x = x + layer.attention(x, relative, position_indices, mask, keep_rows)
            x = self._mix(2 * i, states, x)
            x = x + layer.mlp(x)
            x = self._mix(2 * i + 1, states, x)
            if collect is not None:
                collect.append(x)
        return x

    def _mix(self, block, states, x):
        if self.dwa_alphas is None:
            return x
        states.append(x)
        alpha = self.dwa_alphas[block]
        out = alpha[0] * states[0]
        for m in range(1, len(states)):
            out = out + alpha[m] * states[m]
        return out


class MaskClassifier(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))


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

    def _encode(self, input_ids, attention_mask=None, causal=False, collect=None):
        """input_ids ``[B, T]``, attention_mask ``[B, T]`` (1 = token) -> hidden ``[B, T, D]``."""
        B, T = input_ids.shape
        x, relative = self.embedding(input_ids)
        allowed = None
        if attention_mask is not None and not bool(attention_mask.all()):
            allowed = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
        if causal:
            lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[None, None]
            allowed = lower if allowed is None else allowed & lower
        mask = keep_rows = None
        if allowed is not None:
            row_has_key = allowed.any(dim=-1, keepdim=True)
            if not bool(row_has_key.all()):  # a row with no key attends everywhere; its output is zeroed
                allowed = allowed | ~row_has_key
                keep_rows = row_has_key.to(x.dtype)
            mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill_(~allowed, float("-inf"))
        if collect is not None:
            collect.append(x)
        indices = relative_position_indices(T, self.config.position_bucket_size, x.device)
        return self.transformer(x, relative, indices, mask, keep_rows, collect)


class MaskLMLtgModel(MaskLMLtgPreTrainedModel):
    """The encoder: ``last_hidden_state`` ``[B, T, D]`` (there is no final LayerNorm and no pooler)."""

    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]  # the MLM head of the shared weights file

    def __init__(self, config):
        super().__init__(config)
        self.embedding = Embedding(config)
        self.transformer = Encoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embedding

    def set_input_embeddings(self, value):
        self.embedding.word_embedding = value

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
        self.head_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embedding

    def set_input_embeddings(self, value):
        self.embedding.word_embedding = value

    def predict(self, hidden):
        eps = self.config.layer_norm_eps
        h = F.gelu(self.classifier.dense(_ln(hidden, eps)))
        h = self.head_dropout(_ln(h, eps))
        return F.linear(h, self.embedding.word_embedding.weight, self.classifier.bias)

    def forward(self, input_ids=None, attention_mask=None, labels=None, causal=False,
                output_hidden_states=None, return_dict=None, **kwargs):
        collect = [] if output_hidden_states else None
        hidden = self._encode(input_ids, attention_mask, causal, collect)
        logits = self.predict(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        out = MaskedLMOutput(loss=loss, logits=logits,
                             hidden_states=tuple(collect) if collect is not None else None)
        return out if return_dict is not False else out.to_tuple()
