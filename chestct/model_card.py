"""The model card written next to the exported model files."""

from typing import Any

INTENDED_USE = """\
## Intended use and limitations

This is a research model, not a medical device. It has not been validated for clinical use and
must not be used to diagnose, treat or triage patients.

- It classifies single axial chest CT slices, exported as images, as normal or cancer. It was
  trained on a few hundred slices from one public dataset (counts in `metrics/data.json`).
  Performance on other scanners, protocols, patients or image sources is unknown.
- In the Kaggle dataset normal and cancer images come from different sources, and many normal
  test images are byte-identical copies of training images. The figures without those copies,
  above, are the more honest estimate, and they rest on very few normal images.
- Confidence intervals come from a stratified bootstrap of the test split; they describe
  sampling noise in this test split only.
"""


def render_model_card(
    params: dict[str, Any], threshold: dict[str, Any], evaluation: dict[str, Any], data: dict[str, str]
) -> str:
    """Render the model card as Markdown.

    Args:
        params: the stage's parameters (model architecture and preprocessing).
        threshold: the contents of ``models/threshold.json``.
        evaluation: the contents of ``metrics/evaluate.json``.
        data: ``source`` and ``manifest_sha256`` of the training data.
    """
    sections = [
        "# Model card: chestct chest CT cancer classifier\n",
        _data_section(data),
        _model_section(params),
        _threshold_section(threshold),
        _metrics_section("Test split", evaluation["test"]),
        _metrics_section(
            f"Test split without the {evaluation['test_without_cross_split_duplicates']['removed']} images "
            "byte-identical to a train or valid image",
            evaluation["test_without_cross_split_duplicates"],
        ),
        INTENDED_USE,
    ]
    return "\n".join(sections)


def _data_section(data: dict[str, str]) -> str:
    return (
        "## Data\n\n"
        "Kaggle dataset `mohamedhanyyy/chest-ctscan-images` (CC0), read from "
        f"`{data['source']}`. SHA-256 of the raw manifest (every file's path, label and SHA-256): "
        f"`{data['manifest_sha256']}`.\n"
    )


def _model_section(params: dict[str, Any]) -> str:
    model = params["model"]
    lines = [f"- `{key}`: `{value}`" for key, value in sorted(model.items())]
    size = params["preprocess"]["image_size"]
    lines.append(f"- input: `({size}, {size}, 1)` grayscale, values 0-255, from `chestct.preprocessing`")
    return "## Model\n\n" + "\n".join(lines) + "\n"


def _threshold_section(threshold: dict[str, Any]) -> str:
    return (
        "## Decision threshold\n\n"
        f"Cancer when the probability is at least **{threshold['threshold']:.6f}**, chosen on the "
        f"{threshold['chosen_on']} split by `{threshold['method']}` (validation sensitivity "
        f"{threshold['sensitivity']:.4f}, specificity {threshold['specificity']:.4f}). Trained weights: "
        f"`{threshold['model_file']}`, SHA-256 `{threshold['model_sha256']}`.\n"
    )


def _metrics_section(title: str, report: dict[str, Any]) -> str:
    intervals = report["confidence_intervals"]
    level = f"{intervals['confidence'] * 100:g}%"
    rows = [f"| metric | value | {level} interval |", "|---|---|---|"]
    for name, value in report["metrics"].items():
        # The threshold has its own section above.
        if name != "threshold" and isinstance(value, (int, float)) and not isinstance(value, bool):
            interval = intervals["metrics"].get(name) or {}
            low, high = _number(interval.get("low")), _number(interval.get("high"))
            rows.append(f"| {name} | {_number(value)} | {low} - {high} |")
    counts = f"{report['n_samples']} images: {report['n_cancer']} cancer, {report['n_normal']} normal."
    return f"## {title}\n\n{counts}\n\n" + "\n".join(rows) + "\n"


def _number(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
