"""Building frozen, slotted dataclass instances on the busiest paths, without their __init__.

A frozen dataclass's generated __init__ stores each field through `object.__setattr__`, looked
up and called once per field; for the ten-odd fields of a transcript entry that is most of the
cost of the object. `setters(cls)` returns each field's slot setter in declaration order, and a
hot path that builds one kind of object (a chat entry, a chat frame decoded) calls them directly:

    _ENTRY = setters(TranscriptEntry)
    entry = new(TranscriptEntry); _ENTRY[0](entry, seq); ...   # every field, in order

The object is the same as the constructor's (equal, hashable, still frozen to its users). A
maker must set every field: `setters` refuses a class whose slots are not exactly its fields,
and each maker has a test that compares it with the constructor field by field.

`maker(cls)` goes further, for the objects made once per chat message on every hop: a function
of every field, in order, that fills the slots of an unfrozen twin of `cls` (a subclass that
adds no slot, so the same memory layout) with plain attribute stores, then gives the object its
real class.
Each slot setter above is a C call of its own (about 50 ns); a store is a bytecode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

#: `object.__new__`: an instance with every slot still empty.
new = object.__new__


def maker(cls: type) -> Callable[..., Any]:
    """`cls(*fields)` for the frozen, slotted dataclass `cls` (see the module docstring)."""
    names = [f.name for f in fields(cls)]
    if list(getattr(cls, "__slots__", ())) != names:
        raise TypeError(f"{cls.__name__}: its slots are not exactly its fields")
    # A subclass adding no slot has its layout; only its own stores are not frozen. (Not a
    # sibling: `Frame.__subclasses__()` and `TunnelEvent.__subclasses__()` list the real kinds.)
    twin = type(
        f"_Unfrozen{cls.__name__}",
        (cls,),
        {"__slots__": (), "__setattr__": object.__setattr__, "__delattr__": object.__delattr__},
    )
    params = ", ".join(f"_{i}" for i in range(len(names)))
    stores = "".join(f"    obj.{name} = _{i}\n" for i, name in enumerate(names))
    namespace: dict[str, Any] = {"_new": new, "_twin": twin, "_cls": cls}
    exec(  # noqa: S102 - generated from the field names only
        f"def make({params}):\n    obj = _new(_twin)\n{stores}    obj.__class__ = _cls\n"
        "    return obj\n",
        namespace,
    )
    make: Callable[..., Any] = namespace["make"]
    make.__qualname__ = make.__name__ = f"make_{cls.__name__}"
    make(*([None] * len(names)))  # a layout Python will not swap raises TypeError here, not later
    return make


def setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of the frozen, slotted dataclass `cls`, in field order."""
    names = [f.name for f in fields(cls)]
    if list(getattr(cls, "__slots__", ())) != names:
        raise TypeError(f"{cls.__name__}: its slots are not exactly its fields")
    return tuple(getattr(cls, name).__set__ for name in names)
