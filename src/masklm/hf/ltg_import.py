"""``masklm import-ltg``: a reference LTG-BERT / GPT-BERT checkpoint -> a masklm model folder.

Input: the checkpoint (``.bin`` / ``.pt`` or ``.safetensors``), its config JSON and its ``tokenizer.json``.
Tensor names are mapped by ``masklm.hf.ltg_reference``. Two things the weights do not say are read off
the masked-LM loss on some text (``reading_losses``): how the positional q/k halves are cut (the position
split) and where a mask's prediction is read (at the mask, or one position to its left as GPT-BERT's MNTP
trains it). The folder is written by ``masklm.modeldir``, with the remote-code files of
``masklm.hf.ltg_remote``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer as Backend

from masklm.config import ModelConfig, read_json_object
from masklm.data.masking import mask_tokens
from masklm.errors import ConfigError, ModelDirError
from masklm.hf.ltg_reference import convert_reference_state_dict
from masklm.inference.batching import pad
from masklm.modeldir import state_dict_for_saving, write_model_dir
from masklm.models.ltg_bert import LtgBertForMaskedLM
from masklm.objectives.reading import TrainedAs, objectives_reading_at
from masklm.tokenizer import Tokenizer

# (masklm special key, accepted spellings in order): LTG-BERT uses [..], GPT-BERT <..>
_SPECIAL_SPELLINGS = [
    ("pad_token", ("[PAD]", "<pad>")),
    ("unk_token", ("[UNK]", "<unk>")),
    ("cls_token", ("[CLS]", "<s>", "[BOS]")),
    ("sep_token", ("[SEP]", "</s>", "[EOS]")),
    ("mask_token", ("[MASK]", "<mask>")),
]
# reference config keys copied as they are into ModelConfig
_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "layer_norm_eps", "position_bucket_size")


def load_reference_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A reference state dict from ``.bin`` / ``.pt`` (torch.load, weights only) or ``.safetensors``."""
    file = Path(path)
    if not file.is_file():
        raise ModelDirError(f"weights file {file} does not exist; pass the checkpoint's .bin or .safetensors file")
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file), device="cpu")
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch / safetensors raise many types on bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelDirError(f"cannot read weights file {file} ({first}); pass a PyTorch .bin or a .safetensors "
                            "checkpoint") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):  # training checkpoints wrap it
        state = state["model"]
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelDirError(f"{file} does not hold a state dict of tensors; pass the model's weights file")
    return dict(state)


def reference_model_config(path: str | Path, state: dict[str, torch.Tensor],
                           position_split: str = "contiguous") -> ModelConfig:
    """ModelConfig from a reference config JSON; GPT-BERT (gate / DWA) is read off the weight names."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {file} does not exist; pass the checkpoint's config JSON")
    data = read_json_object(file, ConfigError, "pass the checkpoint's config JSON")
    gate = any(".in_proj_vg." in k or k.startswith("in_proj_vg.") for k in state)
    dwa = any("dwa_modules." in k for k in state)
    fields: dict[str, Any] = {k: data[k] for k in _CONFIG_KEYS if data.get(k) is not None}
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size") if k not in fields]
    if missing:
        raise ConfigError(f"{file} lacks {missing[0]!r}; pass the config JSON that belongs to the checkpoint")
    fields.setdefault("layer_norm_eps", 1e-7)
    fields.setdefault("position_bucket_size", 32)
    pad = data.get("pad_token_id")
    if isinstance(pad, int) and not isinstance(pad, bool):
        fields["pad_token_id"] = pad
    arch = "gpt-bert" if (gate or dwa) else "ltg-bert"
    return ModelConfig.from_dict({"arch": arch, **fields, "position_split": position_split,
                                  "attention_gate": gate, "dwa": dwa}, where=str(file))


def reference_tokenizer(path: str | Path) -> Tokenizer:
    """masklm Tokenizer around a reference ``tokenizer.json`` ([PAD]/[UNK]/... or <pad>/<unk>/... names)."""
    file = Path(path)
    if not file.is_file():
        raise ModelDirError(f"tokenizer file {file} does not exist; pass the checkpoint's tokenizer.json")
    try:
        backend = Backend.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise ModelDirError(f"cannot read tokenizer {file} ({str(exc).splitlines()[0] if str(exc) else exc}); "
                            "pass a tokenizers tokenizer.json") from None
    specials = []
    for key, spellings in _SPECIAL_SPELLINGS:
        found = next((s for s in spellings if backend.token_to_id(s) is not None), None)
        if found is None:
            raise ModelDirError(f"tokenizer {file} has no {key} (looked for {' or '.join(spellings)}); "
                                "pass the tokenizer that belongs to the checkpoint")
        specials.append(found)
    return Tokenizer(backend, specials)


# A wrong position split leaves every weight in place but scrambles the relative-position terms; the
# trained convention then gives a much lower masked-LM loss on real text (research/ltg_bert.md §2.4).
# The same loss tells how masks are read: at the mask (MLM) or one position to the left (GPT-BERT's MNTP,
# §6). A reading counts only when it beats the other one clearly.
SPLIT_CHECK_RATIO = 1.25
SPLIT_CHECK_TEXTS = 32
SHIFTS = (0, 1)


def reading_losses(model_config: ModelConfig, state: dict[str, torch.Tensor], tok: Tokenizer,
                   texts: list[str], seq_len: int = 128) -> dict[tuple[str, int], float]:
    """Masked-LM loss (15% masked, fixed masks) of the same weights for each (position split, shift):
    shift 0 reads a mask's prediction at the mask, shift 1 one position to its left. The texts are
    check text, not inputs: each is cut to its first ``seq_len`` tokens."""
    rows = [ids[:seq_len] for ids in (tok.encode(t).ids for t in texts) if len(ids) > 2]
    if not rows:
        return {}
    ids, attention = pad(rows, tok.pad_id)                                           # [B, T] each
    inputs, labels = mask_tokens(ids, rows=list(range(len(rows))), seed=0, epoch=0, mask_id=tok.mask_id,
                                 vocab_size=tok.vocab_size, special_ids=tok.special_ids, attention_mask=attention)
    b, t = (labels != -100).nonzero(as_tuple=True)    # [M] each; t >= 1, as position 0 is [CLS]
    losses = {}
    for split in ("contiguous", "interleaved"):
        model = LtgBertForMaskedLM(dataclasses.replace(model_config, position_split=split)).eval()
        model.load_state_dict(state, strict=True)
        with torch.no_grad():
            hidden = model.encode(inputs, attention_mask=attention)                   # [B, T, D]
            for shift in SHIFTS:
                logits = model.predict(hidden[b, t - shift]).float()                  # [M, V]
                losses[split, shift] = float(F.cross_entropy(logits, labels[b, t]))
    return losses


def _clearly_worse(loss: float, other: float) -> bool:
    return loss > SPLIT_CHECK_RATIO * other and loss - other > 0.05


def import_ltg(weights: str | Path, config: str | Path, tokenizer: str | Path, out: str | Path,
               position_split: str = "contiguous", check_texts: list[str] | None = None,
               objectives: list[str] | None = None, log=lambda message: None) -> Path:
    """Convert a reference LTG-BERT / GPT-BERT checkpoint into a masklm model folder; returns its path.

    With ``check_texts``, the masked-LM loss of the weights is measured under both position splits and
    both mask readings first: a ``position_split`` whose loss is clearly worse than the other's is refused,
    and the reading that is clearly better sets the folder's objectives (``training_args.json``), which
    decide where ``fill_mask`` reads and the default score metric. Without a clear answer, or without
    ``check_texts``, the architecture decides (GPT-BERT: mntp + clm; LTG-BERT: mlm). ``objectives``
    overrides both.
    """
    state = load_reference_weights(weights)
    model_config = reference_model_config(config, state, position_split)
    tok = reference_tokenizer(tokenizer)
    if tok.vocab_size > model_config.vocab_size:
        raise ModelDirError(f"tokenizer {tokenizer} has {tok.vocab_size} tokens but the config's vocab_size is "
                            f"{model_config.vocab_size}; pass the tokenizer that belongs to the checkpoint")
    converted = convert_reference_state_dict(state, model_config)
    model = LtgBertForMaskedLM(model_config)
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as exc:  # convert_reference_state_dict checked names and shapes; be safe anyway
        raise ModelDirError(f"weights do not fit the config: {str(exc).splitlines()[0]}") from None
    source = "--objectives" if objectives else None
    losses = reading_losses(model_config, converted, tok, check_texts) if check_texts else {}
    if losses:
        other = "interleaved" if position_split == "contiguous" else "contiguous"
        log("masked-LM loss on the check text, read at the mask / one position left: "
            + ", ".join(f"{split} {losses[split, 0]:.3f} / {losses[split, 1]:.3f}" for split in ("contiguous",
                                                                                              "interleaved")))
        mine, theirs = (min(losses[split, shift] for shift in SHIFTS) for split in (position_split, other))
        if _clearly_worse(mine, theirs):
            raise ModelDirError(
                f"with --position-split {position_split} the checkpoint's masked-LM loss is {mine:.3f} against "
                f"{theirs:.3f} with {other}: it was trained with the {other} split; pass --position-split "
                f"{other} (or --no-split-check to keep {position_split})"
            )
        best = min(SHIFTS, key=lambda shift: losses[position_split, shift])
        if source is None and _clearly_worse(losses[position_split, 1 - best], losses[position_split, best]):
            objectives, source = objectives_reading_at(best, model_config.arch), "the loss check"
    if source is None:
        objectives, source = objectives_reading_at(int(model_config.arch == "gpt-bert"),
                                                                model_config.arch), "the architecture"
    log(f"objectives {', '.join(objectives)} (from {source}; --objectives sets them), so masks are read "
        f"{'one position to their left' if TrainedAs.from_names(objectives).mask_shift else 'at the mask'}")
    return write_model_dir(out, model_config.to_json_dict(), state_dict_for_saving(model), tok,
                           training_args={"objectives": objectives, "imported_by": "masklm import-ltg",
                                          "objectives_from": source})


__all__ = ["SPLIT_CHECK_TEXTS", "import_ltg", "reading_losses"]
