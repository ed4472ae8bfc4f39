"""MMV video networks: models, checkpoints, video processing and evaluation.

The public API, for notebooks and scripts:

  `VideoEmbedder`, `EmbedderConfig`  a checkpoint in, video embeddings out
                                     (`mmv_core.embedder`, `.embedder_config`);
  `load_video`                       a video file or URL -> the protocol's
                                     frames (`mmv_core.video.video_file`);
  `load_embeddings`                  an embedding job's output -> numpy arrays
                                     (`mmv_core.embeddings.reader`).

They are imported on first use (PEP 562), so `import mmv_core` and the
ingestion modules stay free of JAX on workers that never embed.
"""

import importlib

# Public name -> module that defines it.
_PUBLIC_API = {
    "VideoEmbedder": "mmv_core.embedder",
    "EmbedderConfig": "mmv_core.embedder_config",
    "load_video": "mmv_core.video.video_file",
    "load_embeddings": "mmv_core.embeddings.reader",
}

__all__ = sorted(_PUBLIC_API)  # noqa: PLE0605  (the names are _PUBLIC_API's keys)


def __getattr__(name: str):
  if name not in _PUBLIC_API:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(_PUBLIC_API[name]), name)
  globals()[name] = value  # Later lookups skip this function.
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})
