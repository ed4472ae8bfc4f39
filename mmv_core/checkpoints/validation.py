"""Checkpoint trees checked against a released checkpoint's tree or a parameter manifest.

Problems are listed (missing, unexpected and mis-shaped leaves, at most
`MAX_LISTED_PROBLEMS` of each) so that one error says all that is wrong.
"""

import dataclasses
import functools
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mmv_core.models.names import BACKBONES

from mmv_core.checkpoints.formats import COLLECTIONS, PARAMS, STATE, ArraySpec, SpecTree, Tree
from mmv_core.checkpoints.formats import CheckpointError, WrongBackboneError, flat_name

# At most this many entries of each kind are listed in a validation error.
MAX_LISTED_PROBLEMS = 20
# The released checkpoints' trees, `param_manifest_<backbone>.json` (its README says more).
MANIFESTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'manifests')

# ---------------------------------------------------------------------------
# Validation.


def _describe(shape: Sequence[int], dtype: Any) -> str:
  return f'{np.dtype(dtype).name}[{",".join(str(d) for d in shape)}]'


def _listed(title: str, lines: list[str]) -> list[str]:
  if not lines:
    return []
  shown = [f'  {line}' for line in lines[:MAX_LISTED_PROBLEMS]]
  if len(lines) > MAX_LISTED_PROBLEMS:
    shown.append(f'  ... and {len(lines) - MAX_LISTED_PROBLEMS} more')
  return [f'{title} ({len(lines)}):'] + shown


@dataclasses.dataclass(frozen=True)
class TreeProblems:
  """How a checkpoint's trees differ from the expected ones.

  Attributes:
    missing: `<collection> module/path:name dtype[shape]` expected, absent.
    unexpected: likewise, present but not expected.
    mismatched: present and expected, with another shape or dtype.
    non_finite: present and expected, holding NaN or infinite values (a model
      run with them gives nothing usable).
  """

  missing: list[str]
  unexpected: list[str]
  mismatched: list[str]
  non_finite: list[str]

  @property
  def count(self) -> int:
    """Arrays whose path, shape or dtype differ: 0 when the trees are the model's."""
    return len(self.missing) + len(self.unexpected) + len(self.mismatched)


def tree_problems(
    params: Tree, state: Tree, expected_params: SpecTree, expected_state: SpecTree
) -> TreeProblems:
  """Every path, shape and dtype in which the trees differ from the expected.

  Args:
    params: module path -> {name -> array}, as loaded.
    state: likewise.
    expected_params: module path -> {name -> object with `.shape`, `.dtype`}.
    expected_state: likewise.
  """
  problems = TreeProblems([], [], [], [])
  for collection, actual, expected in (
      (PARAMS, params, expected_params),
      (STATE, state, expected_state),
  ):
    actual_flat = {flat_name(m, n): a for m, leaves in actual.items() for n, a in leaves.items()}
    expected_flat = {
        flat_name(m, n): s for m, leaves in expected.items() for n, s in leaves.items()
    }
    for key in sorted(expected_flat.keys() - actual_flat.keys()):
      spec = expected_flat[key]
      problems.missing.append(f'{collection} {key} {_describe(spec.shape, spec.dtype)}')
    for key in sorted(actual_flat.keys() - expected_flat.keys()):
      array = actual_flat[key]
      problems.unexpected.append(f'{collection} {key} {_describe(array.shape, array.dtype)}')
    for key in sorted(actual_flat.keys() & expected_flat.keys()):
      array, spec = actual_flat[key], expected_flat[key]
      if tuple(array.shape) != tuple(spec.shape) or array.dtype != np.dtype(spec.dtype):
        problems.mismatched.append(
            f'{collection} {key}: checkpoint has '
            f'{_describe(array.shape, array.dtype)}, model expects '
            f'{_describe(spec.shape, spec.dtype)}'
        )
      elif isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating):
        bad = array.size - np.count_nonzero(np.isfinite(array))
        if bad:
          problems.non_finite.append(
              f'{collection} {key}: {bad} of {array.size} values are NaN or infinite'
          )
  return problems


def validate_tree(
    params: Tree, state: Tree, expected_params: SpecTree, expected_state: SpecTree, *, source: str
) -> None:
  """Checks both trees hold exactly the expected paths, shapes and dtypes.

  Args:
    params: module path -> {name -> array}, as loaded.
    state: likewise.
    expected_params: module path -> {name -> object with `.shape`, `.dtype`}.
    expected_state: likewise.
    source: names the checkpoint in the error.

  Raises:
    CheckpointError: one error listing every missing, unexpected,
      mismatched and non-finite `<collection> module/path:name` (the first
      `MAX_LISTED_PROBLEMS` of each kind).
  """
  _raise_if_any(tree_problems(params, state, expected_params, expected_state), source)


def _raise_if_any(problems: TreeProblems, source: str) -> None:
  """Raises `validate_tree`'s CheckpointError if `problems` holds any."""
  if problems.count or problems.non_finite:
    lines = [
        f'{source}: checkpoint does not match the model '
        f'({len(problems.missing)} missing, {len(problems.unexpected)} '
        f'unexpected, {len(problems.mismatched)} mismatched, '
        f'{len(problems.non_finite)} non-finite):'
    ]
    lines += _listed('missing from the checkpoint', problems.missing)
    lines += _listed('unexpected in the checkpoint', problems.unexpected)
    lines += _listed('wrong shape or dtype', problems.mismatched)
    lines += _listed('NaN or infinite values', problems.non_finite)
    raise CheckpointError('\n'.join(lines))


def checkpoint_shapes(backbone: str) -> tuple[SpecTree, SpecTree]:
  """The (params, state) specs of `backbone`'s released checkpoint.

  Read from its manifest in `MANIFESTS_DIR`, which the tests check our model
  builds exactly (`mmv.param_shapes`, which traces the model: seconds, and
  JAX loaded). Each call gets its own dicts.
  """
  if backbone not in BACKBONES:
    raise ValueError(f'unknown backbone {backbone!r}; expected one of {BACKBONES}')
  return tuple(
      {module: dict(leaves) for module, leaves in tree.items()}
      for tree in _shipped_manifest_shapes(backbone)
  )


def manifest_path(backbone: str) -> str:
  """The shipped `param_manifest_<backbone>.json` of `backbone`'s released checkpoint."""
  return os.path.join(MANIFESTS_DIR, f'param_manifest_{backbone}.json')


@functools.cache
def _shipped_manifest_shapes(backbone: str) -> tuple[SpecTree, SpecTree]:
  return manifest_shapes(manifest_path(backbone))


def problems_per_backbone(params: Tree, state: Tree) -> dict[str, int]:
  """Backbone -> number of arrays in which the trees differ from its model.

  The expected trees are the released checkpoints' (`checkpoint_shapes`),
  which the tests check our models build. A backbone with
  0 is the one the trees are; at most one can be, since the three models'
  trees differ.
  """
  return {
      backbone: tree_problems(params, state, *checkpoint_shapes(backbone)).count
      for backbone in BACKBONES
  }


def validate_backbone(params: Tree, state: Tree, backbone: str, *, source: str) -> None:
  """`validate_tree` against `backbone`'s model, saying so when the trees are another's.

  A checkpoint of another backbone (a wrong `--backbone`, a renamed file)
  differs in hundreds of paths; naming the backbone it is says more in one
  line than listing them.

  Raises:
    WrongBackboneError: the trees are exactly another backbone's model's.
    CheckpointError: as `validate_tree`.
  """
  problems = tree_problems(params, state, *checkpoint_shapes(backbone))
  if problems.count:
    actual = exact_backbone(problems_per_backbone(params, state))
    if actual:
      raise WrongBackboneError(
          f'{source}: a {actual} checkpoint (its parameter tree is exactly that '
          f"model's), not {backbone}",
          actual=actual,
      )
  _raise_if_any(problems, source)


def exact_backbone(problems: Mapping[str, int]) -> str | None:
  """The backbone with no differing array in `problems_per_backbone`'s count, or None."""
  return next((backbone for backbone, count in problems.items() if count == 0), None)


def manifest_shapes(
    manifest_path: str | os.PathLike[str],
) -> tuple[dict[str, dict[str, ArraySpec]], dict[str, dict[str, ArraySpec]]]:
  """(params, state) specs from a `param_manifest_<config>.json` file."""
  with open(manifest_path) as f:
    manifest = json.load(f)
  trees = []
  for collection in COLLECTIONS:
    if collection not in manifest:
      raise CheckpointError(f'{manifest_path}: manifest has no {collection!r}')
    trees.append(
        {
            module: {
                name: ArraySpec(tuple(leaf['shape']), np.dtype(leaf['dtype']))
                for name, leaf in leaves.items()
            }
            for module, leaves in manifest[collection].items()
        }
    )
  return trees[0], trees[1]


def count_values(tree: Tree) -> int:
  """Number of scalars in all arrays of `tree`."""
  return sum(array.size for leaves in tree.values() for array in leaves.values())
