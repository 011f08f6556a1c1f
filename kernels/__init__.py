"""Triton kernels of ligo_fast, installed as ``ligo_fast.kernels`` (setuptools ``package_dir``).

``expand``: the LiGO growth operator's forward and backward kernels and their launchers; ``tuning``: launch
configurations. The custom ops that wrap them live in :mod:`ligo_fast.triton_ops`.
"""
