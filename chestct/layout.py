"""The Kaggle chest CT dataset's folder layout and the manifest that describes it.

The archive contains ``Data/<split>/<class folder>/<image>``. Train and valid class folders
carry TNM staging suffixes (``adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib``), but test folders
do not (``adenocarcinoma``). Both name the same cancer subtype.
"""

import csv
import logging
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
NORMAL = "normal"
CANCER_SUBTYPES = ("adenocarcinoma", "large_cell_carcinoma", "squamous_cell_carcinoma")
SUBTYPES = (NORMAL, *CANCER_SUBTYPES)
DATA_FOLDER_NAMES = ("Data", "data")

_CLASS_NAMES_HINT = f"expected a name starting with one of {', '.join(s.replace('_', '.') for s in SUBTYPES)}."


class LayoutError(ValueError):
    """A dataset folder that does not follow the Kaggle layout."""


@dataclass(frozen=True)
class ManifestRow:
    """One image of the raw dataset.

    ``path`` is relative to the manifest's folder; ``label`` is 1 for cancer, 0 for normal.
    """

    path: str
    split: str
    class_folder: str
    label: int
    subtype: str
    sha256: str
    bytes: int


MANIFEST_COLUMNS = tuple(field.name for field in fields(ManifestRow))


def parse_class_folder(name: str) -> str:
    """Map a class folder name to its subtype, one of ``SUBTYPES``.

    The part before the first underscore names the class. Dots, dashes and spaces in it count
    as word separators and case is ignored, so ``large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa``
    and ``large.cell.carcinoma`` both give ``large_cell_carcinoma``.

    Raises:
        LayoutError: if the name matches no known class.
    """
    subtype = _subtype_or_none(name)
    if subtype is None:
        raise LayoutError(f"Unknown class folder {name!r}: {_CLASS_NAMES_HINT}")
    return subtype


def label_of(subtype: str) -> int:
    """Return the binary label of a subtype: 0 for normal, 1 for any cancer."""
    return 0 if subtype == NORMAL else 1


def find_dataset_root(folder: Path) -> Path:
    """Find the folder that contains the ``train``, ``valid`` and ``test`` split folders.

    Accepts ``folder`` itself, ``folder/Data`` or ``folder/<one name>/Data``.

    Raises:
        LayoutError: if no candidate, or more than one at the same depth, contains all splits, or
            if the path from ``folder`` to the one found passes through a symbolic link.
    """
    folder = Path(folder)
    nested = [child for child in sorted(folder.iterdir()) if child.is_dir() and not _is_hidden(child)]
    depths = [
        [folder],
        [folder / name for name in DATA_FOLDER_NAMES],
        [child / name for child in nested for name in DATA_FOLDER_NAMES],
    ]

    for candidates in depths:
        found = [path for path in candidates if _has_split_folders(path)]
        if len(found) == 1:
            _reject_links_below(folder, found[0])
            return found[0]
        if len(found) > 1:
            listed = ", ".join(str(path) for path in found)
            raise LayoutError(f"{folder} contains several datasets ({listed}); point data.source at one of them.")

    message = (
        f"{folder} is not in the Kaggle layout: no folder with {'/'.join(SPLITS)} subfolders found "
        f"at {folder}, {folder}/Data or {folder}/<name>/Data."
    )
    partial = [_describe_splits_found(path) for depth in depths for path in depth if _has_some_split_folder(path)]
    if partial:
        message += " " + " ".join(partial)
    raise LayoutError(message)


def list_images(root: Path) -> list[tuple[str, str, str, Path]]:
    """List the image files below a dataset root, sorted by path.

    Returns:
        Tuples ``(split, class_folder, subtype, file)`` for every non-hidden file.

    Raises:
        LayoutError: on a missing split, a split without one of the four classes, an unknown
            folder, or a file or folder where the layout has none. Also on a symbolic link, and
            on an entry that is neither a regular file nor a folder, such as a FIFO.
    """
    _reject_unknown_entries(root, SPLITS, "split folder")
    images = []

    for split in SPLITS:
        split_dir = root / split
        _reject_link(split_dir)
        class_dirs = [entry for entry in sorted(split_dir.iterdir()) if not _is_hidden(entry)]
        subtypes_seen = set()

        for class_dir in class_dirs:
            _reject_link(class_dir)
            if not class_dir.is_dir():
                raise LayoutError(f"Unexpected file {class_dir}: files belong in a class folder below {split_dir}.")
            subtype = _subtype_or_none(class_dir.name)
            if subtype is None:
                raise LayoutError(f"Unknown class folder {class_dir}: {_CLASS_NAMES_HINT}")
            files = _list_class_files(class_dir)
            if files:
                subtypes_seen.add(subtype)
            images += [(split, class_dir.name, subtype, path) for path in files]

        missing = [subtype for subtype in SUBTYPES if subtype not in subtypes_seen]
        if missing:
            raise LayoutError(f"Split folder {split_dir} has no images of class {', '.join(missing)}.")

    return images


def write_manifest(rows: list[ManifestRow], path: Path) -> None:
    """Write manifest rows to a CSV file, sorted by path so that the bytes are reproducible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in sorted(rows, key=lambda row: row.path):
            writer.writerow(asdict(row))


def read_manifest(path: Path) -> list[ManifestRow]:
    """Read a manifest written by ``write_manifest``.

    Raises:
        FileNotFoundError: if the manifest is missing.
        LayoutError: if its columns are not the manifest's columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Manifest {path} not found; run the download stage first (dvc repro download).")

    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise LayoutError(f"{path} has columns {reader.fieldnames}, expected {list(MANIFEST_COLUMNS)}.")
        return [
            ManifestRow(**{**record, "label": int(record["label"]), "bytes": int(record["bytes"])}) for record in reader
        ]


def _subtype_or_none(class_folder: str) -> str | None:
    stem = class_folder.split("_", 1)[0]
    subtype = re.sub(r"[.\- ]+", "_", stem.strip().lower())
    return subtype if subtype in SUBTYPES else None


def _is_hidden(path: Path) -> bool:
    # Finder, Explorer and archive tools leave .DS_Store, Thumbs.db and __MACOSX behind.
    return path.name.startswith(".") or path.name in {"Thumbs.db", "desktop.ini", "__MACOSX"}


def _has_split_folders(path: Path) -> bool:
    return all((path / split).is_dir() for split in SPLITS)


def _has_some_split_folder(path: Path) -> bool:
    return any((path / split).is_dir() for split in SPLITS)


def _describe_splits_found(path: Path) -> str:
    found = [split for split in SPLITS if (path / split).is_dir()]
    missing = [split for split in SPLITS if split not in found]
    return f"Found {', '.join(found)} but not {', '.join(missing)} in {path}."


def _reject_link(path: Path) -> None:
    # A link can point anywhere, such as /etc, and whatever it points to would be copied into
    # data/raw and the DVC cache. Zip sources reject links for the same reason.
    if path.is_symlink():
        raise LayoutError(
            f"{path} is a symbolic link, and dataset folders may not contain links (zip archives may "
            f"not either). Replace the link with a copy of its target, for example with `cp -L`."
        )


def _reject_links_below(folder: Path, root: Path) -> None:
    path = folder
    for part in root.relative_to(folder).parts:
        path = path / part
        _reject_link(path)


def _reject_unknown_entries(folder: Path, allowed: tuple[str, ...], kind: str) -> None:
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and entry.name not in allowed and not _is_hidden(entry):
            raise LayoutError(f"Unknown folder {entry}: expected only the {kind}s {', '.join(allowed)}.")


def _list_class_files(class_dir: Path) -> list[Path]:
    files = []
    for entry in sorted(class_dir.iterdir()):
        if _is_hidden(entry):
            logger.debug("Skipping hidden file %s", entry)
            continue
        _reject_link(entry)
        if entry.is_dir():
            raise LayoutError(f"Unknown folder {entry}: class folders must contain image files only.")
        # Opening a FIFO for reading blocks until a writer appears, so the copy would hang.
        if not entry.is_file():
            raise LayoutError(
                f"Unexpected {entry}: it is neither a regular file nor a folder. Class folders must "
                f"contain image files only."
            )
        files.append(entry)
    return files
