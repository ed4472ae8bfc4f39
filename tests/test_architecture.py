"""The layout docs/architecture.md describes: packages without import circles,
modules a reader can hold in mind, and a tour whose paths all exist."""

import ast
import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The project's importable code: the library, the jobs and the launchers.
PACKAGES = ("mmv_core", "pipelines", "launch")
MAX_MODULE_LINES = 600


def _modules() -> dict[str, pathlib.Path]:
  """Dotted module name -> file, for every module of PACKAGES."""
  modules = {}
  for package in PACKAGES:
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
      parts = path.relative_to(REPO_ROOT).with_suffix("").parts
      if parts[-1] == "__init__":
        parts = parts[:-1]
      modules[".".join(parts)] = path
  return modules


def _imported(tree: ast.Module, modules: dict[str, pathlib.Path]) -> set[str]:
  """The project's modules that a module imports, wherever the import statement is
  (a function-level import closes a circle as surely as a top-level one)."""
  imported = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      imported.update(alias.name for alias in node.names if alias.name in modules)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        submodule = f"{node.module}.{alias.name}"
        if submodule in modules:
          imported.add(submodule)
        elif node.module in modules:
          imported.add(node.module)
  return imported


def _import_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {
      name: _imported(ast.parse(path.read_text(), str(path)), modules) - {name}
      for name, path in modules.items()
  }


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import circle as [a, b, ..., a], or None."""
  visiting, done = [], set()

  def visit(name: str) -> list[str] | None:
    if name in visiting:
      return visiting[visiting.index(name) :] + [name]
    if name in done:
      return None
    visiting.append(name)
    for target in sorted(graph[name]):
      cycle = visit(target)
      if cycle:
        return cycle
    visiting.pop()
    done.add(name)
    return None

  for name in sorted(graph):
    cycle = visit(name)
    if cycle:
      return cycle
  return None


def test_the_projects_modules_import_one_another_without_a_circle():
  graph = _import_graph()
  assert "mmv_core.video.encoding_recipes" in graph["mmv_core.video.encode"]
  assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_the_circle_finder_finds_a_circle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _find_cycle(graph) == ["a", "b", "c", "a"]
  assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_over_600_lines():
  lengths = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
  too_long = {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES}
  assert not too_long, f"over {MAX_MODULE_LINES} lines: {too_long}"


def _named_paths(text: str) -> set[str]:
  """Every repository path in backquotes: `a/b.py`, `dir/`, `docs/x.md`."""
  quoted = re.findall(r"`([^`\s]+)`", text)
  return {
      path.rstrip("/")
      for path in quoted
      if "/" in path and not path.startswith(("gs://", "http", "/", "-")) and "*" not in path
  }


def test_every_path_the_architecture_tour_names_exists():
  text = (REPO_ROOT / "docs" / "architecture.md").read_text()
  paths = _named_paths(text)
  assert {"mmv_core/video/clips.py", "pipelines/ingest.py"} <= paths
  missing = sorted(path for path in paths if not (REPO_ROOT / path).exists())
  assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
