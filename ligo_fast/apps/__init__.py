"""Applications built on the ligo_fast library: the ``ligo-fast`` command line and the growth-savings experiment.

One floor above the library core (``ligo_fast/*.py``, ``ligo_fast/arch``): modules here import only the core's
public API (``ligo_fast.grow``, ``materialize``, ``load_operator``, ``LiGOConfig``, ``supported_classes``, the
public functions of ``ligo_fast.backends``/``ops``/``info``, the option tuples of ``ligo_fast.config``), never a
``_private`` name; nothing in the core imports them.

- ``data``: text files -> one token stream -> batches (CLI and experiment alike);
- ``progress``: a tqdm bar on a terminal, plain log lines otherwise;
- ``checkpoints``, ``training``: the resumable operator-training run of ``ligo-fast grow``;
- ``outputs``: an output directory's lock and its final outputs with their manifest;
- ``cli``: the ``ligo-fast`` command line (parsing, signals, exit codes; standard library only), ``errors`` its
  exceptions and exit codes, ``commands`` what its commands do, ``inputs`` their inputs, read and checked;
- ``savings``: the growth-savings experiment; ``demo``: its command line (``make demo``).
"""
