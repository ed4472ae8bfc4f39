"""Each backbone alone at the protocol's clip size, in the reference and the fastest formulation.

For every backbone, in one process: clips/s, GFLOP/s (XLA's FLOP count of the
reference, the same work in both formulations) and their share of this
machine's matrix-product peak in `--precision` (float32 by default), measured
in the same run on one large product. The two formulations alternate, each timed `--repeats` times, and
the best time of each counts, so that drift on a shared machine hits both.
Each formulation's features are checked against the reference formulation's
on this machine's CPU in float32 (the protocol), the largest relative error
printed beside the throughput: on a GPU this is the error of the GPU's
embeddings against CPU ones.

    .venv/bin/python bench/model_bench.py --json_out bench/results/model.json

Weights are random (a real checkpoint's values do not change the time).
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmv_core import checkpoints
from mmv_core.embedder import PRECISION_SETTINGS, VideoEmbedder
from mmv_core.embedder_config import FORMULATIONS, PRECISIONS, EmbedderConfig
from mmv_core.models import mmv

# Side of the square matrix product that measures the peak: compute bound there.
_PEAK_SIZE = {"cpu": 2048}
_PEAK_SIZE_ACCELERATOR = 8192
_CHECKED_CLIPS = 2


def matmul_peak_gflops(precision: str, repeats: int = 5) -> float:
  """Best GFLOP/s of a square matrix product in `precision` (an EmbedderConfig precision)."""
  dtype, matmul_precision = PRECISION_SETTINGS[precision]
  size = _PEAK_SIZE.get(jax.devices()[0].platform, _PEAK_SIZE_ACCELERATOR)
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  product = jax.jit(lambda x: jnp.dot(x, x, precision=matmul_precision))
  product(a).block_until_ready()
  best = min(_timed(lambda: product(a).block_until_ready()) for _ in range(repeats))
  return 2 * size**3 / best / 1e9


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
  return float(np.abs(got - want).max() / np.abs(want).max())


def bench_backbone(backbone: str, args, peak_gflops: float) -> dict:
  params, state = checkpoints.random_trees(*checkpoints.checkpoint_shapes(backbone), seed=0)
  clips = np.random.default_rng(0).integers(
      0, 256, (args.num_clips, args.num_frames, args.size, args.size, 3), np.uint8
  )
  cpu_reference = VideoEmbedder(
      params,
      state,
      backbone,
      EmbedderConfig(_CHECKED_CLIPS, formulation="reference"),
      devices=jax.devices("cpu")[:1],
  ).embed_clips(clips[:_CHECKED_CLIPS])[mmv.VID_REPR]
  embedders = {
      formulation: VideoEmbedder(
          params, state, backbone, EmbedderConfig(args.batch_size, args.precision, formulation)
      )
      for formulation in FORMULATIONS
  }
  errors = {
      name: _relative_error(
          embedder.embed_clips(clips[:_CHECKED_CLIPS])[mmv.VID_REPR], cpu_reference
      )
      for name, embedder in embedders.items()
  }
  for embedder in embedders.values():  # Compiles the full batch's program.
    embedder.embed_clips(clips[: args.batch_size])
  seconds = {name: [] for name in embedders}
  for _ in range(args.repeats):
    for name, embedder in embedders.items():
      seconds[name].append(_timed(lambda e=embedder: e.embed_clips(clips)))
  flops = mmv.vid_repr_flops(backbone, args.num_frames, args.size)
  runs = {}
  for name, times in seconds.items():
    gflops_per_s = flops * args.num_clips / min(times) / 1e9
    runs[name] = {
        "formulation": str(embedders[name].formulation),
        "clips_per_s": args.num_clips / min(times),
        "seconds": times,
        "gflops_per_s": gflops_per_s,
        "share_of_matmul_peak": gflops_per_s / peak_gflops,
        "max_relative_error_vs_cpu_float32": errors[name],
    }
  return {
      "backbone": backbone,
      "gflops_per_clip": flops / 1e9,
      "runs": runs,
      "fastest_vs_reference": min(seconds["reference"]) / min(seconds["fastest"]),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0], allow_abbrev=False)
  parser.add_argument("--backbones", default=",".join(mmv.BACKBONES))
  parser.add_argument("--num_clips", type=int, default=4, help="clips per timed pass")
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--num_frames", type=int, default=32)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--precision", choices=PRECISIONS, default="float32")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()
  peak = matmul_peak_gflops(args.precision)
  device = jax.devices()[0].device_kind
  print(f"{device}: {args.precision} matmul peak {peak:.0f} GFLOP/s", flush=True)
  print("backbone formulation: clips/s, GFLOP/s, share of peak, max rel. error vs CPU float32")
  results = []
  for backbone in args.backbones.split(","):
    result = bench_backbone(backbone, args, peak)
    results.append(result)
    for name, run in result["runs"].items():
      print(
          f"{backbone} {name}: {run['clips_per_s']:.3f}, {run['gflops_per_s']:.0f}, "
          f"{run['share_of_matmul_peak']:.0%}, {run['max_relative_error_vs_cpu_float32']:.1e}"
      )
    print(f"{backbone} fastest / reference: {result['fastest_vs_reference']:.2f}x", flush=True)
  if args.json_out:
    record = {
        "device": device,
        "matmul_peak_gflops": peak,
        "args": vars(args),
    }
    with open(args.json_out, "w") as f:
      json.dump({**record, "backbones": results}, f, indent=2)


if __name__ == "__main__":
  main()
