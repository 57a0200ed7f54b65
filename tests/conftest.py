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
