"""The ``chestct`` command: use the trained model on your own images.

    chestct predict PATH... [--output results.csv]
    chestct evaluate-folder DIR [--label benign=0] [--output report.json]
    chestct explain IMAGE -o OUT.png
    chestct serve [--host 127.0.0.1] [--port 8000]

Every command reads the model, its threshold and its preprocessing from the pipeline folder
(``--root``, the current directory by default) after ``dvc repro``. ``--model`` selects an
exported file instead of the trained weights.
"""

import argparse
import csv
import json
import logging
import os
import sys
from pathlib import Path

from chestct import __version__

logger = logging.getLogger("chestct.cli")

# Exit status for a usage or input problem, as argparse uses for its own errors.
USAGE_ERROR = 2

RESULT_COLUMNS = ("path", "probability", "diagnosis", "confidence", "threshold", "model_version", "error")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # TensorFlow's C++ start-up messages (CPU features, missing CUDA) bury the results; errors
    # still show. An explicit setting in the environment wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    from chestct.classifier import ModelMismatchError
    from chestct.imaging import ImageDecodeError

    try:
        return args.run(args)
    except (FileNotFoundError, ModelMismatchError, ImageDecodeError, ValueError) as error:
        print(f"chestct {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chestct", description="Use the trained chest CT cancer classifier.")
    parser.add_argument("--version", action="version", version=f"chestct {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict = commands.add_parser("predict", help="score image files or folders (PNG, JPEG, DICOM)")
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, or folders searched recursively")
    predict.add_argument("-o", "--output", type=Path, help="write the results to a .csv or .json file")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per model call (default 32)")
    predict.set_defaults(run=run_predict)

    evaluate = commands.add_parser("evaluate-folder", help="measure the model on labelled class folders")
    evaluate.add_argument("folder", type=Path, metavar="DIR", help="folder with one sub-folder per class")
    evaluate.add_argument(
        "--label",
        action="append",
        default=[],
        type=_label,
        metavar="NAME=0|1",
        help="label of a class folder: 0 normal, 1 cancer (default: 'normal' is 0, every other folder 1)",
    )
    evaluate.add_argument("-o", "--output", type=Path, help="write the report to a .json file")
    evaluate.add_argument("--predictions", type=Path, help="write each image's probability to a .csv file")
    evaluate.add_argument("--bootstrap-resamples", type=_positive_int, default=1000)
    evaluate.add_argument(
        "--confidence", type=_open_probability, default=0.95, help="coverage of the intervals (default 0.95)"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    evaluate.add_argument("--batch-size", type=_positive_int, default=32)
    evaluate.set_defaults(run=run_evaluate_folder)

    explain = commands.add_parser("explain", help="write a Grad-CAM heat map over one image")
    explain.add_argument("image", type=Path, metavar="IMAGE")
    explain.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    explain.set_defaults(run=run_explain)

    serve = commands.add_parser("serve", help="run the web service and its page")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.set_defaults(run=run_serve)

    for command in (predict, evaluate, explain, serve):
        command.add_argument("--root", type=Path, default=Path("."), help="the pipeline folder (default: .)")
        command.add_argument("--model", type=Path, help="an exported model from models/export instead of the weights")
        command.add_argument("-v", "--verbose", action="store_true", help="log debugging details")
    return parser


def run_predict(args) -> int:
    from chestct.batch_scoring import collect_files, score_files

    files = collect_files(args.paths)
    _check_output_suffix(args.output, (".csv", ".json"))
    classifier, settings = _load(args)

    results = score_files(classifier, files, settings, args.batch_size, max_bytes=_max_bytes(classifier))
    rows = [_result_row(result, classifier) for result in results]
    _print_table(rows, ("path", "probability", "diagnosis", "confidence", "error"))
    if args.output:
        _write_rows(args.output, rows)
        logger.info("Wrote %d results to %s", len(rows), args.output)

    failed = sum(1 for result in results if result.error)
    if failed:
        print(f"{failed} of {len(results)} files could not be scored; see the error column.", file=sys.stderr)
        return 1
    return 0


def run_evaluate_folder(args) -> int:
    import numpy as np

    from chestct.batch_scoring import labelled_files, score_files
    from chestct.evaluation import evaluate_split

    files, labels, classes = labelled_files(args.folder, dict(args.label))
    _check_output_suffix(args.output, (".json",))
    _check_output_suffix(args.predictions, (".csv",))
    classifier, settings = _load(args)

    results = score_files(classifier, files, settings, args.batch_size, max_bytes=_max_bytes(classifier))
    scored = np.array([result.error is None for result in results])
    if not scored.all():
        print(f"{(~scored).sum()} of {len(results)} files could not be read and are left out.", file=sys.stderr)
    probabilities = np.array([result.probability for result in results if result.error is None])
    report = evaluate_split(
        labels[scored],
        probabilities,
        classifier.threshold,
        subtypes=list(np.array(classes)[scored]),
        n_resamples=args.bootstrap_resamples,
        seed=args.seed,
        confidence=args.confidence,
    )
    report = {
        "folder": str(args.folder),
        "model": classifier.describe(),
        "unreadable_files": int((~scored).sum()),
        **report,
    }

    _print_evaluation(report)
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        logger.info("Wrote the report to %s", args.output)
    if args.predictions:
        rows = [
            _result_row(result, classifier) | {"class": name} for result, name in zip(results, classes, strict=True)
        ]
        _write_rows(args.predictions, rows)
    return 0


def run_explain(args) -> int:
    from chestct.gradcam import encode_png, overlay
    from chestct.inputs import read_input_file
    from chestct.preprocessing import preprocess_image

    _check_output_suffix(args.output, (".png",))
    classifier, settings = _load(args)

    image = preprocess_image(read_input_file(args.image, settings).gray, classifier.preprocess)
    probability = float(classifier.predict_images(image[None])[0])
    heatmap, _ = classifier.explain(image)

    args.output.write_bytes(encode_png(overlay(image, heatmap)))
    prediction = classifier.decide(probability)
    print(
        f"{args.image}: {prediction.diagnosis} (cancer probability {probability:.4f}, "
        f"threshold {prediction.threshold:.4f}); Grad-CAM written to {args.output}"
    )
    return 0


def run_serve(args) -> int:
    import uvicorn

    from chestct.classifier import check_model
    from chestct.service import create_app

    # Checked before the server binds its port, so a mismatch stops it with this message.
    source = check_model(args.root, args.model)
    app = create_app(source=source)
    uvicorn.run(app, host=args.host, port=args.port, log_level="debug" if args.verbose else "info")
    return 0


def _load(args):
    from chestct.classifier import Classifier, check_model
    from chestct.inputs import InputSettings

    source = check_model(args.root, args.model)
    logger.info("Loading model version %s (%s) from %s", source.version, source.format, source.model_path)
    return Classifier(source), InputSettings.from_params(source.params["inference"])


def _max_bytes(classifier) -> int:
    return classifier.source.params["inference"]["max_upload_bytes"]


def _result_row(result, classifier) -> dict:
    row = {"path": str(result.path), "model_version": classifier.version, "threshold": classifier.threshold}
    if result.error is not None:
        return row | {"probability": None, "diagnosis": None, "confidence": None, "error": result.error}
    prediction = classifier.decide(result.probability)
    return row | {
        "probability": prediction.probability,
        "diagnosis": prediction.diagnosis,
        "confidence": prediction.confidence,
        "error": None,
    }


def _write_rows(path: Path, rows: list[dict]) -> None:
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
        return
    columns = list(RESULT_COLUMNS) + [key for key in rows[0] if key not in RESULT_COLUMNS] if rows else RESULT_COLUMNS
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def _print_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    def cell(value) -> str:
        if value is None:
            return ""
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    visible = [col for col in columns if col != "error" or any(row["error"] for row in rows)]
    cells = [[cell(row[col]) for col in visible] for row in rows]
    widths = [max([len(col), *(len(line[i]) for line in cells)]) for i, col in enumerate(visible)]
    print("  ".join(col.ljust(width) for col, width in zip(visible, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip())


def _print_evaluation(report: dict) -> None:
    metrics, intervals = report["metrics"], report["confidence_intervals"]["metrics"]
    coverage = round(100 * report["confidence_intervals"]["confidence"])
    print(
        f"{report['n_samples']} images ({report['n_cancer']} cancer, {report['n_normal']} normal), "
        f"threshold {report['threshold']:.4f}"
    )
    for name in ("auc", "sensitivity", "specificity"):
        low, high = intervals[name]["low"], intervals[name]["high"]
        span = f"({coverage}% CI {low:.4f}-{high:.4f})" if low is not None else "(no interval)"
        print(f"  {name:<12} {metrics[name]:.4f} {span}")
    matrix = metrics["confusion_matrix"]
    print(f"  confusion matrix: {json.dumps(matrix)}")


def _check_output_suffix(path: Path | None, suffixes: tuple[str, ...]) -> None:
    # Checked before any scoring, so that a typo does not cost a whole run.
    if path is None:
        return
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{path}: the output file must end in {' or '.join(suffixes)}.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist; create it first.")


def _open_probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _label(text: str) -> tuple[str, int]:
    name, separator, label = text.rpartition("=")
    if not separator or not name or label not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected NAME=0 or NAME=1, got {text!r}")
    return name, int(label)


if __name__ == "__main__":
    sys.exit(main())
