"""The inputs of the ``ligo-fast`` commands, read and checked: the small model, the large config, the tokenizer,
the training text. Every problem is a :class:`UserError` with one line naming the file and what is wrong.

- :func:`load_small`: a local HF directory: ``config.json`` (a JSON object; ``architectures`` a list naming a
  supported class; sizes positive integers; types as the config class declares them), its weights (every weight
  present, of the config's shapes; a damaged or truncated file refused);
- :func:`load_large_config`: a JSON object of config fields, the rest inherited from the small config
  (:func:`ligo_fast.large_config`); fields the config class does not know are refused (a misspelt ``hiden_size``
  would otherwise grow nothing), unless the small model's own ``config.json`` has them too (then dropped);
  per-layer attention kinds (``layer_types``, Gemma 3's sliding window or full) follow the layers they grow from
  unless given;
- :func:`text_files`: the ``--data`` files; binary files are refused when named, skipped with a warning when
  found in a directory.

Imports torch, transformers, ligo_fast's public API (``supported_classes``, ``config``'s checks,
``init.grown_layer_types``), ``.data`` and ``.errors``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import transformers

import ligo_fast
from ligo_fast.config import model_config_from_dict, unknown_config_keys

from . import data
from .errors import UserError

logger = logging.getLogger(__name__)

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
MASKED_SUFFIXES = ("ForMaskedLM",)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")


def describe(e: BaseException) -> str:
    """One line for an exception: its message's lines joined."""
    text = " ".join(x.strip() for x in str(e).strip().splitlines() if x.strip())
    return text or type(e).__name__


def read_json(path: Path, what: str) -> dict:
    """The JSON object of config fields in ``path``; invalid JSON or anything but an object is a :class:`UserError`
    naming ``what``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what}: not valid JSON ({describe(e)})") from e
    except RecursionError as e:  # arrays or objects nested thousands deep
        raise UserError(f"{what}: not a config (JSON nested too deeply)") from e
    if not isinstance(raw, dict):
        raise UserError(f"{what}: expected a JSON object of config fields, got {type(raw).__name__}")
    return raw


# ---------------------------------------------------------------------------------------------- small model
def load_small(path: str, dtype: torch.dtype = torch.float32):
    """(model, task) from a local HF directory; task is ``causal``, ``masked`` or ``other``."""
    d = Path(path)
    if not d.is_dir():
        raise UserError(f"--small {path}: no such directory")
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"--small {path}: no config.json (expected a directory written by save_pretrained)")
    raw = read_json(cfg_file, f"--small {cfg_file}")
    names = raw.get("architectures")
    if not names:
        raise UserError(f"--small {cfg_file}: names no architectures, so the model class is unknown")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise UserError(f"--small {cfg_file}: architectures must be a list of class names, got {names!r}")
    name = names[0]
    supported = ligo_fast.supported_classes()
    if name not in supported or not hasattr(transformers, name):
        raise UserError(f"unsupported model class {name}; ligo_fast grows: {', '.join(supported)}")
    cls = getattr(transformers, name)
    try:
        config = model_config_from_dict(cls.config_class, raw)
    except ValueError as e:
        raise UserError(f"--small {cfg_file}: {e}") from e
    for key, near in unknown_config_keys(config):
        hint = f" (did you mean {near!r}?)" if near else ""
        logger.warning("--small %s: %s is not a %s field and is ignored%s", cfg_file, key, type(config).__name__, hint)
    _check_readable(d, path)
    try:
        model, info = cls.from_pretrained(
            str(d), config=config, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except Exception as e:  # noqa: BLE001 - a damaged file fails in safetensors, torch or transformers alike
        raise UserError(f"--small {path}: cannot load the {name} weights ({describe(e)})") from e
    _check_loading(info, path, name)
    task = "causal" if name.endswith(CAUSAL_SUFFIXES) else "masked" if name.endswith(MASKED_SUFFIXES) else "other"
    return model, task


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")  # weights, shards and their index


def _check_readable(d: Path, path: str) -> None:
    """Every weight file of ``d`` can be opened: transformers reports an unreadable one as missing."""
    for f in sorted(d.iterdir()):
        if f.suffix in WEIGHT_SUFFIXES and f.is_file():
            try:
                open(f, "rb").close()
            except OSError as e:
                raise UserError(f"--small {path}: cannot read {f.name} ({describe(e)})") from e


def _check_loading(info: dict, path: str, name: str) -> None:
    """Refuse weights that do not fit the config (HF would re-initialise them at random, with a log line only)."""
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: m[0])
    if mismatched:
        k, *shapes = mismatched[0]
        got = f": {tuple(shapes[0])} in the file, {tuple(shapes[1])} from config.json" if len(shapes) == 2 else ""
        raise UserError(f"--small {path}: the weights do not match config.json ({k}{got})")
    missing = info.get("missing_keys") or []
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"--small {path}: the {name} weights lack {sorted(missing)[0]}{more}")


# ---------------------------------------------------------------------------------------------- large config
def load_large_config(path: str, small_config):
    """The large HF config from a JSON file; fields it lacks come from ``small_config`` (see the module doc)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--large-config {path}: no such file")
    given = read_json(p, f"--large-config {path}")
    mt = given.get("model_type")
    try:
        if mt is not None and mt != small_config.model_type:
            # another family: build it as given and let grow() explain why it does not fit
            cls = type(transformers.AutoConfig.for_model(mt))
            cfg = model_config_from_dict(cls, given)
        else:
            cfg = ligo_fast.large_config(small_config, **given)
    except ValueError as e:
        raise UserError(f"--large-config {path}: {e}") from e
    return cfg


# ---------------------------------------------------------------------------------------------- tokenizer, data
def load_tokenizer(small_dir: str):
    """The small model's tokenizer when its directory holds one, else None (byte-level tokens)."""
    if not any((Path(small_dir) / f).is_file() for f in TOKENIZER_FILES):
        return None
    try:
        return transformers.AutoTokenizer.from_pretrained(small_dir)
    except Exception as e:  # noqa: BLE001 - damaged tokenizer files fail in many ways
        raise UserError(f"--small {small_dir}: cannot load its tokenizer ({describe(e)})") from e


def text_files(paths: list[str]) -> list[Path]:
    """The training files of ``--data``: a named file must be text; a directory's binary files are skipped with a
    warning (:func:`data.text_problem` decides)."""
    files: list[Path] = []
    skipped: list[Path] = []
    for s in paths:
        try:
            found = data.collect_files([s])
        except (FileNotFoundError, data.DataError) as e:
            raise UserError(f"--data {e}") from e
        except OSError as e:  # an unreadable directory: the user's input, exit 2
            raise UserError(f"--data {s}: cannot read it ({describe(e)})") from e
        for f in found:
            try:
                problem = data.text_problem(f)
            except OSError as e:  # unreadable (permissions, I/O): the user's input, exit 2
                raise UserError(f"--data {f}: cannot read it ({describe(e)})") from e
            if problem is None:
                files.append(f)
            elif Path(s).is_file():
                raise UserError(f"--data {s}: not a text file ({problem}); give text files only")
            else:
                skipped.append(f)
    if not files:
        also = f" ({len(skipped)} binary file(s) skipped)" if skipped else ""
        raise UserError(f"--data {' '.join(paths)}: no text files found{also}")
    if skipped:
        names = ", ".join(map(str, skipped[:3])) + (", ..." if len(skipped) > 3 else "")
        logger.warning("--data: skipped %d binary file(s): %s", len(skipped), names)
    return files


def check_vocab(stream: torch.Tensor, tokenizer, vocab_size: int) -> None:
    """A user error when the token stream holds an id the model's vocabulary lacks."""
    top = int(stream.max())
    if top >= vocab_size:
        what = "byte-level tokens (no tokenizer in --small) need" if tokenizer is None else "the tokenizer needs"
        raise UserError(f"{what} token id {top}, but the model's vocab_size is {vocab_size}")
