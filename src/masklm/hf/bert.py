"""Hugging Face BERT folders <-> masklm model folders.

``import_bert(src, out)`` converts a folder written by ``BertForMaskedLM.save_pretrained`` (or
``BertModel``, ``BertForPreTraining``, an original Google checkpoint converted by transformers) into a
masklm folder. Names already match (see ``masklm.models.bert``); what needs care:

- encoders saved without the ``bert.`` prefix (``BertModel``) and old ``LayerNorm.gamma/beta`` names;
- tensors masklm has no use for: the pooler, next-sentence head, ``position_ids`` buffers;
- the decoder: Hugging Face ties it to the word embeddings and stores it at most as a copy;
- no MLM head at all (a bare encoder): the head starts from a fresh init, with a warning.

``export_bert(model_dir, out)`` writes a copy that transformers loads without any masklm keys.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from tokenizers import BertWordPieceTokenizer

from masklm.config import ModelConfig
from masklm.errors import ConfigError, ModelDirError
from masklm.finetune.folder import load_folder
from masklm.modeldir import (
    check_state_dict,
    load_weights,
    read_config,
    state_dict_for_saving,
    write_model_dir,
)
from masklm.models import build_model
from masklm.tokenizer import Tokenizer

log = logging.getLogger("masklm.hf")

# Hugging Face BertConfig fields that are ModelConfig fields with the same meaning.
_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "max_position_embeddings", "hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps",
    "initializer_range", "hidden_act", "type_vocab_size", "pad_token_id",
)
# Tensors of BERT checkpoints that masklm's BertForMaskedLM has no counterpart for.
_DROPPED_PREFIXES = ("bert.pooler.", "cls.seq_relationship.")
_DROPPED_NAMES = ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")


def bert_config_from_hf(data: dict[str, Any], where: str) -> ModelConfig:
    """A masklm BERT config from a Hugging Face ``config.json`` dict."""
    if data.get("model_type") != "bert":
        raise ModelDirError(
            f"{where} describes a {data.get('model_type')!r} model; import-hf converts BERT folders "
            "(model_type 'bert') only"
        )
    if data.get("position_embedding_type", "absolute") != "absolute":
        raise ModelDirError(
            f"{where}: position_embedding_type {data['position_embedding_type']!r} is not supported; "
            "masklm's BERT uses absolute positions"
        )
    fields = {k: data[k] for k in _CONFIG_FIELDS if data.get(k) is not None}
    try:
        return ModelConfig(arch="bert", **fields)
    except (ConfigError, TypeError) as exc:
        raise ModelDirError(f"{where}: {exc}") from None


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face folder: safetensors (single or sharded) or pytorch_model.bin."""
    if (folder / "model.safetensors").is_file():
        return load_weights(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelDirError(f"{index} is not a valid shard index ({exc}); re-save the model") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_weights(folder / shard))
        return state
    if (folder / "pytorch_model.bin").is_file():
        try:  # weights_only: never unpickle arbitrary objects from a downloaded file
            state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelDirError(
                f"cannot read {folder / 'pytorch_model.bin'} as plain tensors ({exc}); "
                "re-save it with save_pretrained(safe_serialization=True)"
            ) from None
        return dict(state)
    raise ModelDirError(
        f"no model.safetensors or pytorch_model.bin in {folder}; pass a folder written by save_pretrained"
    )


def normalize_bert_state(
    state: dict[str, torch.Tensor], warnings: list[str]
) -> tuple[dict[str, torch.Tensor], bool]:
    """Rename a Hugging Face BERT state dict to masklm names -> (state, has_mlm_head)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(("embeddings.", "encoder.", "pooler.")):  # BertModel: no "bert." prefix
            name = "bert." + name
        name = name.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        out[name] = tensor
    for name in list(out):
        if name in _DROPPED_NAMES or name.startswith(_DROPPED_PREFIXES):
            del out[name]

    word = out.get("bert.embeddings.word_embeddings.weight")
    decoder = out.pop("cls.predictions.decoder.weight", None)
    if decoder is not None and word is not None and not torch.equal(decoder, word):
        warnings.append(
            "the checkpoint's decoder weight differs from its word embeddings; masklm ties them, "
            "so predictions use the word embeddings"
        )
    decoder_bias = out.pop("cls.predictions.decoder.bias", None)
    if decoder_bias is not None and "cls.predictions.bias" not in out:
        out["cls.predictions.bias"] = decoder_bias
    has_head = any(name.startswith("cls.predictions.") for name in out)
    return out, has_head


def import_bert(src: str | Path, out: str | Path) -> tuple[Path, list[str]]:
    """Convert a Hugging Face BERT folder into a masklm model folder -> (path, warnings).

    Warnings are also logged on the ``masklm.hf`` logger.
    """
    folder = Path(src)
    config = bert_config_from_hf(read_config(folder), where=str(folder / "config.json"))
    tokenizer = _load_tokenizer(folder)
    warnings: list[str] = []
    state, has_head = normalize_bert_state(read_hf_weights(folder), warnings)
    model = build_model(config)
    if not has_head:
        fresh = {k: v for k, v in model.state_dict().items() if k.startswith("cls.")}
        state.update(fresh)
        warnings.append(
            f"{folder} has no MLM head (a bare encoder); the head is freshly initialised, "
            "so fine-tune or pretrain before using fill-mask"
        )
    if config.vocab_size > tokenizer.vocab_size:  # a padded embedding table, or a tokenizer short of the model
        warnings.append(f"{folder}: config.json's vocab_size {config.vocab_size} is above its tokenizer's "
                        f"{tokenizer.vocab_size}; the {config.vocab_size - tokenizer.vocab_size} ids past the tokenizer "
                        "have no text: generation never emits them, fill-mask may list them with an empty token_str")
    check_state_dict(state, model.state_dict(), where=str(folder))
    model.load_state_dict(state, strict=True)
    for message in warnings:
        log.warning(message)
    return write_model_dir(out, config.to_json_dict(), state_dict_for_saving(model), tokenizer), warnings


def _load_tokenizer(folder: Path) -> Tokenizer:
    """Our Tokenizer from tokenizer.json, or built from a WordPiece vocab.txt (older BERT folders)."""
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.load(folder)
    if not (folder / "vocab.txt").is_file():
        raise ModelDirError(
            f"no tokenizer in {folder} (tokenizer.json or vocab.txt); save the tokenizer beside the model "
            "(tokenizer.save_pretrained(dir)) and run import-hf again"
        )
    settings: dict[str, Any] = {}
    if (folder / "tokenizer_config.json").is_file():
        try:
            settings = json.loads((folder / "tokenizer_config.json").read_text())
        except json.JSONDecodeError as exc:
            raise ModelDirError(f"{folder / 'tokenizer_config.json'} is not valid JSON ({exc}); fix it") from None
    backend = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=settings.get("do_lower_case", True))
    with tempfile.TemporaryDirectory() as tmp:
        backend.save(str(Path(tmp) / "tokenizer.json"))
        if settings:
            shutil.copy(folder / "tokenizer_config.json", Path(tmp) / "tokenizer_config.json")
        return Tokenizer.load(tmp)


# Keys of masklm's config.json that transformers does not know.
_MASKLM_ONLY_KEYS = ("arch", "masklm_version")


def export_bert(model_dir: str | Path, out: str | Path) -> Path:
    """Write a Hugging Face loadable copy of a masklm BERT folder (no masklm-only config keys). A fine-tuned
    folder keeps its ``task`` block, and its head is written under the names and shapes of the transformers
    class that computes the same function (``_hf_head``), so ``AutoModelFor...`` loads it with its labels.
    It is a transformers folder: masklm reads the fine-tuned folder it came from."""
    model, config, tokenizer = load_folder(model_dir)
    if config.arch != "bert":
        raise ModelDirError(
            f"export-hf writes plain BERT folders, but {model_dir} is {config.arch!r}; masklm's "
            f"{config.arch} folders already load in transformers with trust_remote_code=True"
        )
    data = {k: v for k, v in config.to_json_dict().items() if k not in _MASKLM_ONLY_KEYS}
    data["tie_word_embeddings"] = True
    state = state_dict_for_saving(model)
    if data.get("task"):
        state = _hf_head(data, state, str(model_dir))
    return write_model_dir(out, data, state, tokenizer)


# A task's head -> (transformers class, {masklm name prefix: transformers name prefix}).
_HF_HEADS = {
    "question-answering": ("BertForQuestionAnswering", {"head.out.": "qa_outputs."}),
    "tagging": ("BertForTokenClassification", {"head.out.": "classifier."}),
    "classification": ("BertForSequenceClassification", {"head.dense.": "bert.pooler.dense.", "head.out.": "classifier."}),
    "regression": ("BertForSequenceClassification", {"head.dense.": "bert.pooler.dense.", "head.out.": "classifier."}),
}


def _hf_head(data: dict[str, Any], state: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """A fine-tuned BERT folder's head under transformers' names; ``data`` (config.json) gets the class and
    the labels. The heads compute the same functions: question answering's start/end head is
    ``qa_outputs`` (Linear D -> 2); tagging's is ``classifier`` on every token; a sequence head that pools
    [CLS] (``--pooling cls``: dense, tanh, linear) is BertForSequenceClassification's pooler and
    classifier, with a regression head's standardisation folded into the classifier so it outputs the
    target itself. A mean-pooled sequence head has no transformers class: the folder then loads as a
    BertModel (the encoder), with a warning. Every token-type row is set to row 0: masklm reads every token
    as segment 0, Hugging Face's tokenizers mark a pair's second text as segment 1."""
    task = data["task"]
    kind = task["type"]
    if kind in ("classification", "regression") and task.get("pooling", "mean") != "cls":
        log.warning(f"{where}: its {kind} head pools the mean of the tokens, which no transformers class does "
                    "(BertForSequenceClassification reads [CLS] through its pooler), so the export loads as a "
                    "BertModel, the encoder alone; fine-tune with --pooling cls for a head transformers loads")
        return {name: t for name, t in state.items() if not name.startswith("head.")}  # no tensor it cannot place
    cls_name, names = _HF_HEADS[kind]
    renamed = {}
    for name, tensor in state.items():
        prefix = next((p for p in names if name.startswith(p)), None)
        renamed[name if prefix is None else names[prefix] + name[len(prefix):]] = tensor
    if kind == "regression":  # y = mean + std * out(h): the classifier's weight and bias absorb it
        mean, std = float(task["target_mean"]), float(task["target_std"])
        renamed["classifier.weight"] = renamed["classifier.weight"] * std
        renamed["classifier.bias"] = renamed["classifier.bias"] * std + mean
    if kind != "question-answering":
        labels = task["labels"]
        data.update(id2label={str(i): x for i, x in enumerate(labels)}, label2id={x: i for i, x in enumerate(labels)},
                    **({"problem_type": "regression"} if kind == "regression" else
                       {"problem_type": "single_label_classification"} if kind == "classification" else {}))
    data["architectures"] = [cls_name]
    types = renamed["bert.embeddings.token_type_embeddings.weight"].clone()
    types[1:] = types[0]
    renamed["bert.embeddings.token_type_embeddings.weight"] = types
    return renamed
