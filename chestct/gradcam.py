"""Grad-CAM heat maps of the cancer probability, and PNG encoding of previews and overlays.

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017) weights each channel ``k`` of a convolutional feature
map ``A`` by the spatial mean of the score's gradient, ``alpha_k = mean_ij(d score / d A_kij)``,
and keeps the positive part of the weighted sum, ``ReLU(sum_k alpha_k A_k)``.

Here ``A`` is the output of the nested ``"backbone"`` model of a classifier from
``chestct.model.build_model``, its last convolutional feature map. The gradient flows back
through everything that follows the backbone: the optional channel and spatial attention, the
global average pooling and the dense head. The feature map is coarse, for example 4 x 4 for a
128 px MobileNetV2 and 2 x 2 at 64 px, so a heat map locates evidence at best to within a cell of
``image_size / feature side`` pixels.

NOTE: at small inputs every cell of a pretrained backbone responds to most of the image. A
MobileNetV2 (width 0.35) trained on a bright 32 px square at 128 px put the peak in a cell next
to the square in every test image. At 224 px (7 x 7) with a linear head, 48 of 48 peaks fell inside.
"""

import base64
import io
import math
from dataclasses import dataclass

import cv2
import keras
import numpy as np
import tensorflow as tf
from PIL import Image

BACKBONE_LAYER = "backbone"

# OpenCV colour map of the overlay, from blue at 0 to red at 1.
COLORMAP = cv2.COLORMAP_JET

DEFAULT_ALPHA = 0.4
DEFAULT_BATCH_SIZE = 32
MAX_PIXEL_VALUE = 255.0


@dataclass(frozen=True)
class GradCamResult:
    """Grad-CAM heat maps and predictions of one batch of images.

    Fields:
        heatmaps: ``(N, S, S)`` float32 maps in [0, 1], upsampled bilinearly to the input size.
            Each map is scaled by its own maximum, so it shows where the evidence for cancer
            lies in that image and not how strong it is. A map is all zeros where no position
            of the feature map adds evidence for cancer.
        probabilities: ``(N,)`` float32 cancer probabilities, from the same forward pass.
        logits: ``(N,)`` float32 logits of those probabilities, the score that Grad-CAM
            differentiates.
        feature_size: ``(height, width)`` of the backbone's feature map, the resolution of the
            heat maps before upsampling.
    """

    heatmaps: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray
    feature_size: tuple[int, int]


class GradCam:
    """Grad-CAM of a classifier's cancer probability at its backbone's last feature map.

    The model is split once into ``features`` (image -> backbone feature map) and
    ``classifier`` (feature map -> logit input and probability), which share the model's layers
    and weights. Build one ``GradCam`` per model and call it for each batch.

    Grad-CAM differentiates the logit ``z`` of the probability ``p = sigmoid(z)``, not ``p``.
    The gradient of ``p`` is ``p * (1 - p)`` times that of ``z``, a positive factor per image
    that the per-image scaling to [0, 1] removes. In float32, however, TensorFlow 2.21's sigmoid
    returns exactly 1.0 from ``z = 16.75`` on (measured on CPU), so the gradient of ``p`` and with
    it the heat map of the most confident detections would vanish. Selvaraju et al. likewise
    differentiate the class score before the softmax.

    Args:
        model: a functional Keras model from ``chestct.model.build_model``, built or loaded
            from a ``.keras`` or ``.h5`` file, with any backbone, with or without attention.

    Attributes:
        features: model from the input image to the backbone's ``(B, h, w, C)`` feature map.
        classifier: model from that feature map to ``[head_output, probability]``: the
            ``(B, D)`` input of the final sigmoid ``Dense`` layer and its ``(B, 1)`` output.
        image_size: side of the square input in pixels.

    Raises:
        ValueError: if ``model`` has no layer named ``"backbone"``, does not call it exactly
            once, does not end in a one-unit sigmoid ``Dense`` layer, or if anything but the
            backbone's feature map feeds the layers after the backbone.
    """

    def __init__(self, model: keras.Model):
        self.features, self.classifier = split_at_backbone(model)
        self._output_layer = _sigmoid_output_layer(model)
        self.image_size = _input_size(model)

    def __call__(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> GradCamResult:
        """Compute the Grad-CAM heat maps and cancer probabilities of ``images``.

        Args:
            images: grey values in [0, 255] of shape ``(N, S, S, 1)``, ``(N, S, S)`` or, for
                one image, ``(S, S)``, in any real dtype (float32 and uint8 are typical).
            batch_size: number of images per forward and backward pass, which bounds memory.

        Returns:
            The heat maps, probabilities and logits of the ``N`` images.

        Raises:
            ValueError: if ``images`` has another shape, size or dtype, is empty, or contains a
                value that is not finite or lies outside [0, 255]. Also if ``batch_size`` is
                not a positive integer.
        """
        batch = as_image_batch(images, self.image_size)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")

        parts = [self._explain_batch(batch[start : start + batch_size]) for start in range(0, len(batch), batch_size)]

        heatmaps, probabilities, logits = (np.concatenate([part[field] for part in parts]) for field in range(3))
        feature_size = parts[0][3]
        return GradCamResult(heatmaps, probabilities, logits, feature_size)

    def _explain_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
        feature_maps = self.features(batch, training=False)
        feature_size = (int(feature_maps.shape[1]), int(feature_maps.shape[2]))

        # The gradient of the summed logits is each image's own gradient, because in inference
        # mode no layer mixes the images of a batch.
        with tf.GradientTape() as tape:
            tape.watch(feature_maps)
            head_output, probabilities = self.classifier(feature_maps, training=False)
            logits = self._logits(head_output)
            score = tf.reduce_sum(logits)
        gradients = tape.gradient(score, feature_maps)

        maps = class_activation_maps(_to_float32(feature_maps), _to_float32(gradients))
        heatmaps = np.stack([upsample_heatmap(cam, batch.shape[1]) for cam in maps])
        return heatmaps, _to_float32(probabilities).reshape(-1), _to_float32(logits).reshape(-1), feature_size

    def _logits(self, head_output):
        # The final Dense layer without its sigmoid: the same kernel and bias, hence the same
        # pre-activation, in the layer's own float32.
        layer = self._output_layer
        logits = tf.matmul(tf.cast(head_output, layer.kernel.dtype), layer.kernel)
        if layer.use_bias:
            logits = logits + layer.bias
        return logits


def gradcam(model: keras.Model, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> GradCamResult:
    """Compute the Grad-CAM heat maps and cancer probabilities of ``images`` with ``model``.

    A shortcut for ``GradCam(model)(images, batch_size)`` that splits the model on each call.
    Code that explains many batches with one model should keep a ``GradCam``.

    Raises:
        ValueError: as ``GradCam`` and ``GradCam.__call__`` do.
    """
    return GradCam(model)(images, batch_size)


def split_at_backbone(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """Split ``model`` at the output of its nested ``"backbone"`` model.

    Both parts reuse the layers of ``model``, so they share its weights, and
    ``classifier(features(x))[1]`` equals ``model(x)``.

    Returns:
        ``features``, from the model's input to the backbone's feature map, and
        ``classifier``, from that feature map to ``[head_output, probability]``, where
        ``head_output`` is the input of the final sigmoid ``Dense`` layer.

    Raises:
        ValueError: if ``model`` is not a functional Keras model or has no layer named
            ``"backbone"``. Also if it does not call that layer exactly once, does not end in
            a one-unit sigmoid ``Dense`` layer, or if the layers after the backbone read
            anything besides its feature map.
    """
    feature_map = _backbone_output(model)
    output_layer = _sigmoid_output_layer(model)

    features = keras.Model(model.inputs[0], feature_map, name=f"{model.name}_features")
    try:
        classifier = keras.Model(feature_map, [output_layer.input, model.outputs[0]], name=f"{model.name}_classifier")
    except ValueError as error:
        raise ValueError(
            f"Model {model.name!r} cannot be split at its backbone, because the layers after the "
            f"backbone read more than the backbone's feature map: {error}"
        ) from error
    return features, classifier


def class_activation_maps(feature_maps: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """Combine feature maps and the score's gradients into Grad-CAM maps.

    Args:
        feature_maps: ``(N, h, w, C)`` feature maps ``A``.
        gradients: ``(N, h, w, C)`` gradients of the score with respect to ``A``.

    Returns:
        ``(N, h, w)`` float32 maps ``ReLU(sum_k alpha_k A_k)`` with
        ``alpha_k = mean_ij(gradients_ijk)``, before any scaling.

    Raises:
        ValueError: if the arrays are not 4-D, their shapes differ or they contain values
            that are not finite.
    """
    feature_maps = np.asarray(feature_maps, dtype=np.float32)
    gradients = np.asarray(gradients, dtype=np.float32)
    if feature_maps.ndim != 4 or feature_maps.shape != gradients.shape:
        raise ValueError(
            f"feature_maps and gradients must have the same (N, h, w, C) shape, got "
            f"{feature_maps.shape} and {gradients.shape}."
        )
    if not (np.isfinite(feature_maps).all() and np.isfinite(gradients).all()):
        raise ValueError("feature_maps and gradients must be finite, but the model produced NaN or infinite values.")

    channel_weights = gradients.mean(axis=(1, 2))
    weighted_sum = np.einsum("nhwc,nc->nhw", feature_maps, channel_weights)
    return np.maximum(weighted_sum, 0.0).astype(np.float32)


def upsample_heatmap(cam: np.ndarray, size: int) -> np.ndarray:
    """Upsample one non-negative ``(h, w)`` map bilinearly to ``(size, size)`` and scale it to [0, 1].

    The map is divided by its maximum after upsampling, so its largest value is exactly 1. A map
    without a positive value stays all zeros rather than becoming NaN.

    Raises:
        ValueError: if ``cam`` is not a 2-D array of finite non-negative values, or if ``size``
            is not a positive integer.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"cam must be a non-empty 2-D (h, w) array, got shape {cam.shape}.")
    if not np.isfinite(cam).all() or cam.min() < 0:
        raise ValueError("cam must contain finite non-negative values. Apply the ReLU before upsampling.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}.")

    # cv2.resize takes (width, height). INTER_LINEAR samples at pixel centres, as
    # tf.image.resize does, so the peak stays at the centre of its feature-map cell.
    heatmap = cv2.resize(cam, (size, size), interpolation=cv2.INTER_LINEAR)
    peak = float(heatmap.max())
    if peak <= 0.0:
        return np.zeros((size, size), dtype=np.float32)
    return np.clip(heatmap / peak, 0.0, 1.0).astype(np.float32)


def as_image_batch(images: np.ndarray, image_size: int | None = None) -> np.ndarray:
    """Convert grey images to the model's ``(N, S, S, 1)`` float32 input.

    Args:
        images: ``(N, S, S, 1)``, ``(N, S, S)`` or ``(S, S)`` grey values in [0, 255], in any
            real dtype.
        image_size: the model's input side ``S``, or None to accept any square size.

    Raises:
        ValueError: if ``images`` has another shape or a boolean, complex or non-numeric dtype,
            is empty, is not square, is not ``image_size`` wide, or contains a value that is not
            finite or lies outside [0, 255].
    """
    images = np.asarray(images)
    is_real = np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)
    if images.dtype == bool or not is_real:
        raise ValueError(f"images must contain real grey values in [0, 255], got dtype {images.dtype}.")
    if images.ndim == 2:
        images = images[None, :, :, None]
    elif images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"images must have shape (N, S, S, 1), (N, S, S) or (S, S), got {images.shape}.")
    if images.shape[0] == 0:
        raise ValueError("images must contain at least one image, got an empty batch.")

    height, width = images.shape[1:3]
    if height != width:
        raise ValueError(f"images must be square, got {height}x{width}. Preprocess them to the model's input size.")
    if image_size is not None and height != image_size:
        raise ValueError(
            f"The model expects {image_size}x{image_size} images, got {height}x{width}. "
            "Preprocess with the same image_size as in training."
        )

    images = images.astype(np.float32)
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > MAX_PIXEL_VALUE:
        raise ValueError(
            f"images must contain finite grey values in [0, 255], got values from {images.min()} to {images.max()}."
        )
    return images


def overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend a colour-mapped heat map over a grey image.

    Each pixel becomes ``(1 - alpha) * grey + alpha * colour``, where ``colour`` is the RGB
    colour of OpenCV's JET map at the heat value: blue at 0, red at 1.

    Args:
        gray: ``(S, S)`` uint8 grey image.
        heatmap: ``(S, S)`` float map in [0, 1], such as one of ``GradCamResult.heatmaps``.
        alpha: weight of the colour map, from 0 (grey image only) to 1 (colour map only).

    Returns:
        ``(S, S, 3)`` uint8 RGB image.

    Raises:
        ValueError: if ``gray`` is not a 2-D uint8 array, ``heatmap`` does not have its shape
            or contains a value outside [0, 1], or ``alpha`` is not a number from 0 to 1.
    """
    gray = np.asarray(gray)
    heatmap = np.asarray(heatmap)
    if gray.dtype != np.uint8 or gray.ndim != 2 or gray.size == 0:
        raise ValueError(f"gray must be a non-empty 2-D uint8 array, got shape {gray.shape} and dtype {gray.dtype}.")
    if heatmap.shape != gray.shape or not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(
            f"heatmap must be a float array of the grey image's shape {gray.shape}, got shape {heatmap.shape} "
            f"and dtype {heatmap.dtype}."
        )
    if not np.isfinite(heatmap).all() or heatmap.min() < 0 or heatmap.max() > 1:
        raise ValueError(f"heatmap must contain values in [0, 1], got values from {heatmap.min()} to {heatmap.max()}.")
    is_number = not isinstance(alpha, bool) and isinstance(alpha, (int, float)) and math.isfinite(alpha)
    if not is_number or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number from 0 to 1, got {alpha!r}.")

    heat_levels = np.round(heatmap * 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(heat_levels, COLORMAP), cv2.COLOR_BGR2RGB)
    grey_rgb = np.repeat(gray[:, :, None], 3, axis=2)

    blended = (1 - alpha) * grey_rgb.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """Encode an ``(H, W)`` grey or ``(H, W, 3)`` RGB uint8 image as PNG bytes.

    Raises:
        ValueError: if ``array`` is not a non-empty uint8 array of one of those shapes.
    """
    array = np.asarray(array)
    is_grey = array.ndim == 2
    is_rgb = array.ndim == 3 and array.shape[2] == 3
    if array.dtype != np.uint8 or not (is_grey or is_rgb) or array.size == 0:
        raise ValueError(
            f"array must be a non-empty (H, W) or (H, W, 3) uint8 image, got shape {array.shape} "
            f"and dtype {array.dtype}."
        )

    buffer = io.BytesIO()
    # Pillow reads (H, W) uint8 as mode "L" and (H, W, 3) uint8 as "RGB".
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(array: np.ndarray) -> str:
    """Encode an ``(H, W)`` or ``(H, W, 3)`` uint8 image as a ``data:image/png;base64,...`` URL.

    Raises:
        ValueError: as ``encode_png`` does.
    """
    return "data:image/png;base64," + base64.b64encode(encode_png(array)).decode("ascii")


def _backbone_output(model: keras.Model):
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"Grad-CAM needs a functional Keras model such as chestct.model.build_model returns, got {model!r}."
        )
    try:
        backbone = model.get_layer(BACKBONE_LAYER)
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer named {BACKBONE_LAYER!r}. Grad-CAM needs the nested backbone "
            "model that chestct.model.build_model creates."
        ) from None

    # A nested model's `output` is the output of its own inner graph. The feature map in the
    # outer graph is the output of the backbone's call (node) that belongs to this model.
    # NOTE: `_inbound_nodes` and `_nodes_by_depth` are private attributes of Keras 3.15.
    graph_nodes = {node for nodes in model._nodes_by_depth.values() for node in nodes}
    calls = [node for node in backbone._inbound_nodes if node in graph_nodes]
    if len(calls) != 1:
        raise ValueError(
            f"Model {model.name!r} calls its {BACKBONE_LAYER!r} layer {len(calls)} times, but Grad-CAM needs "
            "exactly one call."
        )

    outputs = calls[0].output_tensors
    if len(outputs) != 1 or len(outputs[0].shape) != 4:
        shapes = [tuple(output.shape) for output in outputs]
        raise ValueError(f"The {BACKBONE_LAYER!r} layer must output one (B, h, w, C) feature map, got {shapes}.")
    return outputs[0]


def _sigmoid_output_layer(model: keras.Model) -> keras.layers.Dense:
    layer = model.layers[-1]
    is_output = len(model.outputs) == 1 and layer.output is model.outputs[0]
    is_sigmoid_dense = (
        isinstance(layer, keras.layers.Dense) and layer.units == 1 and layer.activation is keras.activations.sigmoid
    )
    if not (is_output and is_sigmoid_dense):
        raise ValueError(
            f"Model {model.name!r} must end in one Dense layer with 1 unit and a sigmoid activation, whose "
            f"logit Grad-CAM differentiates, but its last layer is {layer.name!r} ({type(layer).__name__})."
        )
    return layer


def _input_size(model: keras.Model) -> int | None:
    side = model.inputs[0].shape[1]
    return None if side is None else int(side)


def _to_float32(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float32)
