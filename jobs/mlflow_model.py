"""The MLflow pyfunc wrapper of a raycut generator, logged as "models from code":
MLflow stores this file, not a pickled object.

``predict`` takes uint8 RGB images (N, H, W, 3) of any size and returns their
translations as uint8 (N, H, W, 3). For bulk work use ``raycut translate``.
"""

from __future__ import annotations

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class CUTGenerator(PythonModel):
    def load_context(self, context) -> None:
        from cut_core import load_generator

        self.G = load_generator(context.artifacts["model_dir"])

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow reads hints as a schema
        x = np.asarray(model_input)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {x.dtype} {x.shape}")
        from cut_core.translate import translate_uint8

        return translate_uint8(self.G, x)


set_model(CUTGenerator())
