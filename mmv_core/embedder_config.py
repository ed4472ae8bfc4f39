"""The embedder's settings, free of JAX.

`EmbedderConfig` and the compilation cache's location are read by command
lines (as flag defaults) and launchers that never run the model; keeping them
out of `mmv_core.embedder` lets those start without loading JAX.
"""

import dataclasses
import os

# Overrides the default compilation cache directory (see `compilation_cache_dir`).
CACHE_DIR_ENV = "MMV_JAX_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class EmbedderConfig:
  """How clips are run through the network.

  Attributes:
    batch_size: clips per compiled call; rounded up to a multiple of the
      number of devices. Partial batches are padded, so XLA compiles once.
    compute_dtype: "float32" (the protocol) or "bfloat16" (accelerators only;
      see README for its effect on accuracy).
  """

  batch_size: int = 8
  compute_dtype: str = "float32"


def compilation_cache_dir(cache_dir: str | None = None) -> str:
  """`cache_dir`, else $MMV_JAX_CACHE_DIR, else $XDG_CACHE_HOME/mmv/jax (~/.cache/mmv/jax)."""
  explicit = cache_dir or os.environ.get(CACHE_DIR_ENV)
  if explicit:
    return explicit
  user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(user_cache, "mmv", "jax")
