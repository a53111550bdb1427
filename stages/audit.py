"""Audit stage: decode every raw image and report duplicates, near-duplicates and metadata shortcuts.

Reads data/raw/manifest.csv and the images below data/raw, and writes data/audit/files.csv,
metrics/data.json and reports/duplicates.csv. Run it from the repository root:

    python stages/audit.py
"""

import logging
import sys

from chestct.audit import (
    AuditError,
    AuditSettings,
    audit_dataset,
    write_audit_files,
    write_duplicates_report,
    write_metrics,
)
from chestct.layout import LayoutError
from chestct.params import load_params
from chestct.paths import AUDIT_FILES, DATA_METRICS, DUPLICATES_REPORT, PARAMS_FILE, RAW_MANIFEST

logger = logging.getLogger("stages.audit")

PARAMS = (
    "seed",
    "audit.on_decode_error",
    "audit.near_duplicate_max_distance",
    "audit.max_pixels",
    "audit.probe_trees",
    "audit.workers",
)


def main() -> int:
    """Run the audit stage and return the process exit status."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        params = load_params(PARAMS_FILE, PARAMS)
    except (OSError, KeyError, ValueError) as error:
        logger.error("Audit failed: %s", error)
        return 1

    try:
        settings = AuditSettings.from_params(params)
        result = audit_dataset(RAW_MANIFEST, settings)
        write_audit_files(result.files, AUDIT_FILES)
        write_metrics(result.metrics, DATA_METRICS)
        write_duplicates_report(result.duplicates, DUPLICATES_REPORT)
    except (OSError, LayoutError, AuditError) as error:
        logger.error("Audit failed: %s", error)
        return 1

    logger.info("Wrote %s (%d files)", AUDIT_FILES, len(result.files))
    logger.info("Wrote %s", DATA_METRICS)
    logger.info("Wrote %s (%d group members)", DUPLICATES_REPORT, len(result.duplicates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
