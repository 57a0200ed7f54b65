"""The package layers read top-down: no import climbs a layer, and no module or package cycle.

Layers, lowest first (a module may import its own layer or lower):
  base        errors, io, rss, runtime and local_worker (the local TFF worker)
  core        data, features, models, federated, privacy, security, export
  config      the only package that reads an ml_collections.ConfigDict's
              sections into typed choices (the core never imports it)
  run         training (the program, checkpoints, evaluation)
  studies     comparisons, robustness, audits, sweeps, attacks, benchmarks
  deployments consortium (Flower), cluster (TFF workers): never each other
  cli         what scripts/ share (flags, refusals without tracebacks)
docs/design.md describes the same map.
"""

import ast
import os
import unittest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tffaml')
LAYERS = {
    'errors': 0, 'io': 0, 'rss': 0, 'runtime': 0, 'local_worker': 0,
    'data': 1, 'features': 1, 'models': 1, 'federated': 1, 'privacy': 1, 'security': 1, 'export': 1,
    'config': 2,
    'training': 3,
    'studies': 4,
    'consortium': 5, 'cluster': 5,
    'cli': 6,  # What scripts/ share: flags, checkpoint keys, refusals without tracebacks.
}
DEPLOYMENTS = ('consortium', 'cluster')
CORE = 1


def _modules() -> dict[str, str]:
  """'tffaml.x.y' -> file path, for every module of the package."""
  found = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, '.')
        found[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
  return found


def _imports(path: str, modules) -> set[str]:
  """The tffaml modules `path` imports, anywhere in it (function-level imports too)."""
  out = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('tffaml'):
      for alias in node.names:
        full = f'{node.module}.{alias.name}'
        out.add(full if full in modules else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith('tffaml'))
  return out


def _package(module: str) -> str:
  return module.split('.')[1] if module.count('.') else module


def graph():
  modules = _modules()
  return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one member (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in list(edges):
    if v not in index:
      visit(v)
  return out


class StructureTest(unittest.TestCase):

  def setUp(self):
    self.edges = graph()

  def test_every_package_has_a_layer(self):
    packages = {_package(m) for m in self.edges if m != 'tffaml'}
    self.assertEqual(packages - set(LAYERS), set(), 'give each new package a layer here and in docs/design.md')

  def test_no_import_climbs_a_layer(self):
    climbs = [f'{m} -> {t}' for m, targets in self.edges.items() for t in targets
              if m != 'tffaml' and t != 'tffaml' and LAYERS[_package(t)] > LAYERS[_package(m)]]
    self.assertEqual(climbs, [])

  def test_deployments_do_not_import_each_other(self):
    sideways = [f'{m} -> {t}' for m, targets in self.edges.items() for t in targets
                if _package(m) in DEPLOYMENTS and _package(t) in DEPLOYMENTS and _package(m) != _package(t)]
    self.assertEqual(sideways, [])

  def test_no_module_cycles(self):
    self.assertEqual(cycles(self.edges), [])

  def test_no_package_cycles(self):
    packages = {}
    for m, targets in self.edges.items():
      packages.setdefault(_package(m), set()).update(_package(t) for t in targets if _package(t) != _package(m))
    self.assertEqual(cycles(packages), [])

  def test_core_reads_no_config(self):
    readers = []
    for m in self.edges:
      if m != 'tffaml' and LAYERS[_package(m)] <= CORE:
        text = open(_modules()[m], encoding='utf-8').read()
        if 'ml_collections' in text or 'ConfigDict' in text:
          readers.append(m)
    self.assertEqual(readers, [])

  def test_cycle_finder_finds_a_cycle(self):
    # The checks above pass vacuously if the finder is broken.
    self.assertEqual(cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}), [['a', 'b', 'c']])
    self.assertEqual(cycles({'a': {'b'}, 'b': set()}), [])


if __name__ == '__main__':
  unittest.main()
