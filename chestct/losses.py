"""Binary focal loss (Lin et al., 2017, "Focal Loss for Dense Object Detection").

For a hard label ``y`` in {0, 1} and a predicted cancer probability ``p``, the loss of one
prediction is ``FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)``, where ``p_t = p`` and
``alpha_t = alpha`` for the positive (cancer) class, and ``p_t = 1 - p`` and
``alpha_t = 1 - alpha`` for the negative (normal) class.

A soft label ``y`` in [0, 1], as MixUp produces, gives ``y * FL(1, p) + (1 - y) * FL(0, p)``.
The loss is then linear in the label, so a MixUp sample with label ``lam * y1 + (1 - lam) * y2``
costs exactly ``lam`` times its loss under ``y1`` plus ``1 - lam`` times its loss under ``y2``.

``keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True)`` gives the same values for
hard labels but not for soft ones: in Keras 3.15 it interpolates ``alpha_t`` and ``p_t`` in the
label and multiplies them by the cross-entropy. At ``y = 0.5`` its ``p_t`` is 0.5 whatever ``p``
is, and at ``p = 0.9`` it returns about 0.15 where the formula above returns about 0.70.
"""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="chestct")
class BinaryFocalLoss(keras.losses.Loss):
    """Focal loss on sigmoid probabilities, with ``alpha`` weighting the positive class.

    Args:
        alpha: weight of the positive class, from 0 to 1. The negative class gets ``1 - alpha``.
        gamma: focusing exponent, at least 0. With 0 the loss is the class-weighted cross-entropy.
        reduction: Keras loss reduction. The default, ``"sum_over_batch_size"``, returns the
            mean over the batch; None returns one loss per sample.
        name: name of the loss in logs.

    ``call`` takes labels and probabilities of shape ``(B, 1)`` (labels may also be ``(B,)``)
    and returns the per-sample loss, shape ``(B,)``, in nats.
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "binary_focal_loss",
        **kwargs,
    ):
        super().__init__(name=name, reduction=reduction, **kwargs)
        _check_number("alpha", alpha, low=0.0, high=1.0)
        _check_number("gamma", gamma, low=0.0, high=None)
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(y_true, ops.shape(y_pred))
        # Clipping as keras.losses.binary_crossentropy does keeps log() finite at p = 0 or 1.
        epsilon = keras.config.epsilon()
        probability = ops.clip(y_pred, epsilon, 1.0 - epsilon)

        positive = -self.alpha * ops.power(1.0 - probability, self.gamma) * ops.log(probability)
        negative = -(1.0 - self.alpha) * ops.power(probability, self.gamma) * ops.log(1.0 - probability)
        return ops.mean(y_true * positive + (1.0 - y_true) * negative, axis=-1)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


def focal_loss(alpha: float = 0.25, gamma: float = 2.0) -> BinaryFocalLoss:
    """Return the training loss: focal loss averaged over the batch.

    Raises:
        ValueError: if ``alpha`` is not in [0, 1] or ``gamma`` is negative.
    """
    return BinaryFocalLoss(alpha=alpha, gamma=gamma)


def _check_number(name: str, value, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Focal loss {name} must be a finite number, got {value!r}.")
    if value < low or (high is not None and value > high):
        allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"Focal loss {name} must be {allowed}, got {value!r}.")
