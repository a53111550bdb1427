"""Stage ``download``: fetch the chest CT dataset into data/raw with its manifest.

Run from the repository root: ``python stages/download.py``. Reads ``data.source`` and
``data.kaggle_dataset`` from params.yaml. Exits with status 1 when the download fails and 130
when SIGINT (Ctrl-C) stops it.
"""

import logging
import sys
from collections import Counter

from chestct.download import DownloadError, download_dataset
from chestct.layout import LayoutError
from chestct.params import load_params
from chestct.paths import RAW_DIR, RAW_MANIFEST

logger = logging.getLogger("stages.download")

PARAMS = ("data.source", "data.kaggle_dataset")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(keys=PARAMS)

    try:
        rows = download_dataset(params["data"]["source"], params["data"]["kaggle_dataset"])
    except (DownloadError, LayoutError) as exc:
        # These errors carry the whole explanation, so a traceback would only bury it.
        logger.error("Download failed: %s", exc)
        sys.exit(1)
    except KeyboardInterrupt:
        # download_dataset removes its temporary folders on the way out, so the traceback
        # would only show where the interrupt happened. 130 is 128 + SIGINT, as in a shell.
        logger.error("Download stopped by SIGINT (Ctrl-C)")
        sys.exit(130)

    per_split = Counter(row.split for row in rows)
    counts = ", ".join(f"{split} {count}" for split, count in sorted(per_split.items()))
    logger.info("Wrote %d images (%s) to %s and the manifest %s", len(rows), counts, RAW_DIR, RAW_MANIFEST)


if __name__ == "__main__":
    main()
