"""Output folders written atomically: filled in a temporary sibling, renamed into place at the end."""

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError


@contextmanager
def atomic_folder(path, *, force=False, keep=()):
    """Yield a temporary sibling folder to fill; on success it replaces `path` in one rename.

    An existing `path` is an error unless force=True; then the entries of the old folder named
    in `keep` (a predicate on names) move into the new one. On any error nothing is left behind.
    """
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"output folder {str(path)!r} exists (use --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            for entry in path.iterdir():
                if keep and keep(entry.name) and not (tmp / entry.name).exists():
                    shutil.copy2(entry, tmp / entry.name) if entry.is_file() else shutil.copytree(entry, tmp / entry.name)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


