"""The MLflow pyfunc wrapper of a raycut generator, logged as "models from code":
MLflow stores this file, not a pickled object.

``predict`` takes RGB images as uint8 or any integer type with values in 0..255 (what
``mlflow models serve`` makes of a JSON request):

- one array (N, H, W, 3): the translations as one uint8 array (N, H, W, 3);
- a list (or 1-D object array, MLflow's form of a ragged batch) of (H_i, W_i, 3)
  images of different sizes: a list of uint8 arrays, each translated at its own size,
  as ``raycut translate`` does.

For bulk work use ``raycut translate``.
"""

import numpy as np
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


def _pixels(x: np.ndarray) -> np.ndarray:
    """uint8 from integer (or integral float) values in 0..255; one clear error else."""
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or (np.issubdtype(x.dtype, np.floating) and np.all(x == np.round(x)))):
        raise ValueError(f"expected integer pixel values 0..255, got {x.dtype}")
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ValueError(f"pixel values must lie in 0..255, got {x.min()}..{x.max()}")
    return x.astype(np.uint8)


def as_uint8_images(model_input) -> np.ndarray | list[np.ndarray]:  # noqa: ANN001 - whatever MLflow hands over
    """(N, H, W, 3) uint8 from one array, or a list of (H_i, W_i, 3) uint8 images from a
    ragged batch (a list, or MLflow's 1-D object array); one clear error for anything else."""
    ragged = isinstance(model_input, (list, tuple)) or (
        isinstance(model_input, np.ndarray) and model_input.dtype == object and model_input.ndim == 1)
    if ragged:
        images = [np.asarray(im) for im in model_input]
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[-1] != 3:
                raise ValueError(f"image {i}: expected an RGB image (H, W, 3), got shape {im.shape}")
        shapes = {im.shape for im in images}
        if len(shapes) > 1:
            return [_pixels(im) for im in images]
        model_input = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
    x = np.asarray(model_input)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB images (N, H, W, 3) or a list of (H, W, 3) images, got shape {x.shape}")
    return _pixels(x)


class CUTGenerator(PythonModel):
    def load_context(self, context) -> None:
        from cut_core import load_generator

        self.G = load_generator(context.artifacts["model_dir"])

    # The np.ndarray hint tells MLflow not to infer a schema from the hint: the logged
    # tensor signature is the contract (and MLflow stops warning that hints are missing).
    def predict(self, context, model_input: np.ndarray, params=None):  # noqa: ANN001
        from cut_core.translate import translate_uint8

        images = as_uint8_images(model_input)
        if isinstance(images, list):  # one size at a time: each image at its own size
            return [translate_uint8(self.G, im[None])[0] for im in images]
        return translate_uint8(self.G, images)


set_model(CUTGenerator())
