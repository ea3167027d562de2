"""The YAML configuration as located data: a loader whose mappings and sequences remember file and line, and
`Section`, the typed reader every part of the configuration is read through (errors name file:line:field,
and "did you mean" for a mistyped key).

Imports nothing of sipfilter: the config models, the rule packs, the limits and the STIR/SHAKEN settings are
all read through it.
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, overload

import yaml


class ConfigError(ValueError):
    """A configuration problem a person can fix: where (file, line, field) and what."""

    def __init__(
        self, message: str, file: str | Path | None = None, line: int | None = None, field: str = ""
    ):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        where = ""
        if self.file:
            where = self.file + (f":{line}" if line else "") + ": "
        super().__init__(f"{where}{field + ': ' if field else ''}{message}")


# --------------------------------------------------------------------------------------------------
# YAML with line numbers: every mapping/sequence remembers its file and the line of each entry.


class YamlMap(dict[Any, Any]):
    """A YAML mapping that remembers where it and each of its values came from."""

    file: str
    line: int
    lines: dict[Any, int]
    files: dict[Any, str]  # only for values merged in from another file (trunk overrides)


class YamlSeq(list[Any]):
    """A YAML sequence that remembers where it and each of its items came from."""

    file: str
    line: int
    lines: list[int]


class _Loader(yaml.SafeLoader):
    source: str = "<config>"


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> YamlMap:
    loader.flatten_mapping(node)
    result = YamlMap()
    result.file = loader.source
    result.line = node.start_mark.line + 1
    result.lines = {}
    result.files = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str | int | float | bool) and key is not None:
            raise ConfigError(
                "mapping keys must be plain scalars", loader.source, key_node.start_mark.line + 1
            )
        if key in result:
            raise ConfigError(f"duplicate key {key!r}", loader.source, key_node.start_mark.line + 1)
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = value_node.start_mark.line + 1
    return result


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> YamlSeq:
    result = YamlSeq(loader.construct_object(child, deep=True) for child in node.value)
    result.file = loader.source
    result.line = node.start_mark.line + 1
    result.lines = [child.start_mark.line + 1 for child in node.value]
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


def load_yaml(path: str | Path) -> YamlMap:
    """Read one YAML file whose top level is a mapping; syntax errors become ConfigError with a line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", path) from exc
    loader = _Loader(text)
    loader.source = str(path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc}", path, line) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", path) from exc
    finally:
        loader.dispose()
    if data is None:
        data = YamlMap()
        data.file, data.line, data.lines, data.files = str(path), 1, {}, {}
    if not isinstance(data, YamlMap):
        raise ConfigError("the top level must be a mapping", path, 1)
    return data


def merge_overrides(base: YamlMap, overrides: Mapping[Any, Any]) -> YamlMap:
    """Deep-merge `overrides` onto a copy of `base`; merged values keep their own file/line for errors."""
    result = YamlMap(base)
    result.file, result.line, result.lines = base.file, base.line, dict(base.lines)
    result.files = dict(getattr(base, "files", {}))
    src_lines = getattr(overrides, "lines", {})
    src_file = getattr(overrides, "file", None)
    for key, value in overrides.items():
        if isinstance(value, YamlMap) and isinstance(result.get(key), YamlMap):
            result[key] = merge_overrides(result[key], value)
        else:
            result[key] = value
        if key in src_lines:
            result.lines[key] = src_lines[key]
        if src_file:
            result.files[key] = src_file
    return result


# --------------------------------------------------------------------------------------------------
# Typed reading of one section: every accessor names the field and line when it refuses a value.

# "No default: the key is required". Typed Any so that it can stand as the default of every typed accessor.
_REQUIRED: Any = object()


class Section:
    """A view of one YAML mapping at a dotted path, with typed accessors that raise ConfigError."""

    def __init__(
        self, data: Mapping[Any, Any], path: builtins.str, file: builtins.str = "", line: builtins.int = 0
    ):
        self.data = data
        self.path = path
        self.file = getattr(data, "file", file)
        self.line = getattr(data, "line", line)
        self._lines: Mapping[Any, builtins.int] = getattr(data, "lines", {})
        self._files: Mapping[Any, builtins.str] = getattr(data, "files", {})

    def field(self, key: builtins.str) -> builtins.str:
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: builtins.str) -> builtins.int:
        return self._lines.get(key, self.line)

    def error(self, key: builtins.str, message: builtins.str) -> ConfigError:
        value = self.data.get(key)
        file = getattr(value, "file", None) or self._files.get(key) or self.file
        return ConfigError(message, file, self.line_of(key), self.field(key))

    def has(self, key: builtins.str) -> builtins.bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: builtins.str, default: Any = _REQUIRED) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError("missing required field", self.file, self.line, self.field(key))
            return default
        return self.data[key]

    def only(self, allowed: Iterable[builtins.str]) -> None:
        """Refuse unknown keys (typos must not silently disable a rule)."""
        allowed = list(allowed)
        for key in self.data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(allowed)})"
                raise self.error(key, f"unknown field{hint}")

    @overload
    def str(self, key: builtins.str, default: builtins.str = ..., *, nullable: Literal[False] = False
            ) -> builtins.str: ...  # fmt: skip
    @overload
    def str(self, key: builtins.str, default: builtins.str | None, *, nullable: Literal[True]
            ) -> builtins.str | None: ...  # fmt: skip
    @overload
    def str(self, key: builtins.str, default: None, *, nullable: builtins.bool = False
            ) -> builtins.str | None: ...  # fmt: skip
    def str(self, key: builtins.str, default: Any = _REQUIRED, *, nullable: builtins.bool = False
            ) -> builtins.str | None:  # fmt: skip
        """A non-empty string; None only when the default is None or `nullable` allows `key: null`."""
        value = self.raw(key, default)
        if value is None and (nullable or default is None):
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, f"expected a non-empty string, got {value!r}")
        return value

    @overload
    def int(self, key: builtins.str, default: builtins.int = ..., *, lo: builtins.int | None = None,
            hi: builtins.int | None = None) -> builtins.int: ...  # fmt: skip
    @overload
    def int(self, key: builtins.str, default: None, *, lo: builtins.int | None = None,
            hi: builtins.int | None = None) -> builtins.int | None: ...  # fmt: skip
    def int(self, key: builtins.str, default: Any = _REQUIRED, *, lo: builtins.int | None = None,
            hi: builtins.int | None = None) -> builtins.int | None:  # fmt: skip
        """An integer (not a boolean) within [lo, hi]; None only when the default is None."""
        value = self.raw(key, default)
        if value is None and default is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"expected an integer, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise self.error(key, f"must be <= {hi}, got {value}")
        return value

    def number(self, key: builtins.str, default: builtins.float = _REQUIRED, *,
               lo: builtins.float | None = None) -> builtins.float:  # fmt: skip
        value = self.raw(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"expected a number, got {value!r}")
        if lo is not None and value < lo:
            raise self.error(key, f"must be >= {lo}, got {value}")
        return float(value)

    def bool(self, key: builtins.str, default: builtins.bool = _REQUIRED) -> builtins.bool:
        value = self.raw(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {value!r}")
        return value

    def choice(self, key: builtins.str, choices: Iterable[builtins.str], default: builtins.str = _REQUIRED
               ) -> builtins.str:  # fmt: skip
        choices = tuple(choices)
        value = self.raw(key, default)
        if not isinstance(value, str) or value not in choices:
            raise self.error(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def section(self, key: builtins.str, default_empty: builtins.bool = False) -> Section:
        value = self.raw(key, YamlMap() if default_empty else _REQUIRED)
        if value is None and default_empty:
            value = YamlMap()
        if not isinstance(value, Mapping):
            raise self.error(key, f"expected a mapping, got {value!r}")
        sub = Section(value, self.field(key), self.file, self.line_of(key))
        return sub

    def list(self, key: builtins.str, default: Any = _REQUIRED) -> builtins.list[Any]:
        value = self.raw(key, default)
        if value is None and default is not _REQUIRED:
            value = default  # `key: null` means the default, as leaving the key out does
        if value is None:
            return []
        if isinstance(value, tuple) and value is default:  # a default written in this module
            return list(value)
        if not isinstance(value, list):
            raise self.error(key, f"expected a list, got {value!r}")
        return list(value)

    def str_list(self, key: builtins.str, default: Any = _REQUIRED) -> tuple[builtins.str, ...]:
        items = self.list(key, default)
        for item in items:
            if not isinstance(item, str) or not item:
                raise self.error(key, f"expected a list of non-empty strings, got item {item!r}")
        return tuple(items)

    def item_error(self, key: builtins.str, index: builtins.int, message: builtins.str) -> ConfigError:
        """An error about item `index` of the list at `key` (in the file that list came from)."""
        value = self.data.get(key)
        file = getattr(value, "file", None) or self._files.get(key) or self.file
        return ConfigError(message, file, self.item_line(key, index), f"{self.field(key)}[{index}]")

    def item_line(self, key: builtins.str, index: builtins.int) -> builtins.int:
        value = self.data.get(key)
        lines = getattr(value, "lines", None)
        return lines[index] if lines and index < len(lines) else self.line_of(key)

    def items(self, key: builtins.str) -> builtins.list[Section]:
        """A list of mappings, each as a Section named key[i]."""
        out = []
        for i, item in enumerate(self.list(key)):
            if not isinstance(item, Mapping):
                raise self.item_error(key, i, f"expected a mapping, got {item!r}")
            out.append(Section(item, f"{self.field(key)}[{i}]", self.file, self.item_line(key, i)))
        return out

    def path_(self, key: builtins.str, default: builtins.str = _REQUIRED, *, keep_link: builtins.bool = False
              ) -> Path:  # fmt: skip
        """A file-system path; relative paths are relative to the file that holds the value. `keep_link`:
        the last component is not resolved (a symlink the operator may repoint is followed at each open)."""
        value = self.str(key, default)
        if not self.file:
            return Path(value)
        path: Path = Path(self.file).parent / value
        return path.parent.resolve() / path.name if keep_link else path.resolve()

