"""The load benchmark's /proc readings while threads come and go (as a metrics scrape's
thread does in the measured server)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time

from benchmarks.load import process_switches, process_tree


def test_readings_keep_the_children_while_threads_end() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stop = threading.Event()

    def churn() -> None:  # short-lived threads, ending while /proc is being read
        while not stop.is_set():
            t = threading.Thread(target=time.sleep, args=(0.0001,))
            t.start()
            t.join()

    churners = [threading.Thread(target=churn) for _ in range(2)]
    for t in churners:
        t.start()
    try:
        for _ in range(300):
            assert child.pid in process_tree(os.getpid())
            assert not math.isnan(process_switches(os.getpid()))
    finally:
        stop.set()
        for t in churners:
            t.join()
        child.kill()
        child.wait()
