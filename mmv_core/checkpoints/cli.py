"""The checkpoint command line: `python -m mmv_core.checkpoints convert|random|inspect`.

convert IN OUT.npz            pickle (or npz) -> npz
random --backbone B OUT.pkl   random checkpoint in the released format
inspect PATH                  backbone (from the parameter tree, checked
                              against the file name), sizes and sha256
"""

import argparse
import sys
from typing import Sequence


from mmv_core.models.names import BACKBONES

from mmv_core.checkpoints.formats import COLLECTIONS, Checkpoint, CheckpointError
from mmv_core.checkpoints.formats import infer_backbone, load_checkpoint, save_npz
from mmv_core.checkpoints.random_checkpoint import write_random_checkpoint
from mmv_core.checkpoints.validation import count_values, exact_backbone, manifest_shapes
from mmv_core.checkpoints.validation import checkpoint_shapes, problems_per_backbone, validate_tree

# ---------------------------------------------------------------------------
# Command line.


def _expected_trees(backbone: str, manifest: str | None):
  if manifest:
    return manifest_shapes(manifest)
  return checkpoint_shapes(backbone)


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
      '--manifest', help="param_manifest_<config>.json to use instead of the backbone's"
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
