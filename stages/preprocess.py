"""Preprocess stage: turn the audited raw images into one cached array per split."""

import json
import logging

from chestct import paths
from chestct.arrays import select_sources, write_split
from chestct.audit import read_audit_files
from chestct.params import load_params
from chestct.preprocessing import PreprocessConfig
from chestct.stage_runner import run_stage

logger = logging.getLogger("stages.preprocess")

PARAMS = (
    "data.drop_cross_split_duplicates",
    "audit.max_pixels",
    "preprocess.image_size",
    "preprocess.crop_borders",
    "preprocess.crop_tolerance",
    "preprocess.keep_aspect_ratio",
    "preprocess.clahe",
    "preprocess.clahe_clip_limit",
    "preprocess.clahe_tile_grid",
    "preprocess.workers",
)


def main() -> None:
    params = load_params(paths.PARAMS_FILE, PARAMS)
    config = PreprocessConfig.from_params(params["preprocess"])
    workers = params["preprocess"]["workers"]
    drop_duplicates = params["data"]["drop_cross_split_duplicates"]

    audit_files = read_audit_files(paths.AUDIT_FILES)
    sources, counts = select_sources(audit_files, paths.RAW_DIR, drop_duplicates)

    for split, split_sources in sources.items():
        write_split(
            split_sources,
            paths.images_file(split),
            paths.index_file(split),
            config,
            workers=workers,
            max_pixels=params["audit"]["max_pixels"],
        )

    metrics = {"image_size": config.image_size, "drop_cross_split_duplicates": drop_duplicates, "splits": counts}
    paths.PREPROCESS_METRICS.parent.mkdir(parents=True, exist_ok=True)
    paths.PREPROCESS_METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Wrote %s", paths.PREPROCESS_METRICS)


if __name__ == "__main__":
    run_stage(main, logger)
