"""Small generated datasets in the Kaggle chest CT layout, for tests and benchmarks."""

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from chestct.paths import REPO_ROOT

TRAIN_FOLDERS = {
    "normal": "normal",
    "adenocarcinoma": "adenocarcinoma_left.lower.lobe_T2_N0_M0_Ib",
    "large_cell_carcinoma": "large.cell.carcinoma_left.hilum_T2_N2_M0_IIIa",
    "squamous_cell_carcinoma": "squamous.cell.carcinoma_left.hilum_T1_N2_M0_IIIa",
}
TEST_FOLDERS = {
    "normal": "normal",
    "adenocarcinoma": "adenocarcinoma",
    "large_cell_carcinoma": "large.cell.carcinoma",
    "squamous_cell_carcinoma": "squamous.cell.carcinoma",
}


def synthetic_slice(rng: np.random.Generator, size: tuple[int, int], cancer: bool) -> np.ndarray:
    """Draw a CT-like slice: a bright body ellipse, dark lungs, a bright nodule for cancer.

    Returns:
        ``(H, W) uint8`` array, with a black border around the body.
    """
    height, width = size
    rows, cols = np.mgrid[0:height, 0:width]
    body = ((rows - height / 2) / (0.4 * height)) ** 2 + ((cols - width / 2) / (0.45 * width)) ** 2 < 1
    image = np.where(body, 160, 0).astype(np.float64)

    for side in (-1, 1):
        lung = ((rows - height / 2) / (0.25 * height)) ** 2 + (
            (cols - width / 2 - side * 0.2 * width) / (0.13 * width)
        ) ** 2 < 1
        image[lung] = 40

    if cancer:
        centre_row, centre_col = rng.integers(int(0.35 * height), int(0.65 * height)), int(0.35 * width)
        nodule = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < (0.05 * min(size)) ** 2
        image[nodule] = 220

    image += rng.normal(0, 8, size)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(gray: np.ndarray, fmt: str = "PNG", mode: str = "RGBA") -> bytes:
    """Encode a grayscale array as PNG or JPEG bytes in the given PIL mode."""
    image = Image.fromarray(gray, mode="L").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def make_dataset(
    root: Path,
    per_class: int = 3,
    seed: int = 0,
    size: tuple[int, int] = (72, 96),
    cross_split_duplicates: bool = True,
) -> Path:
    """Write a dataset in the Kaggle layout below ``root/Data`` and return ``root``.

    Every split gets ``per_class`` images of each of the four classes, mostly RGBA PNGs with a
    few RGB and grayscale PNGs and one JPEG named ``.png``. With ``cross_split_duplicates`` the
    first normal train image is copied byte for byte into valid and test, as in the real data.
    """
    rng = np.random.default_rng(seed)
    modes = ["RGBA", "RGBA", "RGB", "L"]

    for split in ("train", "valid", "test"):
        folders = TEST_FOLDERS if split == "test" else TRAIN_FOLDERS
        for subtype, folder in folders.items():
            class_dir = root / "Data" / split / folder
            class_dir.mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                gray = synthetic_slice(rng, size, cancer=subtype != "normal")
                fmt = "JPEG" if index == 1 and subtype == "adenocarcinoma" else "PNG"
                mode = "RGB" if fmt == "JPEG" else modes[index % len(modes)]
                (class_dir / f"{subtype}_{index:03d}.png").write_bytes(encode(gray, fmt, mode))

    if cross_split_duplicates:
        source = root / "Data" / "train" / "normal" / "normal_000.png"
        for split in ("valid", "test"):
            shutil.copyfile(source, root / "Data" / split / "normal" / "copied_from_train.png")

    return root


# ImageNet weight files that Keras would otherwise download, kept beside the repository
# because the test machines have no internet access. CHESTCT_WEIGHTS_DIR points elsewhere.
WEIGHTS_DIR = Path(os.environ.get("CHESTCT_WEIGHTS_DIR", REPO_ROOT.parent / "shared" / "weights"))
MOBILENET_V2_035_WEIGHTS = WEIGHTS_DIR / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
