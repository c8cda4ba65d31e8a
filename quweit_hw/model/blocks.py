"""A trained model's LUT-MLP blocks as the bundle's `Block`s (what export writes and eval checks)."""

import numpy as np

from ..contract.bundle import Block, Layer


def block_from_lut_mlp(name, mlp):
    """The bundle Block of one trained LUTMLP, from its `export_arrays()`."""
    arrays = mlp.export_arrays()
    layers, width = [], int(np.asarray(arrays["thresholds"]).size)
    for spec in arrays["layers"]:
        layers.append(Layer(np.asarray(spec["mapping"], np.int32), np.asarray(spec["table"], np.uint8), width))
        width = layers[-1].out_features
    thresholds = np.asarray(arrays["thresholds"], np.int32)
    return Block(name=name, d=thresholds.shape[0], bits=int(arrays["bits"]), thresholds=thresholds,
                 layers=tuple(layers), group_size=int(arrays["group_size"]),
                 input_scale=float(arrays["input_scale"]),
                 affine_a=np.asarray(arrays["affine_a"], np.float32), affine_b=np.asarray(arrays["affine_b"], np.float32))


def model_blocks(model):
    """Every LUT-MLP block of a model as a bundle Block, in block order."""
    return [block_from_lut_mlp(name, mlp) for name, mlp in model.lut_mlps()]
