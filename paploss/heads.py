"""The heads whose losses paploss replaces, by their ``MODEL.PAPLOSS`` subtree names.

Defined here, with no torch or Detectron2 import, so that code that only needs the names (the
search space, settings, reports) stays cheap to import; :mod:`paploss.modeling.config` builds the
config subtrees from the same tuple.
"""

__all__ = ["PAP_HEADS"]

#: The heads with a subtree of ``MODEL.PAPLOSS`` (their own PAP functions, gradient scale and
#: baseline settings), in the order of the search space.
PAP_HEADS = ("RETINANET", "RPN", "ROI_HEADS")
