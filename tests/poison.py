"""Message values that must never get past a consumer: each with what its dead letter's reason says.

Used by the unit tests of the decoders and handlers and by the integration test that publishes them to
every input topic and the control topic of running workers.
"""

from __future__ import annotations

from chexstack.messages import MAX_VALUE_BYTES

POISON: dict[str, tuple[bytes | None, str]] = {
    "not-json": (b"this is not json", "not UTF-8 JSON"),
    "not-utf8": (b'\xff\xfe{"a": 1}', "not UTF-8 JSON"),
    # json.loads raises ValueError: over sys.get_int_max_str_digits() (4,300) digits.
    "huge-int": (b'{"image_id": ' + b"1" * 4301 + b"}", "JSON value out of range"),
    # json.loads raises RecursionError.
    "deep-array": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "deep-object": (b'{"a":' * 40_000 + b"1" + b"}" * 40_000, "nested too deeply"),
    "oversized": (b'{"pad": "' + b"x" * (MAX_VALUE_BYTES * 2) + b'"}', "over the"),
    "not-an-object": (b"[1, 2, 3]", "valid dictionary"),
    "tombstone": (None, "tombstone"),
}
