"""Random checkpoints in the released pickle format, for the demo, tests and benchmarks."""

import os
import pickle
from typing import Any

from apache_beam.io.filesystems import FileSystems
import dill
import numpy as np

from mmv_core.checkpoints.formats import HAIKU_DATA_STRUCTURES, PARAMS, STATE, SpecTree, Tree

# Moving-average counter stored in random checkpoints: a plausible count for
# a trained model (evaluation reads only `average`).
RANDOM_EMA_COUNTER = 1000


# ---------------------------------------------------------------------------
# Random checkpoints in the released format.


def _random_array(rng: np.random.Generator, module: str, name: str, spec: Any) -> np.ndarray:
  """A value for one leaf that keeps activations bounded through a deep net.

  Weights (rank >= 2) ~ N(0, 1/fan_in), fan_in = product of all dims but the
  last; BatchNorm scale ~ 1 and offset ~ 0; moving-average variances in
  [0.5, 1.5] and means ~ 0; biases small; integer leaves (counters) a count.
  """
  shape, dtype = tuple(spec.shape), np.dtype(spec.dtype)
  if dtype.kind in 'iu':
    return np.full(shape, RANDOM_EMA_COUNTER, dtype)

  def normal(std):
    return (std * rng.standard_normal(shape, np.float32)).astype(dtype)

  if name in ('average', 'hidden'):
    if module.rsplit('/', 1)[-1].startswith('var_ema'):
      return rng.uniform(0.5, 1.5, shape).astype(dtype)
    return normal(0.1)
  if name == 'scale':
    return (1 + normal(0.1)).astype(dtype)
  if name == 'offset':
    return normal(0.1)
  if len(shape) >= 2:
    return normal(1 / np.sqrt(np.prod(shape[:-1])))
  return normal(0.01)


def random_trees(
    expected_params: SpecTree, expected_state: SpecTree, seed: int = 0
) -> tuple[Tree, Tree]:
  """(params, state) of random arrays with the expected shapes and dtypes."""
  rng = np.random.default_rng(seed)
  trees = []
  for expected in (expected_params, expected_state):
    trees.append(
        {
            module: {
                name: _random_array(rng, module, name, expected[module][name])
                for name in sorted(expected[module])
            }
            for module in sorted(expected)
        }
    )
  return trees[0], trees[1]


class _HaikuGlobal:
  """A reference to a haiku global, written into a pickle by name only."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, *args, **kwargs):
    raise TypeError(f'{HAIKU_DATA_STRUCTURES}.{self.name} is a pickle reference')


_FLAT_MAPPING = _HaikuGlobal('FlatMapping')


class _FlatMappingToPickle(dict):
  """A dict pickled the way haiku 0.0.2-0.0.3 pickled a `FlatMapping`."""

  def __reduce__(self):
    return _FLAT_MAPPING, (dict(self),)


def _as_flat_mappings(tree: Tree) -> _FlatMappingToPickle:
  return _FlatMappingToPickle(
      {module: _FlatMappingToPickle(leaves) for module, leaves in tree.items()}
  )


class _CheckpointPickler(dill.Pickler):
  """dill Pickler that writes `_HaikuGlobal`s as globals, importing nothing."""

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _HaikuGlobal):
      self.write(pickle.GLOBAL + f'{HAIKU_DATA_STRUCTURES}\n{obj.name}\n'.encode('ascii'))
      return
    super().save(obj, save_persistent_id)


def write_random_checkpoint(
    path: str | os.PathLike[str],
    expected_params: SpecTree,
    expected_state: SpecTree,
    seed: int = 0,
    *,
    legacy_containers: bool = False,
) -> None:
  """Writes a random checkpoint as a dill pickle of `{'params', 'state'}`.

  Args:
    path: local path or `gs://...`.
    expected_params: module path -> {name -> object with `.shape`, `.dtype`}.
    expected_state: likewise.
    seed: seeds the values.
    legacy_containers: wrap both levels of each tree in haiku's old
      `FlatMapping`, as checkpoints written in 2020 may do.
  """
  params, state = random_trees(expected_params, expected_state, seed)
  if legacy_containers:
    params, state = _as_flat_mappings(params), _as_flat_mappings(state)
  with FileSystems.create(os.fspath(path)) as f:
    _CheckpointPickler(f).dump({PARAMS: params, STATE: state})
