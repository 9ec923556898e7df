"""Fine-tuning: sequence classification, regression and BIO token classification on a pretrained encoder.

``finetune(model_dir, FinetuneArgs(...))`` trains and saves the best model folder; ``masklm.load`` on that
folder gives a pipeline whose ``classify`` / ``tag`` use the head. See ``heads`` for the folder layout,
``train`` for the recipe, ``data`` for the file formats and ``metrics`` for the scores.
"""

from masklm.finetune.folder import load_finetuned, load_folder
from masklm.finetune.heads import FineTunedConfig, FineTunedModel, build_finetuned
from masklm.finetune.train import FinetuneArgs, finetune

__all__ = ["FineTunedConfig", "FineTunedModel", "FinetuneArgs", "build_finetuned", "finetune", "load_finetuned",
           "load_folder"]
