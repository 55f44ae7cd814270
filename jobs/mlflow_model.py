"""The MLflow pyfunc wrapper of a raycut generator, logged as "models from code":
MLflow stores this file, not a pickled object.

``predict`` takes RGB images (N, H, W, 3) of any size, uint8 or any integer type with
values in 0..255 (what ``mlflow models serve`` makes of a JSON request), and returns
their translations as uint8 (N, H, W, 3) at full size. For bulk work use
``raycut translate``.
"""

from __future__ import annotations

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


def as_uint8_images(model_input) -> np.ndarray:  # noqa: ANN001 - whatever MLflow hands over
    """(N, H, W, 3) uint8 from an array of any integer (or integral float) type in
    0..255; one clear error for anything else."""
    x = np.asarray(model_input)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3), got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or (np.issubdtype(x.dtype, np.floating) and np.all(x == np.round(x)))):
        raise ValueError(f"expected integer pixel values 0..255, got {x.dtype}")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"pixel values must lie in 0..255, got {x.min()}..{x.max()}")
    return x.astype(np.uint8)


class CUTGenerator(PythonModel):
    def load_context(self, context) -> None:
        from cut_core import load_generator

        self.G = load_generator(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - the signature is logged with the model
        from cut_core.translate import translate_uint8

        return translate_uint8(self.G, as_uint8_images(model_input))


set_model(CUTGenerator())
