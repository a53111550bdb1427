"""Benchmark the preprocess stage against the floor of its work, and its peak memory.

Prints, for the same files in one run:

- the throughput of ``chestct.arrays.write_split`` (what the preprocess stage runs);
- the throughput of bare decoding and resizing on the same number of processes, the least
  work any preprocessing must do;
- their ratio (1.0 means preprocessing costs nothing beyond decoding and resizing);
- peak memory of a full preprocessing run at 1x and 4x the number of files, each in a fresh
  process: the highest sum of resident memory (RSS) over the process and all its descendants,
  sampled every 10 ms. RSS counts pages shared between processes once per process, so the
  figure overstates the real use.

Both throughputs are measured alternately, several times, and the medians are compared, so
that a noisy machine affects both alike.

Usage: python benchmarks/preprocess.py [--source data/raw/images] [--repeats 3]
"""

import argparse
import functools
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
from PIL import Image

from chestct.arrays import SourceImage, write_split
from chestct.layout import find_dataset_root, list_images
from chestct.parallel import limit_opencv_threads, process_context
from chestct.preprocessing import PreprocessConfig


def list_sources(source: Path) -> list[SourceImage]:
    """List a Kaggle-layout folder's images as preprocessing inputs."""
    images = list_images(find_dataset_root(source))
    return [SourceImage(file, str(file), int(subtype != "normal"), subtype, "") for _, _, subtype, file in images]


def decode_and_resize(file: Path, size: int) -> np.ndarray:
    """Decode an image to grayscale and resize it: the floor of preprocessing's work."""
    with Image.open(file) as image:
        gray = np.asarray(image.convert("L"))
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)


def time_floor(files: list[Path], size: int, workers: int) -> float:
    """Return images per second of bare decoding and resizing on ``workers`` processes."""
    work = functools.partial(decode_and_resize, size=size)
    start = time.perf_counter()
    with process_context().Pool(workers, initializer=limit_opencv_threads) as pool:
        for _ in pool.imap(work, files, chunksize=8):
            pass
    return len(files) / (time.perf_counter() - start)


def time_stage(sources: list[SourceImage], config: PreprocessConfig, workers: int, folder: Path) -> float:
    """Return images per second of the preprocess stage's ``write_split``."""
    start = time.perf_counter()
    write_split(sources, folder / "images.npy", folder / "index.csv", config, workers=workers)
    return len(sources) / (time.perf_counter() - start)


def peak_memory(source: Path, scale: int, workers: int) -> dict:
    """Run a full preprocessing of ``scale`` copies of the file list in a fresh process."""
    command = [sys.executable, __file__, "--source", str(source), "--memory-run", str(scale), "--workers", str(workers)]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)


def tree_rss(process: psutil.Process) -> int:
    """Return the summed RSS in bytes of a process and all its descendants."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def memory_run(source: Path, scale: int, workers: int) -> None:
    """Preprocess ``scale`` copies of the files and print the peak tree RSS as JSON (in MiB)."""
    sources = list_sources(source) * scale
    process, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], tree_rss(process))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as folder:
        write_split(sources, Path(folder) / "images.npy", Path(folder) / "index.csv", PreprocessConfig(), workers)
    done.set()
    sampler.join()

    print(json.dumps({"images": len(sources), "peak_mib": peak[0] / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("data/raw/images"), help="folder in the Kaggle layout")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each measurement")
    parser.add_argument("--workers", type=int, default=2, help="processes for both measurements")
    parser.add_argument("--memory-run", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_run:
        memory_run(args.source, args.memory_run, args.workers)
        return

    config = PreprocessConfig()
    sources = list_sources(args.source)
    files = [source.file for source in sources]
    print(f"{len(files)} images from {args.source}, {args.workers} workers, {multiprocessing.cpu_count()} CPUs")

    stage_rates, floor_rates = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.repeats):
            floor_rates.append(time_floor(files, config.image_size, args.workers))
            stage_rates.append(time_stage(sources, config, args.workers, Path(folder)))

    stage, floor = statistics.median(stage_rates), statistics.median(floor_rates)
    print(f"preprocess stage:        {stage:7.1f} images/s (runs: {', '.join(f'{r:.1f}' for r in stage_rates)})")
    print(f"decode + resize floor:   {floor:7.1f} images/s (runs: {', '.join(f'{r:.1f}' for r in floor_rates)})")
    print(f"ratio stage / floor:     {stage / floor:7.2f}")

    for scale in (1, 4):
        memory = peak_memory(args.source, scale, args.workers)
        print(
            f"peak memory at {scale}x ({memory['images']} images): {memory['peak_mib']:.0f} MiB "
            "(process and workers, summed RSS)"
        )


if __name__ == "__main__":
    main()
