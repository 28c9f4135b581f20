"""What a Detectron2 project registers with paploss's engine when it is imported.

paploss loads configs and builds optimizers for any meta-architecture; a project whose model
needs more registers it here, once, at import time (never the other way round: paploss does not
import projects):

* **config keys**: :func:`register_config_extension` adds a project's ``add_*_config`` function;
  :func:`paploss.engine.load_config` calls it after ``add_paploss_config`` for every config whose
  ``MODEL.META_ARCHITECTURE`` is one of the function's meta-architectures (or for every config,
  without any), so the search's controller, its screening and its trials load the project's keys
  like Detectron2's own;
* **optimizer**: :func:`register_optimizer` names the function that builds a meta-architecture's
  optimizer; :class:`paploss.engine.Trainer` (and so every proxy training of a search) uses it
  instead of Detectron2's SGD;
* **class counts**: :func:`register_class_count_keys` names the config keys of a
  meta-architecture's class counts, which the start-up data check
  (:func:`paploss.engine.validate_config_data`) compares with the datasets' categories as it does
  Detectron2's own (``MODEL.RETINANET.NUM_CLASSES``, ``MODEL.ROI_HEADS.NUM_CLASSES``).

A search imports the project's modules in the controller and in every trial process (search
setting ``model.imports``), which is what makes these registrations visible there. Example
(``projects/DeformableDETR``)::

    register_config_extension(add_deformable_detr_config, meta_architectures=["PAPDeformableDETR"])
    register_optimizer("PAPDeformableDETR", build_optimizer)
    register_class_count_keys("PAPDeformableDETR", ["MODEL.DEFORMABLE_DETR.NUM_CLASSES"])
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "ConfigExtension",
    "OptimizerBuilder",
    "class_count_keys",
    "config_extensions",
    "optimizer_builder",
    "register_class_count_keys",
    "register_config_extension",
    "register_optimizer",
]

#: ``fn(cfg)``: adds keys to a Detectron2 ``CfgNode`` in place (safe to call twice).
ConfigExtension = Callable[[Any], None]
#: ``fn(cfg, model) -> torch.optim.Optimizer``.
OptimizerBuilder = Callable[[Any, Any], Any]

#: (function, meta-architectures or None for all), in registration order.
_CONFIG_EXTENSIONS: List[Tuple[ConfigExtension, Optional[Tuple[str, ...]]]] = []
_OPTIMIZERS: Dict[str, OptimizerBuilder] = {}
_CLASS_COUNT_KEYS: Dict[str, Tuple[str, ...]] = {}


def register_config_extension(
    fn: ConfigExtension, *, meta_architectures: Optional[Sequence[str]] = None
) -> None:
    """Have :func:`paploss.engine.load_config` call ``fn(cfg)`` after adding paploss's keys.

    Registering the same function again is a no-op (a module imported twice).

    Args:
        fn: adds the project's keys to a config (it must tolerate being called on a config that
            has them already).
        meta_architectures: the ``MODEL.META_ARCHITECTURE`` values whose configs get the keys
            (as the config file chain and the overrides set it); None: every config. Restricting
            it keeps the project's keys out of other models' configs (and their dumps, which a
            search compares across processes).

    Raises:
        ValueError: if ``fn`` is not callable, or was registered with other meta-architectures.
    """
    if not callable(fn):
        raise ValueError(f"a config extension must be a function, got {fn!r}")
    architectures = None if meta_architectures is None else tuple(meta_architectures)
    if architectures is not None and (
        not architectures or not all(isinstance(a, str) and a for a in architectures)
    ):
        raise ValueError(f"meta_architectures must be names, got {meta_architectures!r}")
    for known, known_architectures in _CONFIG_EXTENSIONS:
        if known is fn:
            if known_architectures != architectures:
                raise ValueError(
                    f"{_name(fn)} is registered for {known_architectures}, not {architectures}"
                )
            return
    _CONFIG_EXTENSIONS.append((fn, architectures))


def config_extensions(meta_architecture: Optional[str] = None) -> Tuple[ConfigExtension, ...]:
    """The registered config extensions that apply to configs of ``meta_architecture`` (None:
    those registered for every config), in registration order."""
    return tuple(
        fn
        for fn, architectures in _CONFIG_EXTENSIONS
        if architectures is None or meta_architecture in architectures
    )


def register_optimizer(meta_architecture: str, builder: OptimizerBuilder) -> None:
    """Build the optimizer of ``meta_architecture``'s models with ``builder(cfg, model)``.

    Registering the same builder again is a no-op.

    Raises:
        ValueError: for a bad name or builder, or another builder registered for the name.
    """
    if not isinstance(meta_architecture, str) or not meta_architecture:
        raise ValueError(f"meta_architecture must be a name, got {meta_architecture!r}")
    if not callable(builder):
        raise ValueError(f"an optimizer builder must be a function, got {builder!r}")
    known = _OPTIMIZERS.get(meta_architecture)
    if known is not None and known is not builder:
        raise ValueError(
            f"{meta_architecture} already builds its optimizer with {_name(known)}, "
            f"not {_name(builder)}"
        )
    _OPTIMIZERS[meta_architecture] = builder


def optimizer_builder(meta_architecture: str) -> Optional[OptimizerBuilder]:
    """The optimizer builder registered for ``meta_architecture``, or None (Detectron2's)."""
    return _OPTIMIZERS.get(meta_architecture)


def register_class_count_keys(meta_architecture: str, keys: Sequence[str]) -> None:
    """Declare the config keys of ``meta_architecture``'s class counts (e.g.
    ``["MODEL.DEFORMABLE_DETR.NUM_CLASSES"]``), checked against the datasets at start-up.

    Registering the same keys again is a no-op.

    Raises:
        ValueError: for a bad name or keys, or other keys registered for the name.
    """
    if not isinstance(meta_architecture, str) or not meta_architecture:
        raise ValueError(f"meta_architecture must be a name, got {meta_architecture!r}")
    if isinstance(keys, str) or not all(isinstance(k, str) and k for k in keys) or not keys:
        raise ValueError(f"keys must be a list of config keys, got {keys!r}")
    keys = tuple(keys)
    known = _CLASS_COUNT_KEYS.get(meta_architecture)
    if known is not None and known != keys:
        raise ValueError(f"{meta_architecture} already has the class-count keys {list(known)}")
    _CLASS_COUNT_KEYS[meta_architecture] = keys


def class_count_keys(meta_architecture: str) -> Optional[Tuple[str, ...]]:
    """The class-count keys registered for ``meta_architecture``, or None."""
    return _CLASS_COUNT_KEYS.get(meta_architecture)


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
