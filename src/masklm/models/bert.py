"""BERT (Devlin et al., 2019): post-LayerNorm encoder, learned absolute positions, tied MLM head.

Parameter names and shapes are exactly those of ``transformers.BertForMaskedLM``'s saved state dict
(``bert.embeddings.word_embeddings.weight``, ``bert.encoder.layer.{i}.attention.self.query.weight``, ...,
``cls.predictions.transform.dense.weight``, ``cls.predictions.bias``), so weights move between the two
by name alone. The decoder has no parameters of its own: it is the word-embedding matrix plus
``cls.predictions.bias``, which is also how Hugging Face saves it (tied keys are left out of the file).

``BertModel`` is the encoder (``[B, T, D]`` out); ``BertForMaskedLM`` attaches the MLM head ``cls`` to it
and runs the forward shared by every architecture (``models.heads.masked_lm_forward``).

What makes training fast, without changing the maths:
- sparse prediction: with labels, the MLM head and the loss run only on rows where ``labels != -100``
  (~15% of tokens); the head's ``[N, V]`` vocabulary projection dominates a small BERT otherwise;
- a sparse last layer (``BertModel.forward_at``): with labels, the last layer's queries, attention output
  and FFN run only at those rows too;
- a cross-entropy whose backward is one pass over ``[N, V]`` (``models.heads.cross_entropy``);
- one fused QKV matmul per layer (the three HF-named weights are concatenated inside forward);
- ``scaled_dot_product_attention``, with no mask at all when nothing is masked, and packed rows of several
  documents in the cheapest exact form (``models.attention``: split runs, FlexAttention, or a dense mask);
- when training on a CPU in fp32, attention with its dropout is one fused C++ kernel that reads q, k and v
  where the QKV matmul wrote them and writes their gradients straight back, and each sublayer exit (bias,
  dropout, residual, LayerNorm) another, and the FFN's bias with its GELU a third (``models.cpu_kernels``);
  under bf16 autocast the last two run in their bf16 forms, beside SDPA's bf16 attention;
- positions and the (always type-0) token-type embedding are added as one broadcast ``[T, D]`` table
  instead of two ``[B, T, D]`` gathers.

Position ids are 0..T-1 in every row, also in packed rows with several documents (documents are kept
apart by ``document_ids`` in attention, not by restarting positions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from masklm.config import ModelConfig
from masklm.errors import ConfigError, InputError
from masklm.models import cpu_kernels
from masklm.models.attention import (
    AttentionMask,
    KVCache,
    LayerCache,
    attend,
    build_attention_mask,
    document_forms,
    dropout,
    query_rows,
)
from masklm.models.heads import cross_entropy, masked_lm_forward
from masklm.models.outputs import MaskedLMOutput

# Hugging Face's names for activations (transformers.activations.ACT2FN) that BERT checkpoints use.
ACTIVATIONS = {
    "gelu": F.gelu,  # exact, erf-based
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class BertEmbeddings(nn.Module):
    """input_ids ``[B, T]`` at positions ``start..start+T-1`` -> LayerNorm(word + position + token_type[0])
    ``[B, T, D]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, D, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, D)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, D)
        self.LayerNorm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, input_ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        T = input_ids.shape[1]
        # every token is segment 0, so the type embedding is a single row: fold it into the position table
        pos_type = self.position_embeddings.weight[start:start + T] + self.token_type_embeddings.weight[0]  # [T, D]
        x = self.word_embeddings(input_ids) + pos_type
        return dropout(self.LayerNorm(x), self.dropout_p, self.training)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention; ``[B, T, D]`` -> context ``[B, T, D]`` (before the output dense)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(D, D)
        self.key = nn.Linear(D, D)
        self.value = nn.Linear(D, D)
        self.dropout_p = config.attention_probs_dropout_prob

    def _fused_qkv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``[3D, D]`` weight and ``[3D]`` bias: query, key, value. The 1/sqrt(d) attention scale is
        folded into the query weights (``[D, D]``) instead of the scores."""
        s = (self.query.weight.shape[0] // self.num_heads) ** -0.5
        return (torch.cat([self.query.weight * s, self.key.weight, self.value.weight]),
                torch.cat([self.query.bias * s, self.key.bias, self.value.bias]))

    def forward(self, x: torch.Tensor, attn: AttentionMask, queries: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """``queries`` ``[B, M, D]``: attend only from these rows (keys and values still from all of ``x``);
        the result is then ``[B, M, D]``. ``attn`` must already be cut to those M query rows.
        ``cache``: ``x`` holds the next positions of a causal decode; attend over the cached keys too."""
        B, T, D = x.shape
        H, d = self.num_heads, D // self.num_heads
        p = self.dropout_p if self.training else 0.0
        # training on a CPU: the fused kernel, which adds the projection's bias to q, k and v itself
        fused = cache is None and cpu_kernels.usable(x, width=d)
        if queries is None:
            # One [D, 3D] matmul instead of three [D, D] ones; concatenating the weights is tiny next to
            # it, and while decoding the weights are fixed, so that happens once per cache.
            w, b = self._fused_qkv() if cache is None else cache.memo("qkv", self._fused_qkv)
            if fused:
                y = cpu_kernels.attend_fused(F.linear(x, w).view(B, T, 3, H, d), None, attn, p, 1.0, b)
                return y.reshape(B, T, D)
            q_src, kv = F.linear(x, w, b).view(B, T, 3, H, d), None
        else:
            M, s = queries.shape[1], d ** -0.5
            w = torch.cat([self.key.weight, self.value.weight])
            b = torch.cat([self.key.bias, self.value.bias])
            if fused:
                y = cpu_kernels.attend_fused(F.linear(queries, self.query.weight * s).view(B, M, H, d),
                                             F.linear(x, w).view(B, T, 2, H, d), attn, p, 1.0,
                                             self.query.bias * s, b)
                return y.reshape(B, M, D)
            q_src = F.linear(queries, self.query.weight * s, self.query.bias * s).view(B, M, H, d)
            kv = F.linear(x, w, b).view(B, T, 2, H, d)
        if kv is None:
            q, k, v = q_src.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, d]; one gradient copy in backward
            if cache is not None:
                k, v = cache.update(k, v)  # [B, H, S, d]: every position so far
        else:
            q = q_src.transpose(1, 2)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, T, d]
        y = attend(q, k, v, attn, p, scale=1.0)
        return y.transpose(1, 2).reshape(B, q.shape[2], D)


class BertAddNorm(nn.Module):
    """Post-LN sublayer exit: LayerNorm(residual + dropout(dense(x))). HF's BertSelfOutput / BertOutput."""

    def __init__(self, in_features: int, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout_p = config.hidden_dropout_prob

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        p = self.dropout_p if self.training else 0.0
        # training on a CPU (fp32, or bf16 autocast over fp32 weights): one kernel
        if cpu_kernels.usable(x, width=self.dense.out_features, bf16=self.dense.bias.dtype == torch.float32):
            return cpu_kernels.add_norm(F.linear(x, self.dense.weight), self.dense.bias, residual, self.LayerNorm, p)
        return self.LayerNorm(residual + dropout(self.dense(x), p, True))


class BertAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertAddNorm(config.hidden_size, config)

    def forward(self, x: torch.Tensor, attn: AttentionMask, queries: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        return self.output(self.self(x, attn, queries, cache), x if queries is None else queries)


class BertIntermediate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {config.hidden_act!r} is not supported; use one of: {', '.join(ACTIVATIONS)}"
            )
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACTIVATIONS[config.hidden_act]
        self.exact_gelu = config.hidden_act == "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact_gelu and cpu_kernels.usable(x, width=self.dense.out_features,
                                                  bf16=self.dense.bias.dtype == torch.float32):
            return cpu_kernels.bias_gelu(F.linear(x, self.dense.weight), self.dense.bias)  # training on a CPU
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """One post-LN transformer block ``[B, T, D]`` -> ``[B, T, D]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config)

    def forward(self, x: torch.Tensor, attn: AttentionMask, queries: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """``[B, T, D]`` -> ``[B, T, D]``, or only the rows ``queries`` ``[B, M, D]`` -> ``[B, M, D]``."""
        x = self.attention(x, attn, queries, cache)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, attn: AttentionMask, cache: KVCache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.layer):
            x = block(x, attn, cache=None if cache is None else cache[i])
        return x


class BertModel(nn.Module):
    """The encoder: embeddings + layers (HF's BertModel without the pooler), ``[B, T]`` -> ``[B, T, D]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool,
               document_ids: torch.Tensor | None, cache: KVCache | None) -> tuple[torch.Tensor, AttentionMask]:
        """Check the length; -> embeddings ``[B, T, D]`` and the attention mask all layers use."""
        T = input_ids.shape[1]
        start = 0 if cache is None else cache.length
        if start + T > self.config.max_position_embeddings:
            raise InputError(
                f"input has {start + T} tokens but this model takes at most "
                f"{self.config.max_position_embeddings} (max_position_embeddings); truncate or split the input"
            )
        x = self.embeddings(input_ids, start)
        if cache is None:
            drops = self.training and self.config.attention_probs_dropout_prob > 0
            forms = document_forms(x.device.type, dropout=drops, flex=True)
            return x, build_attention_mask(attention_mask, document_ids, causal, T, dtype=x.dtype, forms=forms)
        return x, cache.causal_mask(T, causal, attention_mask, document_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal: bool = False,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """input_ids ``[B, T]`` -> final hidden states ``[B, T, D]``. Masks as in ``BertForMaskedLM.forward``.

        cache: causal decoding (``causal=True``, no padding or documents): input_ids are the T positions
        after the ``cache.length`` already fed; each layer appends its keys and values to the cache.
        """
        x, attn = self._embed(input_ids, attention_mask, causal, document_ids, cache)
        return self.encoder(x, attn, cache)

    def forward_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool,
                   document_ids: torch.Tensor | None, selected: torch.Tensor) -> torch.Tensor:
        """The sparse last layer: final hidden states only at the flat positions ``selected`` ``[N]``
        (row-major, N >= 1) -> ``[N, D]``, equal to ``forward(...).flatten(0, 1)[selected]``.

        Every layer but the last runs on all tokens; the last one needs its keys and values everywhere
        but its queries, attention output and FFN only where the head will read (MosaicBERT's trick):
        at 15% masking that skips ~85% of the last layer. Selected positions are gathered per row into
        ``[B, M, D]`` (M = most selected in a row; spare slots repeat position 0 and are dropped).
        """
        B, T = input_ids.shape
        x, attn = self._embed(input_ids, attention_mask, causal, document_ids, None)
        *early, last = self.encoder.layer
        for block in early:
            x = block(x, attn)
        at, rows, slot = query_rows(selected, B, T)  # at: [B, M] positions
        queries = x.gather(1, at[:, :, None].expand(-1, -1, x.shape[-1]))  # [B, M, D]
        out = last(x, attn.rows(at, T), queries)  # [B, M, D]
        return out[rows, slot]


class BertPredictionTransform(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictions(nn.Module):
    """MLM head: transform, then the decoder (the word embedding, handed in) plus the output bias."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.transform = BertPredictionTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """hidden ``[..., D]``, decoder ``[V, D]`` -> logits ``[..., V]``."""
        return F.linear(self.transform(hidden), decoder, self.bias)


class BertHeads(nn.Module):
    """The MLM head (``models.heads.MaskedLMHead``); holds ``predictions`` so names read
    ``cls.predictions.*`` as in Hugging Face."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.predictions = BertLMPredictions(config)

    def forward(self, hidden: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        return self.predictions(hidden, decoder)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target)


class BertForMaskedLM(nn.Module):
    """BERT with its masked-language-model head. See the module docstring for names and speed."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertHeads(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """Hugging Face's BERT init: N(0, initializer_range), zero biases and padding row, LayerNorm 1/0."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, BertLMPredictions):
            nn.init.zeros_(module.bias)

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        causal: bool = False,
        document_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        selected: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids ``[B, T]`` -> final hidden states ``[B, T, D]`` (the encoder's; see ``BertModel``), or with
        ``selected`` (flat positions ``[N]``) only there, ``[N, D]``, through the sparse last layer."""
        if selected is not None:
            return self.encode_at(input_ids, attention_mask, causal, document_ids, selected)
        return self.bert(input_ids, attention_mask, causal, document_ids, cache)

    def encode_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, causal: bool,
                  document_ids: torch.Tensor | None, selected: torch.Tensor) -> torch.Tensor:
        """Final hidden states only at the flat positions ``selected`` ``[N]`` -> ``[N, D]`` (the sparse last
        layer, ``BertModel.forward_at``)."""
        return self.bert.forward_at(input_ids, attention_mask, causal, document_ids, selected)

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """MLM head: hidden ``[..., D]`` -> logits ``[..., V]`` (decoder tied to the word embeddings)."""
        return self.cls(hidden, self.bert.get_input_embeddings().weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        causal: bool = False,
        document_ids: torch.Tensor | None = None,
        return_loss: bool = True,
    ) -> MaskedLMOutput:
        """Encode and predict (``models.heads.masked_lm_forward``), with labels through the sparse last layer.

        input_ids:      ``[B, T]`` token ids.
        attention_mask: ``[B, T]``, 1 = token, 0 = padding (never attended to); None = no padding.
        labels:         ``[B, T]``, target id or -100 = not predicted. When given, the head runs only on
                        the selected positions: logits ``[N, V]`` in row-major order, loss = mean CE.
        causal:         each position attends only to itself and earlier positions.
        document_ids:   ``[B, T]``, attention is block-diagonal: positions attend within their document.
        return_loss:    False: loss is None (the trainer takes its own, ``objectives.objective_loss``).
        Without labels, logits are ``[B, T, V]`` and loss is None.
        """
        inputs = (input_ids, attention_mask, causal, document_ids)
        return masked_lm_forward(
            self.cls, self.bert.get_input_embeddings().weight, labels,
            encode=lambda: self.bert(*inputs),
            encode_at=lambda selected: self.bert.forward_at(*inputs, selected), return_loss=return_loss,
        )
