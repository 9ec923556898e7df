"""masklm: masked language models, from raw text to serving."""

from masklm.config import ModelConfig, TrainConfig
from masklm.errors import ConfigError, DataError, InputError, MaskLMError, ModelDirError
from masklm.version import __version__


def build_model(config: ModelConfig):
    """Turn a ModelConfig into a ``torch.nn.Module`` following the forward contract."""
    from masklm.models import build_model as _build

    return _build(config)


def load(path, device=None):
    """Load a model folder into a pipeline (fill_mask, score, embed, generate)."""
    from masklm.inference.pipeline import load as _load

    return _load(path, device=device)


def train(config: TrainConfig):
    """Run a training job; returns the run folder."""
    from masklm.training.trainer import train as _train

    return _train(config)


__all__ = [
    "ConfigError", "DataError", "InputError", "MaskLMError", "ModelConfig", "ModelDirError",
    "TrainConfig", "build_model", "load", "train", "__version__",
]
