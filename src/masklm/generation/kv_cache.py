"""A key/value cache for causal decoding, built from the models' own submodules (no model changes).

``CausalStepper(model, batch, max_len)`` feeds new tokens ``[B, n]`` at positions ``p..p+n-1`` and returns
their final hidden states ``[B, n, D]``, exactly what ``model.encode(ids[:, :p+n], causal=True)[:, p:]``
gives (up to float rounding), while computing only the new rows: each layer's keys and values for earlier
positions are kept in preallocated ``[B, H, max_len, d]`` buffers.

Supported: ``BertForMaskedLM`` (absolute positions) and ``LtgBertForMaskedLM`` (LTG-BERT and GPT-BERT:
relative-position bias, attention gate, DWA). ``supports_cache(model)`` says whether a model is one of
them; the autoregressive strategy falls back to full causal passes otherwise. Eval mode only (no dropout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def supports_cache(model: nn.Module) -> bool:
    from masklm.models.bert import BertForMaskedLM
    from masklm.models.ltg_bert import LtgBertForMaskedLM

    return isinstance(model, (BertForMaskedLM, LtgBertForMaskedLM))


def _causal_bias(p: int, n: int, device: torch.device) -> torch.Tensor:
    """bool ``[n, p+n]``: query p+i may attend to key j iff j <= p+i."""
    return torch.arange(p + n, device=device)[None, :] <= torch.arange(p, p + n, device=device)[:, None]


class CausalStepper:
    """Incremental causal encoder over one batch; ``step(ids [B, n]) -> hidden [B, n, D]``."""

    def __init__(self, model: nn.Module, batch: int, max_len: int) -> None:
        from masklm.models.bert import BertForMaskedLM

        if not supports_cache(model):
            raise TypeError(f"no key/value cache for {type(model).__name__}")
        self.model = model
        self.is_bert = isinstance(model, BertForMaskedLM)
        cfg = model.config
        H, D = cfg.num_attention_heads, cfg.hidden_size
        self.heads, self.head_size = H, D // H
        p = next(model.parameters())
        shape = (cfg.num_hidden_layers, batch, H, max_len, D // H)
        self.keys = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.values = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.length = 0
        self.max_len = max_len
        if self.is_bert:  # the fused, pre-scaled QKV weights of BertSelfAttention.forward, made once
            self.qkv = []
            for layer in model.bert.encoder.layer:
                sa = layer.attention.self
                s = self.head_size ** -0.5
                self.qkv.append((torch.cat([sa.query.weight * s, sa.key.weight, sa.value.weight]),
                                 torch.cat([sa.query.bias * s, sa.key.bias, sa.value.bias])))
        else:
            from masklm.models.ltg_bert import relative_position_indices

            emb = model.embedding
            relative = emb.relative_layer_norm(emb.relative_embedding)  # [R, D]
            self.pos = [layer.attention.in_proj_qk(relative) for layer in model.transformer.layers]  # [R, 2D]
            self.indices = relative_position_indices(max_len, cfg.position_bucket_size, p.device)  # [L, L]

    @torch.no_grad()
    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed ids ``[B, n]`` at the next n positions -> their hidden states ``[B, n, D]``."""
        n = ids.shape[1]
        if self.length + n > self.max_len:
            raise ValueError(f"cache holds {self.max_len} positions; {self.length + n} asked")
        out = self._bert(ids) if self.is_bert else self._ltg(ids)
        self.length += n
        return out

    def _store(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this layer's new keys/values ``[B, H, n, d]``; -> all keys/values so far ``[B, H, S, d]``."""
        p, n = self.length, k.shape[2]
        self.keys[i, :, :, p:p + n] = k
        self.values[i, :, :, p:p + n] = v
        return self.keys[i, :, :, :p + n], self.values[i, :, :, :p + n]

    def _bert(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        emb = m.bert.embeddings
        B, n = ids.shape
        p, H, d = self.length, self.heads, self.head_size
        pos_type = emb.position_embeddings.weight[p:p + n] + emb.token_type_embeddings.weight[0]  # [n, D]
        x = emb.LayerNorm(emb.word_embeddings(ids) + pos_type)  # [B, n, D]
        mask = None if n == 1 else _causal_bias(p, n, ids.device)
        for i, layer in enumerate(m.bert.encoder.layer):
            w, b = self.qkv[i]
            q, k, v = F.linear(x, w, b).view(B, n, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, n, d]
            keys, values = self._store(i, k, v)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
            x = layer.attention.output(y.transpose(1, 2).reshape(B, n, H * d), x)
            x = layer.output(layer.intermediate(x), x)
        return x

    def _ltg(self, ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        B, n = ids.shape
        p, H, d = self.length, self.heads, self.head_size
        S = p + n
        eps = m.config.layer_norm_eps
        x = F.layer_norm(m.embedding.word_embedding(ids), (H * d,), eps=eps)  # [B, n, D]
        index = self.indices[p:S, :S].expand(B, H, n, S)
        allowed = _causal_bias(p, n, ids.device)  # [n, S]
        states = [x]
        for i, layer in enumerate(m.transformer.layers):
            att = layer.attention
            h = F.layer_norm(x, (H * d,), eps=eps)
            q, k = att.in_proj_qk(h).view(B, n, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, n, d]
            if att.gated:
                v, gate = att.in_proj_vg(h).chunk(2, dim=-1)
            else:
                v = att.in_proj_v(h)
            keys, values = self._store(i, k, v.view(B, n, H, d).transpose(1, 2))
            R = self.pos[i].shape[0]
            if att.interleaved:
                q_pos, k_pos = self.pos[i].view(R, H, 2, d).unbind(2)  # [R, H, d]
            else:
                q_pos, k_pos = self.pos[i].view(R, 2, H, d).unbind(1)
            c2p = torch.matmul(q, k_pos.permute(1, 2, 0))  # [B, H, n, R]
            p2c = torch.matmul(q_pos.transpose(0, 1), keys.transpose(-1, -2))  # [B, H, R, S]
            bias = (c2p.gather(3, index) + p2c.gather(2, index)) * att.scale  # [B, H, n, S]
            bias = bias.masked_fill(~allowed, float("-inf"))
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype), scale=att.scale)
            y = y.transpose(1, 2).reshape(B, n, H * d)
            if att.gated:
                y = att.out_proj(F.layer_norm(y * F.gelu(gate), (H * d,), eps=eps))
            else:
                y = att.post_layer_norm(att.out_proj(y))
            x = m.transformer._mix(2 * i, states, x + y)
            x = m.transformer._mix(2 * i + 1, states, x + layer.mlp(x))
        return x
