"""Keras layers of the classifier, registered so that saved models load without ``custom_objects``.

Each layer is registered under the package name ``chestct``, so importing this module is enough
for ``keras.models.load_model`` to rebuild a ``.keras`` or ``.h5`` file that uses them. Layers
with weights create them in ``build()``, so ``model.summary()`` counts them before the first call.
"""

import keras
from keras import ops

# ImageNet channel statistics (RGB, on values in [0, 1]) that
# keras.applications.densenet.preprocess_input uses in its "torch" mode.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NORMALIZATION_MODES = ("torch", "tf", "none")


@keras.saving.register_keras_serializable(package="chestct")
class GrayscaleToRGB(keras.layers.Layer):
    """Repeat a single channel three times: ``(B, H, W, 1) -> (B, H, W, 3)``.

    ImageNet backbones expect three channels. Repeating the grey value gives them the input that
    a grey photograph would give.
    """

    def build(self, input_shape):
        if input_shape[-1] != 1:
            raise ValueError(f"GrayscaleToRGB expects one input channel, got input shape {tuple(input_shape)}.")

    def call(self, inputs):
        return ops.repeat(inputs, 3, axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)


@keras.saving.register_keras_serializable(package="chestct")
class BackboneNormalization(keras.layers.Layer):
    """Apply a backbone's ImageNet input normalisation to RGB values in [0, 255].

    Modes, matching ``keras.applications.<family>.preprocess_input``:

    - ``"torch"`` (DenseNet): ``(x / 255 - mean) / std`` per channel, with the ImageNet RGB
      mean and standard deviation;
    - ``"tf"`` (MobileNetV2): ``x / 127.5 - 1``, so values lie in [-1, 1];
    - ``"none"`` (EfficientNet): the identity, because those models rescale inside themselves.

    Keeping this step inside the model means that a saved model takes raw pixel values, and
    serving cannot apply a different normalisation from training.

    Args:
        mode: one of ``"torch"``, ``"tf"`` or ``"none"``.

    Input and output shape: ``(B, H, W, 3)``.
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in NORMALIZATION_MODES:
            raise ValueError(f"BackboneNormalization mode must be one of {NORMALIZATION_MODES}, got {mode!r}.")
        self.mode = mode

    def call(self, inputs):
        if self.mode == "tf":
            return inputs / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(IMAGENET_MEAN, dtype=inputs.dtype)
            std = ops.convert_to_tensor(IMAGENET_STD, dtype=inputs.dtype)
            return (inputs / 255.0 - mean) / std
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="chestct")
class ChannelAttention(keras.layers.Layer):
    """Squeeze-and-excitation channel attention (Hu et al., 2018).

    Global average pooling over H and W gives one value per channel. Two bias-free dense
    steps, ``C -> C // ratio`` (ReLU) and ``C // ratio -> C`` (sigmoid), turn it into a weight
    in (0, 1) per channel, and the layer multiplies the feature map by those weights.

    Args:
        ratio: channel reduction of the bottleneck; at most the number of input channels.

    Input and output shape: ``(B, H, W, C)``. Weights: ``2 * C * (C // ratio)``.
    """

    def __init__(self, ratio: int = 8, **kwargs):
        super().__init__(**kwargs)
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise ValueError(f"ChannelAttention ratio must be a positive integer, got {ratio!r}.")
        self.ratio = ratio

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels < self.ratio:
            raise ValueError(
                f"ChannelAttention needs a known channel count of at least ratio={self.ratio}, "
                f"got input shape {tuple(input_shape)}."
            )
        bottleneck = channels // self.ratio
        self.squeeze_kernel = self.add_weight(
            name="squeeze_kernel", shape=(channels, bottleneck), initializer="glorot_uniform"
        )
        self.excite_kernel = self.add_weight(
            name="excite_kernel", shape=(bottleneck, channels), initializer="glorot_uniform"
        )

    def call(self, inputs):
        pooled = ops.mean(inputs, axis=(1, 2))
        hidden = ops.relu(ops.matmul(pooled, self.squeeze_kernel))
        channel_weights = ops.sigmoid(ops.matmul(hidden, self.excite_kernel))
        return inputs * channel_weights[:, None, None, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio}


@keras.saving.register_keras_serializable(package="chestct")
class SpatialAttention(keras.layers.Layer):
    """Spatial attention of CBAM (Woo et al., 2018).

    The channel-wise mean and maximum of the feature map, concatenated in that order to
    ``(B, H, W, 2)``, pass through a bias-free ``kernel_size`` x ``kernel_size`` convolution
    with "same" padding and a sigmoid. The layer multiplies the feature map by the resulting
    ``(B, H, W, 1)`` map.

    Args:
        kernel_size: odd side of the convolution kernel, so that the map stays centred.

    Input and output shape: ``(B, H, W, C)``. Weights: ``2 * kernel_size ** 2``.
    """

    def __init__(self, kernel_size: int = 7, **kwargs):
        super().__init__(**kwargs)
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SpatialAttention kernel_size must be an odd positive integer, got {kernel_size!r}.")
        self.kernel_size = kernel_size

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, 2, 1), initializer="glorot_uniform"
        )

    def call(self, inputs):
        mean = ops.mean(inputs, axis=-1, keepdims=True)
        maximum = ops.max(inputs, axis=-1, keepdims=True)
        descriptor = ops.concatenate([mean, maximum], axis=-1)
        attention = ops.sigmoid(ops.conv(descriptor, self.kernel, strides=1, padding="same"))
        return inputs * attention

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}
