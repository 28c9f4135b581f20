"""The heads whose losses paploss replaces, by their ``MODEL.PAPLOSS`` subtree names.

Defined here, with no torch or Detectron2 import, so that code that only needs the names (the
search space, settings, reports) stays cheap to import; :mod:`paploss.modeling.config` builds the
config subtrees of the built-in heads from :data:`PAP_HEADS`.

A Detectron2 project that trains the PAP loss in a head of its own (a ``MODEL.PAPLOSS.<HEAD>``
subtree with the layout of the built-in ones: ``FUNCTIONS.{H1,H2,I1,I2,I3}`` and ``GRAD_SCALE``)
registers it, with the meta-architecture whose models have it, when it is imported::

    register_pap_heads("PAPDeformableDETR", ("DETR",))

The search space then accepts the head (:func:`pap_heads`) and finds it in a config of that
meta-architecture (:func:`architecture_heads`, read by
:func:`paploss.search.spaces.heads_from_config`).
"""

import re
from typing import Dict, Optional, Sequence, Tuple

__all__ = [
    "BUILT_IN_ARCHITECTURES",
    "PAP_HEADS",
    "architecture_heads",
    "pap_heads",
    "register_pap_heads",
    "registered_architectures",
]

#: paploss's own heads with a subtree of ``MODEL.PAPLOSS`` (their own PAP functions, gradient
#: scale and baseline settings), in the order of the search space.
PAP_HEADS = ("RETINANET", "RPN", "ROI_HEADS")

#: Meta-architectures whose heads paploss itself finds in a config
#: (:func:`paploss.search.spaces.heads_from_config`); projects cannot register them.
BUILT_IN_ARCHITECTURES = ("PAPRetinaNet", "GeneralizedRCNN")

_HEAD_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: Meta-architecture → its PAP-loss heads, as projects registered them (registration order).
_ARCHITECTURE_HEADS: Dict[str, Tuple[str, ...]] = {}


def register_pap_heads(meta_architecture: str, heads: Sequence[str]) -> None:
    """Declare the PAP-loss heads of models of ``meta_architecture`` (a project's, on import).

    Registering the same heads again is a no-op (a module imported twice).

    Args:
        meta_architecture: the ``MODEL.META_ARCHITECTURE`` name of the project's model.
        heads: the model's ``MODEL.PAPLOSS`` subtrees holding searched functions and λ, in
            search-space order (upper-case names, e.g. ``("DETR",)``).

    Raises:
        ValueError: for a bad name, no heads, a built-in meta-architecture, or other heads for a
            meta-architecture registered before.
    """
    heads = tuple(heads) if not isinstance(heads, str) else (heads,)
    if not isinstance(meta_architecture, str) or not meta_architecture:
        raise ValueError(f"meta_architecture must be a name, got {meta_architecture!r}")
    if meta_architecture in BUILT_IN_ARCHITECTURES:
        raise ValueError(f"{meta_architecture} is one of paploss's own meta-architectures")
    if not heads or len(set(heads)) != len(heads):
        raise ValueError(f"heads of {meta_architecture} must be distinct names, got {list(heads)}")
    bad = [h for h in heads if not isinstance(h, str) or not _HEAD_NAME.match(h)]
    if bad:
        raise ValueError(f"head names must be upper-case config keys (e.g. 'DETR'), got {bad}")
    known = _ARCHITECTURE_HEADS.get(meta_architecture)
    if known is not None and known != heads:
        raise ValueError(
            f"{meta_architecture} is registered with heads {list(known)}, not {list(heads)}"
        )
    _ARCHITECTURE_HEADS[meta_architecture] = heads


def pap_heads() -> Tuple[str, ...]:
    """Every known head in search-space order: :data:`PAP_HEADS`, then registered heads in the
    order they were first registered."""
    names = list(PAP_HEADS)
    for heads in _ARCHITECTURE_HEADS.values():
        names += [head for head in heads if head not in names]
    return tuple(names)


def architecture_heads(meta_architecture: str) -> Optional[Tuple[str, ...]]:
    """The heads a project registered for ``meta_architecture``, or None."""
    return _ARCHITECTURE_HEADS.get(meta_architecture)


def registered_architectures() -> Tuple[str, ...]:
    """The meta-architectures projects registered heads for (for messages)."""
    return tuple(_ARCHITECTURE_HEADS)
