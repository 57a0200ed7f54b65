"""Peak resident memory of a process tree, sampled in a thread.

Light on purpose (psutil only): `scripts/peak_rss.py` measures other
commands with it and must not load TensorFlow itself.
"""

import threading
import time
from typing import Optional

import psutil


class PeakRss:
  """Largest RSS of a process (default: this one) and its descendants, sampled in a thread.

  `timeline` holds (seconds since start, MB) every `timeline_seconds`.
  """

  def __init__(self, pid: Optional[int] = None, timeline_seconds: float = 5.0):
    self._pid = pid
    self._timeline_seconds = timeline_seconds
    self.peak = self.current = 0.0
    self.timeline = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self):
    me = psutil.Process(self._pid)
    start = time.perf_counter()
    while not self._stop.wait(0.05):
      try:
        rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
      except psutil.Error:
        continue
      self.current, self.peak = rss / 2**20, max(self.peak, rss / 2**20)
      elapsed = time.perf_counter() - start
      if not self.timeline or elapsed - self.timeline[-1][0] >= self._timeline_seconds:
        self.timeline.append((round(elapsed, 1), round(self.current)))

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
