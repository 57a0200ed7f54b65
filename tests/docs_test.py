"""The README and docs stay short, linked and true to the code.

Fast and offline: it reads markdown files and the source tree, nothing else.
"""

import glob
import os
import re
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, 'README.md')
DESIGN = os.path.join(ROOT, 'docs', 'design.md')
MAX_README_LINES = 300
# The documents whose relative links must resolve.
LINKED = ('README.md', 'CONTRIBUTING.md', 'CHANGELOG.md', 'docs/*.md')

_FENCE = re.compile(r'^```.*?^```[^\n]*$', re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r'`[^`\n]*`')
_LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
_HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$', re.MULTILINE)
# A source path as the docs name one: tffaml/..., tests/..., scripts/..., configs/...
_PATH = re.compile(r'\b((?:tffaml|tests|scripts|configs)/[\w./]*\w)')
_DOTTED = re.compile(r'\b(tffaml(?:\.\w+)+)')
# `module.name` inside a code span, e.g. `checks.parse_choices` or `program.run(...)`.
_QUALIFIED = re.compile(r'^([a-z_]\w*)((?:\.[A-Za-z_]\w*)+)')
_FILE_SUFFIXES = {'json', 'txt', 'csv', 'py', 'md', 'png', 'pem', 'key', 'enc', 'lock'}


def _read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def _documents() -> list[str]:
  paths = []
  for pattern in LINKED:
    paths.extend(sorted(glob.glob(os.path.join(ROOT, pattern))))
  return paths


def _prose(text: str) -> str:
  """The text a reader sees as prose: fenced blocks and code spans removed (links there are not links)."""
  return _CODE_SPAN.sub('', _FENCE.sub('', text))


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # A link in a heading anchors on its text.
  return re.sub(r'[^\w\- ]', '', text.strip().lower()).replace(' ', '-')


def anchors(text: str) -> set[str]:
  """Every heading anchor of a markdown text, numbered as GitHub numbers repeated headings."""
  seen: dict[str, int] = {}
  out = set()
  for match in _HEADING.finditer(_FENCE.sub('', text)):
    base = slug(match.group(2))
    count = seen.get(base, 0)
    seen[base] = count + 1
    out.add(base if count == 0 else f'{base}-{count}')
  return out


def broken_links(path: str) -> list[str]:
  """The relative links of the markdown file `path` whose file or anchor does not exist."""
  broken = []
  for target in _LINK.findall(_prose(_read(path))):
    if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, https:, mailto:
      continue
    file_part, _, anchor = target.partition('#')
    linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
    if not os.path.exists(linked):
      broken.append(f'{target} (no file {os.path.relpath(linked, ROOT)})')
    elif anchor and linked.endswith('.md') and anchor not in anchors(_read(linked)):
      broken.append(f'{target} (no heading with anchor #{anchor})')
  return broken


def _defines(source: str, name: str, *, top_level: bool) -> bool:
  indent = '' if top_level else r'[ \t]*'
  return re.search(rf'^{indent}(?:(?:async\s+)?def|class)\s+{name}\b|^{indent}{name}\s*[:=]',
                   source, re.MULTILINE) is not None


def _resolves(module_file: str, attributes: list[str]) -> bool:
  """Whether `module_file` defines attributes[0] at top level, and the rest anywhere in it."""
  source = _read(module_file)
  return all(_defines(source, name, top_level=i == 0) for i, name in enumerate(attributes))


def dotted_exists(name: str) -> bool:
  """Whether `tffaml.a.b[.Attr...]` is a package, a module, or a name a module defines."""
  path = ROOT
  parts = name.split('.')
  for i, part in enumerate(parts):
    if os.path.isdir(os.path.join(path, part)):
      path = os.path.join(path, part)
    elif os.path.isfile(os.path.join(path, part + '.py')):
      return _resolves(os.path.join(path, part + '.py'), parts[i + 1:])
    else:
      return False
  return True


def _modules_by_name() -> dict[str, list[str]]:
  """Every tffaml module file, by its short name (`checks` -> [.../config/checks.py])."""
  modules: dict[str, list[str]] = {}
  for path in glob.glob(os.path.join(ROOT, 'tffaml', '**', '*.py'), recursive=True):
    modules.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
  return modules


def missing_names(text: str) -> list[str]:
  """The source paths, `tffaml.x.y` names and `module.name`s in `text` that the code does not have."""
  missing = [p for p in _PATH.findall(text) if not os.path.exists(os.path.join(ROOT, p))]
  missing += [d for d in _DOTTED.findall(text) if not dotted_exists(d)]
  modules = _modules_by_name()
  for span in re.findall(r'`([^`\n]+)`', text):
    match = _QUALIFIED.match(span)
    if not match or match.group(1) not in modules or match.group(1) == 'tffaml':
      continue
    attributes = match.group(2).lstrip('.').split('.')
    if attributes[-1] in _FILE_SUFFIXES:  # A file name such as `schema.json`, not a module's name.
      continue
    if not any(_resolves(path, attributes) for path in modules[match.group(1)]):
      missing.append(span)
  return missing


class ReadmeTest(unittest.TestCase):

  def test_readme_is_short(self):
    lines = _read(README).count('\n')
    self.assertLessEqual(lines, MAX_README_LINES, f'README.md has {lines} lines; move detail to docs/.')

  def test_readme_gives_the_two_quickstart_commands(self):
    text = _read(README)
    for command in ('make train', 'make test'):
      self.assertIn(command, text)


class LinkTest(unittest.TestCase):

  def test_documents_exist(self):
    names = {os.path.relpath(p, ROOT) for p in _documents()}
    for name in ('README.md', 'CONTRIBUTING.md', 'CHANGELOG.md', 'docs/design.md', 'docs/results.md',
                 'docs/privacy.md', 'docs/deployment.md', 'docs/simulation.md', 'docs/aml.md'):
      self.assertIn(name, names)

  def test_every_relative_link_resolves(self):
    broken = {os.path.relpath(p, ROOT): broken_links(p) for p in _documents()}
    self.assertEqual({k: v for k, v in broken.items() if v}, {})

  def test_a_broken_link_or_anchor_is_found(self):
    # The checker itself: a missing file and a missing anchor are reported, a good anchor is not.
    path = os.path.join(ROOT, 'docs', '_docs_test_probe.md')
    try:
      with open(path, 'w', encoding='utf-8') as f:
        f.write('# Probe: one `heading`\n\n[a](nowhere.md) [b](design.md#no-such-heading)'
                ' [c](#probe-one-heading) [d](../README.md#quickstart) `[e](nowhere.md)`\n')
      self.assertEqual(broken_links(path), ['nowhere.md (no file docs/nowhere.md)',
                                            'design.md#no-such-heading (no heading with anchor #no-such-heading)'])
    finally:
      os.remove(path)


class DesignTest(unittest.TestCase):

  def test_every_path_and_name_in_design_exists(self):
    self.assertEqual(missing_names(_read(DESIGN)), [])

  def test_design_names_every_layer_package(self):
    text = _read(DESIGN)
    for package in ('data', 'models', 'federated', 'privacy', 'security', 'export', 'config', 'training',
                    'studies', 'consortium', 'cluster'):
      self.assertIn(f'tffaml/{package}/', text)
    self.assertIn('tffaml/features.py', text)

  def test_contributing_names_exist(self):
    self.assertEqual(missing_names(_read(os.path.join(ROOT, 'CONTRIBUTING.md'))), [])

  def test_a_renamed_module_or_function_is_found(self):
    self.assertEqual(missing_names('`tffaml/config/checks.py` `checks.parse_choices`'
                                   ' `program.Runtime` tffaml.cluster.runtime.Workers `schema.json`'), [])
    self.assertEqual(missing_names('`tffaml/config/experiment.py` `checks.no_such_function` tffaml.cluster.nothing'
                                   ' `program.Runtime.no_such_method`'),
                     ['tffaml/config/experiment.py', 'tffaml.cluster.nothing', 'checks.no_such_function',
                      'program.Runtime.no_such_method'])


if __name__ == '__main__':
  unittest.main()
