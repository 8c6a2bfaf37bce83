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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any

#: `object.__new__`: an instance with every slot still empty.
new = object.__new__


def setters(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of the frozen, slotted dataclass `cls`, in field order."""
    names = [f.name for f in fields(cls)]
    if list(getattr(cls, "__slots__", ())) != names:
        raise TypeError(f"{cls.__name__}: its slots are not exactly its fields")
    return tuple(getattr(cls, name).__set__ for name in names)
