"""The growth-savings experiment: does growing a small pretrained model (LiGO, stacking) save training compute
against training the large model from scratch? One module per concern, imported in this order:

- ``presets``: sizes, budgets, seeds, the methods; ``corpus``: the text and its byte tokens; ``models``: the
  causal LMs; ``flops``: analytic FLOP accounting; ``schedule``: the learning-rate schedules (grown models'
  included); ``train``: the training/evaluation loop; ``results``: what a run measured and the cost to a target
  loss; ``run``: :func:`run.run_experiment`, the pipeline; ``aggregate``: several seeds and budgets summed up;
  ``report``: tables, verdict, plots, JSON; ``axes``: the axis-separated runs in one table.

The command line is :mod:`ligo_fast.apps.demo`. Modules here import ``ligo_fast.apps``' ``data``, ``progress`` and
``training.update`` and ligo_fast's public API (``grow``, ``materialize``, ``budget``), nothing else of ligo_fast.
"""
