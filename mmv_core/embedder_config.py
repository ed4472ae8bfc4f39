"""The embedder's settings, free of JAX.

`EmbedderConfig` and the compilation cache's location are read by command
lines (as flag defaults) and launchers that never run the model; keeping them
out of `mmv_core.embedder` lets those start without loading JAX.
"""

import dataclasses
import os

# Overrides the default compilation cache directory (see `compilation_cache_dir`).
CACHE_DIR_ENV = "MMV_JAX_CACHE_DIR"

# The arithmetic of convolutions and matrix products, most exact first.
# float32: the protocol's (and the original's), on every platform, also where
# the accelerator's default is lower (TF32 on NVIDIA GPUs since Ampere,
# bfloat16 passes on TPUs). tensorfloat32: float32 values, TF32 products
# (NVIDIA GPUs; exact float32 elsewhere). bfloat16: weights and activations
# in bfloat16 (accelerators only: slower on CPUs).
PRECISIONS = ("float32", "tensorfloat32", "bfloat16")
# "fastest": the fastest formulation measured for the device's platform;
# "reference": the layers as trained (mmv_core.models.mmv.Formulation).
FORMULATIONS = ("fastest", "reference")


@dataclasses.dataclass(frozen=True)
class EmbedderConfig:
  """How clips are run through the network.

  Attributes:
    batch_size: clips per compiled call; rounded up to a multiple of the
      number of devices. Partial batches are padded, so XLA compiles once.
    precision: one of PRECISIONS; "float32" is the protocol (see
      docs/models.md for the others' effect on the features).
    formulation: one of FORMULATIONS; both give the same features (to a
      relative 1e-5), "reference" is there to measure against.
  """

  batch_size: int = 8
  precision: str = "float32"
  formulation: str = "fastest"

  def __post_init__(self):
    for name, allowed in (("precision", PRECISIONS), ("formulation", FORMULATIONS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, not {getattr(self, name)!r}")


def compilation_cache_dir(cache_dir: str | None = None) -> str:
  """`cache_dir`, else $MMV_JAX_CACHE_DIR, else $XDG_CACHE_HOME/mmv/jax (~/.cache/mmv/jax)."""
  explicit = cache_dir or os.environ.get(CACHE_DIR_ENV)
  if explicit:
    return explicit
  user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(user_cache, "mmv", "jax")
