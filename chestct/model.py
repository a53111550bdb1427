"""The classifier: an ImageNet backbone with optional attention and a dense head.

``build_model`` returns a Keras model that maps ``(B, size, size, 1)`` float32 grey values in
[0, 255] to ``(B, 1)`` cancer probabilities. The model converts grey to RGB and applies the
backbone's own input normalisation itself, so callers feed it the preprocessed pixels unchanged.

Training runs in two phases: in phase 1 only the attention layers and the head learn
(``freeze_backbone``), and in phase 2 ``unfreeze_top`` opens the upper part of the backbone.
Keras applies changes to ``trainable`` at the next ``compile`` (Keras transfer-learning guide),
so call ``compile_model`` again after each change.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from chestct.layers import BackboneNormalization, ChannelAttention, GrayscaleToRGB, SpatialAttention
from chestct.losses import focal_loss
from chestct.paths import REPO_ROOT

# Backbone name -> (keras.applications constructor, BackboneNormalization mode).
BACKBONES = {
    "densenet121": (keras.applications.DenseNet121, "torch"),
    "mobilenetv2": (keras.applications.MobileNetV2, "tf"),
    "efficientnetb0": (keras.applications.EfficientNetB0, "none"),
}

# Width multipliers for which Keras 3.15 publishes MobileNetV2 ImageNet weights.
MOBILENET_IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# keras.applications rejects inputs smaller than 32 x 32.
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096


@dataclass(frozen=True)
class ModelConfig:
    """Parameters of ``build_model``; all but ``image_size`` come from the ``model`` section.

    Fields:
        image_size: side of the square input in pixels, equal to ``preprocess.image_size``.
        backbone: ``"densenet121"``, ``"mobilenetv2"`` or ``"efficientnetb0"``.
        alpha: MobileNetV2 width multiplier; other backbones ignore it.
        weights: ``"imagenet"``, ``"none"`` (random initialisation) or the path of a Keras
            weights file for the backbone without its top. A relative path is resolved
            against the repository root. NOTE: with ``"none"`` the frozen batch normalisation
            layers shrink a random MobileNetV2's features below 1e-11 (measured at 32 px, width
            0.35), so such a model only suits shape and pipeline tests.
        attention: whether channel and spatial attention follow the backbone.
        attention_ratio: channel reduction of the channel attention's bottleneck.
        spatial_kernel: odd kernel side of the spatial attention's convolution.
        dense_units: widths of the dense layers of the head, in order.
        dropout: dropout rate after each dense layer of the head.
        l2: L2 regularisation factor of the head's dense kernels.
    """

    image_size: int
    backbone: str = "densenet121"
    alpha: float = 1.0
    weights: str = "imagenet"
    attention: bool = True
    attention_ratio: int = 8
    spatial_kernel: int = 7
    dense_units: tuple[int, ...] = (512, 256)
    dropout: float = 0.5
    l2: float = 1.5e-3

    def __post_init__(self):
        # YAML gives lists and reads `weights: null` as None. Normalising both keeps the
        # configuration hashable and gives "no weights" one spelling.
        if isinstance(self.dense_units, list):
            object.__setattr__(self, "dense_units", tuple(self.dense_units))
        if self.weights is None:
            object.__setattr__(self, "weights", "none")

        _check_int("preprocess.image_size", self.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
        self._check_backbone()
        self._check_attention()
        self._check_head()

    def _check_backbone(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}.")
        _check_number("model.alpha", self.alpha, "positive", lambda v: v > 0)
        pretrained_mobilenet = self.backbone == "mobilenetv2" and self.weights == "imagenet"
        if pretrained_mobilenet and self.alpha not in MOBILENET_IMAGENET_ALPHAS:
            raise ValueError(
                f"model.alpha must be one of {MOBILENET_IMAGENET_ALPHAS} with ImageNet weights, got {self.alpha!r}."
            )
        resolve_weights(self.weights)

    def _check_attention(self) -> None:
        if not isinstance(self.attention, bool):
            raise ValueError(f"model.attention must be true or false, got {self.attention!r}.")
        # The backbones' last feature maps have 1024 (DenseNet121) or 1280 channels.
        _check_int("model.attention_ratio", self.attention_ratio, 1, 1024)
        _check_int("model.spatial_kernel", self.spatial_kernel, 1, self.image_size)
        if self.spatial_kernel % 2 == 0:
            raise ValueError(f"model.spatial_kernel must be odd, got {self.spatial_kernel!r}.")

    def _check_head(self) -> None:
        units = self.dense_units
        if not isinstance(units, tuple) or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
            raise ValueError(f"model.dense_units must be a list of positive integers, got {units!r}.")
        _check_number("model.dropout", self.dropout, "at least 0 and less than 1", lambda v: 0 <= v < 1)
        _check_number("model.l2", self.l2, "at least 0", lambda v: v >= 0)

    @classmethod
    def from_params(cls, model_section: dict[str, Any], image_size: int) -> "ModelConfig":
        """Build a configuration from the ``model`` section of ``params.yaml``.

        Keys that are not fields are ignored, and missing keys take the defaults above.
        """
        names = cls.__dataclass_fields__.keys() - {"image_size"}
        return cls(image_size=image_size, **{name: model_section[name] for name in names if name in model_section})


def resolve_weights(weights: str) -> str | None:
    """Translate ``model.weights`` into ``"imagenet"``, None or an absolute weights file path.

    Raises:
        ValueError: if ``weights`` is not a string.
        FileNotFoundError: if ``weights`` names a file that does not exist.
    """
    if not isinstance(weights, str):
        raise ValueError(f"model.weights must be 'imagenet', 'none' or a file path, got {weights!r}.")
    if weights == "imagenet":
        return "imagenet"
    if weights == "none":
        return None

    path = Path(weights)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights file {path} not found; give 'imagenet', 'none' or the path of a Keras weights file."
        )
    return str(path)


def build_model(config: ModelConfig) -> keras.Model:
    """Build the classifier with its backbone frozen, ready for phase 1.

    Input ``"image"``: ``(B, image_size, image_size, 1)`` float32 grey values in [0, 255].
    Output ``"cancer_probability"``: ``(B, 1)`` float32 probability of cancer.
    """
    constructor, normalization = BACKBONES[config.backbone]
    inputs = keras.Input(shape=(config.image_size, config.image_size, 1), dtype="float32", name="image")
    x = GrayscaleToRGB(name="grayscale_to_rgb")(inputs)
    x = BackboneNormalization(normalization, name="backbone_normalization")(x)

    backbone = _build_backbone(config, constructor)
    # training=False requests inference-mode batch normalisation even in phase 2, because small
    # fine-tuning batches would overwrite the pretrained statistics. NOTE: Keras 3.15 ignores it
    # when the outer model runs with training=True (functional.py's operation_fn passes the outer
    # flag to every layer), so frozen BatchNormalization layers are what enforce inference mode.
    # EfficientNet's stochastic-depth Dropout layers therefore still drop paths during fit.
    x = backbone(x, training=False)

    if config.attention:
        x = ChannelAttention(config.attention_ratio, name="channel_attention")(x)
        x = SpatialAttention(config.spatial_kernel, name="spatial_attention")(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pooling")(x)
    x = _dense_head(x, config)
    # float32 keeps the probability and the loss precise under a mixed-precision policy.
    regularizer = keras.regularizers.L2(config.l2)
    outputs = keras.layers.Dense(
        1, "sigmoid", kernel_regularizer=regularizer, dtype="float32", name="cancer_probability"
    )(x)

    model = keras.Model(inputs, outputs, name=f"chestct_{config.backbone}")
    freeze_backbone(model)
    return model


def _build_backbone(config: ModelConfig, constructor) -> keras.Model:
    kwargs = {"alpha": config.alpha} if config.backbone == "mobilenetv2" else {}
    return constructor(
        include_top=False,
        weights=resolve_weights(config.weights),
        input_shape=(config.image_size, config.image_size, 3),
        name="backbone",
        **kwargs,
    )


def _dense_head(x, config: ModelConfig):
    for index, units in enumerate(config.dense_units, start=1):
        regularizer = keras.regularizers.L2(config.l2)
        x = keras.layers.Dense(units, "relu", kernel_regularizer=regularizer, name=f"head_dense_{index}")(x)
        x = keras.layers.BatchNormalization(name=f"head_batch_norm_{index}")(x)
        x = keras.layers.Dropout(config.dropout, name=f"head_dropout_{index}")(x)
    return x


def backbone_of(model: keras.Model) -> keras.Model:
    """Return the nested backbone model of a model from ``build_model``."""
    return model.get_layer("backbone")


def freeze_backbone(model: keras.Model) -> None:
    """Freeze every layer of the backbone (phase 1)."""
    backbone_of(model).trainable = False


def unfreeze_top(model: keras.Model, fraction: float) -> int:
    """Make the upper ``fraction`` of the backbone's layers trainable (phase 2).

    The window is the last ``floor(fraction * N)`` of all ``N`` backbone layers in order,
    layers without weights included. For example, 0.5 of DenseNet121's 427 layers gives the
    last 213. Layers below the window are frozen, and every ``BatchNormalization`` layer stays
    frozen, inside the window too.

    Returns:
        The number of layers made trainable: the window's layers other than batch normalisation.

    Raises:
        ValueError: if ``fraction`` is not a number from 0 to 1.
    """
    _check_number("fraction", fraction, "from 0 to 1", lambda v: 0 <= v <= 1)
    backbone = backbone_of(model)
    layers = backbone.layers
    # The small tolerance keeps products such as 0.29 * 100 = 28.999999999999996 at 29.
    window = math.floor(fraction * len(layers) + 1e-9)

    backbone.trainable = True
    for layer in layers:
        layer.trainable = False

    unfrozen = [
        layer for layer in layers[len(layers) - window :] if not isinstance(layer, keras.layers.BatchNormalization)
    ]
    for layer in unfrozen:
        layer.trainable = True
    return len(unfrozen)


def compile_model(model: keras.Model, learning_rate: float, alpha: float = 0.25, gamma: float = 2.0) -> None:
    """Compile with Adam, the focal loss and the metrics logged during training.

    Args:
        learning_rate: Adam step size.
        alpha: focal loss weight of the cancer class, from 0 to 1.
        gamma: focal loss focusing exponent, at least 0.
    """
    _check_number("learning_rate", learning_rate, "positive", lambda v: v > 0)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss=focal_loss(alpha, gamma),
        metrics=[
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
            keras.metrics.BinaryAccuracy(name="binary_accuracy"),
        ],
    )


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}.")


def _check_number(name: str, value: Any, allowed: str, is_allowed: Callable[[float], bool]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if not is_allowed(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}.")
