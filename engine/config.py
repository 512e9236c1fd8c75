"""Configuration: each option declared once, merged from four sources in one place.

A program's configuration is a frozen dataclass whose fields are declared
with ``option(default, help)``; the field's annotation is its type. From that
one declaration come the command-line flag (``--data-dir``), the environment
variable (``<PREFIX>_DATA_DIR``), the TOML key (``data_dir``) and the help
text, so nothing is repeated (uvicorn repeats each option four times)::

    @dataclass(frozen=True, slots=True)
    class ServerConfig:
        port: int = option(8002, "port to listen on (0: any free port)")

    spec = ConfigSpec(ServerConfig, env_prefix="DAMSELFLY_SERVER", prog="server")
    loaded = spec.load(sys.argv[1:])          # flags > env > TOML file > defaults
    loaded.config.port, loaded.sources["port"]

Supported types: str, int, float, bool, ``list[str]`` and any of them
``| None``. Flags and environment variables carry text; lists are comma
separated; booleans accept 1/0, true/false, yes/no, on/off (and the flag pair
``--x`` / ``--no-x``). A TOML file (``--config PATH`` or ``<PREFIX>_CONFIG``)
holds the same keys at top level; an unknown key is an error, so a typo is
never silently ignored. ``--print-config`` prints the merged result as TOML,
each line annotated with where its value came from; options declared with
``secret=True`` are printed as ``"***"``.

Every problem is a ``ConfigError`` naming the source and the option. The
dataclass may check cross-field rules in ``__post_init__`` by raising
``ConfigError`` or ``BadInput``; both come out of ``load`` as ConfigError.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine.errors import BadInput, ConfigError

T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_META = "damselfly.option"


@dataclass(frozen=True, slots=True)
class _OptionMeta:
    help: str
    choices: tuple[str, ...] | None
    check: Callable[[Any], str | None] | None
    secret: bool
    metavar: str | None


def option(default: Any, help: str, *, choices: Sequence[str] | None = None,
           check: Callable[[Any], str | None] | None = None, secret: bool = False,
           metavar: str | None = None) -> Any:
    """Declare one option: a dataclass field carrying its help and checks.

    ``check(value)`` returns an error message or None. A list default is
    given as a tuple or list and copied for each instance.
    """
    meta = {_META: _OptionMeta(help, tuple(choices) if choices else None, check, secret,
                               metavar)}
    if isinstance(default, (list, tuple)):
        frozen = list(default)
        return dataclasses.field(default_factory=lambda: list(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Option:
    """One declared option, as the loader sees it."""

    name: str
    kind: type          # str, int, float, bool or list
    optional: bool      # None is a valid value
    default: Any
    meta: _OptionMeta
    env: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_text(self, text: str, source: str) -> Any:
        """Turn flag or environment text into a value of this option's type."""
        if self.optional and text.strip().lower() in ("", "none"):
            return None
        try:
            if self.kind is bool:
                low = text.strip().lower()
                if low in _TRUE:
                    return True
                if low in _FALSE:
                    return False
                raise ValueError
            if self.kind is list:
                return [part.strip() for part in text.split(",") if part.strip()]
            return self.kind(text.strip()) if self.kind is not str else text
        except ValueError as exc:
            raise ConfigError(
                f"{source}: expected {_kind_name(self.kind)} for {self.name}, "
                f"got {text!r}") from exc

    def accept(self, value: Any, source: str) -> Any:
        """Check a typed value (from TOML, or already parsed) and return it."""
        if value is None:
            if self.optional:
                return None
            raise ConfigError(f"{source}: {self.name} must be set")
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = (isinstance(value, self.kind) and not (self.kind is int and isinstance(value, bool)))
        if self.kind is list:
            ok = ok and all(isinstance(v, str) for v in value)
        if not ok:
            raise ConfigError(f"{source}: expected {_kind_name(self.kind)} for {self.name}, "
                              f"got {type(value).__name__}")
        if self.meta.choices and value not in self.meta.choices:
            raise ConfigError(f"{source}: {self.name} must be one of "
                              f"{', '.join(self.meta.choices)}, got {value!r}")
        if self.meta.check is not None:
            problem = self.meta.check(value)
            if problem:
                raise ConfigError(f"{source}: {self.name} {problem}")
        return value


@dataclass(frozen=True, slots=True)
class Loaded(Generic[T]):
    """The merged configuration and where each value came from."""

    config: T
    sources: dict[str, str]
    print_requested: bool = False


class ConfigSpec(Generic[T]):
    """The options of one program, read from the dataclass ``cls``."""

    def __init__(self, cls: type[T], env_prefix: str, prog: str, description: str = "") -> None:
        self.cls, self.env_prefix = cls, env_prefix.rstrip("_").upper()
        self.prog, self.description = prog, description
        hints = typing.get_type_hints(cls)
        self.options: tuple[Option, ...] = tuple(
            self._option(f, hints[f.name]) for f in dataclasses.fields(cls)
            if _META in f.metadata)
        self.by_name = {o.name: o for o in self.options}

    def _option(self, f: dataclasses.Field, hint: Any) -> Option:
        kind, optional = _unwrap(hint, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        return Option(f.name, kind, optional, default, f.metadata[_META],
                      f"{self.env_prefix}_{f.name.upper()}")

    @property
    def config_env(self) -> str:
        return f"{self.env_prefix}_CONFIG"

    def parser(self) -> argparse.ArgumentParser:
        """argparse flags generated from the declarations; values stay text."""
        p = argparse.ArgumentParser(prog=self.prog, description=self.description,
                                    argument_default=argparse.SUPPRESS)
        p.add_argument("--config", metavar="PATH",
                       help=f"TOML file with these options as top-level keys "
                            f"(env {self.config_env})")
        p.add_argument("--print-config", action="store_true",
                       help="print the merged configuration as TOML and exit")
        for o in self.options:
            shown = "***" if o.meta.secret else o.default
            text = f"{o.meta.help} (default {shown!r}; env {o.env})"
            if o.kind is bool:
                p.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction,
                               help=text)
            else:
                p.add_argument(o.flag, dest=o.name, metavar=o.meta.metavar or o.name.upper(),
                               help=text)
        return p

    def load(self, argv: Sequence[str] | None = None,
             env: Mapping[str, str] | None = None, *,
             parser: argparse.ArgumentParser | None = None,
             extra: dict[str, Any] | None = None) -> Loaded[T]:
        """Parse ``argv`` and merge: flags > environment > TOML file > defaults.

        ``parser`` may be ``self.parser()`` with more, per-invocation
        arguments added (dfget's URL and output); their values are moved from
        the parsed flags into ``extra`` instead of the config.

        argparse itself exits with status 2 on an unknown flag; every other
        problem is a ConfigError.
        """
        env = os.environ if env is None else env
        args = vars((parser or self.parser()).parse_args(argv))
        if extra is not None:
            extra.update({k: args.pop(k) for k in list(args) if k not in self.by_name
                          and k not in ("config", "print_config")})
        path = args.pop("config", None) or env.get(self.config_env) or None
        print_requested = bool(args.pop("print_config", False))
        file_values = read_toml(path) if path else {}
        loaded = self.merge(args, env, file_values, path or "")
        return Loaded(loaded.config, loaded.sources, print_requested)

    def merge(self, flags: Mapping[str, Any], env: Mapping[str, str],
              file_values: Mapping[str, Any], file_name: str = "config file") -> Loaded[T]:
        """The one place where sources meet. ``flags`` values may be text or typed."""
        for key in file_values:
            if key not in self.by_name:
                raise ConfigError(f"{file_name}: unknown option {key!r}")
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for o in self.options:
            if o.name in flags:
                raw, source = flags[o.name], f"flag {o.flag}"
                value = o.parse_text(raw, source) if isinstance(raw, str) else raw
            elif o.env in env:
                source = f"env {o.env}"
                value = o.parse_text(env[o.env], source)
            elif o.name in file_values:
                value, source = file_values[o.name], f"file {file_name}"
            else:
                value, source = o.default, "default"
            values[o.name] = o.accept(value, source)
            sources[o.name] = source
        try:
            config = self.cls(**values)
        except (BadInput, TypeError) as exc:
            raise ConfigError(f"configuration: {exc}") from exc
        return Loaded(config, sources)

    def defaults(self) -> T:
        return self.merge({}, {}, {}).config

    def dump(self, config: T, sources: Mapping[str, str] | None = None) -> str:
        """The configuration as TOML that ``--config`` reads back (None is omitted)."""
        lines = [f"# {self.prog} configuration"]
        for o in self.options:
            value = getattr(config, o.name)
            origin = f"  # {sources[o.name]}" if sources and o.name in sources else ""
            if value is None:
                lines.append(f"# {o.name} = (unset){origin}")
            else:
                shown = "***" if o.meta.secret else value
                lines.append(f"{o.name} = {_toml_value(shown)}{origin}")
        return "\n".join(lines) + "\n"


def read_toml(path: str) -> dict[str, Any]:
    import tomllib  # only with a config file: most command lines have none

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def _unwrap(hint: Any, name: str) -> tuple[type, bool]:
    optional = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            raise TypeError(f"option {name}: only X | None unions are supported")
        hint = args[0]
    if typing.get_origin(hint) is list and typing.get_args(hint) in ((str,), ()):
        return list, optional
    if hint in (str, int, float, bool):
        return hint, optional
    raise TypeError(f"option {name}: unsupported type {hint!r}")


def _kind_name(kind: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a comma-separated list"}[kind]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text) + '"'


def port_check(value: int) -> str | None:
    """A ``check`` for TCP ports; 0 means any free port."""
    return None if 0 <= value < 65536 else "must be within 0..65535"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"
