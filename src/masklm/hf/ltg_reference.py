"""Reference LTG-BERT / GPT-BERT checkpoints <-> masklm's ``LtgBertForMaskedLM`` parameter layout.

Accepted layouts (research/ltg_bert.md §9), all with the same tensor names under an optional prefix
(``module.`` from DDP, ``model.``, ...):

- LTG-BERT training code (``ltgoslo/ltg-bert`` ``babylm/train/model.py``, BNC ``training/model.py``) and
  the Hugging Face hub wrappers (``LtgBertForMaskedLM``, NorBERT3-style ``modeling_ltgbert.py``):
  ``embedding.*``, ``transformer.layers.{i}.attention.*``, ``transformer.layers.{i}.mlp.mlp.{1,4}.weight``,
  ``classifier.nonlinearity.{1,5}.*``.
- GPT-BERT (``ltgoslo/gpt-bert`` ``pretraining/model_extra.py`` and the hub's ``LtgbertForMaskedLM``):
  ``transformer.attention_layers.{i}.*``, ``transformer.mlp_layers.{i}.mlp.{1,4}.weight``,
  ``transformer.dwa_modules.alphas.{j}``.

Name map (reference -> masklm; everything else is identical):

    transformer.layers.{i}.attention.X | transformer.attention_layers.{i}.X -> transformer.layers.{i}.attention.X
    transformer.layers.{i}.mlp.mlp.1.weight | transformer.mlp_layers.{i}.mlp.1.weight
                                                           -> transformer.layers.{i}.mlp.up_proj.weight
    ... .mlp.4.weight                                      -> transformer.layers.{i}.mlp.down_proj.weight
    transformer.dwa_modules.alphas.{j}                     -> transformer.dwa_alphas.{j}
    classifier.nonlinearity.1.{weight,bias}                -> classifier.dense.{weight,bias}
    classifier.nonlinearity.5.bias                         -> classifier.bias
    classifier.nonlinearity.5.weight                       -> (tied: the word embedding)

Dropped: the ``position_indices`` buffers (recomputed) and the BNC code's optional
``next_sentence_classifier.*`` head. Which way the positional q/k halves are cut is not visible in the
weights: set ``position_split`` in the config to the checkpoint's convention (§2.4).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from masklm.config import ModelConfig
from masklm.errors import ModelDirError
from masklm.models.ltg_bert import LtgBertForMaskedLM

_TIED = "classifier.nonlinearity.5.weight"
_WORD = "embedding.word_embedding.weight"
_ANCHOR = "embedding.relative_embedding"

# GPT-BERT's split layer lists, rewritten into LTG-BERT's layout first so one table serves both
_GPT_LAYOUT = [
    (re.compile(r"^transformer\.attention_layers\.(\d+)\."), r"transformer.layers.\1.attention."),
    (re.compile(r"^transformer\.mlp_layers\.(\d+)\.mlp\."), r"transformer.layers.\1.mlp.mlp."),
]
# (reference pattern in LTG-BERT layout, masklm name), matched against the whole un-prefixed name
_TO_OURS = [
    (re.compile(r"(embedding\.(?:word_embedding\.weight|relative_embedding|relative_layer_norm\.(?:weight|bias)))"),
     r"\1"),
    (re.compile(r"transformer\.layers\.(\d+)\.attention\.(in_proj_qk|in_proj_v|in_proj_vg|out_proj|post_layer_norm)"
                r"\.(weight|bias)"), r"transformer.layers.\1.attention.\2.\3"),
    (re.compile(r"transformer\.layers\.(\d+)\.mlp\.mlp\.1\.weight"), r"transformer.layers.\1.mlp.up_proj.weight"),
    (re.compile(r"transformer\.layers\.(\d+)\.mlp\.mlp\.4\.weight"), r"transformer.layers.\1.mlp.down_proj.weight"),
    (re.compile(r"transformer\.dwa_modules\.alphas\.(\d+)"), r"transformer.dwa_alphas.\1"),
    (re.compile(r"classifier\.nonlinearity\.1\.(weight|bias)"), r"classifier.dense.\1"),
    (re.compile(r"classifier\.nonlinearity\.5\.bias"), r"classifier.bias"),
]
_DROPPED = re.compile(r"(.*\.)?position_indices|next_sentence_classifier\..*")


def _our_name(name: str) -> str | None:
    """masklm name for an un-prefixed reference name; None when it is not a known reference tensor."""
    for pattern, replacement in _GPT_LAYOUT:
        name = pattern.sub(replacement, name, count=1)
    for pattern, replacement in _TO_OURS:
        match = pattern.fullmatch(name)
        if match:
            return match.expand(replacement)
    return None


def _expected_shapes(config: ModelConfig) -> dict[str, torch.Size]:
    """Names and shapes of ``LtgBertForMaskedLM(config)``'s state dict, without allocating weights."""
    with torch.device("meta"):
        model = LtgBertForMaskedLM(config)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def _fix_for(name: str) -> str:
    """Which config field decides the shape of tensor ``name``."""
    if "word_embedding" in name or name == "classifier.bias":
        return "set vocab_size and hidden_size to the checkpoint's values"
    if "relative_embedding" in name:
        return "set position_bucket_size (and hidden_size) to the checkpoint's values"
    if "up_proj" in name or "down_proj" in name:
        return "set intermediate_size (and hidden_size) to the checkpoint's values"
    if "dwa_alphas" in name:
        return "set num_hidden_layers to the checkpoint's value"
    return "set hidden_size (and num_attention_heads) to the checkpoint's values"


def _describe(config: ModelConfig) -> str:
    return (f"arch {config.arch}, {config.num_hidden_layers} layers, attention_gate={config.attention_gate}, "
            f"dwa={config.dwa}")


def convert_reference_state_dict(state_dict: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a reference / Hugging Face LTG-BERT or GPT-BERT state dict into masklm's layout.

    Returns a dict that ``LtgBertForMaskedLM(config).load_state_dict(..., strict=True)`` accepts.
    Raises ModelDirError naming the first tensor that is unknown, missing or of the wrong shape.
    """
    anchors = [k for k in state_dict if k == _ANCHOR or k.endswith("." + _ANCHOR)]
    if not anchors:
        raise ModelDirError(
            f"not an LTG-BERT/GPT-BERT checkpoint: no '{_ANCHOR}' tensor among {len(state_dict)} tensors; "
            "pass the state dict of a reference Bert / LtgBertForMaskedLM / LtgbertForMaskedLM model"
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    expected = _expected_shapes(config)
    out: dict[str, torch.Tensor] = {}
    tied: torch.Tensor | None = None
    for key, tensor in state_dict.items():
        inside = key.startswith(prefix)
        name = key[len(prefix):] if inside else key
        if _DROPPED.fullmatch(name):
            continue
        if inside and name == _TIED:
            tied = tensor
            continue
        ours = _our_name(name) if inside else None
        if ours is None or ours not in expected:
            raise ModelDirError(
                f"checkpoint tensor '{key}' has no place in a model with {_describe(config)}; use a config "
                "that matches the checkpoint (GPT-BERT checkpoints need attention_gate and dwa, LTG-BERT "
                "ones neither; num_hidden_layers as in the checkpoint)"
            )
        if tuple(tensor.shape) != tuple(expected[ours]):
            raise ModelDirError(
                f"checkpoint tensor '{key}' has shape {tuple(tensor.shape)} but the config expects "
                f"{tuple(expected[ours])}; {_fix_for(ours)}"
            )
        out[ours] = tensor
    if tied is not None:
        if _WORD not in out:  # some exports keep only the decoder copy of the tied matrix
            if tuple(tied.shape) != tuple(expected[_WORD]):
                raise ModelDirError(
                    f"checkpoint tensor '{prefix}{_TIED}' has shape {tuple(tied.shape)} but the config expects "
                    f"{tuple(expected[_WORD])}; {_fix_for(_WORD)}"
                )
            out[_WORD] = tied
        elif tied.shape != out[_WORD].shape or not torch.equal(tied, out[_WORD]):
            raise ModelDirError(
                f"checkpoint tensor '{prefix}{_TIED}' differs from '{prefix}{_WORD}', but masklm ties the MLM "
                "decoder to the word embedding; this checkpoint cannot be loaded without untying it"
            )
    for name in expected:
        if name not in out:
            raise ModelDirError(
                f"checkpoint has no tensor for '{name}' (expected of a model with {_describe(config)}); "
                "check that the checkpoint is a masked-LM one with this many layers, and that attention_gate "
                "and dwa match it"
            )
    return out


def export_reference_state_dict(state_dict: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """The inverse of ``convert_reference_state_dict``: masklm names -> the reference training names.

    GPT-style models (gate or DWA) use ``transformer.attention_layers`` / ``mlp_layers`` as
    ``model_extra.py`` does, LTG-BERT uses ``transformer.layers.{i}.attention`` / ``.mlp.mlp``.
    The tied decoder weight is written as ``classifier.nonlinearity.5.weight`` too, like the reference.
    """
    split_layers = bool(config.attention_gate or config.dwa)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        m = re.fullmatch(r"transformer\.layers\.(\d+)\.(attention|mlp)\.(.+)", name)
        if m:
            i, kind, rest = m.groups()
            rest = {"up_proj.weight": "mlp.1.weight", "down_proj.weight": "mlp.4.weight"}.get(rest, rest)
            ref = f"transformer.{kind}_layers.{i}.{rest}" if split_layers else f"transformer.layers.{i}.{kind}.{rest}"
        elif name.startswith("transformer.dwa_alphas."):
            ref = "transformer.dwa_modules.alphas." + name.rsplit(".", 1)[1]
        elif name.startswith("classifier.dense."):
            ref = "classifier.nonlinearity.1." + name.rsplit(".", 1)[1]
        elif name == "classifier.bias":
            ref = "classifier.nonlinearity.5.bias"
        else:
            ref = name
        out[ref] = tensor
    if _WORD in out:
        out[_TIED] = out[_WORD]
    return out
