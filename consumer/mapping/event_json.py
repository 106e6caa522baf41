"""A JSON event (Avro field names) -> the Python shape `fastavro.schemaless_reader` returns.

`profile-consumer preview` and the tests feed rules with hand-written JSON; the rules must see
exactly what they see on Kafka, so the conversion mirrors fastavro's decoding:

- timestamp-millis/micros: a timezone-aware UTC `datetime`, from epoch milliseconds
  (microseconds) or an ISO-8601 string (no offset means UTC);
- decimal: a `decimal.Decimal` with exactly the schema's scale (`1234.5` -> `1234.50`), from a
  string or a number; more decimal places than the scale or digits than the precision fail;
- enum: the symbol string; bytes/fixed: ISO-8859-1 code points, as Avro's JSON encoding;
- unions: the branch value, chosen by the value (records by their fields: every key a field,
  every field without default present) or by Avro's JSON encoding `{"RecordName": {...}}`;
- records: missing fields take their defaults; unknown keys are errors (typos must not
  vanish silently); maps: dicts.

Any mismatch raises `MappingError("invalid_event", ...)` naming the field path.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from consumer.errors import MappingError
from consumer.mapping.schema_paths import AvroTypes, kind_of

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_INT_RANGES = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_TIME_UNITS = {
    "timestamp-millis": timedelta(milliseconds=1),
    "timestamp-micros": timedelta(microseconds=1),
}


class _Mismatch(Exception):
    """A value does not fit its type; `path` is filled in on the way up."""

    def __init__(self, path: str, expected: str) -> None:
        self.path = path
        self.expected = expected
        super().__init__(f"{path}: {expected}")


def event_from_json(obj: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a JSON-decoded event to the decoded-Avro shape; see the module docstring.

    Raises MappingError("invalid_event", message) naming the first field that does not fit.
    """
    try:
        types = AvroTypes(schema)
    except ValueError as exc:
        raise MappingError("invalid_event", f"the schema is not usable: {exc}") from exc
    converter = _Converter(types)
    try:
        value = converter.convert(obj, types.root, "")
    except _Mismatch as exc:
        where = exc.path or "the event"
        raise MappingError("invalid_event", f"{where}: expected {exc.expected}") from None
    if not isinstance(value, dict):
        raise MappingError("invalid_event", "the event: expected a JSON object")
    return value


class _Converter:
    def __init__(self, types: AvroTypes) -> None:
        self.types = types

    def convert(self, value: Any, avro_type: Any, path: str) -> Any:
        resolved = self.types.resolve(avro_type)
        if isinstance(resolved, list):
            return self._union(value, resolved, path)
        kind = kind_of(resolved)
        logical = resolved.get("logicalType") if isinstance(resolved, dict) else None
        if logical is not None:
            converted = self._logical(value, resolved, kind, logical, path)
            if converted is not _NOT_HANDLED:
                return converted
        method = getattr(self, f"_{kind}", None)
        if method is None:
            raise _Mismatch(path, f"a value of the unsupported Avro type {kind!r}")
        return method(value, resolved, path)

    # --- primitives ----------------------------------------------------------------------

    def _null(self, value: Any, _t: Any, path: str) -> None:
        if value is not None:
            raise _Mismatch(path, "null")

    def _boolean(self, value: Any, _t: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise _Mismatch(path, "true or false")
        return value

    def _int(self, value: Any, avro_type: Any, path: str) -> int:
        kind = kind_of(avro_type)
        low, high = _INT_RANGES[kind]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _Mismatch(path, f"an integer that fits an Avro {kind}")
        return value

    _long = _int

    def _float(self, value: Any, _t: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
            raise _Mismatch(path, "a number")
        return float(value)

    _double = _float

    def _string(self, value: Any, _t: Any, path: str) -> str:
        if not isinstance(value, str) or not _is_utf8(value):
            # JSON's "\ud800" escapes give lone surrogates: Avro (UTF-8) cannot carry them.
            raise _Mismatch(path, "a string of valid Unicode text")
        return value

    def _bytes(self, value: Any, avro_type: Any, path: str) -> bytes:
        if not isinstance(value, str):
            raise _Mismatch(path, "a string of ISO-8859-1 code points (Avro's JSON for bytes)")
        try:
            data = value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Mismatch(
                path, "only code points U+0000..U+00FF (Avro's JSON for bytes)"
            ) from None
        size = avro_type.get("size") if isinstance(avro_type, dict) else None
        if size is not None and len(data) != size:
            raise _Mismatch(path, f"exactly {size} bytes")
        return data

    _fixed = _bytes

    # --- complex types ---------------------------------------------------------------------

    def _enum(self, value: Any, avro_type: dict[str, Any], path: str) -> str:
        symbols = avro_type.get("symbols", [])
        if value not in symbols or not isinstance(value, str):
            raise _Mismatch(path, f"one of {', '.join(symbols)}")
        return value

    def _array(self, value: Any, avro_type: dict[str, Any], path: str) -> list[Any]:
        if not isinstance(value, list):
            raise _Mismatch(path, "an array")
        items = avro_type["items"]
        return [self.convert(item, items, f"{path}[{i}]") for i, item in enumerate(value)]

    def _map(self, value: Any, avro_type: dict[str, Any], path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Mismatch(path, "an object (Avro map)")
        values = avro_type["values"]
        for key in value:
            if not _is_utf8(str(key)):
                raise _Mismatch(path, "keys of valid Unicode text")
        return {
            str(key): self.convert(item, values, _join(path, str(key)))
            for key, item in value.items()
        }

    def _record(self, value: Any, avro_type: dict[str, Any], path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Mismatch(path, f"an object (record {avro_type.get('name')})")
        fields = self.types.fields(avro_type)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise _Mismatch(
                _join(path, str(unknown[0])),
                f"no such field in {avro_type.get('name')} (fields: {', '.join(fields)})",
            )
        out: dict[str, Any] = {}
        for fld in avro_type.get("fields", []):
            name = fld["name"]
            if name in value:
                out[name] = self.convert(value[name], fld["type"], _join(path, name))
            elif "default" in fld:
                out[name] = self._default(fld, path)
            else:
                raise _Mismatch(_join(path, name), "a value (the field has no default)")
        return out

    _error = _record

    def _default(self, fld: dict[str, Any], path: str) -> Any:
        # Avro: a union field's default belongs to the union's first branch.
        field_type = self.types.resolve(fld["type"])
        if isinstance(field_type, list):
            field_type = field_type[0]
        return self.convert(fld["default"], field_type, _join(path, fld["name"]))

    def _union(self, value: Any, branches: list[Any], path: str) -> Any:
        resolved = [self.types.resolve(b) for b in branches]
        wrapped = self._wrapped_branch(value, resolved)
        if wrapped is not None:
            branch, inner = wrapped
            return self.convert(inner, branch, path)
        for branch in self._candidates(value, resolved):
            try:
                return self.convert(value, branch, path)
            except _Mismatch:
                continue
        names = ", ".join(self.types.full_name(b) for b in resolved)
        raise _Mismatch(path, f"a value of one of the union's branches ({names})")

    def _wrapped_branch(self, value: Any, branches: list[Any]) -> tuple[Any, Any] | None:
        """Avro's JSON encoding of a union: {"branch name": value}."""
        if not isinstance(value, dict) or len(value) != 1:
            return None
        ((key, inner),) = value.items()
        for branch in branches:
            full = self.types.full_name(branch)
            if key in (full, full.rpartition(".")[2]):
                return branch, inner
        return None

    def _candidates(self, value: Any, branches: list[Any]) -> list[Any]:
        if not isinstance(value, dict):
            return [b for b in branches if kind_of(b) not in ("record", "error", "map")]
        # A record branch matches when every key is one of its fields and every field
        # without a default is there; maps take any object, so they come last.
        records = [
            b for b in branches if kind_of(b) in ("record", "error") and self._fits(value, b)
        ]
        return records + [b for b in branches if kind_of(b) == "map"]

    def _fits(self, value: dict[str, Any], record: dict[str, Any]) -> bool:
        fields = self.types.fields(record)
        if not set(value) <= set(fields):
            return False
        required = {f["name"] for f in record.get("fields", []) if "default" not in f}
        return required <= set(value)

    # --- logical types ------------------------------------------------------------------

    def _logical(
        self, value: Any, avro_type: dict[str, Any], kind: str, logical: str, path: str
    ) -> Any:
        if logical in _TIME_UNITS and kind == "long":
            return _timestamp(value, _TIME_UNITS[logical], path)
        if logical == "decimal" and kind in ("bytes", "fixed"):
            return _decimal(value, avro_type, path)
        if logical == "date" and kind == "int":
            return _date(value, path)
        return _NOT_HANDLED


_NOT_HANDLED = object()


def _timestamp(value: Any, unit: timedelta, path: str) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise _Mismatch(path, "an ISO-8601 timestamp or epoch milliseconds") from None
        parsed = (
            parsed.replace(tzinfo=timezone.utc)
            if parsed.tzinfo is None
            else parsed.astimezone(timezone.utc)
        )
        # Avro stores whole units: drop what the encoding would (as fastavro's output has).
        if unit == _TIME_UNITS["timestamp-millis"]:
            parsed = parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)
        return parsed
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Mismatch(path, "an ISO-8601 timestamp or epoch milliseconds")
    try:
        return _EPOCH + value * unit
    except OverflowError:
        raise _Mismatch(path, "a timestamp between years 1 and 9999") from None


def _decimal(value: Any, avro_type: dict[str, Any], path: str) -> Decimal:
    scale = int(avro_type.get("scale", 0))
    precision = int(avro_type.get("precision", 0))
    expected = f"a decimal with at most {scale} decimal places (a string or a number)"
    if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
        raise _Mismatch(path, expected)
    try:
        # A float goes through repr: its shortest digits are what the author wrote.
        number = Decimal(repr(value) if isinstance(value, float) else value)
        if not number.is_finite():
            raise _Mismatch(path, expected)
        exact = number.quantize(Decimal(1).scaleb(-scale))
    except InvalidOperation:
        raise _Mismatch(path, expected) from None
    if exact != number:
        raise _Mismatch(path, expected)
    if precision and len(exact.as_tuple().digits) > precision:
        raise _Mismatch(path, f"a decimal of at most {precision} digits")
    return exact


def _date(value: Any, path: str) -> date:
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise _Mismatch(path, "an ISO-8601 date or days since 1970-01-01") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Mismatch(path, "an ISO-8601 date or days since 1970-01-01")
    try:
        return date(1970, 1, 1) + timedelta(days=value)
    except OverflowError:
        raise _Mismatch(path, "a date between years 1 and 9999") from None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
