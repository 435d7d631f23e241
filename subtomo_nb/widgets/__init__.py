"""Notebook widgets (ipywidgets). No Qt or napari here: they work on machines with no display.
The map/mask offset widget is the viewer's (:mod:`subtomo_nb.viewer.notebook`): widgets and
viewer do not import each other.

* :mod:`subtomo_nb.widgets.forms` -- :class:`~subtomo_nb.widgets.forms.JobForm`, RELION's job windows from the registry.
* :mod:`subtomo_nb.widgets.analysis` -- :class:`~subtomo_nb.widgets.analysis.AnalysisView` of a job's outputs
  (FSC per iteration, resolution and accuracies, map slices).
* :mod:`subtomo_nb.widgets.sweep` -- :class:`~subtomo_nb.widgets.sweep.SweepWidget`, parameter sweeps
  (:func:`subtomo_nb.jobs.sweep.run_sweep`) with a table and a comparison plot.
"""
