"""One TFF local runtime for the session, stopped at its end; one temporary folder, removed at exit."""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top
from absl.testing import absltest  # pylint: disable=g-import-not-at-top,unused-import  (defines --test_tmpdir)
import pytest

from tffaml import runtime

# tf.test.TestCase reads absl flags (e.g. --test_tmpdir); pytest never parses them.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope='session', autouse=True)
def temp_root():
  """Every temporary file of the session under one folder, removed when the process exits.

  Tests' `tempfile.mkdtemp()` folders, absl's `create_tempdir`, autograph's
  files and the processes tests start (through TMPDIR) all land there: without
  it each run of the suite left a few GB in /tmp.
  """
  root = tempfile.mkdtemp(prefix='tffaml-tests-')
  # Removed when the process exits, after TensorFlow's `tf.test.get_temp_dir()`
  # folder inside it: TF removes that at exit too, and exit handlers run last
  # registered first. Removed here at the session's end, root was gone when TF
  # came to it ("Error removing .../<string>...: not found" at the suite's end).
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  saved = tempfile.tempdir, os.environ.get('TMPDIR'), flags.FLAGS.test_tmpdir
  tempfile.tempdir, os.environ['TMPDIR'] = root, root
  flags.FLAGS.test_tmpdir = os.path.join(root, 'absl_testing')
  try:
    yield root
  finally:
    tempfile.tempdir, flags.FLAGS.test_tmpdir = saved[0], saved[2]
    if saved[1] is None:
      os.environ.pop('TMPDIR', None)
    else:
      os.environ['TMPDIR'] = saved[1]


@pytest.fixture(scope='session', autouse=True)
def tff_runtime(temp_root):  # pylint: disable=redefined-outer-name,unused-argument  (stopped before it is removed)
  with runtime.local_runtime():
    yield


@pytest.hookimpl(tryfirst=True)  # Before xdist's own hook reads the groups.
def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Keeps each class that builds a shared fixture in `setUpClass` on one xdist worker.

  `make test` runs `-n 4 --dist loadgroup`: split across workers, such
  a class would build its fixture (trained federations, up to minutes) twice.
  Every other test is scheduled one by one, as `--dist load` does.
  """
  for item in items:
    cls = getattr(item, 'cls', None)
    if cls is not None and any('setUpClass' in vars(k) for k in cls.__mro__[:-1] if k.__module__.startswith('tests')):
      item.add_marker(pytest.mark.xdist_group(f'{cls.__module__}.{cls.__qualname__}'))
