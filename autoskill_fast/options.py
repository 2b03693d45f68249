"""Click options made from config dataclasses: each field is one option, with its type, choices (a `Literal`), default
and help (the field's docstring) taken from the dataclass, so they are written once.

    @config_options(ProfileConfig)
    def profile_cmd(**values):
        config = build_config(ProfileConfig, values)

A nested config field (`ProfileConfig.corpus`) is flattened into its own fields' options. A field's flag is
`--field-name` unless its metadata says otherwise (`config.cli(...)`); a boolean that defaults to True becomes
`--no-field-name`. A `ConfigError` raised while building is re-worded with the option's flag.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Callable, Literal, get_args, get_origin

import click

from .config import ConfigError
from .errors import AutoskillError


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, as one line of help."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


@dataclasses.dataclass(frozen=True)
class Option:
    """One click option for one (possibly nested) config field."""

    path: tuple[str, ...]  # field names from the top config down
    owner: type  # the dataclass that declares the field
    field: dataclasses.Field
    annotation: Any
    note: str | None = None  # under a nested config that may be None: its field's docstring, said instead of a default

    @property
    def param(self) -> str:
        return "__".join(self.path)

    @property
    def params(self) -> list[str]:
        """The click params of this option: its own, then one per alias flag (`--keep-first-token`)."""
        return [self.param] + [f"{self.param}__alias{i}" for i in range(len(self.meta.get("aliases") or {}))]

    @property
    def meta(self) -> dict[str, Any]:
        return self.field.metadata.get("cli") or {}

    @property
    def default(self) -> Any:
        if self.field.default is not dataclasses.MISSING:
            return self.field.default
        return dataclasses.MISSING

    @property
    def negated(self) -> bool:
        return _base_type(self.annotation) is bool and self.default is True

    @property
    def flag(self) -> str:
        """The option's flag as users type it (the short one when there is no long one)."""
        name = self.field.name.replace("_", "-")
        if self.meta.get("flag"):
            return self.meta["flag"]
        return f"--no-{name}" if self.negated else f"--{name}"

    def click_option(self) -> Callable:
        flags = [f for f in (self.meta.get("short"), self.flag) if f]
        flags = list(dict.fromkeys(flags))
        help_text = field_docs(self.owner).get(self.field.name, "")
        if self.negated:  # the field's docstring says what the default (on) does; the flag turns it off
            help_text = f"Turn off (on by default): {help_text}"
        if self.note:
            help_text = f"{help_text.split(' Default: ')[0]} {self.note}"
        base = _base_type(self.annotation)
        kwargs: dict[str, Any] = {"help": help_text}
        if base is bool:
            kwargs["is_flag"] = True
        else:
            choices = self.meta.get("choices") or (get_args(base) if get_origin(base) is Literal else None)
            if choices:
                kwargs["type"] = click.Choice(choices)
            elif self.meta.get("parse") is None and base in (int, float, str):
                kwargs["type"] = {int: click.INT, float: click.FLOAT, str: click.STRING}[base]
            if self.meta.get("metavar"):
                kwargs["metavar"] = self.meta["metavar"]
            if self.meta.get("multiple"):
                kwargs["multiple"] = True
            if self.default is dataclasses.MISSING:
                kwargs["required"] = True
            elif self.meta.get("multiple"):
                if self.default:
                    kwargs["default"] = tuple(str(d) for d in self.default)
                    kwargs["show_default"] = not self.note
            elif self.default is not None:
                kwargs["default"] = self.meta.get("shown") or self.default
                kwargs["show_default"] = not self.note
        option = click.option(*flags, self.param, **kwargs)
        aliases = self.meta.get("aliases") or {}
        if not aliases:
            return option

        def with_aliases(fn):
            for (alias, value), param in zip(aliases.items(), self.params[1:]):
                fn = click.option(alias, param, is_flag=True, help=f"The same as {self.flag} {value}.")(fn)
            return option(fn)

        return with_aliases

    def value(self, raw: Any) -> Any:
        """The field's value from what click parsed."""
        if self.negated:
            return not raw
        parse = self.meta.get("parse")
        if parse is not None and isinstance(raw, str):
            return parse(raw)
        if self.meta.get("multiple"):
            return tuple(raw)
        return raw


def _base_type(annotation: Any) -> Any:
    """The type without `| None`."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _nested(annotation: Any) -> type | None:
    base = _base_type(annotation)
    return base if dataclasses.is_dataclass(base) else None


def options_of(cls: type, *, skip: tuple[str, ...] = (), prefix: tuple[str, ...] = (),
               note: str | None = None) -> list[Option]:
    """Every option of a config (nested configs flattened), less the dotted paths in `skip`. The options of a nested
    config that may be None carry that field's docstring as their note."""
    hints = typing.get_type_hints(cls)
    found: list[Option] = []
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        if ".".join(path) in skip or (f.metadata.get("cli") or {}).get("omit"):
            continue
        nested = _nested(hints[f.name])
        if nested is not None:
            optional = f.default is None
            found.extend(options_of(nested, skip=skip, prefix=path,
                                    note=field_docs(cls).get(f.name) if optional else note))
        else:
            found.append(Option(path, cls, f, hints[f.name], note))
    return found


def config_options(cls: type, *, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one click option per field of `cls` (see the module docstring)."""

    def decorate(fn: Callable) -> Callable:
        for option in reversed(options_of(cls, skip=skip)):
            fn = option.click_option()(fn)
        return fn

    return decorate


def build_config(cls: type, values: dict[str, Any], *, skip: tuple[str, ...] = (), given: set[str] | None = None,
                 start_from: dict[str, Any] | None = None, **fixed: Any) -> Any:
    """An instance of `cls` from the parsed options (`values`, keyed by `Option.param`); `fixed` sets top-level
    fields directly. A nested config that may be None (`PoolingConfig | None = None`) is built only when one of its
    options is among the `given` params (those typed on the command line, `given_params()`); from the instance
    `start_from` holds for its dotted path, when there is one, with only the options typed changed (`project`: the
    basis's own pooling, so that `--max-length` alone does not bring the profile defaults of the other options)."""
    flags = {(o.owner.__name__, o.field.name): o.flag for o in options_of(cls, skip=skip)}
    try:
        return _build(cls, values, (), skip, fixed, given, start_from or {})
    except ConfigError as e:
        flag = flags.get((e.owner, e.field))
        if flag is None:
            raise
        raise AutoskillError(f"{flag}: {e.problem}") from None


def _build(cls: type, values: dict[str, Any], prefix: tuple[str, ...], skip: tuple[str, ...],
           fixed: dict[str, Any], given: set[str] | None, start_from: dict[str, Any], base: Any = None) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        if not prefix and f.name in fixed:
            kwargs[f.name] = fixed[f.name]
            continue
        if ".".join(path) in skip or (f.metadata.get("cli") or {}).get("omit"):
            continue
        nested = _nested(hints[f.name])
        if nested is not None:
            optional = f.default is None
            params = {param for o in options_of(nested, prefix=path) for param in o.params}
            if optional and not (given is not None and params & given):
                continue
            kwargs[f.name] = _build(nested, values, path, skip, {}, given, start_from, start_from.get(".".join(path)))
            continue
        option = Option(path, cls, f, hints[f.name])
        if base is not None and not (given is not None and set(option.params) & given):
            kwargs[f.name] = getattr(base, f.name)  # not typed: the starting instance's
            continue
        if option.param in values:
            try:
                kwargs[f.name] = option.value(values[option.param])
            except ConfigError:
                raise
            except AutoskillError as e:  # a parser's message ("cannot read '1-x' ..."): name the option it read
                raise AutoskillError(f"{option.flag}: {e}") from None
        for param, (alias, value) in zip(option.params[1:], (option.meta.get("aliases") or {}).items()):
            if values.get(param):
                if option.param in _typed(given) and kwargs.get(f.name) != value:
                    raise AutoskillError(f"{option.flag} {values[option.param]} and {alias} contradict each other; "
                                         "give one of them")
                kwargs[f.name] = value
    return cls(**kwargs)


def _typed(given: set[str] | None) -> set[str]:
    """The params typed: `given`, else those of the running click command (none outside one)."""
    if given is not None:
        return given
    return given_params() if click.get_current_context(silent=True) is not None else set()


def given_params() -> set[str]:
    """The params of the running click command that were typed on the command line (not defaults)."""
    ctx = click.get_current_context()
    return {name for name in ctx.params if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE}


def flag_of(cls: type, dotted: str) -> str:
    """The flag of one field (for messages that name an option)."""
    for option in options_of(cls):
        if ".".join(option.path) == dotted:
            return option.flag
    raise KeyError(dotted)
