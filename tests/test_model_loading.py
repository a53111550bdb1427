"""Saved models load in a fresh process after a plain ``import chestct``."""

import json
import subprocess
import sys

import numpy as np
import pytest

from chestct.model import ModelConfig, build_model, compile_model

LOAD_AND_PREDICT = """
import json, sys
import numpy as np
import chestct
import keras
model = keras.models.load_model(sys.argv[1])
images = np.load(sys.argv[2])
print(json.dumps(model.predict(images, verbose=0).ravel().tolist()))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    model = build_model(
        ModelConfig(image_size=32, backbone="mobilenetv2", alpha=0.35, weights="none", dense_units=(8,))
    )
    compile_model(model, learning_rate=1e-3)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)).astype("float32")
    np.save(folder / "images.npy", images)
    model.save(folder / "model.keras")
    model.save(folder / "model.h5")
    return folder, model.predict(images, verbose=0).ravel()


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_fresh_process_loads_saved_model(saved, name):
    folder, expected = saved

    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(folder / name), str(folder / "images.npy")],
        capture_output=True,
        text=True,
    )

    assert result.returncode == 0, result.stderr[-2000:]
    assert np.allclose(json.loads(result.stdout.strip().splitlines()[-1]), expected, atol=1e-6)


def test_plain_import_leaves_tensorflow_unloaded():
    code = "import sys, chestct; print('tensorflow' in sys.modules, 'keras' in sys.modules)"

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "False False"
