"""MMV checkpoints: loaded safely, validated against a backbone, converted, faked.

Modules:
  `formats`             the released dill pickles (read without running their
                        code) and the `.npz` we convert them to;
  `validation`          trees checked against a backbone's model or a
                        parameter manifest, and which backbone a tree is;
  `random_checkpoint`   random checkpoints in the released format;
  `cli`                 `python -m mmv_core.checkpoints convert|random|inspect`.

The names below are re-exported here: `checkpoints.load_checkpoint(path)`.
"""

from mmv_core.checkpoints.cli import main
from mmv_core.checkpoints.formats import ArraySpec, Checkpoint, CheckpointError
from mmv_core.checkpoints.formats import WrongBackboneError, infer_backbone, load_checkpoint
from mmv_core.checkpoints.formats import save_npz
from mmv_core.checkpoints.random_checkpoint import random_trees, write_random_checkpoint
from mmv_core.checkpoints.validation import MAX_LISTED_PROBLEMS, count_values, manifest_shapes
from mmv_core.checkpoints.validation import checkpoint_shapes, problems_per_backbone
from mmv_core.checkpoints.validation import validate_backbone, validate_tree

__all__ = [
    "MAX_LISTED_PROBLEMS",
    "ArraySpec",
    "Checkpoint",
    "CheckpointError",
    "WrongBackboneError",
    "count_values",
    "infer_backbone",
    "load_checkpoint",
    "main",
    "manifest_shapes",
    "checkpoint_shapes",
    "problems_per_backbone",
    "random_trees",
    "save_npz",
    "validate_backbone",
    "validate_tree",
    "write_random_checkpoint",
]
