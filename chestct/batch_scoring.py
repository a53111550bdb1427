"""Scoring many image files at once: for ``chestct predict`` and ``chestct evaluate-folder``.

Files are found by walking folders, decoded by content (a folder may hold other files, which
are reported, not fatal), preprocessed exactly as in training and scored in batches.
"""

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from chestct.classifier import Classifier
from chestct.imaging import ImageDecodeError
from chestct.inputs import InputSettings, prepare_input

logger = logging.getLogger(__name__)

# Sub-folder names that evaluate-folder labels normal (0) without a --label option. Every
# other sub-folder contains cancer (1), as in the Kaggle dataset's four class folders.
DEFAULT_NORMAL_CLASSES = ("normal",)


@dataclass(frozen=True)
class FileResult:
    """The outcome for one file: a probability, or the reason it could not be scored."""

    path: Path
    probability: float | None = None
    error: str | None = None
    input_format: str | None = None


def collect_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of files.

    Folders are walked recursively; hidden files and folders (``.DS_Store``, ``.git``) are
    skipped. A file named directly is always kept.

    Raises:
        FileNotFoundError: naming the first path that does not exist.
        ValueError: for a path that is neither a regular file nor a folder (a FIFO, a device),
            or when no file is found at all.
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(sorted(_visible_files(path)))
        elif path.exists():
            raise ValueError(f"{path} is not a regular file or a folder; give image files or folders.")
        else:
            raise FileNotFoundError(f"{path} not found; give image files or folders that contain them.")

    if not files:
        raise ValueError(f"No files found in {', '.join(map(str, paths))}.")
    return files


def labelled_files(folder: str | Path, labels: dict[str, int]) -> tuple[list[Path], np.ndarray, list[str]]:
    """List the images of ``folder``, labelled by the name of the sub-folder they lie in.

    Args:
        folder: a folder with one sub-folder per class, such as the Kaggle ``Data/test``.
        labels: class folder name -> 0 (normal) or 1 (cancer); a folder missing from it is 1,
            unless it is named in ``DEFAULT_NORMAL_CLASSES``.

    Returns:
        The files, their labels as an int array and their class folder names.

    Raises:
        FileNotFoundError: if ``folder`` is not a folder.
        ValueError: if it has no class sub-folders, a label is not 0 or 1, or the files do
            not cover both classes.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give a folder with one sub-folder per class.")
    for name, label in labels.items():
        if label not in (0, 1):
            raise ValueError(f"The label of class folder {name!r} must be 0 (normal) or 1 (cancer), got {label!r}.")

    classes = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class sub-folders, such as normal/ and adenocarcinoma/.")
    unknown = sorted(set(labels) - {path.name for path in classes})
    if unknown:
        raise ValueError(
            f"No class folder named {unknown} in {folder}; its class folders are {[c.name for c in classes]}."
        )

    files, targets, names = [], [], []
    for class_dir in classes:
        label = labels.get(class_dir.name, 0 if class_dir.name in DEFAULT_NORMAL_CLASSES else 1)
        for file in sorted(_visible_files(class_dir)):
            files.append(file)
            targets.append(label)
            names.append(class_dir.name)

    present = set(targets)
    if present != {0, 1}:
        missing = "normal (0)" if 0 not in present else "cancer (1)"
        raise ValueError(
            f"{folder} has no {missing} images; the class folders are {[c.name for c in classes]}. "
            "Map folder names to labels with --label NAME=0 or NAME=1."
        )
    return files, np.asarray(targets, dtype=np.int64), names


def score_files(
    classifier: Classifier,
    files: Sequence[Path],
    settings: InputSettings,
    batch_size: int = 32,
    progress: bool = True,
    max_bytes: int | None = None,
) -> list[FileResult]:
    """Score each file with ``classifier``, in batches, in the order given.

    A file that cannot be decoded, or is larger than ``max_bytes``, gets a ``FileResult`` with
    ``error`` set; the others are still scored.
    """
    results: list[FileResult] = []
    with tqdm(total=len(files), unit="image", desc="Scoring", disable=not progress or len(files) <= batch_size) as bar:
        for start in range(0, len(files), batch_size):
            results.extend(_score_batch(classifier, files[start : start + batch_size], settings, max_bytes))
            bar.update(min(batch_size, len(files) - start))
    return results


def _score_batch(
    classifier: Classifier, files: Sequence[Path], settings: InputSettings, max_bytes: int | None
) -> list[FileResult]:
    prepared, failures = {}, {}
    for index, file in enumerate(files):
        try:
            _check_file_size(file, max_bytes)
            prepared[index] = prepare_input(file.read_bytes(), classifier.preprocess, settings)
        except (ImageDecodeError, ValueError, OSError) as error:
            failures[index] = str(error)
            logger.warning("Skipping %s: %s", file, error)

    probabilities = {}
    if prepared:
        images = np.stack([item.image for item in prepared.values()])
        probabilities = dict(zip(prepared, classifier.predict_images(images), strict=True))

    results = []
    for index, file in enumerate(files):
        if index in failures:
            results.append(FileResult(file, error=failures[index]))
        else:
            probability = float(probabilities[index])
            results.append(FileResult(file, probability=probability, input_format=prepared[index].format))
    return results


def _check_file_size(file: Path, max_bytes: int | None) -> None:
    # Files are read whole, so a stray multi-gigabyte file in a folder would fill the memory.
    size = file.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise ValueError(f"{size:,} bytes is more than the limit of {max_bytes:,} (inference.max_upload_bytes)")


def _visible_files(folder: Path) -> Iterable[Path]:
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path
