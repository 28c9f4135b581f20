"""``Trainer``: Detectron2's ``DefaultTrainer`` with COCO evaluation, complete checkpoints and an
exact resume."""

import logging
import os
from typing import Any, Dict, List, Optional

import torch
from detectron2.data import build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine.train_loop import HookBase
from detectron2.evaluation import COCOEvaluator

from paploss.data import ensure_dataset_files
from paploss.data.mapper import build_train_mapper
from paploss.engine.extensions import optimizer_builder
from paploss.engine.hooks import RandomStateHook
from paploss.engine.sampler import ResumableTrainingSampler

__all__ = ["Trainer", "fast_coco_eval_available", "train_and_evaluate"]

logger = logging.getLogger(__name__)

#: Attribute of a train loader built by :meth:`Trainer.build_train_loader` holding its sampler.
_SAMPLER_ATTRIBUTE = "resumable_sampler"


def fast_coco_eval_available() -> bool:
    """Whether Detectron2's compiled COCOeval (``use_fast_impl=True``) is built."""
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return hasattr(_C, "COCOevalAccumulate")


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` that evaluates with COCO AP, resumes exactly and builds the optimizer a
    project registered for its meta-architecture.

    Checkpoints always hold the model, the optimizer (incl. momentum buffers), the LR scheduler
    and the iteration; older Detectron2 releases leave the optimizer out of ``DefaultTrainer``'s
    state, which is detected at run time and added. They also hold what the data stream and the
    random numbers need to continue where they were (:class:`~paploss.engine.hooks.
    RandomStateHook` with the :class:`~paploss.engine.sampler.ResumableTrainingSampler` of
    :meth:`build_train_loader`), so a run resumed with ``--resume`` from a checkpoint ends with
    the weights of a run that was never interrupted (under the conditions of
    :mod:`paploss.engine.sampler`). A subclass whose ``build_train_loader`` builds another loader
    resumes weights, optimizer and schedule only.
    """

    @classmethod
    def build_optimizer(cls, cfg, model):
        """The optimizer a project registered for ``MODEL.META_ARCHITECTURE``
        (:func:`paploss.engine.extensions.register_optimizer`), else Detectron2's."""
        builder = optimizer_builder(cfg.MODEL.META_ARCHITECTURE)
        if builder is None:
            return super().build_optimizer(cfg, model)
        return builder(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        ensure_dataset_files(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),  # box, mask AP
            distributed=True,
            output_dir=output_folder,
            use_fast_impl=fast_coco_eval_available(),
        )

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's train loader with a :class:`ResumableTrainingSampler` (Detectron2's
        ``TrainingSampler`` that can start part-way; other ``DATALOADER.SAMPLER_TRAIN`` values
        get Detectron2's own sampler and no exact resume)."""
        return cls.build_resumable_train_loader(cfg, seed=None)

    @classmethod
    def build_resumable_train_loader(cls, cfg, seed: Optional[int]) -> Any:
        """The train loader of :meth:`build_train_loader` with shuffling seed ``seed`` (None: a
        random seed shared by all processes, as Detectron2's default)."""
        for name in cfg.DATASETS.TRAIN:
            ensure_dataset_files(name)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        sampler = ResumableTrainingSampler(len(dataset), seed=seed)
        loader = build_detection_train_loader(
            cfg, dataset=dataset, sampler=sampler, mapper=build_train_mapper(cfg)
        )
        setattr(loader, _SAMPLER_ATTRIBUTE, sampler)
        return loader

    @property
    def train_sampler(self) -> Optional[ResumableTrainingSampler]:
        """The sampler of the training data, when it can resume part-way (else None)."""
        return getattr(self._trainer.data_loader, _SAMPLER_ATTRIBUTE, None)

    def build_hooks(self) -> List[HookBase]:
        """Detectron2's hooks with a :class:`RandomStateHook` before the checkpointer."""
        kept = super().build_hooks()
        sampler = self.train_sampler
        if sampler is None:
            logger.info("the training data has no resumable sampler: a resume is not exact")
            return kept
        return self.insert_before_checkpointer(
            kept, [RandomStateHook(sampler, self.cfg.SOLVER.IMS_PER_BATCH)]
        )

    @staticmethod
    def insert_before_checkpointer(kept: List[HookBase], extra: List[HookBase]) -> List[HookBase]:
        """``kept`` with ``extra`` inserted before the periodic checkpointer (so that their state
        is current when it saves, and a hook that stops the run does so before another
        checkpoint)."""
        position = next(
            (i for i, h in enumerate(kept) if isinstance(h, hooks.PeriodicCheckpointer)),
            len(kept),
        )
        return kept[:position] + extra + kept[position:]

    def train(self):
        """Train (see ``DefaultTrainer.train``) with TorchScript graph optimisation off.

        TorchScript functions (e.g. Detectron2's focal loss) switch to an optimised graph after
        their first calls, which rounds differently: the first iterations of a resumed process
        would then differ from the same iterations of a process that ran from the start.
        """
        with torch.jit.optimized_execution(False):
            return super().train()

    def state_dict(self) -> dict:
        state = super().state_dict()
        if "_trainer" not in state:  # the inner trainer holds the optimizer state
            state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict and "_trainer" not in super().state_dict():
            self._trainer.load_state_dict(state_dict["_trainer"])


def train_and_evaluate(cfg, resume: bool = False) -> Dict[str, Dict[str, float]]:
    """Train ``cfg`` (single process) and evaluate on ``cfg.DATASETS.TEST``.

    Returns:
        Detectron2's results dict, e.g. ``{"bbox": {"AP": ..., "AP50": ..., "AP75": ...}}``
        (one level deeper, keyed by dataset, when several test sets are given).
    """
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    results = trainer.train()  # the evaluation hook runs at the last iteration
    if not results:  # resumed after the last iteration: nothing was trained or evaluated
        results = Trainer.test(cfg, trainer.model)
    return dict(results)
