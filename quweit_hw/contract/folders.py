"""Output folders written atomically: filled in a temporary sibling, renamed into place at the end.

The new folder gets the user's umask (a replaced folder keeps its own mode), and a replaced
folder's entries that the writer does not own (`keep`) move into the new one, so `--force`
never deletes a file the tool did not write.
"""

import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError


def _umask():
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def output_folder_problem(path):
    """Why `path` cannot be an output folder (created or replaced), or None."""
    text = str(path)
    if text == "":
        return "expected a folder path, got ''"
    target = Path(os.path.realpath(path))
    cwd = Path(os.path.realpath(os.getcwd()))
    if target == cwd or target in cwd.parents:
        return f"output folder {text!r} is the current folder or one above it; choose a folder below it"
    if target.exists() and not target.is_dir():
        return f"output folder {text!r} is a file, not a folder"
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"cannot create output folder {text!r}: {str(ancestor)!r} is a file"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create output folder {text!r}: no permission to write in {str(ancestor)!r}"
    return None


def check_output_folder(path, force=False):
    """UserError unless `path` can be written as an output folder (exists only with force)."""
    problem = output_folder_problem(path)
    if problem:
        raise UserError(problem)
    if Path(path).exists() and not force:
        raise UserError(f"output folder {str(path)!r} exists (use --force to replace it)")


def _mkdtemp(prefix, parent, mode):
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))  # 0700 whatever the umask
    os.chmod(tmp, mode)
    return tmp


def _swap(path, new):
    """Replace folder `path` by folder `new` (two renames; an interrupt between them puts the
    old folder back)."""
    old = _mkdtemp(f".{path.name}.old.", path.parent, 0o700)
    try:
        os.replace(path, old)
    except BaseException:
        os.rmdir(old)
        raise
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)  # the previous folder back where it was
        raise
    shutil.rmtree(old)


@contextmanager
def atomic_folder(path, *, force=False, keep=()):
    """Yield a temporary sibling folder to fill; on success it replaces `path` in one rename.

    An existing `path` is an error unless force=True; then the entries of the old folder named
    in `keep` (a predicate on names: the files this writer does not own) are copied into the
    new one, unless it wrote an entry of that name. On any error or interrupt nothing is left
    behind and an existing `path` is untouched.
    """
    check_output_folder(path, force)
    shown, path = str(path), Path(os.path.abspath(path))
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o777 & ~_umask()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _mkdtemp(f".{path.name}.", path.parent, mode | stat.S_IRWXU)  # writable while filled
    except OSError as e:
        raise UserError(f"cannot create output folder {shown!r}: {e.strerror}") from None
    try:
        yield tmp
        os.chmod(tmp, mode)
        if path.exists():
            for entry in path.iterdir():
                if keep and keep(entry.name) and not os.path.lexists(tmp / entry.name):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, tmp / entry.name, symlinks=True)
                    else:
                        shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
            _swap(path, tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
