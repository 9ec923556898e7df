"""What a run folder remembers about itself: its ``training_args.json``.

The record holds every ``TrainConfig`` field, resolved (corpus, tokenizer and init-from paths made
absolute, so a resume from another working directory reads the same files), and four more keys:

- ``masklm_version``: the version that wrote it;
- ``corpus_files``: the corpus files with their fingerprints (path, size, mtime_ns, sha256), as the shard
  manifest of ``data/`` holds them (``masklm.data.shards``);
- ``tokenizer_fingerprint``: ``Tokenizer.fingerprint()`` of the tokenizer the run uses;
- ``resumes``: one entry per resume (step, version, and the fields it changed, old and new).

``masklm train --out DIR --resume`` rebuilds the config from the record (``resume_config``), so a resume
with no other flag continues the run that was started, bit for bit (the checkpoint holds the weights, the
optimizer, the RNG states and the step; the row order and the masks are functions of the seed, the step
and the data). A value given on resume that differs from the record is refused, except for the fields in
``RESUME_MAY_CHANGE``: they lengthen the run or only change how it is observed, saved or placed. Before
this record existed, ``--resume`` fell back to the defaults and trained on another corpus (reliability
review, defect 3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from masklm.data.corpus import BUILTIN_CORPORA
from masklm.data.shards import source_changes
from masklm.errors import ConfigError, DataError
from masklm.files import atomic_file
from masklm.training import checkpoint as ckpt
from masklm.training.config import TrainConfig
from masklm.version import __version__

RECORD_FILE = "training_args.json"
RUN_KEYS = ("masklm_version", "corpus_files", "tokenizer_fingerprint", "resumes")
# Fields a resume may change: the run's length (max_steps, epochs, time_limit), and how it is saved, logged,
# shown and placed. None of them changes the steps already taken, the row order or the masks.
RESUME_MAY_CHANGE = frozenset({"max_steps", "epochs", "time_limit", "save_every", "eval_every", "log_every",
                               "keep_last", "progress", "device", "compile"})
# How to start this invocation, not what the run is: never recorded, never compared.
INVOCATION = ("resume", "overwrite", "rebuild_data")
LENGTH_FIELDS = ("max_steps", "epochs", "time_limit")


def resolve_paths(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with the corpus entries that are paths, ``tokenizer`` and ``init_from`` made absolute
    (built-in corpus names stay names)."""
    out = dict(data)
    if isinstance(out.get("corpus"), (list, tuple)):
        out["corpus"] = [s if (s in BUILTIN_CORPORA and not Path(s).exists()) else str(Path(s).expanduser().absolute())
                         for s in map(str, out["corpus"])]
    elif isinstance(out.get("corpus"), str):
        out["corpus"] = resolve_paths({"corpus": [out["corpus"]]})["corpus"]
    for key in ("tokenizer", "init_from"):
        if isinstance(out.get(key), str):
            out[key] = str(Path(out[key]).expanduser().absolute())
    return out


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The run's record, or None when the folder has none (a run from before records, or never started)."""
    path = Path(run_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); restore it, or start afresh with --overwrite") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} must hold a JSON object; restore it, or start afresh with --overwrite")
    return record


def run_record(run_dir: Path) -> dict[str, Any]:
    """The record a resume reads: ``training_args.json``, or for a folder without one the config stored in
    its newest good checkpoint. ConfigError (exit 2) when there is no usable checkpoint."""
    found = ckpt.resume_point(run_dir, log=lambda _m: None)  # the trainer reports the skipped ones
    record = read_record(run_dir)
    if record is None:
        state = json.loads((found / "trainer_state.json").read_text(encoding="utf-8"))
        record = state.get("config") if isinstance(state, dict) else None
        if not isinstance(record, dict):
            raise ConfigError(f"{run_dir} has no {RECORD_FILE} and {found} holds no config; "
                              "start afresh with --overwrite")
    return record


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in RUN_KEYS and k not in INVOCATION}


def _defaults() -> dict[str, Any]:
    return TrainConfig().to_dict()


def merge(record: dict[str, Any], given: dict[str, Any], where: str,
          names: dict[str, str] | None = None) -> dict[str, Any]:
    """The recorded fields with ``given`` applied. A given field outside ``RESUME_MAY_CHANGE`` must equal the
    recorded value (a field missing from an older record was at its default); else ConfigError naming it
    (``names`` maps a field to how the user gave it, e.g. ``--seq-len``)."""
    fields, defaults = _fields(record), _defaults()
    given = resolve_paths(given)
    for key, value in given.items():
        if key in RESUME_MAY_CHANGE or key in INVOCATION or key == "out" or key not in defaults:
            continue
        recorded = fields.get(key, defaults[key])
        if value != recorded:
            name = (names or {}).get(key, key)
            raise ConfigError(
                f"{name} {json.dumps(value)} would change the run recorded in {where} ({key} = "
                f"{json.dumps(recorded)}); resume without {name}, or train a new run into another --out")
    merged = {k: v for k, v in fields.items() if k in defaults} | given
    merged["progress"] = given.get("progress", True)  # a progress bar is this invocation's choice
    return merged


def resume_config(given: dict[str, Any], names: dict[str, str] | None = None) -> TrainConfig:
    """The config of ``masklm train --out DIR --resume``: DIR's record with the ``given`` flags applied
    (``merge``). ConfigError when DIR has no usable checkpoint or a flag would change the run."""
    run_dir = Path(given.get("out") or TrainConfig.out)
    where = str(run_dir / RECORD_FILE)
    return TrainConfig.from_dict(merge(run_record(run_dir), given | {"resume": True}, where, names), where=where)


def check_same_run(record: dict[str, Any], cfg: TrainConfig, where: str,
                   names: dict[str, str] | None = None) -> None:
    """ConfigError when ``cfg`` (all its fields) would change the recorded run (``names``: as in ``merge``)."""
    merge(record, cfg.to_dict(), where, names)


def check_corpus(record: dict[str, Any], cfg: TrainConfig, where: str) -> None:
    """DataError, naming the first file, when the corpus files differ from the recorded fingerprints
    (unless ``rebuild_data``). A record without fingerprints (an older run) is not checked."""
    if cfg.rebuild_data or not isinstance(record.get("corpus_files"), list):
        return
    changes = source_changes(record["corpus_files"], cfg.corpus)
    if changes:
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise DataError(f"corpus changed since the run started ({where}): {changes[0]}{more}; restore it, or pass "
                        "--rebuild-data to continue the run on the corpus as it is now")


def write_record(run_dir: Path, cfg: TrainConfig, *, corpus_files: list[dict], tokenizer_fingerprint: str,
                 previous: dict[str, Any] | None, step: int) -> dict[str, Any]:
    """Write the run's record atomically (other ranks may be reading it); a resume (``previous`` given)
    appends what it changed to ``resumes``. -> the record."""
    fields = {k: v for k, v in resolve_paths(cfg.to_dict()).items() if k not in INVOCATION}
    history = list((previous or {}).get("resumes") or [])
    if previous is not None:
        before = _fields(previous)
        changed = {k: [before.get(k), v] for k, v in fields.items() if k not in ("out", "progress") and before.get(k) != v}
        history.append({"step": step, "masklm_version": __version__, "changed": changed})
    record = fields | {"masklm_version": __version__, "corpus_files": corpus_files,
                       "tokenizer_fingerprint": tokenizer_fingerprint, "resumes": history}
    path = Path(run_dir) / RECORD_FILE
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record

