"""Run one signature of a servable on numpy inputs, with TF Serving's input checks."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from chexstack.serve.errors import Code, ServeError, invalid
from chexstack.serve.registry import Servable

log = logging.getLogger(__name__)

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
    try:
        tensors = {k: tf.convert_to_tensor(v, dtype=specs[k].dtype) for k, v in inputs.items()}
        return {k: v.numpy() for k, v in fn(**tensors).items()}
    except tf.errors.OpError as exc:
        raise model_error(exc, servable, specs) from exc


# TF's codes for what the request's data caused (INVALID_ARGUMENT, OUT_OF_RANGE, and RESOURCE_EXHAUSTED:
# out of memory for a request this large); any other is the server's own failure. Not RESOURCE_EXHAUSTED
# on to the client: a retryable code for the router, which would send the same batch again and again.
_CALLER_CODES = {3: Code.INVALID_ARGUMENT, 11: Code.INVALID_ARGUMENT, 8: Code.INVALID_ARGUMENT}
_NOISE = re.compile(r"Graph execution error:|Detected at node|<stack traces unavailable>|Node:")
_NODE = re.compile(r"\{\{node ([^}]*)\}\}|Detected at node '?([^\s']+)")
_TAILS = re.compile(r"\s*(\[\[\{\{node [^}]*\}\}\]\]|\[Op:[^\]]*\])")


def tf_message(message: str) -> str:
    """What TF reported, without its boilerplate: the first line that is neither "Graph execution
    error:", the node and the Python stack it was defined at (file paths), nor the [[{{node}}]]/[Op:]
    tails."""
    for line in message.splitlines():
        if line.strip() and not line[0].isspace() and not _NOISE.match(line):
            text = _TAILS.sub("", line).strip()
            if text:
                return text
    return "the model could not run on this input"


def model_error(exc: Any, servable: Servable, specs: dict[str, Any]) -> ServeError:
    """A TF error from running a signature as the ServeError REST and gRPC report alike.

    An error the request's data caused (INVALID_ARGUMENT, e.g. bytes no image decoder takes) names
    the input: the string input when an image decode op failed, the only input when there is one.
    """
    message = str(getattr(exc, "message", "") or exc)
    code = _CALLER_CODES.get(int(getattr(exc, "error_code", 0) or 0))
    if code is None:
        log.error("%s v%d failed in TF: %s", servable.name, servable.version, message)
        return ServeError(
            Code.INTERNAL, f"the model failed ({type(exc).__name__}); the server's log has the details"
        )
    text = tf_message(message)
    node = _NODE.search(message)
    strings = sorted(k for k, spec in specs.items() if spec.dtype.name == "string")
    if node is not None and "decode" in (node.group(1) or node.group(2)).lower() and strings:
        which = f"input {strings[0]}" if len(strings) == 1 else f"one of the inputs {', '.join(strings)}"
        return ServeError(code, f"{which} is not a decodable image: {text}")
    if len(specs) == 1:
        return ServeError(code, f"input {next(iter(specs))}: {text}")
    return ServeError(code, text)


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
