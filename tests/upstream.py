"""Where the tests find the checkpoints the seeds' own code wrote (read in place, never copied).

``<project root>/../shared/upstream`` (``RST_UPSTREAM`` names another folder); when
``RST_UPSTREAM_EXTRA`` is set, every folder below it with the same layout too. A case that needs
such a file skips when it is absent, except in CI (``CI=true``): CI runs with shared/ beside its
clone, so a missing seed file there FAILS (as a missing chromium does).
"""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = Path(os.environ.get("RST_UPSTREAM") or ROOT.parent / "shared" / "upstream")
EXTRA = Path(os.environ["RST_UPSTREAM_EXTRA"]) if os.environ.get("RST_UPSTREAM_EXTRA") else None
EXTRAS = sorted(p.name for p in EXTRA.iterdir() if (p / "expected.pt").is_file()
                and (p / "checkpoint.pth").is_file()) if EXTRA and EXTRA.is_dir() else []


def seed_folder(name: str) -> Path:
    """The folder of seed checkpoint ``name`` (checkpoint.pth, expected.pt): skips the calling
    test when it is absent, fails it in CI."""
    folder = (EXTRA if name in EXTRAS else UPSTREAM) / name
    if not (folder / "checkpoint.pth").is_file():
        what = f"{folder / 'checkpoint.pth'} absent (the seeds' checkpoints live beside the project)"
        if os.environ.get("CI"):  # CI has shared/ beside its clone: missing is a failure
            pytest.fail(f"{what} in CI")
        pytest.skip(what)
    return folder
