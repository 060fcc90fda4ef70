"""TF Serving's REST JSON encoding: request bodies -> numpy inputs, outputs -> response bodies.

Row format: {"instances": [...]} -> {"predictions": [...]}; columnar: {"inputs": ...} ->
{"outputs": ...}. Binary values travel as {"b64": "..."}.

Every value is checked against the signature's dtype, and what does not fit is INVALID_ARGUMENT
naming the input and the value: a float for an integer input, an integer outside the dtype's range
(300 for uint8, 2**64 for int64), a number outside the float dtype's range (1e39 for float32, 1e400
for any: JSON allows it, float64 cannot hold it), NaN or Infinity where the dtype has no such value.
NaN and Infinity, which TF Serving writes and reads, are accepted for float inputs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from chexstack.httpjson import BadJson, parse_json
from chexstack.serve.errors import invalid

# Inputs have at most this many dimensions over REST (numpy's own limit is 64); deeper nesting is refused.
MAX_RANK = 32


@dataclass(frozen=True)
class PredictBody:
    signature_name: str
    row_format: bool
    data: Any


class OutOfRange:
    """A JSON number float64 cannot hold (1e400), kept as its text so the error can show it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _parse_float(text: str) -> float | OutOfRange:
    value = float(text)  # a literal past float64 is inf, which would pass as JSON's Infinity
    return value if math.isfinite(value) else OutOfRange(text)


def parse_predict_body(body: bytes) -> PredictBody:
    try:
        doc = parse_json(body, parse_float=_parse_float)
    except BadJson as exc:
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
    k: (int(np.iinfo(k).min), int(np.iinfo(k).max))
    for k in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
}
# Signature dtype -> the numpy dtype its values are sent as.
_FLOATS = {
    "float16": "float16",
    "half": "float16",
    "float32": "float32",
    "float64": "float64",
    "double": "float64",
    "bfloat16": "float32",
}


_END = object()  # the end of an iteration, or no value found


def _leaves(value: Any) -> Iterator[Any]:
    """The non-list values of nested lists, depth first, without recursion."""
    stack = [iter([value])]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            yield item


def _show(value: Any) -> str:
    """A JSON value as the client wrote it (near enough), shortened."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float) and not math.isfinite(value):
        text = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    elif isinstance(value, int | float | OutOfRange):
        text = repr(value)
    elif value is None:
        text = "null"
    elif isinstance(value, dict):
        text = "an object"
    else:
        text = json.dumps(value)
    return text if len(text) <= 40 else f"{text[:30]}... ({len(text)} characters)"


def _first_bad(value: Any, ok: Callable[[Any], bool]) -> Any:
    return next((leaf for leaf in _leaves(value) if not ok(leaf)), _END)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float | OutOfRange) and not isinstance(v, bool)


def to_array(value: Any, dtype: str, name: str) -> np.ndarray:
    """JSON value -> numpy array of the signature's dtype; anything else is INVALID_ARGUMENT."""
    if dtype == "string":
        return _string_array(value, name)
    if dtype not in _INT_RANGES and dtype not in _FLOATS and dtype != "bool":
        raise invalid(f"input {name}: dtype {dtype} is not supported over REST")
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nesting, or more dimensions than numpy has
        raise invalid(f"input {name}: not a rectangular array ({exc})") from exc
    if array.ndim > MAX_RANK:
        raise invalid(f"input {name}: {array.ndim} dimensions, more than {MAX_RANK}")
    kind = array.dtype.kind
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if kind in "iu" and (not array.size or (low <= array.min() and array.max() <= high)):
            return array.astype(dtype)
        # Something is off: a float, a bool among numbers, a value out of range (also ones beyond
        # uint64 that numpy keeps as objects, or an int64 and a uint64 that it turned into floats).
        bad = _first_bad(value, lambda v: _is_int(v) and low <= v <= high)
        if _is_int(bad) or isinstance(bad, OutOfRange):
            raise invalid(f"input {name}: value {_show(bad)} is out of range for {dtype}")
        if bad is not _END:
            raise invalid(f"input {name}: expects {dtype} values, got {_show(bad)}")
        raise invalid(f"input {name}: expects {dtype} values")
    if dtype in _FLOATS:
        target = np.dtype(_FLOATS[dtype])
        limit = float(np.finfo(target).max)
        if kind in "iuf":
            values = array.astype(np.float64)
            finite = values[np.isfinite(values)]
            if not finite.size or float(np.abs(finite).max()) <= limit:
                return array.astype(target)

        def fits(v: Any) -> bool:  # NaN and Infinity literals fit: float dtypes have them
            if not _is_number(v) or isinstance(v, OutOfRange):
                return False
            return (isinstance(v, float) and not math.isfinite(v)) or abs(v) <= limit

        bad = _first_bad(value, fits)
        if bad is _END:  # integers past uint64 (numpy keeps those as objects), all within range
            return np.asarray(value, dtype=np.float64).astype(target)
        if _is_number(bad):
            raise invalid(f"input {name}: value {_show(bad)} is out of range for {dtype}")
        raise invalid(f"input {name}: expects {dtype} values, got {_show(bad)}")
    if kind != "b":
        bad = _first_bad(value, lambda v: isinstance(v, bool))
        raise invalid(
            f"input {name}: expects bool values" + (f", got {_show(bad)}" if bad is not _END else "")
        )
    return array


def _string_array(value: Any, name: str) -> np.ndarray:
    def shape_of(v: Any, depth: int = 0) -> tuple[int, ...]:
        if isinstance(v, list):
            if depth >= MAX_RANK:
                raise invalid(f"input {name}: nested more than {MAX_RANK} lists deep")
            inner = {shape_of(x, depth + 1) for x in v}
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
            try:
                return v.encode()
            except UnicodeEncodeError as exc:  # "\ud800" is valid JSON but no UTF-8
                raise invalid(f"input {name}: a string that is not valid Unicode ({exc.reason})") from exc
        raise invalid(f"input {name}: expects string or {{'b64': ...}} values, got {_show(v)}")

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
