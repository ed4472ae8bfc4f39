"""GPU worker design by numbers: moving clips to a shared model process vs device time.

With `model_copies`, Beam's RunInference keeps one model per VM in a server
process (`apache_beam.utils.multi_process_shared`) and every SDK process sends
it each batch through a proxy: the batch is pickled, sent over a local
socket and unpickled there. This measures, per clip, for uint8 batches of
[--batch_size, 32, 224, 224, 3] (77 MB at 16):
- `pickle`: `pickle.dumps` + `pickle.loads` of the batch in one process;
- `pipe`: `multiprocessing.Pipe` send to another process that receives it;
- `shared_memory`: copying the batch into `multiprocessing.shared_memory`
  and out again (the least any copy between processes costs);
- `beam_proxy`: a call through `MultiProcessShared(..., always_proxy=True)`
  to a stand-in model in a spawned server process, exactly the path of a
  shared-model RunInference call (the stand-in returns 1024 float32 per clip);
and the host's time per clip to cut clips of the batch's shape (20 per video,
as the job does) with 1 and with `os.cpu_count()` threads at once (TensorFlow's
decoding and resizing release the GIL, so threads of one process share the
work); and compares them with the device's time per clip from the published FLOP
counts at `--utilisation` of dense peak (L4, A100, H100 SXM; float32 without
tensor cores, as the protocol runs, and bfloat16).

    PYTHONPATH=. .venv/bin/python bench/gpu_worker_bench.py
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import pathlib
import pickle
import tempfile
import time
import uuid
from multiprocessing import shared_memory

import numpy as np
from apache_beam.utils import multi_process_shared

from bench.shared import synthetic_jpegs
from mmv_core import video
from mmv_core.models import mmv

# Dense peak TFLOP/s per device: (float32 without tensor cores, bfloat16).
PEAK_TFLOPS = {"L4": (30.3, 121.0), "A100": (19.5, 312.0), "H100 SXM": (67.0, 989.0)}
_EMBEDDING_DIM = 1024


class StandInModel:
  """What the shared model process does with a batch, minus the model."""

  def embed_clips(self, clips: np.ndarray, outputs) -> dict[str, np.ndarray]:
    return {name: np.zeros((len(clips), _EMBEDDING_DIM), np.float32) for name in outputs}


def _receive(connection, batches: int) -> None:
  for _ in range(batches):
    connection.recv_bytes()
    connection.send_bytes(b"ok")


def _per_clip_s(fn, batch: np.ndarray, repeats: int) -> float:
  fn(batch)  # Warm up: connections, page faults of the first buffers.
  start = time.perf_counter()
  for _ in range(repeats):
    fn(batch)
  return (time.perf_counter() - start) / repeats / len(batch)


def _through_shared_memory(memory: shared_memory.SharedMemory, batch: np.ndarray):
  """A batch copied into `memory` and out again, as a shared-memory transfer would."""

  def transfer(b):
    shared = np.ndarray(batch.shape, batch.dtype, buffer=memory.buf)
    shared[...] = b
    np.array(shared)

  return transfer


def transfer_costs(batch: np.ndarray, repeats: int) -> dict[str, float]:
  """Seconds per clip of each way of getting `batch` to another process."""
  costs = {
      "pickle": _per_clip_s(lambda b: pickle.loads(pickle.dumps(b, protocol=5)), batch, repeats)
  }

  ours, theirs = multiprocessing.Pipe()
  receiver = multiprocessing.get_context("spawn").Process(
      target=_receive, args=(theirs, repeats + 1)
  )
  receiver.start()

  def through_pipe(b):
    ours.send_bytes(pickle.dumps(b, protocol=5))
    ours.recv_bytes()

  costs["pipe"] = _per_clip_s(through_pipe, batch, repeats)
  receiver.join()

  memory = shared_memory.SharedMemory(create=True, size=batch.nbytes)
  try:
    costs["shared_memory"] = _per_clip_s(_through_shared_memory(memory, batch), batch, repeats)
  finally:
    memory.close()
    memory.unlink()

  handle = multi_process_shared.MultiProcessShared(
      StandInModel,
      tag=f"gpu_worker_bench_{uuid.uuid4().hex}",
      path=tempfile.gettempdir(),
      always_proxy=True,
      spawn_process=True,
  )
  model = handle.acquire()
  costs["beam_proxy"] = _per_clip_s(lambda b: model.embed_clips(b, ("vid_repr",)), batch, repeats)
  return costs


def host_ms_per_clip(
    jpegs: list[bytes], threads: int, num_frames: int, size: int, videos_per_thread: int = 2
) -> float:
  """Wall ms per clip of cutting each video's 20 clips on `threads` threads at once."""
  cut = lambda seed: video.clips_from_jpegs(
      jpegs,
      num_train_clips=10,
      num_test_windows=10,
      num_frames=num_frames,
      stride=2,
      min_resize=size,
      crop_size=size,
      seed=seed,
  )
  cut(0)  # Warm up TensorFlow's kernels.
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    start = time.perf_counter()
    list(pool.map(cut, range(threads * videos_per_thread)))
    return 1e3 * (time.perf_counter() - start) / (threads * videos_per_thread * 20)


def device_s_per_clip(utilisation: float) -> list[dict]:
  """Rows of (backbone, GPU, dtype, seconds per 32x224x224 clip) at `utilisation` of peak."""
  return [
      {
          "backbone": backbone,
          "gpu": gpu,
          "dtype": dtype,
          "device_ms_per_clip": 1e3 * mmv.SPEC_GFLOPS[backbone] * 1e9 / (utilisation * peak * 1e12),
      }
      for backbone in mmv.BACKBONES
      for gpu, peaks in PEAK_TFLOPS.items()
      for dtype, peak in zip(("float32", "bfloat16"), peaks)
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--num_frames", type=int, default=32)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--utilisation", type=float, default=0.4)
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()

  batch = np.random.default_rng(0).integers(
      0, 256, (args.batch_size, args.num_frames, args.size, args.size, 3), dtype=np.uint8
  )
  costs = transfer_costs(batch, args.repeats)
  jpegs = synthetic_jpegs(175)  # 7 s at 25 fps, UCF101's mean length.
  result = {
      "batch_shape": list(batch.shape),
      "batch_mb": batch.nbytes / 1e6,
      "transfer_ms_per_clip": {name: 1e3 * s for name, s in costs.items()},
      "host_ms_per_clip": {
          f"{n}_threads": host_ms_per_clip(jpegs, n, args.num_frames, args.size)
          for n in sorted({1, os.cpu_count()})
      },
      "utilisation": args.utilisation,
      "device": device_s_per_clip(args.utilisation),
  }
  print(json.dumps(result, indent=2))
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
