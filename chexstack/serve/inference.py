"""Run one signature of a servable on numpy inputs, with TF Serving's input checks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from chexstack.serve.errors import invalid
from chexstack.serve.registry import Servable

DEFAULT_SIGNATURE = "serving_default"


def signature(servable: Servable, name: str) -> Any:
    fn = servable.signatures.get(name or DEFAULT_SIGNATURE)
    if fn is None:
        raise invalid(f'Serving signature key "{name}" not found.')
    return fn


def input_specs(servable: Servable, signature_name: str) -> dict[str, Any]:
    """Input name -> tf.TensorSpec."""
    specs: dict[str, Any] = signature(servable, signature_name).structured_input_signature[1]
    return specs


def output_names(servable: Servable, signature_name: str) -> list[str]:
    sig_def = servable.signature_defs.get(signature_name or DEFAULT_SIGNATURE)
    return sorted(sig_def.outputs) if sig_def is not None else []


def check_inputs(servable: Servable, signature_name: str, inputs: dict[str, np.ndarray]) -> None:
    """Names, dtypes and shapes must match the signature (INVALID_ARGUMENT otherwise)."""
    specs = input_specs(servable, signature_name)
    missing, extra = set(specs) - set(inputs), set(inputs) - set(specs)
    if missing or extra:
        raise invalid(
            f"input tensor names {sorted(inputs)} do not match signature inputs {sorted(specs)}"
            + (f"; missing {sorted(missing)}" if missing else "")
            + (f"; unexpected {sorted(extra)}" if extra else "")
        )
    for name, spec in specs.items():
        array = inputs[name]
        want = spec.dtype.as_numpy_dtype
        got_ok = array.dtype == want or (spec.dtype.name == "string" and array.dtype.kind in "OSU")
        if not got_ok:
            raise invalid(f"Expects arg {name} to be {spec.dtype.name} but {array.dtype} is provided")
        if not spec.shape.is_compatible_with(array.shape):
            raise invalid(f"input {name}: shape {list(array.shape)} is not compatible with {spec.shape}")
    sizes = {a.shape[0] for a in inputs.values() if a.ndim > 0}
    if len(sizes) > 1:
        raise invalid(f"all inputs must have the same batch size, got {sorted(sizes)}")


def run(servable: Servable, signature_name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Call the signature; inputs must already be checked with check_inputs."""
    import tensorflow as tf

    fn = signature(servable, signature_name)
    specs = input_specs(servable, signature_name)
    tensors = {k: tf.convert_to_tensor(v, dtype=specs[k].dtype) for k, v in inputs.items()}
    return {k: v.numpy() for k, v in fn(**tensors).items()}


def select_outputs(outputs: dict[str, np.ndarray], output_filter: Iterable[str]) -> dict[str, np.ndarray]:
    """gRPC output_filter: only the named outputs (all when empty)."""
    wanted = list(output_filter)
    if wanted:
        unknown = set(wanted) - set(outputs)
        if unknown:
            raise invalid(f"output_filter names unknown outputs {sorted(unknown)}")
        outputs = {k: outputs[k] for k in wanted}
    return outputs


def batch_size(inputs: dict[str, np.ndarray]) -> int:
    """Rows in a request (0-d inputs count as one row and cannot be batched)."""
    for array in inputs.values():
        return int(array.shape[0]) if array.ndim > 0 else 1
    return 0
