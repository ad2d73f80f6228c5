from __future__ import annotations

import contextlib
import fcntl
import glob
import os
from collections.abc import Iterator

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead

LOCK_FILE = ".merge.lock"
ARCHIVE = "archive"


@contextlib.contextmanager
def _locked(directory: str, mode: int) -> Iterator[None]:
    with open(os.path.join(directory, LOCK_FILE), "a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)




def reset_directory(directory: str) -> None:
    """Empty the multiprocess directory at server start: values of an earlier run must go."""
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def worker_exited(pid: int, directory: str) -> None:
    """Fold a dead worker's files into the archive files, so that its counts outlive it.

    Counters and histograms are added up; the most recent gauge value is kept; live gauges
    are dropped. The directory thus holds the live workers' files plus one archive per kind.
    """
    with _locked(directory, fcntl.LOCK_EX):
        mark_process_dead(pid, directory)
        for prefix in ("counter", "histogram", "gauge_mostrecent"):
            dead = os.path.join(directory, f"{prefix}_{pid}.db")
            if not os.path.exists(dead):
                continue
            archive = MmapedDict(os.path.join(directory, f"{prefix}_{ARCHIVE}.db"))
            try:
                for key, value, stamp, _ in MmapedDict.read_all_values_from_file(dead):
                    old, old_stamp = archive.read_value(key)
                    if prefix == "gauge_mostrecent":
                        if stamp >= old_stamp:
                            archive.write_value(key, value, stamp)
                    else:
                        archive.write_value(key, old + value, max(stamp, old_stamp))
            finally:
                archive.close()
            os.remove(dead)
