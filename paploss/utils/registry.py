"""A Detectron2 registry whose entries are named by an attribute of the class, not its
``__name__``: a config value or setting selects a class by that name (``MODEL.PAPLOSS.LOSS:
pap``, ``search.method: ppo``)."""

from typing import Any, ClassVar

from fvcore.common.registry import Registry  # Detectron2's Registry, without loading torch

__all__ = ["NamedRegistry"]


class NamedRegistry(Registry):
    """A :class:`Registry` whose entries are registered under their :attr:`NAME_ATTRIBUTE`.

    Subclass it with the attribute a kind of entry names itself by::

        class HeadLossRegistry(NamedRegistry):
            NAME_ATTRIBUTE = "loss_name"
    """

    #: The class attribute that holds an entry's name.
    NAME_ATTRIBUTE: ClassVar[str] = "NAME"

    def register(self, obj: Any = None) -> Any:
        """Register a class under its name attribute; as a decorator or a call, like any
        registry."""
        if obj is None:
            return self.register
        name = getattr(obj, self.NAME_ATTRIBUTE, "")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{obj.__name__} needs a {self.NAME_ATTRIBUTE} to be registered")
        self._do_register(name, obj)
        return obj
