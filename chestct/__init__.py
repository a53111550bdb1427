"""chestct: a DVC pipeline that trains and serves a chest CT cancer classifier.

The package is split by concept: ``layout`` (dataset folders and manifest), ``imaging``
(decoding any image file to grayscale), ``download``, ``audit`` and ``preprocessing``.
Importing the package itself stays cheap, so the data stages never load TensorFlow.
"""

__version__ = "0.1.0"
