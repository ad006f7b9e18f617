"""Plain record classes for the modules every ``-d``/``-e`` run imports.

``@record`` gives a class what ``@dataclasses.dataclass`` gives it here: an ``__init__`` over
the annotated fields (in order, defaults and ``field(default_factory=...)``), ``__eq__``
between instances of the same class, a ``__repr__``, ``__post_init__``, and with
``frozen=True`` no assignment after ``__init__`` and a ``__hash__``. Type checkers read it as
a dataclass (``typing.dataclass_transform``).

Why not ``dataclasses``: importing it imports ``inspect`` (and with it ``ast``, ``dis``,
``tokenize``), about 8 ms, and each decorated class costs about 0.25 ms more to build (its
methods are generated as source and compiled); on a 20-value ``sops -d`` that was an eighth
of the whole run (the performance issue; bench/). Modules off the start-up path keep using
``dataclasses``.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar, dataclass_transform, overload

__all__ = ["record", "field", "FrozenInstanceError"]

_T = TypeVar("_T")
_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (as ``dataclasses.FrozenInstanceError``)."""


class _Field:
    __slots__ = ("default", "factory", "repr")

    def __init__(self, default: Any, factory: Any, repr: bool) -> None:
        self.default, self.factory, self.repr = default, factory, repr


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] = _MISSING,
          repr: bool = True) -> Any:
    """A field's default (``default_factory`` for a fresh mutable value per instance) or
    ``repr=False`` to keep it out of ``repr()``."""
    if default is not _MISSING and default_factory is not _MISSING:
        raise ValueError("cannot specify both default and default_factory")
    return _Field(default, default_factory, repr)


def _is_classvar(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return text.startswith(("ClassVar", "typing.ClassVar"))


def _build(cls: type, frozen: bool) -> type:
    fields: dict[str, _Field] = {}
    for base in reversed(cls.__mro__[1:]):  # fields of record bases come first, as dataclasses
        fields.update(getattr(base, "__record_fields__", {}))
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if _is_classvar(annotation):
            continue
        value = cls.__dict__.get(name, _MISSING)
        spec = value if isinstance(value, _Field) else _Field(value, _MISSING, True)
        if isinstance(value, _Field):
            if value.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
        fields[name] = spec  # a redefined field keeps its place (as in dataclasses)
    names = tuple(fields)
    seen_default = False
    for n, f in fields.items():
        has = f.default is not _MISSING or f.factory is not _MISSING
        if seen_default and not has:
            raise TypeError(f"non-default argument {n!r} follows default argument")
        seen_default = seen_default or has
    specs = tuple(fields.values())
    post_init = getattr(cls, "__post_init__", None)
    setter = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__}() takes {len(names)} positional arguments but "
                            f"{len(args)} were given")
        for name, value in zip(names, args):
            setter(self, name, value)
        for name, spec in zip(names[len(args):], specs[len(args):]):
            if name in kwargs:
                value = kwargs.pop(name)
            elif spec.factory is not _MISSING:
                value = spec.factory()
            elif spec.default is not _MISSING:
                value = spec.default
            else:
                raise TypeError(f"{cls.__name__}() missing required argument: {name!r}")
            setter(self, name, value)
        if kwargs:
            bad = next(iter(kwargs))
            raise TypeError(f"{cls.__name__}() got an unexpected keyword argument {bad!r}"
                            if bad not in names else
                            f"{cls.__name__}() got multiple values for argument {bad!r}")
        if post_init is not None:
            post_init(self)

    def _values(self: Any) -> tuple[Any, ...]:
        return tuple(getattr(self, n) for n in names)

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return _values(self) == _values(other)

    shown = tuple(n for n, f in fields.items() if f.repr)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in shown)
        return f"{type(self).__qualname__}({inner})"

    cls.__init__ = __init__  # type: ignore[misc]
    cls.__eq__ = __eq__  # type: ignore[method-assign, assignment]
    cls.__repr__ = __repr__  # type: ignore[method-assign, assignment]
    cls.__record_fields__ = fields  # type: ignore[attr-defined]
    setattr(cls, "__match_args__", names)
    if frozen:
        def __setattr__(self: Any, name: str, value: Any) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

        def __hash__(self: Any) -> int:
            return hash(_values(self))

        cls.__setattr__ = __setattr__  # type: ignore[method-assign, assignment]
        cls.__delattr__ = __delattr__  # type: ignore[method-assign, assignment]
        cls.__hash__ = __hash__  # type: ignore[method-assign, assignment]
    else:
        cls.__hash__ = None  # type: ignore[assignment]  # mutable and comparable: unhashable
    return cls


@overload
def record(cls: type[_T], /) -> type[_T]: ...
@overload
def record(*, frozen: bool = False) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(field_specifiers=(field,))
def record(cls: Any = None, /, *, frozen: bool = False) -> Any:
    """``@record`` or ``@record(frozen=True)``: see the module's docstring."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)
