"""Process pools for decoding images on several cores."""

import multiprocessing
from multiprocessing.context import BaseContext


def process_context() -> BaseContext:
    """Return a start method that gives workers a clean interpreter.

    A forked child inherits the parent's threads (OpenCV's pool, tqdm's monitor) in whatever
    state they were in, which can deadlock it. A fork server or a fresh interpreter starts clean.
    """
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def limit_opencv_threads() -> None:
    """Give each worker process a single OpenCV thread.

    Each worker already has a core of its own, and OpenCV's thread pool on top of that only
    adds contention.
    """
    import cv2

    cv2.setNumThreads(1)
