"""A RunInference model handler for MMV video embeddings in JAX.

Beam ships no JAX handler. This one loads a `VideoEmbedder` once per worker
process (its threads share it, one forward pass at a time) or, with
`model_copies`, in that many model processes per machine that all the SDK
processes send their batches to (pickled: about 13 ms of host time per
32x224x224 clip, more than most GPUs' compute; see bench/README.md, so the
Dataflow GPU profile runs one SDK process per VM instead). Batches have a fixed size,
so XLA compiles one program, and the embedder splits each across all local
devices; give a batch size that is a multiple of the devices, or the embedder
pads. Processes that share a GPU do not each grab 75% of its memory:
`XLA_PYTHON_CLIENT_PREALLOCATE=false` is set before JAX starts in the worker.
Each process keeps its compiled programs in a persistent compilation cache
(`jax_cache_dir`), so that later processes and runs of the same shapes load
them instead of compiling.
"""

import sys
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from mmv_core.embedder_config import EmbedderConfig

if TYPE_CHECKING:
  from mmv_core.embedder import VideoEmbedder

# Set in each worker before JAX initialises its backend (see module docstring).
WORKER_ENV = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


class JaxEmbeddingHandler(ModelHandler[np.ndarray, dict, "VideoEmbedder"]):
  """Clips uint8 [T, H, W, 3] in, {output name: float32 [dim]} out."""

  def __init__(
      self,
      checkpoint_path: str,
      backbone: str | None,
      config: EmbedderConfig,
      outputs: Sequence[str],
      model_copies: int | None = None,
      jax_cache_dir: str | None = None,
      log_prefix: str = "",
  ):
    super().__init__(
        min_batch_size=config.batch_size,
        max_batch_size=config.batch_size,
        model_copies=model_copies,
        env_vars=WORKER_ENV,
    )
    self._checkpoint_path = checkpoint_path
    self._backbone = backbone
    self._config = config
    self._outputs = tuple(outputs)
    self._jax_cache_dir = jax_cache_dir
    self._log_prefix = log_prefix

  def load_model(self) -> "VideoEmbedder":
    # Imported where the model runs, so that importing this module (the job's
    # --help, a launcher) loads no JAX.
    from mmv_core import embedder

    embedder.enable_compilation_cache(self._jax_cache_dir)
    model = embedder.VideoEmbedder.from_checkpoint(
        self._checkpoint_path, self._backbone, self._config
    )
    # Printed, as the job's progress is: on a GPU machine, the devices the
    # model landed on are the first thing to check.
    print(
        f"{self._log_prefix} model: {model.backbone} on {model.num_devices} "
        f"{model.devices[0].platform} device(s), batches of {self._config.batch_size} clips",
        file=sys.stderr,
        flush=True,
    )
    return model

  def run_inference(
      self,
      batch: Sequence[np.ndarray],
      model: "VideoEmbedder",
      inference_args: Mapping[str, Any] | None = None,
  ) -> Iterable[PredictionResult]:
    out = model.embed_clips(np.stack(batch), self._outputs)
    # The clip itself is not carried on: it is megabytes, and nothing downstream reads it.
    return [
        PredictionResult(None, {name: out[name][i] for name in self._outputs})
        for i in range(len(batch))
    ]

  def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
    return sum(clip.nbytes for clip in batch)

  def get_metrics_namespace(self) -> str:
    return "mmv_embed"
