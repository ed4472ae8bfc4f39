"""Tests for mmv_core.checkpoints: safe loading, validation, conversion."""

import hashlib
import json
import os
import pathlib
import pickle
import pickletools
import subprocess
import sys

import dill
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmv_core import checkpoints
from mmv_core.checkpoints import validation
from mmv_core.checkpoints import ArraySpec, CheckpointError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
S3D_MANIFEST = pathlib.Path(validation.manifest_path('s3d'))

F32, I32 = np.dtype('float32'), np.dtype('int32')
CONV = 'text_audio_video/visual_module/~/S3D/Conv2d_1a_7x7/~/conv3_d'
BN = 'text_audio_video/visual_module/~/S3D/Conv2d_1a_7x7/__cross_replica_batch_norm'
HEAD = 'text_audio_video/~_get_pair_embedding_heads/vid2audio_embd/final_projection'
SMALL_PARAMS = {
    CONV: {'w': ArraySpec((2, 4, 4, 24, 64), F32)},
    BN: {'scale': ArraySpec((1, 1, 1, 1, 64), F32), 'offset': ArraySpec((1, 1, 1, 1, 64), F32)},
    HEAD: {'w': ArraySpec((1024, 512), F32), 'b': ArraySpec((512,), F32)},
}
SMALL_STATE = {
    f'{BN}/~/{ema}': {
        'average': ArraySpec((1, 1, 1, 1, 64), F32),
        'hidden': ArraySpec((1, 1, 1, 1, 64), F32),
        'counter': ArraySpec((), I32),
    }
    for ema in ('mean_ema', 'var_ema')
}


def _write_small(path, **kwargs):
  checkpoints.write_random_checkpoint(path, SMALL_PARAMS, SMALL_STATE, **kwargs)
  return path


def _assert_same_trees(actual, expected):
  assert actual.keys() == expected.keys()
  for module in expected:
    assert actual[module].keys() == expected[module].keys()
    for name, array in expected[module].items():
      assert actual[module][name].dtype == array.dtype
      np.testing.assert_array_equal(actual[module][name], array)


def _globals_named(data: bytes) -> set[str]:
  """'module.name' of every GLOBAL / STACK_GLOBAL in a pickle."""
  named, strings = set(), []
  for opcode, arg, _ in pickletools.genops(data):
    if opcode.name == 'GLOBAL':
      named.add(arg.replace(' ', '.'))
    elif opcode.name == 'STACK_GLOBAL':
      named.add(f'{strings[-2]}.{strings[-1]}')
    elif isinstance(arg, str):
      strings.append(arg)
  return named


# ---------------------------------------------------------------------------
# Writing and loading the released format.


def test_random_checkpoint_round_trips_with_expected_shapes(tmp_path):
  path = _write_small(tmp_path / 'mmv_s3d.pkl')
  checkpoint = checkpoints.load_checkpoint(path)
  assert checkpoint.path == str(path)
  assert checkpoint.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
  checkpoints.validate_tree(
      checkpoint.params, checkpoint.state, SMALL_PARAMS, SMALL_STATE, source=str(path)
  )
  for tree in (checkpoint.params, checkpoint.state):
    assert type(tree) is dict
    assert all(type(leaves) is dict for leaves in tree.values())
  # The file is what dill writes for numpy arrays: the loader must accept it.
  assert 'dill._dill._create_array' in _globals_named(path.read_bytes())


def test_random_values_suit_a_deep_network(tmp_path):
  params, state = checkpoints.random_trees(SMALL_PARAMS, SMALL_STATE, seed=3)
  conv_w = params[CONV]['w']
  fan_in = 2 * 4 * 4 * 24
  assert conv_w.dtype == F32
  assert conv_w.std() * np.sqrt(fan_in) == pytest.approx(1, abs=0.05)
  assert abs(conv_w.mean()) < 0.01
  assert params[HEAD]['w'].std() * np.sqrt(1024) == pytest.approx(1, abs=0.05)
  assert np.abs(params[BN]['scale'] - 1).max() < 0.6
  assert np.abs(params[BN]['offset']).max() < 0.6
  var = state[f'{BN}/~/var_ema']
  assert (var['average'] > 0.1).all() and (var['hidden'] > 0.1).all()
  assert np.abs(state[f'{BN}/~/mean_ema']['average']).max() < 0.6
  assert state[f'{BN}/~/mean_ema']['counter'].dtype == I32
  # Unit-variance input keeps roughly unit variance through 20 such layers.
  x = np.random.default_rng(0).standard_normal((64, 512)).astype(F32)
  for seed in range(20):
    layer, _ = checkpoints.random_trees({'m': {'w': ArraySpec((512, 512), F32)}}, {}, seed=seed)
    x = x @ layer['m']['w']
  assert 0.1 < x.std() < 10


def test_random_values_depend_on_seed_only(tmp_path):
  first = checkpoints.load_checkpoint(_write_small(tmp_path / 'a.pkl', seed=1))
  again = checkpoints.load_checkpoint(_write_small(tmp_path / 'b.pkl', seed=1))
  other = checkpoints.load_checkpoint(_write_small(tmp_path / 'c.pkl', seed=2))
  _assert_same_trees(again.params, first.params)
  assert not np.array_equal(other.params[CONV]['w'], first.params[CONV]['w'])


def test_legacy_flatmapping_checkpoint_loads_without_haiku(tmp_path, monkeypatch):
  legacy = _write_small(tmp_path / 'legacy.pkl', seed=5, legacy_containers=True)
  plain = _write_small(tmp_path / 'plain.pkl', seed=5)
  assert 'haiku._src.data_structures.FlatMapping' in _globals_named(legacy.read_bytes())
  # Any import of haiku while loading would now fail.
  monkeypatch.setitem(sys.modules, 'haiku', None)
  loaded = checkpoints.load_checkpoint(legacy)
  expected = checkpoints.load_checkpoint(plain)
  for actual_tree, expected_tree in (
      (loaded.params, expected.params),
      (loaded.state, expected.state),
  ):
    assert type(actual_tree) is dict
    assert all(type(leaves) is dict for leaves in actual_tree.values())
    _assert_same_trees(actual_tree, expected_tree)


def _haiku_global(name: str) -> bytes:
  return b'chaiku._src.data_structures\n' + name.encode() + b'\n'


def _embedded(obj) -> bytes:
  """Protocol-2 opcodes building `obj`, to splice into a hand-made pickle."""
  return pickle.dumps(obj, protocol=2)[2:-1]


_MODULES = {'net/~/linear': {'w': np.arange(6, dtype=F32).reshape(2, 3)}}


@pytest.mark.parametrize(
    'construction',
    ['frozendict_reduce', 'to_immutable_dict', 'frozendict_slots', 'flatmapping_slots'],
)
def test_handmade_legacy_haiku_pickles(tmp_path, construction):
  """Each way haiku 0.0.1-0.0.3 may have pickled its mappings."""
  if construction == 'frozendict_reduce':
    params = _haiku_global('frozendict') + _embedded((_MODULES,)) + pickle.REDUCE
  elif construction == 'to_immutable_dict':
    params = _haiku_global('to_immutable_dict') + _embedded((_MODULES,)) + pickle.REDUCE
  else:  # Default protocol-2 reduction of a __slots__ class: NEWOBJ, BUILD.
    name, field = {
        'frozendict_slots': ('frozendict', '_storage'),
        'flatmapping_slots': ('FlatMapping', '_mapping'),
    }[construction]
    params = (
        _haiku_global(name)
        + pickle.EMPTY_TUPLE
        + pickle.NEWOBJ
        + _embedded((None, {field: _MODULES, '_keys': ('net/~/linear',)}))
        + pickle.BUILD
    )
  data = (
      pickle.PROTO
      + b'\x02'
      + pickle.EMPTY_DICT
      + _embedded('params')
      + params
      + pickle.SETITEM
      + _embedded('state')
      + pickle.EMPTY_DICT
      + pickle.SETITEM
      + pickle.STOP
  )
  path = tmp_path / 'legacy.pkl'
  path.write_bytes(data)
  checkpoint = checkpoints.load_checkpoint(path)
  assert type(checkpoint.params) is dict
  _assert_same_trees(checkpoint.params, _MODULES)
  assert checkpoint.state == {}


# ---------------------------------------------------------------------------
# Unsafe and unreadable files.


class _Payload:
  """Unpickling this calls `function(*args)`."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return self.function, self.args


def _payloads(target: pathlib.Path):
  touch = f'open({str(target)!r}, "w").close()'
  return {
      'os.system': _Payload(os.system, f'touch {target}'),
      'builtins.exec': _Payload(exec, touch),
      'builtins.eval': _Payload(eval, touch),
      'subprocess.call': _Payload(subprocess.call, ['touch', str(target)]),
  }


def test_payloads_would_run_under_plain_pickle(tmp_path):
  """Guards the tests below: their payloads really create the file."""
  for label, payload in _payloads(tmp_path / 'ran').items():
    target = tmp_path / 'ran'
    pickle.loads(pickle.dumps(payload))
    assert target.exists(), label
    target.unlink()


@pytest.mark.parametrize('label', list(_payloads(pathlib.Path('x'))))
@pytest.mark.parametrize('placement', ['top_level', 'inside_params'])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, label, placement):
  target = tmp_path / 'pwned'
  payload = _payloads(target)[label]
  if placement == 'inside_params':
    payload = {'params': {'m': {'w': np.zeros(2, F32), 'v': payload}}, 'state': {}}
  path = tmp_path / 'mmv_s3d.pkl'
  path.write_bytes(pickle.dumps(payload))
  with pytest.raises(CheckpointError, match='refused') as error:
    checkpoints.load_checkpoint(path)
  assert str(path) in str(error.value)
  refused = [
      name for name in _globals_named(path.read_bytes()) if name.endswith(label.split('.')[1])
  ]
  assert refused and refused[0] in str(error.value)
  assert not target.exists()


def test_dill_array_helper_cannot_call_other_functions(tmp_path):
  """`_create_array(f, args, ...)` is allowed, but only with numpy's f."""
  data = (
      pickle.PROTO
      + b'\x02'
      + b'cdill._dill\n_create_array\n'
      + b'cnumpy\ndtype\n'
      + _embedded(('f4',))
      + pickle.NONE
      + pickle.TUPLE3
      + pickle.REDUCE
      + pickle.STOP
  )
  path = tmp_path / 'x.pkl'
  path.write_bytes(data)
  with pytest.raises(CheckpointError, match='_reconstruct'):
    checkpoints.load_checkpoint(path)


def _truncated_checkpoint(path):
  data = _write_small(path).read_bytes()
  path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    'make, problem',
    [
        (lambda path: None, 'cannot read'),
        (_truncated_checkpoint, 'truncated'),
        (
            lambda path: path.write_bytes(b'\xff\xd8\xff\xe0\x00\x10JFIF' + bytes(64)),
            'not a readable checkpoint pickle',
        ),
        (
            lambda path: path.write_text('w: [1, 2, 3]\nname: not a pickle\n'),
            'not a readable checkpoint pickle',
        ),
        (lambda path: path.write_bytes(b''), 'truncated'),
        (lambda path: path.write_bytes(pickle.dumps([1, 2])), 'top level is a list'),
        (lambda path: path.write_bytes(pickle.dumps({'params': {}})), r"lacks \['state'\]"),
        (
            lambda path: path.write_bytes(pickle.dumps({'params': [], 'state': {}})),
            "'params' is a list",
        ),
        (
            lambda path: path.write_bytes(
                pickle.dumps({'params': {'m': {'w': 'text'}}, 'state': {}})
            ),
            'params m:w is a str, expected a numpy array',
        ),
        (
            lambda path: path.write_bytes(
                pickle.dumps({'params': {'m': np.zeros(2)}, 'state': {}})
            ),
            r"params\['m'\] is a ndarray",
        ),
    ],
)
def test_unreadable_file_names_path_and_problem(tmp_path, make, problem):
  path = tmp_path / 'mmv_s3d.pkl'
  make(path)
  with pytest.raises(CheckpointError, match=problem) as error:
    checkpoints.load_checkpoint(path)
  assert str(path) in str(error.value)


# ---------------------------------------------------------------------------
# Validation and backbone inference.


def test_validation_refuses_nan_or_infinite_weights_naming_them():
  params, state = checkpoints.random_trees(SMALL_PARAMS, SMALL_STATE)
  params[CONV]['w'].flat[:3] = [np.nan, np.inf, -np.inf]
  with pytest.raises(CheckpointError) as error:
    checkpoints.validate_tree(params, state, SMALL_PARAMS, SMALL_STATE, source='mmv_s3d.pkl')
  assert '1 non-finite' in str(error.value)
  assert f'params {CONV}:w: 3 of {params[CONV]["w"].size} values are NaN or infinite' in str(
      error.value
  )


def test_validation_lists_every_problem_in_one_error():
  params, state = checkpoints.random_trees(SMALL_PARAMS, SMALL_STATE)
  del params[HEAD]['b']
  params['extra/~/module'] = {'w': np.zeros((3, 3), F32)}
  params[CONV]['w'] = np.zeros((2, 4, 4, 24, 32), F32)
  state[f'{BN}/~/var_ema']['counter'] = np.zeros((), np.int64)
  with pytest.raises(CheckpointError) as error:
    checkpoints.validate_tree(
        params, state, SMALL_PARAMS, SMALL_STATE, source='gs://bucket/mmv_s3d.pkl'
    )
  message = str(error.value)
  assert message.startswith('gs://bucket/mmv_s3d.pkl')
  assert '1 missing, 1 unexpected, 2 mismatched' in message
  assert f'params {HEAD}:b float32[512]' in message
  assert 'params extra/~/module:w float32[3,3]' in message
  assert (
      f'params {CONV}:w: checkpoint has float32[2,4,4,24,32], model ' 'expects float32[2,4,4,24,64]'
  ) in message
  assert (
      f'state {BN}/~/var_ema:counter: checkpoint has int64[], model ' 'expects int32[]'
  ) in message


def test_validation_truncates_long_lists():
  expected = {f'module_{i:03d}': {'w': ArraySpec((2,), F32)} for i in range(150)}
  with pytest.raises(CheckpointError) as error:
    checkpoints.validate_tree({}, {}, expected, {}, source='ckpt')
  message = str(error.value)
  assert '150 missing' in message
  assert 'module_000:w' in message
  assert 'module_149:w' not in message
  assert f'... and {150 - checkpoints.MAX_LISTED_PROBLEMS} more' in message
  assert len(message.splitlines()) < 30


def test_validation_accepts_jax_shape_dtype_structs():
  params, state = checkpoints.random_trees(SMALL_PARAMS, SMALL_STATE)
  as_jax = lambda tree: jax.tree.map(
      lambda spec: jax.ShapeDtypeStruct(spec.shape, jnp.dtype(spec.dtype)), tree
  )
  checkpoints.validate_tree(params, state, as_jax(SMALL_PARAMS), as_jax(SMALL_STATE), source='ckpt')
  params[CONV]['w'] = params[CONV]['w'].astype(np.float16)
  with pytest.raises(CheckpointError, match='float16'):
    checkpoints.validate_tree(
        params, state, as_jax(SMALL_PARAMS), as_jax(SMALL_STATE), source='ckpt'
    )


@pytest.mark.parametrize(
    'path, backbone',
    [
        ('mmv_s3d.pkl', 's3d'),
        ('/ckpts/mmv_tsm_resnet_x1.pkl', 'tsm_resnet_x1'),
        ('gs://bucket/MMV_TSM_RESNET_X2.npz', 'tsm_resnet_x2'),
        ('https://host/s3d_vs_tsm_resnet_x2.pkl', 'tsm_resnet_x2'),
        ('/s3d_runs/mmv_tsm_resnet_x1.pkl', 'tsm_resnet_x1'),
    ],
)
def test_infer_backbone_from_file_name(path, backbone):
  assert checkpoints.infer_backbone(path) == backbone


def test_infer_backbone_error_lists_options():
  with pytest.raises(CheckpointError) as error:
    checkpoints.infer_backbone('/s3d/mmv_resnet50.pkl')
  assert 'mmv_resnet50.pkl' in str(error.value)
  for backbone in ('s3d', 'tsm_resnet_x1', 'tsm_resnet_x2'):
    assert backbone in str(error.value)


# ---------------------------------------------------------------------------
# npz conversion.


def test_npz_conversion_round_trips_exactly(tmp_path):
  original = checkpoints.load_checkpoint(_write_small(tmp_path / 'in.pkl'))
  npz_path = tmp_path / 'out.npz'
  checkpoints.save_npz(original, npz_path)
  converted = checkpoints.load_checkpoint(npz_path)
  _assert_same_trees(converted.params, original.params)
  _assert_same_trees(converted.state, original.state)
  assert converted.sha256 == hashlib.sha256(npz_path.read_bytes()).hexdigest()


def test_npz_with_pickled_objects_is_refused(tmp_path):
  path = tmp_path / 'evil.npz'
  np.savez(path, **{'params/m:w': np.array([print], dtype=object)})
  with pytest.raises(CheckpointError, match='not a readable npz') as error:
    checkpoints.load_checkpoint(path)
  assert str(path) in str(error.value)


def test_npz_with_foreign_keys_is_refused(tmp_path):
  path = tmp_path / 'other.npz'
  np.savez(path, weights=np.zeros(3, F32))
  with pytest.raises(CheckpointError, match="'weights' is not"):
    checkpoints.load_checkpoint(path)


# ---------------------------------------------------------------------------
# Full size and command line.


def test_full_size_s3d_checkpoint_matches_manifest(tmp_path):
  expected_params, expected_state = checkpoints.manifest_shapes(S3D_MANIFEST)
  path = tmp_path / 'mmv_s3d.pkl'
  checkpoints.write_random_checkpoint(path, expected_params, expected_state, legacy_containers=True)
  checkpoint = checkpoints.load_checkpoint(path)
  checkpoints.validate_tree(
      checkpoint.params, checkpoint.state, expected_params, expected_state, source=str(path)
  )
  manifest = json.loads(S3D_MANIFEST.read_text())
  assert checkpoints.count_values(checkpoint.params) == manifest['param_count']
  assert checkpoints.count_values(checkpoint.state) == manifest['state_count']
  assert checkpoints.infer_backbone(path) == 's3d'


def _write_manifest(path):
  manifest = {
      collection: {
          module: {
              name: {'shape': list(spec.shape), 'dtype': spec.dtype.name}
              for name, spec in leaves.items()
          }
          for module, leaves in tree.items()
      }
      for collection, tree in (('params', SMALL_PARAMS), ('state', SMALL_STATE))
  }
  path.write_text(json.dumps(manifest))
  return path


def test_command_line_random_convert_inspect(tmp_path, capsys):
  manifest = _write_manifest(tmp_path / 'manifest.json')
  pkl = tmp_path / 'mmv_tsm_resnet_x1.pkl'
  assert (
      checkpoints.main(
          [
              'random',
              '--backbone',
              'tsm_resnet_x1',
              '--manifest',
              str(manifest),
              '--legacy-containers',
              str(pkl),
          ]
      )
      == 0
  )
  npz = tmp_path / 'mmv_tsm_resnet_x1.npz'
  capsys.readouterr()
  assert checkpoints.main(['convert', str(pkl), str(npz)]) == 0
  assert hashlib.sha256(pkl.read_bytes()).hexdigest() in capsys.readouterr().out
  _assert_same_trees(
      checkpoints.load_checkpoint(npz).params, checkpoints.load_checkpoint(pkl).params
  )
  capsys.readouterr()
  assert checkpoints.main(['inspect', str(npz), '--manifest', str(manifest)]) == 0
  out = capsys.readouterr().out
  # A manifest-sized tree is no backbone's, whatever the file name says.
  assert 'backbone: none: the parameter tree matches none of' in out
  assert 'file name: names tsm_resnet_x1, which DISAGREES' in out
  assert hashlib.sha256(npz.read_bytes()).hexdigest() in out
  total = sum(
      np.prod(s.shape, dtype=int) for leaves in SMALL_PARAMS.values() for s in leaves.values()
  )
  assert f'params: 3 modules, 5 arrays, {total:,} values' in out
  assert f'matches {manifest}' in out
  assert checkpoints.main(['inspect', str(tmp_path / 'missing.pkl')]) == 2
  error = capsys.readouterr().err
  assert error.startswith('python -m mmv_core.checkpoints: error: ') and 'missing.pkl' in error
  # Without a manifest the backbones' models are the reference: it fits none.
  assert checkpoints.main(['inspect', str(npz)]) == 2
  assert 'parameter tree matches no backbone' in capsys.readouterr().err


@pytest.mark.parametrize('backbone', ['s3d', 'tsm_resnet_x1', 'tsm_resnet_x2'])
def test_each_backbones_tree_matches_that_backbone_only(backbone):
  # Shape-and-dtype trees stand in for arrays: only those are compared.
  problems = checkpoints.problems_per_backbone(*checkpoints.checkpoint_shapes(backbone))
  assert problems[backbone] == 0
  assert all(count > 0 for other, count in problems.items() if other != backbone)


@pytest.fixture(scope='module')
def s3d_checkpoint_named_tsm_resnet_x2(tmp_path_factory):
  """A full-size S3D checkpoint renamed as the TSM-ResNet-50x2 release."""
  path = tmp_path_factory.mktemp('renamed') / 'mmv_tsm_resnet_x2.pkl'
  checkpoints.write_random_checkpoint(path, *checkpoints.checkpoint_shapes('s3d'))
  return path


def test_inspect_reports_the_trees_backbone_not_the_file_names(
    s3d_checkpoint_named_tsm_resnet_x2, capsys
):
  path = s3d_checkpoint_named_tsm_resnet_x2
  assert checkpoints.main(['inspect', str(path)]) == 2
  captured = capsys.readouterr()
  assert 'backbone: s3d (the parameter tree is exactly its model)' in captured.out
  assert 'backbone: tsm_resnet_x2' not in captured.out
  assert (
      'file name: names tsm_resnet_x2, which DISAGREES with the parameter '
      'tree; load it with --backbone s3d'
  ) in captured.out
  assert (
      f'{path}: the file name names tsm_resnet_x2, but the parameter tree is ' 'that of s3d'
  ) in captured.err


def test_inspect_accepts_a_checkpoint_whose_name_agrees_with_its_tree(
    s3d_checkpoint_named_tsm_resnet_x2, tmp_path, capsys
):
  path = tmp_path / 'mmv_s3d.pkl'
  os.link(s3d_checkpoint_named_tsm_resnet_x2, path)
  assert checkpoints.main(['inspect', str(path)]) == 0
  captured = capsys.readouterr()
  assert 'backbone: s3d (the parameter tree is exactly its model)' in captured.out
  assert 'file name: names s3d, in agreement' in captured.out
  assert captured.err == ''


def test_numpy1_era_protocol2_dill_pickle_loads(tmp_path):
  """2020 files: protocol 2, bytes via `_codecs.encode`, `numpy.core` names."""
  params, state = checkpoints.random_trees(SMALL_PARAMS, SMALL_STATE)
  data = dill.dumps({'params': params, 'state': state}, protocol=2)
  data = data.replace(b'cnumpy._core.multiarray\n', b'cnumpy.core.multiarray\n')
  assert {'numpy.core.multiarray._reconstruct', '_codecs.encode'} <= (_globals_named(data))
  path = tmp_path / 'mmv_s3d.pkl'
  path.write_bytes(data)
  checkpoint = checkpoints.load_checkpoint(path)
  _assert_same_trees(checkpoint.params, params)
  _assert_same_trees(checkpoint.state, state)


def test_validating_against_another_backbone_names_the_one_it_is(
    s3d_checkpoint_named_tsm_resnet_x2,
):
  checkpoint = checkpoints.load_checkpoint(s3d_checkpoint_named_tsm_resnet_x2)
  with pytest.raises(checkpoints.WrongBackboneError, match='a s3d checkpoint') as error:
    checkpoints.validate_backbone(
        checkpoint.params, checkpoint.state, 'tsm_resnet_x2', source='renamed.pkl'
    )
  assert error.value.actual == 's3d' and '\n' not in str(error.value)
  checkpoints.validate_backbone(checkpoint.params, checkpoint.state, 's3d', source='renamed.pkl')
