"""Preprocessed splits on disk: one ``.npy`` image array and one CSV index per split.

The image array has shape ``(N, size, size, 1)`` and dtype uint8; row ``i`` of the CSV index
(source path, label, subtype, SHA-256) describes image ``i``. Images are written one at a time
in order, straight into the file, so memory stays flat however many images a split has, and
the bytes depend only on the inputs.
"""

import csv
import functools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas
from tqdm import tqdm

from chestct.imaging import DEFAULT_MAX_PIXELS, read_grayscale
from chestct.layout import SPLITS
from chestct.parallel import limit_opencv_threads, process_context
from chestct.preprocessing import PreprocessConfig, preprocess_image

logger = logging.getLogger(__name__)

INDEX_COLUMNS = ("path", "label", "subtype", "sha256")


@dataclass(frozen=True)
class SourceImage:
    """One file to preprocess: ``file`` is read, the other fields go into the index."""

    file: Path
    path: str
    label: int
    subtype: str
    sha256: str


@dataclass(frozen=True)
class Split:
    """A preprocessed split: ``images`` is ``(N, size, size, 1) uint8``, the rest length N."""

    images: np.ndarray
    labels: np.ndarray
    subtypes: list[str]
    sha256s: list[str]
    paths: list[str]


def preprocess_files(
    sources: Sequence[SourceImage],
    config: PreprocessConfig,
    workers: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    description: str = "preprocess",
) -> Iterator[np.ndarray]:
    """Decode and preprocess files in parallel, yielding ``(size, size) uint8`` images in order.

    With ``workers`` above 1 the files are spread over that many processes. The results come
    in the order of ``sources`` whatever the number of workers.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"preprocess.workers must be a positive integer, got {workers!r}.")

    files = [source.file for source in sources]
    work = functools.partial(_preprocess_file, config=config, max_pixels=max_pixels)
    progress = functools.partial(tqdm, total=len(files), desc=description, unit="image", mininterval=1.0)

    if workers <= 1 or len(files) < 2:
        yield from progress(map(work, files))
        return

    with process_context().Pool(workers, initializer=limit_opencv_threads) as pool:
        yield from progress(pool.imap(work, files, chunksize=8))


def write_split(
    sources: Sequence[SourceImage],
    images_path: Path,
    index_path: Path,
    config: PreprocessConfig,
    workers: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> None:
    """Preprocess a split's files into an image array and its CSV index.

    Both files are written under temporary names and renamed at the end, so a failure leaves
    no half-written array behind.

    Raises:
        chestct.imaging.ImageDecodeError: if a file cannot be decoded; it names the file.
    """
    size = config.image_size
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (len(sources), size, size, 1),
    }
    images_path.parent.mkdir(parents=True, exist_ok=True)
    partial_images = images_path.with_name(images_path.name + ".partial")
    partial_index = index_path.with_name(index_path.name + ".partial")

    try:
        with partial_images.open("wb") as stream:
            np.lib.format.write_array_header_1_0(stream, header)
            for image in preprocess_files(sources, config, workers, max_pixels, description=images_path.stem):
                stream.write(image.tobytes())
        _write_index(sources, partial_index)
    except BaseException:
        partial_images.unlink(missing_ok=True)
        partial_index.unlink(missing_ok=True)
        raise

    os.replace(partial_images, images_path)
    os.replace(partial_index, index_path)
    logger.info("Wrote %d images of %dx%d to %s", len(sources), size, size, images_path)


def load_split(images_path: Path, index_path: Path, mmap: bool = True) -> Split:
    """Load a split written by ``write_split``; the images are memory-mapped by default.

    Raises:
        FileNotFoundError: if either file is missing.
        ValueError: if the array and the index disagree in length, or the array's shape or
            dtype is not ``(N, size, size, 1) uint8``.
    """
    for path in (images_path, index_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found; run the preprocess stage first (dvc repro preprocess).")

    images = np.load(images_path, mmap_mode="r" if mmap else None)
    with Path(index_path).open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))

    if images.ndim != 4 or images.shape[-1] != 1 or images.dtype != np.uint8:
        raise ValueError(f"{images_path} contains {images.dtype} {images.shape}, expected uint8 (N, size, size, 1).")
    if len(rows) != len(images):
        raise ValueError(f"{images_path} has {len(images)} images but {index_path} has {len(rows)} rows.")

    return Split(
        images=images,
        labels=np.array([int(row["label"]) for row in rows], dtype=np.int64),
        subtypes=[row["subtype"] for row in rows],
        sha256s=[row["sha256"] for row in rows],
        paths=[row["path"] for row in rows],
    )


def _write_index(sources: Sequence[SourceImage], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(INDEX_COLUMNS)
        for source in sources:
            writer.writerow([source.path, source.label, source.subtype, source.sha256])


def _preprocess_file(file: Path, config: PreprocessConfig, max_pixels: int) -> np.ndarray:
    return preprocess_image(read_grayscale(file, max_pixels), config)


def select_sources(
    audit_files: pandas.DataFrame, raw_dir: Path, drop_cross_split_duplicates: bool
) -> tuple[dict[str, list[SourceImage]], dict[str, dict[str, int]]]:
    """Choose the files of each split to preprocess from the audit stage's file table.

    Undecodable files (non-empty ``decode_error``) are always left out. With
    ``drop_cross_split_duplicates``, so are files whose ``duplicate_of_earlier_split`` is true:
    valid files byte-identical to a train file and test files byte-identical to a train or
    valid file.

    Returns:
        The sources per split, in the table's order, and per split the counts of files kept,
        undecodable files skipped and duplicates dropped.

    Raises:
        ValueError: if ``drop_cross_split_duplicates`` is not a bool, or a split has no image left.
    """
    if not isinstance(drop_cross_split_duplicates, bool):
        raise ValueError(
            f"data.drop_cross_split_duplicates must be true or false, got {drop_cross_split_duplicates!r}."
        )

    sources, counts = {}, {}
    for split in SPLITS:
        rows = audit_files[audit_files["split"] == split]
        undecodable = rows["decode_error"].fillna("").astype(str) != ""
        duplicate = rows["duplicate_of_earlier_split"].astype(bool) & ~undecodable
        keep = ~undecodable & ~(duplicate & drop_cross_split_duplicates)

        sources[split] = [
            SourceImage(raw_dir / row.path, row.path, int(row.label), row.subtype, row.sha256)
            for row in rows[keep].itertuples()
        ]
        counts[split] = {
            "images": int(keep.sum()),
            "skipped_undecodable": int(undecodable.sum()),
            "dropped_cross_split_duplicates": int((duplicate & drop_cross_split_duplicates).sum()),
        }
        if not sources[split]:
            raise ValueError(
                f"Split {split} has no image left to preprocess ({counts[split]}); "
                "see the decode errors in data/audit/files.csv."
            )
    return sources, counts
