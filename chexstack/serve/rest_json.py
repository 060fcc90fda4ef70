"""TF Serving's REST JSON encoding: request bodies -> numpy inputs, outputs -> response bodies.

Row format: {"instances": [...]} -> {"predictions": [...]}; columnar: {"inputs": ...} ->
{"outputs": ...}. Binary values travel as {"b64": "..."}.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from chexstack.serve.errors import invalid


@dataclass(frozen=True)
class PredictBody:
    signature_name: str
    row_format: bool
    data: Any


def parse_predict_body(body: bytes) -> PredictBody:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"JSON Parse error: {exc}") from exc
    if not isinstance(doc, dict):
        raise invalid("JSON Value: request body must be a JSON object")
    has_rows, has_cols = "instances" in doc, "inputs" in doc
    if has_rows == has_cols:
        raise invalid(
            "Missing 'inputs' or 'instances' key"
            if not has_rows
            else "Only one of 'inputs' or 'instances' may be set"
        )
    signature_name = doc.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise invalid("'signature_name' must be a string")
    if has_rows and not isinstance(doc["instances"], list):
        raise invalid("'instances' must be a JSON list")
    return PredictBody(signature_name, has_rows, doc["instances"] if has_rows else doc["inputs"])


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def build_inputs(body: PredictBody, specs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Decode the request's data against the signature's input specs (name -> tf.TensorSpec)."""
    names = sorted(specs)
    if body.row_format:
        rows = body.data
        if not rows:
            raise invalid("'instances' is empty")
        named = isinstance(rows[0], dict) and not _is_b64(rows[0])
        if not named:
            if len(names) != 1:
                raise invalid(
                    f"the signature has inputs {names}; each instance must be an object naming them"
                )
            return {names[0]: to_array(rows, specs[names[0]].dtype.name, names[0])}
        if not all(isinstance(r, dict) and set(r) == set(rows[0]) for r in rows):
            raise invalid("every instance must have the same named inputs")
        return {k: to_array([r[k] for r in rows], _dtype(specs, k), k) for k in rows[0]}
    data = body.data
    if isinstance(data, dict) and not _is_b64(data):
        return {k: to_array(v, _dtype(specs, k), k) for k, v in data.items()}
    if len(names) != 1:
        raise invalid(f"the signature has inputs {names}; 'inputs' must be an object naming them")
    return {names[0]: to_array(data, specs[names[0]].dtype.name, names[0])}


def _dtype(specs: dict[str, Any], name: str) -> str:
    if name not in specs:
        raise invalid(f"input {name!r} is not an input of the signature (inputs: {sorted(specs)})")
    return str(specs[name].dtype.name)


_INT_RANGES = {
    k: (np.iinfo(k).min, np.iinfo(k).max)
    for k in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
}
_FLOATS = {"float16", "float32", "float64", "half", "double", "bfloat16"}


def to_array(value: Any, dtype: str, name: str) -> np.ndarray:
    """JSON value -> numpy array of the signature's dtype; anything else is INVALID_ARGUMENT."""
    if dtype == "string":
        return _string_array(value, name)
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nesting
        raise invalid(f"input {name}: not a rectangular array ({exc})") from exc
    kind = array.dtype.kind
    if dtype in _INT_RANGES:
        if kind not in "iu":
            raise invalid(f"input {name}: expects {dtype} values, got JSON of kind {array.dtype}")
        low, high = _INT_RANGES[dtype]
        if array.size and (array.min() < low or array.max() > high):
            raise invalid(f"input {name}: value out of range for {dtype}")
        return array.astype(dtype)
    if dtype in _FLOATS:
        if kind not in "iuf":
            raise invalid(f"input {name}: expects {dtype} values, got JSON of kind {array.dtype}")
        return array.astype({"half": "float16", "double": "float64", "bfloat16": "float32"}.get(dtype, dtype))
    if dtype == "bool":
        if kind != "b":
            raise invalid(f"input {name}: expects bool values")
        return array
    raise invalid(f"input {name}: dtype {dtype} is not supported over REST")


def _string_array(value: Any, name: str) -> np.ndarray:
    def shape_of(v: Any) -> tuple[int, ...]:
        if isinstance(v, list):
            inner = {shape_of(x) for x in v}
            if len(inner) > 1:
                raise invalid(f"input {name}: not a rectangular array")
            return (len(v), *(inner.pop() if inner else ()))
        return ()

    def leaf(v: Any) -> bytes:
        if _is_b64(v):
            try:
                return base64.b64decode(v["b64"], validate=True)
            except (binascii.Error, TypeError) as exc:
                raise invalid(f"input {name}: invalid base64 ({exc})") from exc
        if isinstance(v, str):
            return v.encode()
        raise invalid(f"input {name}: expects string or {{'b64': ...}} values")

    def flatten(v: Any) -> list[bytes]:
        return [b for x in v for b in flatten(x)] if isinstance(v, list) else [leaf(v)]

    shape = shape_of(value)
    array = np.empty(len(flat := flatten(value)), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _jsonable(name: str, array: np.ndarray) -> Any:
    if array.dtype.kind in "OS":
        # Like TF Serving: outputs named *_bytes are base64; other strings are UTF-8 text.
        def conv(b: Any) -> Any:
            data = b if isinstance(b, bytes) else str(b).encode()
            return (
                {"b64": base64.b64encode(data).decode()}
                if name.endswith("_bytes")
                else data.decode("utf-8", "replace")
            )

        return np.vectorize(conv, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def format_outputs(outputs: dict[str, np.ndarray], row_format: bool) -> dict[str, Any]:
    if row_format:
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            return {"predictions": _jsonable(name, array)}
        columns = {k: _jsonable(k, v) for k, v in outputs.items()}
        rows = len(next(iter(columns.values())))
        return {"predictions": [{k: columns[k][i] for k in columns} for i in range(rows)]}
    if len(outputs) == 1:
        ((name, array),) = outputs.items()
        return {"outputs": _jsonable(name, array)}
    return {"outputs": {k: _jsonable(k, v) for k, v in outputs.items()}}
