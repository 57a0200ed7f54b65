"""One TFF local runtime for the whole session; its worker is stopped at the end."""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
import pytest

from tffaml import runtime

# tf.test.TestCase reads absl flags (e.g. --test_tmpdir); pytest never parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope='session', autouse=True)
def tff_runtime():
  with runtime.local_runtime():
    yield


@pytest.hookimpl(tryfirst=True)  # Before xdist's own hook reads the groups.
def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Keeps each class that builds a shared fixture in `setUpClass` on one xdist worker.

  `make test` runs `-n 2 --dist loadgroup`: split across both workers, such
  a class would build its fixture (trained federations, up to minutes) twice.
  Every other test is scheduled one by one, as `--dist load` does.
  """
  for item in items:
    cls = getattr(item, 'cls', None)
    if cls is not None and any('setUpClass' in vars(k) for k in cls.__mro__[:-1] if k.__module__.startswith('tests')):
      item.add_marker(pytest.mark.xdist_group(f'{cls.__module__}.{cls.__qualname__}'))
