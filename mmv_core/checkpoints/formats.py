"""Stage: MMV checkpoints, loaded safely, validated, converted and faked.

The released MMV checkpoints (`mmv_s3d.pkl`, `mmv_tsm_resnet_x1.pkl`,
`mmv_tsm_resnet_x2.pkl`) are dill pickles of `{'params': ..., 'state': ...}`,
each a two-level mapping `module path -> {name -> array}` written by dm-haiku
in 2020, possibly holding haiku's old immutable containers (`FlatMapping`,
`frozendict`) instead of dicts.

Unpickling runs code named by the file, so this module never hands a file to
`pickle.load`: `_SafeUnpickler` resolves only an explicit allow-list of
globals (numpy array reconstruction, dill's array helper, plain containers)
and maps haiku's container names onto a plain-dict stand-in, without
importing haiku. The converted format is `.npz` (no pickle at all), keyed
`<collection>/<module path>:<name>`.

Trees here are plain `dict[str, dict[str, np.ndarray]]`; "expected" trees
hold anything with `.shape` and `.dtype` (`ArraySpec`, `jax.ShapeDtypeStruct`).

Command line (`python -m mmv_core.checkpoints ...`):
  convert IN OUT.npz            pickle (or npz) -> npz
  random --backbone B OUT.pkl   random checkpoint in the released format
  inspect PATH                  backbone (from the parameter tree, checked
                                against the file name), sizes and sha256
"""

import argparse
import codecs
import collections.abc
import dataclasses
import hashlib
import io
import json
import os
import pickle
import sys
from typing import Any, Mapping, Sequence

from apache_beam.io.filesystems import FileSystems
import dill
import numpy as np

from mmv_core import sources
from mmv_core.models.names import BACKBONES

PARAMS = 'params'
STATE = 'state'
COLLECTIONS = (PARAMS, STATE)

# Module path of haiku's containers in pickles written by haiku 0.0.1-0.0.3.
HAIKU_DATA_STRUCTURES = 'haiku._src.data_structures'

# Separates the module path from the parameter name in flat keys; haiku
# module paths use '/' and '~' but never ':'.
NAME_SEPARATOR = ':'

# At most this many entries of each kind are listed in a validation error.
MAX_LISTED_PROBLEMS = 20

# Moving-average counter stored in random checkpoints: a plausible count for
# a trained model (evaluation reads only `average`).
RANDOM_EMA_COUNTER = 1000

_ZIP_MAGIC = b'PK\x03\x04'

Tree = dict[str, dict[str, np.ndarray]]
SpecTree = Mapping[str, Mapping[str, Any]]


class CheckpointError(ValueError):
  """A checkpoint cannot be read, is unsafe, or does not fit the model."""


class WrongBackboneError(CheckpointError):
  """The checkpoint is exactly another backbone's (`actual`)."""

  def __init__(self, message: str, actual: str):
    super().__init__(message)
    self.actual = actual


@dataclasses.dataclass(frozen=True)
class ArraySpec:
  """Expected shape and dtype of one checkpoint array."""

  shape: tuple[int, ...]
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """A loaded checkpoint.

  Attributes:
    params: module path -> {name -> array}, e.g. float32 [7, 7, 3, 64].
    state: module path -> {name -> array} (BatchNorm moving averages: float32
      `average`/`hidden`, int32 [] `counter`).
    path: where it was read from.
    sha256: hex digest of the file's bytes.
  """

  params: Tree
  state: Tree
  path: str
  sha256: str


# ---------------------------------------------------------------------------
# Safe unpickling.


class _LegacyHaikuMapping(dict):
  """Plain-dict stand-in for haiku's old `FlatMapping` and `frozendict`.

  Old pickles rebuild these either by calling the class on a mapping
  (`FlatMapping.__reduce__`, `frozendict.__reduce__`, `to_immutable_dict`),
  which `dict.__init__` handles, or by `NEWOBJ` followed by `BUILD` with the
  instance's slots, which `__setstate__` handles.
  """

  def __setstate__(self, state: Any) -> None:
    dict_state, slot_state = state if isinstance(state, tuple) else (state, None)
    fields = {**(dict_state or {}), **(slot_state or {})}
    for storage_field in ('_storage', '_mapping'):
      if isinstance(fields.get(storage_field), collections.abc.Mapping):
        self.update(fields[storage_field])
        return
    raise pickle.UnpicklingError(f'unrecognised state of a haiku mapping (fields {sorted(fields)})')


# numpy's array `_reconstruct`, whichever private module holds it.
_RECONSTRUCT_ARRAY = np.empty(0).__reduce__()[0]


def _dill_create_array(reconstruct, args, state, npdict=None) -> np.ndarray:
  """Stand-in for `dill._dill._create_array`, limited to plain ndarrays."""
  if reconstruct is not _RECONSTRUCT_ARRAY:
    raise pickle.UnpicklingError(
        f'dill array helper called with {reconstruct!r}, not numpy _reconstruct'
    )
  if npdict:
    raise pickle.UnpicklingError('arrays with instance attributes are refused')
  array = reconstruct(*args)
  array.__setstate__(state)
  return array


def _latin1_encode(text: str, encoding: str) -> bytes:
  """Stand-in for `_codecs.encode`, which protocol-2 pickles use for bytes."""
  if encoding != 'latin1':
    raise pickle.UnpicklingError(f'refused codec {encoding!r}')
  return codecs.encode(text, 'latin1')


def _allowed_globals() -> dict[tuple[str, str], Any]:
  """(module, name) -> object, for every global a checkpoint may name."""
  scalar = np.float32(0).__reduce__()[0]
  frombuffer = np.empty(1).__reduce_ex__(5)[0]
  allowed = {
      ('numpy', 'ndarray'): np.ndarray,
      ('numpy', 'dtype'): np.dtype,
      ('dill._dill', '_create_array'): _dill_create_array,
      ('_codecs', 'encode'): _latin1_encode,
      ('builtins', 'dict'): dict,
      ('collections', 'OrderedDict'): collections.OrderedDict,
  }
  # numpy 1.x wrote `numpy.core...`, numpy 2.x writes `numpy._core...`.
  for core in ('numpy.core', 'numpy._core'):
    allowed[(f'{core}.multiarray', '_reconstruct')] = _RECONSTRUCT_ARRAY
    allowed[(f'{core}.multiarray', 'scalar')] = scalar
    allowed[(f'{core}.numeric', '_frombuffer')] = frombuffer
  for container in ('FlatMapping', 'FlatMap', 'frozendict', 'to_immutable_dict'):
    allowed[(HAIKU_DATA_STRUCTURES, container)] = _LegacyHaikuMapping
  return allowed


_ALLOWED_GLOBALS = _allowed_globals()


class _RefusedGlobal(pickle.UnpicklingError):
  """The pickle names a global outside the allow-list."""

  def __init__(self, module: str, name: str):
    super().__init__(f'{module}.{name}')
    self.qualified_name = f'{module}.{name}'


class _SafeUnpickler(pickle.Unpickler):
  """Unpickler resolving only `_ALLOWED_GLOBALS`; refuses before any call."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise _RefusedGlobal(module, name) from None


def _safe_unpickle(data: bytes, path: str) -> Any:
  """Unpickles `data` with `_SafeUnpickler`; every failure names `path`."""
  try:
    return _SafeUnpickler(io.BytesIO(data)).load()
  except _RefusedGlobal as e:
    raise CheckpointError(
        f'{path}: refused to unpickle global {e.qualified_name!r}: only numpy '
        'arrays, plain containers and haiku mappings are allowed in a '
        'checkpoint'
    ) from None
  except EOFError:
    raise CheckpointError(
        f'{path}: truncated pickle ({len(data)} bytes end before its STOP opcode)'
    ) from None
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'{path}: not a readable checkpoint pickle ({type(e).__name__}: {e}); '
        f'file starts with {data[:16]!r}'
    ) from None


# ---------------------------------------------------------------------------
# Tree structure.


def _flat_name(module: str, name: str) -> str:
  return f'{module}{NAME_SEPARATOR}{name}'


def _as_tree(value: Any, path: str, collection: str) -> Tree:
  """Checks `value` is module -> {name -> numeric array}; returns plain dicts."""
  if not isinstance(value, collections.abc.Mapping):
    raise CheckpointError(
        f'{path}: {collection!r} is a {type(value).__name__}, expected a '
        'mapping module path -> {name -> array}'
    )
  tree = {}
  for module, leaves in value.items():
    is_module = (
        isinstance(module, str)
        and isinstance(leaves, collections.abc.Mapping)
        and all(isinstance(name, str) for name in leaves)
    )
    if not is_module:
      raise CheckpointError(
          f'{path}: {collection}[{module!r}] is a {type(leaves).__name__}, '
          'expected a mapping name (str) -> array'
      )
    tree[module] = {}
    for name, leaf in leaves.items():
      if not isinstance(leaf, (np.ndarray, np.generic)):
        raise CheckpointError(
            f'{path}: {collection} {_flat_name(module, name)} is a '
            f'{type(leaf).__name__}, expected a numpy array'
        )
      array = np.asarray(leaf)
      if array.dtype.kind not in 'biuf':
        raise CheckpointError(
            f'{path}: {collection} {_flat_name(module, name)} has dtype '
            f'{array.dtype}, expected a numeric dtype'
        )
      tree[module][str(name)] = array
  return tree


def _split_collections(raw: Any, path: str) -> tuple[Tree, Tree]:
  """(params, state) of an unpickled `{'params', 'state'}` mapping."""
  if not isinstance(raw, collections.abc.Mapping):
    raise CheckpointError(
        f'{path}: top level is a {type(raw).__name__}, expected a mapping '
        "with 'params' and 'state'"
    )
  missing = [c for c in COLLECTIONS if c not in raw]
  if missing:
    raise CheckpointError(f'{path}: top level lacks {missing}; it has keys {sorted(map(str, raw))}')
  return _as_tree(raw[PARAMS], path, PARAMS), _as_tree(raw[STATE], path, STATE)


# ---------------------------------------------------------------------------
# npz format.


def _npz_key(collection: str, module: str, name: str) -> str:
  return f'{collection}/{_flat_name(module, name)}'


def _flatten(params: Tree, state: Tree) -> dict[str, np.ndarray]:
  """{'<collection>/<module path>:<name>': array} for both collections."""
  flat = {}
  for collection, tree in zip(COLLECTIONS, (params, state)):
    for module, leaves in tree.items():
      for name, array in leaves.items():
        if NAME_SEPARATOR in name:
          raise CheckpointError(
              f'cannot flatten {collection} {module!r}: name {name!r} contains '
              f'{NAME_SEPARATOR!r}'
          )
        flat[_npz_key(collection, module, name)] = array
  return flat


def _unflatten(flat: Mapping[str, np.ndarray], path: str) -> tuple[Tree, Tree]:
  """Inverse of `_flatten`."""
  trees = {collection: {} for collection in COLLECTIONS}
  for key, array in flat.items():
    collection, _, flat_name = key.partition('/')
    module, separator, name = flat_name.rpartition(NAME_SEPARATOR)
    if collection not in trees or not separator or not module:
      raise CheckpointError(f'{path}: npz key {key!r} is not <params|state>/<module path>:<name>')
    trees[collection].setdefault(module, {})[name] = array
  return trees[PARAMS], trees[STATE]


def _load_npz(data: bytes, path: str) -> tuple[Tree, Tree]:
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      flat = {key: npz[key] for key in npz.files}
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f'{path}: not a readable npz checkpoint ({type(e).__name__}: {e})'
    ) from None
  params, state = _unflatten(flat, path)
  return _as_tree(params, path, PARAMS), _as_tree(state, path, STATE)


def save_npz(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> None:
  """Writes `checkpoint` as an uncompressed npz (local path or `gs://`)."""
  flat = _flatten(checkpoint.params, checkpoint.state)
  with FileSystems.create(os.fspath(path)) as f:
    np.savez(f, **flat)


# ---------------------------------------------------------------------------
# Loading.


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
  """Loads a released-format pickle or a converted npz, without running code.

  Args:
    path: local path, `gs://...` or `http(s)://...`.

  Returns:
    The checkpoint, its trees as plain dicts of numpy arrays.

  Raises:
    CheckpointError: unreadable, truncated, not a checkpoint, naming a global
      outside the allow-list, or not `{'params', 'state'}` of arrays.
  """
  path = os.fspath(path)
  try:
    data = sources.read_bytes(path)
  except sources.SourceError as e:
    raise CheckpointError(f'cannot read checkpoint {path}: {e.__cause__ or e}') from None
  digest = hashlib.sha256(data).hexdigest()
  if data.startswith(_ZIP_MAGIC):
    params, state = _load_npz(data, path)
  else:
    params, state = _split_collections(_safe_unpickle(data, path), path)
  return Checkpoint(params=params, state=state, path=path, sha256=digest)


def infer_backbone(path: str | os.PathLike[str]) -> str:
  """One of `BACKBONES`, read from the checkpoint's file name."""
  file_name = os.path.basename(os.fspath(path)).lower()
  # A name holding several tags takes the last in `BACKBONES`, the
  # largest model.
  for backbone in reversed(BACKBONES):
    if backbone in file_name:
      return backbone
  raise CheckpointError(
      f'{path}: cannot infer the visual backbone: the file name contains none '
      f'of {", ".join(BACKBONES)}'
  )


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
    actual_flat = {_flat_name(m, n): a for m, leaves in actual.items() for n, a in leaves.items()}
    expected_flat = {
        _flat_name(m, n): s for m, leaves in expected.items() for n, s in leaves.items()
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


def model_shapes(backbone: str) -> tuple[SpecTree, SpecTree]:
  """The (params, state) specs of `backbone`'s model: `mmv.param_shapes`.

  The model is imported here, on first need: it loads JAX and haiku, which
  loading, converting and faking checkpoints do without.
  """
  from mmv_core.models import mmv

  return mmv.param_shapes(backbone)


def problems_per_backbone(params: Tree, state: Tree) -> dict[str, int]:
  """Backbone -> number of arrays in which the trees differ from its model.

  The expected trees are the models' own (`model_shapes`), which the
  tests check against the released checkpoints' manifests. A backbone with
  0 is the one the trees are; at most one can be, since the three models'
  trees differ.
  """
  return {
      backbone: tree_problems(params, state, *model_shapes(backbone)).count
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
  problems = tree_problems(params, state, *model_shapes(backbone))
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


# ---------------------------------------------------------------------------
# Command line.


def _expected_trees(backbone: str, manifest: str | None):
  if manifest:
    return manifest_shapes(manifest)
  return model_shapes(backbone)


def _backbone_report(checkpoint: Checkpoint) -> tuple[list[str], str | None]:
  """Which backbone the parameter tree is, and whether the file name agrees.

  The backbone reported is the one whose model the trees match exactly, not
  the one the file name names: a renamed file must not pass for another
  model. Loading without `--backbone` goes by the file name, so a name that
  disagrees with the trees is a problem.

  Returns:
    Report lines, and the problem (None when there is none).
  """
  problems = problems_per_backbone(checkpoint.params, checkpoint.state)
  tree_backbone = exact_backbone(problems)
  try:
    named_backbone = infer_backbone(checkpoint.path)
  except CheckpointError:
    named_backbone = None
  if tree_backbone:
    lines = [f'backbone: {tree_backbone} (the parameter tree is exactly its model)']
  else:
    nearest = min(problems, key=problems.get)
    lines = [
        f'backbone: none: the parameter tree matches none of '
        f'{", ".join(BACKBONES)} (nearest: {nearest}, '
        f'{problems[nearest]} arrays missing, unexpected or misshapen)'
    ]
  problem = None
  if named_backbone is None:
    lines.append('file name: names no backbone')
    if not tree_backbone:
      problem = f'{checkpoint.path}: not a checkpoint of any MMV backbone'
  elif named_backbone == tree_backbone:
    lines.append(f'file name: names {named_backbone}, in agreement')
  else:
    problem = (
        f'{checkpoint.path}: the file name names {named_backbone}, but '
        'the parameter tree '
        + (f'is that of {tree_backbone}' if tree_backbone else 'matches no backbone')
    )
    lines.append(
        f'file name: names {named_backbone}, which DISAGREES with the '
        'parameter tree' + (f'; load it with --backbone {tree_backbone}' if tree_backbone else '')
    )
  return lines, problem


def _describe_checkpoint(checkpoint: Checkpoint, backbone_lines: Sequence[str]) -> list[str]:
  lines = [f'path: {checkpoint.path}', f'sha256: {checkpoint.sha256}', *backbone_lines]
  for collection, tree in zip(COLLECTIONS, (checkpoint.params, checkpoint.state)):
    arrays = sum(len(leaves) for leaves in tree.values())
    lines.append(
        f'{collection}: {len(tree)} modules, {arrays} arrays, ' f'{count_values(tree):,} values'
    )
  return lines


# As the jobs' (`pipelines.common.USAGE_ERROR_STATUS`) and argparse's.
_USAGE_ERROR_STATUS = 2


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns its exit status: 0, or 2 for a checkpoint that is unreadable
  or does not match (the reason is one line on stderr, as the jobs give it)."""
  parser = argparse.ArgumentParser(
      allow_abbrev=False,
      prog='python -m mmv_core.checkpoints',
      description='MMV checkpoints: convert, inspect and validate, or write random ones.',
  )
  commands = parser.add_subparsers(dest='command', required=True)
  convert = commands.add_parser('convert', allow_abbrev=False, help='pickle -> npz')
  convert.add_argument('source')
  convert.add_argument('destination')
  random_ = commands.add_parser('random', allow_abbrev=False, help='write a random checkpoint')
  random_.add_argument('--backbone', choices=BACKBONES, required=True)
  random_.add_argument(
      '--manifest', help='param_manifest_<config>.json to use instead of building the model'
  )
  random_.add_argument('--seed', type=int, default=0)
  random_.add_argument(
      '--legacy-containers', action='store_true', help="use haiku's old FlatMapping containers"
  )
  random_.add_argument('destination')
  inspect_ = commands.add_parser('inspect', allow_abbrev=False, help='describe a checkpoint')
  inspect_.add_argument('source')
  inspect_.add_argument(
      '--manifest', help="validate against this manifest instead of the backbones' models"
  )
  args = parser.parse_args(argv)

  try:
    if args.command == 'convert':
      checkpoint = load_checkpoint(args.source)
      save_npz(checkpoint, args.destination)
      backbone_lines, _ = _backbone_report(checkpoint)
      print('\n'.join(_describe_checkpoint(checkpoint, backbone_lines)))
      print(f'written: {args.destination}')
    elif args.command == 'random':
      expected_params, expected_state = _expected_trees(args.backbone, args.manifest)
      write_random_checkpoint(
          args.destination,
          expected_params,
          expected_state,
          args.seed,
          legacy_containers=args.legacy_containers,
      )
      print(f'written: {args.destination}')
    else:
      checkpoint = load_checkpoint(args.source)
      backbone_lines, backbone_problem = _backbone_report(checkpoint)
      print('\n'.join(_describe_checkpoint(checkpoint, backbone_lines)))
      if args.manifest:
        validate_tree(
            checkpoint.params, checkpoint.state, *manifest_shapes(args.manifest), source=args.source
        )
        print(f'matches {args.manifest}')
      elif backbone_problem:
        raise CheckpointError(backbone_problem)
  except CheckpointError as e:
    print(f'{parser.prog}: error: {e}', file=sys.stderr)
    return _USAGE_ERROR_STATUS
  return 0


if __name__ == '__main__':
  sys.exit(main())
