"""Small helpers shared by the packages of paploss (no Detectron2, no torch).

* :mod:`paploss.utils.imports`: importing the modules a search names, with one-line errors.
* :mod:`paploss.utils.io`: atomic file writes that survive a crash or a kill.
* :mod:`paploss.utils.validation`: checks of plain setting and config values (integers and
  numbers that are not bools), with messages naming the key.
"""
