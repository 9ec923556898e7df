"""LTG-BERT (Samuel et al., 2023) and GPT-BERT (Charpentier & Samuel, 2024) in one module.

The maths follows the reference code (research/ltg_bert.md §1-§4): a pre-LN encoder with extra
NormFormer-style norms, disentangled attention over log-bucketed relative positions (no absolute
positions), a GEGLU feed-forward with a LayerNorm inside, and a tied MLM head with its own LayerNorms.
GPT-BERT adds an attention gate (``config.attention_gate``) and DenseFormer-style weighting of all
earlier block outputs (``config.dwa``).

Parameter names (``ltg_reference.py`` maps the reference checkpoints onto them):

    embedding.word_embedding.weight           [V, D]   (also the MLM decoder: tied, stored once)
    embedding.relative_embedding              [2*bucket-1, D]
    embedding.relative_layer_norm.{weight,bias}
    transformer.layers.{i}.attention.in_proj_qk.{weight,bias}    [2D, D]  rows: Q then K
    transformer.layers.{i}.attention.in_proj_v.{weight,bias}     [D, D]   (LTG-BERT)
    transformer.layers.{i}.attention.in_proj_vg.{weight,bias}    [2D, D]  rows: V then gate (GPT-BERT)
    transformer.layers.{i}.attention.out_proj.{weight,bias}
    transformer.layers.{i}.attention.post_layer_norm.{weight,bias}  (only without the gate)
    transformer.layers.{i}.mlp.up_proj.weight    [2I, D]  rows: value then gate
    transformer.layers.{i}.mlp.down_proj.weight  [D, I]
    transformer.dwa_alphas.{j}                   [j+2]    (only with dwa; j = 0 .. 2L-1)
    classifier.dense.{weight,bias}, classifier.bias [V]

Attention never materialises the ``[T, T, 2D]`` position vectors of the reference: the two position
terms are computed against the 63-row projected table (``[B, H, T, 63]``), gathered with the ``[T, T]``
bucket indices, and handed to ``scaled_dot_product_attention`` as a float bias together with the mask.

``LtgBertModel`` is the encoder (``embedding`` + ``transformer``, ``[B, T, D]`` out); models with a head
subclass it, as LTG's own Hugging Face code does (``LtgBertForMaskedLM(LtgBertModel)``), so the saved names
stay ``embedding.*`` / ``transformer.*`` beside the head's (``classifier.*`` here, ``head.*`` fine-tuned).
The remote-code file shipped for transformers (``hf/remote/modeling_masklm_ltg.py``) is generated from
this module and ``attention.py`` (``python -m masklm.hf.remote_gen``; a test fails when it is stale): what
the encoder and head use must come from torch, the standard library or those two modules (``ModelConfig``,
named in annotations only, stands for the transformers config there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.models.attention import (
    AttentionMask,
    KVCache,
    LayerCache,
    attend_segments,
    attend_with_bias,
    build_attention_mask,
    document_forms,
    dropout,
    query_rows,
)
from masklm.models.dwa import DepthMix, DepthMixPool, depth_mix_usable, mix_states
from masklm.models.heads import masked_lm_forward
from masklm.models.outputs import MaskedLMOutput

# The reference buckets relative positions with M = 512 for every length (also when it recomputes the
# indices for T > 512), whatever max_position_embeddings says; pretrained tables are only valid for it.
MAX_RELATIVE_POSITION = 512


def position_bucket(relative_pos: torch.Tensor, bucket_size: int = 32,
                    max_position: int = MAX_RELATIVE_POSITION) -> torch.Tensor:
    """Log-bucketed relative positions (query index minus key index) -> bucket in [-(bucket_size-1), bucket_size-1].

    |rel| <= bucket_size/2 is kept exactly; beyond that the bucket grows with log|rel| up to max_position-1.
    """
    mid = bucket_size // 2
    abs_pos = relative_pos.abs().clamp(max=max_position - 1)
    # float64: at |rel| = M-1 the value before ceil is exactly mid-1; float32 may round it just above.
    scaled = torch.log(abs_pos.clamp(min=mid).double() / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    log_pos = (torch.ceil(scaled).long() + mid).clamp(max=bucket_size - 1)
    return torch.where(abs_pos <= mid, relative_pos, log_pos * relative_pos.sign())


def relative_position_indices(seq_len: int, bucket_size: int, device: torch.device | None = None) -> torch.Tensor:
    """``[T, T]`` rows of the relative table for query i and key j: position_bucket(i - j) + bucket_size - 1."""
    rel = torch.arange(-(seq_len - 1), seq_len)  # every i - j that occurs, computed once each
    table = position_bucket(rel, bucket_size) + bucket_size - 1  # [2T-1]
    pos = torch.arange(seq_len)
    return table[pos[:, None] - pos[None, :] + seq_len - 1].to(device)


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Parameter-free LayerNorm over the last dimension."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class Embedding(nn.Module):
    """Word embedding (no positions, no scaling) and the relative-position table, LayerNormed once."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.hidden_size
        self.word_embedding = nn.Embedding(config.vocab_size, D)
        self.relative_embedding = nn.Parameter(torch.empty(2 * config.position_bucket_size - 1, D))
        self.relative_layer_norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.eps = config.layer_norm_eps
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids ``[B, T]`` -> (x ``[B, T, D]``, relative table ``[2*bucket-1, D]``)."""
        x = dropout(_layer_norm(self.word_embedding(input_ids), self.eps), self.dropout_p, self.training)
        return x, self.relative_layer_norm(self.relative_embedding)


class Attention(nn.Module):
    """Pre-LN disentangled self-attention sub-block, ``[B, T, D]`` -> ``[B, T, D]`` (residual not added).

    logits[i, j] = s * (Q_i.K_j + Q_i.K_r[d_ij] + K_j.Q_r[d_ij]) with s = 1/sqrt(3 d) and d_ij the bucket
    of i - j; [Q_r | K_r] = in_proj_qk(relative table), i.e. the content projection, bias included.
    """

    def __init__(self, config: ModelConfig):
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

    def forward(self, x: torch.Tensor, relative: torch.Tensor, position_indices: torch.Tensor,
                mask: torch.Tensor | None, attn: AttentionMask, cache: LayerCache | None = None,
                at: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, T, D]``, relative ``[R, D]``, position_indices ``[Q, S]`` or ``[B, Q, S]`` (long, in
        [0, R)), mask additive ``[B|1, 1, Q|1, S]`` (0 or -inf) or None, attn: the form of the Q query rows
        (its ``keep_rows`` ``[B, 1, Q, 1]`` and, for ``split``, its ``segments``) -> ``[B, Q, D]``.
        Q = T, or with ``at`` ``[B, M]`` only those query rows (keys and values still from all of x).
        S = T, or with ``cache`` (x = the next T positions of a causal decode) all positions so far:
        the new keys and values are appended to the cache and attention runs over all of them."""
        B, T, D = x.shape
        H, d = self.num_heads, self.head_size
        p = self.dropout_p if self.training else 0.0
        h = _layer_norm(x, self.eps)
        if at is None:
            q, k = self.in_proj_qk(h).view(B, T, 2, H, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, d]
        else:  # queries only at the rows asked for: [B, H, M, d]; keys everywhere
            w, b = self.in_proj_qk.weight, self.in_proj_qk.bias
            q = F.linear(_rows(h, at), w[:D], b[:D]).view(B, -1, H, d).transpose(1, 2)
            k = F.linear(h, w[D:], b[D:]).view(B, T, H, d).transpose(1, 2)
        Q = q.shape[2]
        if self.gated:
            v, gate = self.in_proj_vg(h).chunk(2, dim=-1)
            gate = gate if at is None else _rows(gate, at)  # [B, Q, D]
        else:
            v = self.in_proj_v(h)
        v = v.view(B, T, H, d).transpose(1, 2)  # [B, H, T, d]
        if cache is None:
            pos = self.in_proj_qk(dropout(relative, p, self.training))  # [R, 2D]
        else:
            k, v = cache.update(k, v)  # [B, H, S, d]
            # the position table is fixed while decoding: project it once per cache, not once per token
            pos = cache.memo("relative_qk", lambda: self.in_proj_qk(relative))
        R, S = pos.shape[0], k.shape[2]
        if self.interleaved:  # BNC-era checkpoints: head h owns columns [2hd, 2hd+2d) = Q_r then K_r
            q_pos, k_pos = pos.view(R, H, 2, d).unbind(2)  # [R, H, d]
        else:  # same cut as the content Q and K
            q_pos, k_pos = pos.view(R, 2, H, d).unbind(1)
        # content-to-position against the R-row table, then pick row d_ij for each (i, j)
        c2p = torch.matmul(q, k_pos.permute(1, 2, 0))  # [B, H, Q, R]
        p2c = torch.matmul(q_pos.transpose(0, 1), k.transpose(-1, -2))  # [B, H, R, S]
        index = (position_indices if position_indices.dim() == 2 else position_indices[:, None]).expand(B, H, Q, S)
        bias = (c2p.gather(3, index) + p2c.gather(2, index)) * self.scale  # [B, H, Q, S]
        if attn.segments is not None:  # split form: each document run attends as its own sequence
            y = attend_segments(q, attn.segments, lambda b, s, e: attend_with_bias(
                q[b, :, s:e], k[b, :, s:e], v[b, :, s:e], _run_bias(bias[b, :, s:e, s:e], attn.is_causal).to(q.dtype),
                p, self.scale))
        else:
            if mask is not None:
                bias = bias + mask.to(bias.dtype)  # under autocast bias is bf16: no fp32 [B, H, Q, S] copy
            y = attend_with_bias(q, k, v, bias.to(q.dtype), p, self.scale)
        if attn.keep_rows is not None:  # rows with no key attended everywhere (see build_attention_mask): zero them
            y = y * attn.keep_rows
        y = y.transpose(1, 2).reshape(B, Q, D)
        if self.gated:  # GPT-BERT: gate, then a parameter-free LN, then the output projection
            y = self.out_proj(_layer_norm(y * F.gelu(gate), self.eps))
        else:  # LTG-BERT: output projection, then an affine LN
            y = self.post_layer_norm(self.out_proj(y))
        return dropout(y, p, self.training)


def _rows(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """The rows ``at`` ``[B, M]`` of x ``[B, T, C]`` -> ``[B, M, C]``."""
    return x.gather(1, at[:, :, None].expand(-1, -1, x.shape[-1]))


def _run_bias(bias: torch.Tensor, causal: bool) -> torch.Tensor:
    """One document run's position bias ``[1, H, L, L]``, with -inf above the diagonal when causal."""
    if not causal:
        return bias
    L = bias.shape[-1]
    upper = torch.ones(L, L, dtype=torch.bool, device=bias.device).triu(1)
    return bias.masked_fill(upper, float("-inf"))


class FeedForward(nn.Module):
    """Pre-LN GEGLU sub-block: LN -> W1 -> value * gelu_tanh(gate) -> LN over I -> W2 -> dropout."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.eps = config.layer_norm_eps
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, T, D]`` (residual not added)."""
        value, gate = self.up_proj(_layer_norm(x, self.eps)).chunk(2, dim=-1)  # [B, T, I] each
        z = _layer_norm(value * F.gelu(gate, approximate="tanh"), self.eps)
        return dropout(self.down_proj(z), self.dropout_p, self.training)


class Layer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = Attention(config)
        self.mlp = FeedForward(config)


def _additive_mask(attn: AttentionMask, T: int, like: torch.Tensor) -> torch.Tensor | None:
    """``attn`` as a float mask (0 = may attend, -inf = not) of ``like``'s dtype; None = nothing masked.
    The relative-position bias is a float mask already, so the mask is folded into it."""
    allowed = attn.mask  # bool, True = may attend
    if allowed is None and attn.is_causal:
        allowed = torch.ones(T, T, dtype=torch.bool, device=like.device).tril()[None, None]
    if allowed is None:
        return None
    return torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill_(~allowed, float("-inf"))


class Encoder(nn.Module):
    """The layers, plus GPT-BERT's DWA weights. There is no final LayerNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.bucket_size = config.position_bucket_size
        self.attention_dropout = config.attention_probs_dropout_prob
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        # DWA: attention and FFN are separate blocks j = 0..2L-1; block j mixes j+2 stored states
        self.dwa_alphas = (nn.ParameterList(nn.Parameter(torch.zeros(j + 2))
                                            for j in range(2 * config.num_hidden_layers))
                           if config.dwa else None)
        self.dwa_pool = DepthMixPool() if config.dwa else None  # training's DWA buffers, kept between steps

    def forward(self, x: torch.Tensor, relative: torch.Tensor, attention_mask: torch.Tensor | None = None,
                causal: bool = False, document_ids: torch.Tensor | None = None, cache: KVCache | None = None,
                layer_outputs: list[torch.Tensor] | None = None, at: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, T, D]`` (embedding output), relative ``[R, D]`` -> final hidden states ``[B, T, D]``.

        Masks as in ``LtgBertForMaskedLM.forward``; ``cache`` as in ``LtgBertModel.encode``.
        layer_outputs: a list to append each layer's output ``[B, T, D]`` to (transformers'
        ``output_hidden_states``).
        at: ``[B, M]`` positions: the last layer runs only there (its queries, attention output and FFN;
        keys and values from all positions) -> ``[B, M, D]``.
        """
        T = x.shape[1]
        if cache is None:
            drops = self.training and self.attention_dropout > 0
            forms = document_forms(x.device.type, dropout=drops, flex=False)  # the bias rules FlexAttention out
            attn = build_attention_mask(attention_mask, document_ids, causal, T, dtype=x.dtype, forms=forms)
            indices = relative_position_indices(T, self.bucket_size, x.device)  # [T, T]
        else:
            start = cache.length
            attn = cache.causal_mask(T, causal, attention_mask, document_ids)
            table = cache.memo("relative_indices",
                               lambda: relative_position_indices(cache.max_len, self.bucket_size, x.device))
            indices = table[start:start + T, :start + T]  # [T, S]
        mask = None if attn.segments is not None else _additive_mask(attn, T, x)
        states = [x]  # DWA's s_0, s_1, ...: the un-mixed output of every block
        if self.dwa_alphas is not None and cache is None and at is None and depth_mix_usable(x):
            states = DepthMix(x, len(self.dwa_alphas), self.dwa_pool)  # training: the states in one buffer
        for i, layer in enumerate(self.layers):
            if at is not None and i == len(self.layers) - 1:
                return self._last_at(i, x, relative, indices, attn, states, at)
            x = x + layer.attention(x, relative, indices, mask, attn, None if cache is None else cache[i])
            x = self._mix(2 * i, states, x)
            x = x + layer.mlp(x)
            x = self._mix(2 * i + 1, states, x)
            if layer_outputs is not None:
                layer_outputs.append(x)
        return x if at is None else _rows(x, at)

    def _last_at(self, i: int, x: torch.Tensor, relative: torch.Tensor, indices: torch.Tensor,
                 attn: AttentionMask, states: list[torch.Tensor], at: torch.Tensor) -> torch.Tensor:
        """The last layer ``i`` only at the query rows ``at`` ``[B, M]`` -> ``[B, M, D]``: the same sums as the
        full layer, restricted to those rows (the relative bias row of query t is row t of ``indices``)."""
        layer, T = self.layers[i], x.shape[1]
        rows = attn.rows(at, T)
        if self.dwa_alphas is not None:
            states[:] = [_rows(s, at) for s in states]
        y = _rows(x, at) + layer.attention(x, relative, indices[at], _additive_mask(rows, T, x), rows, at=at)
        y = self._mix(2 * i, states, y)
        y = y + layer.mlp(y)
        return self._mix(2 * i + 1, states, y)

    def _mix(self, block: int, states: list[torch.Tensor] | DepthMix, x: torch.Tensor) -> torch.Tensor:
        """DWA (``models.dwa``): store this block's output and return sum_m alpha_block[m] * s_m (identity
        without DWA)."""
        if self.dwa_alphas is None:
            return x
        if isinstance(states, DepthMix):
            return states.mixed(self.dwa_alphas[block], x)
        return mix_states(self.dwa_alphas[block], states, x)


class MaskClassifier(nn.Module):
    """The MLM head (``models.heads.MaskedLMHead``): LN -> dense -> GELU (exact) -> LN -> dropout ->
    decoder (the word embedding, handed in) + bias."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.eps = config.layer_norm_eps
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, hidden: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """hidden ``[..., D]``, decoder ``[V, D]`` -> logits ``[..., V]``."""
        h = F.gelu(self.dense(_layer_norm(hidden, self.eps)))
        h = dropout(_layer_norm(h, self.eps), self.dropout_p, self.training)
        return F.linear(h, decoder, self.bias)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)


class LtgBertModel(nn.Module):
    """The encoder: ``embedding`` + ``transformer``, input_ids ``[B, T]`` -> ``[B, T, D]`` (any T: positions
    are relative). Models with a head subclass it (see the module docstring).

    Weights are drawn by ``reset_parameters``, which a complete model calls once all its modules exist,
    so every parameter, the head's included, is drawn in one fixed order.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch not in ("ltg-bert", "gpt-bert"):
            raise ValueError(f"{type(self).__name__} needs arch ltg-bert or gpt-bert, got {config.arch!r}")
        self.config = config
        self.embedding = Embedding(config)
        self.transformer = Encoder(config)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Reference init: truncated normal (sigma = sqrt(2/(5D)), cut at 2 sigma) for every matrix, zero
        biases, LN 1/0, FFN W1/W2 of layer i scaled by sqrt(1/(2(i+1))), DWA weights one-hot on the last."""
        std = math.sqrt(2.0 / (5.0 * self.config.hidden_size))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                module.reset_parameters()
            elif isinstance(module, MaskClassifier):
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.embedding.relative_embedding, mean=0.0, std=std, a=-2 * std, b=2 * std)
        for i, layer in enumerate(self.transformer.layers):
            layer.mlp.up_proj.weight.mul_(math.sqrt(1.0 / (2.0 * (i + 1))))
            layer.mlp.down_proj.weight.mul_(math.sqrt(1.0 / (2.0 * (i + 1))))
        if self.transformer.dwa_alphas is not None:
            for alpha in self.transformer.dwa_alphas:
                alpha.zero_()
                alpha[-1] = 1.0

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding.word_embedding

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal: bool = False,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        selected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids ``[B, T]`` -> final hidden states ``[B, T, D]``. Masks as in ``LtgBertForMaskedLM.forward``.

        cache: causal decoding (``causal=True``, no padding or documents): input_ids are the T positions
        after the ``cache.length`` already fed; each layer appends its keys and values to the cache.
        selected: flat positions ``[N]``: the hidden states only there, ``[N, D]`` (``encode_at``).
        """
        if selected is not None:
            return self.encode_at(input_ids, attention_mask, causal, document_ids, selected)
        x, relative = self.embedding(input_ids)
        return self.transformer(x, relative, attention_mask, causal, document_ids, cache)

    def encode_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool,
                  document_ids: torch.Tensor | None, selected: torch.Tensor) -> torch.Tensor:
        """Final hidden states only at the flat positions ``selected`` ``[N]`` (row-major, sorted, N >= 1)
        -> ``[N, D]``, equal to ``encode(...).flatten(0, 1)[selected]``: the last layer runs only at those
        query rows (``Encoder._last_at``), as BERT's ``forward_at`` does."""
        B, T = input_ids.shape
        x, relative = self.embedding(input_ids)
        at, rows, slot = query_rows(selected, B, T)
        return self.transformer(x, relative, attention_mask, causal, document_ids, at=at)[rows, slot]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal: bool = False,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """The encoder's forward: ``encode``."""
        return self.encode(input_ids, attention_mask, causal, document_ids, cache)


class LtgBertForMaskedLM(LtgBertModel):
    """LTG-BERT / GPT-BERT with the tied MLM head ``classifier``, following the forward contract of DESIGN.md §2."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.classifier = MaskClassifier(config)
        self.reset_parameters()

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """MLM head: hidden ``[..., D]`` -> logits ``[..., V]``."""
        return self.classifier(hidden, self.embedding.word_embedding.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        causal: bool = False,
        document_ids: torch.Tensor | None = None,
        return_loss: bool = True,
    ) -> MaskedLMOutput:
        """Encode and predict (``models.heads.masked_lm_forward``).

        input_ids:      ``[B, T]`` token ids.
        attention_mask: ``[B, T]``, 1 = token, 0 = padding (never attended to); None = no padding.
        labels:         ``[B, T]``, target id or -100 = not predicted. When given, the head runs only on
                        the selected positions: logits ``[N, V]`` in row-major order, loss = mean CE.
        causal:         each position attends only to itself and earlier positions.
        document_ids:   ``[B, T]``, attention is block-diagonal: positions attend within their document.
        return_loss:    False: loss is None (the trainer takes its own, ``objectives.objective_loss``).
        Without labels, logits are ``[B, T, V]`` and loss is None.
        """
        # The full encoder, then a gather (``encode_at`` serves scoring; training keeps the full last layer:
        # hidden_states are then a gather of the same tensor as without labels, which tests pin exactly).
        return masked_lm_forward(self.classifier, self.embedding.word_embedding.weight, labels,
                                 encode=lambda: self.encode(input_ids, attention_mask, causal, document_ids),
                                 return_loss=return_loss)
