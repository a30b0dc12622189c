"""Safe persistence of agent checkpoints: plain data and tensors only, atomic writes.

A checkpoint is a ``dict`` of tensors, state dicts, numbers, strings and JSON-able settings,
written with :func:`torch.save` and read back with ``torch.load(weights_only=True)``, which
refuses to unpickle anything else: a file that would run code when loaded (a pickled
``nn.Module``, a payload calling ``os.system``) is refused with a :class:`ValueError` naming the
file, the offending global and the opt-in (``trust_pickle=True``, ``subset-rl eval
--trust-pickle``) for files the user trusts.

Every checkpoint carries a SHA-256 digest of its contents (``torch.save`` files have no checksum
of their own: a flipped bit in a tensor loads silently), so corrupt, truncated, foreign or
incomplete files are told apart and reported in one line, also as a :class:`ValueError`.

Writes go to a temporary file in the destination folder (named
``.<name>.<pid>.<random>.subset_rl-tmp``), are flushed and ``fsync``-ed, then renamed over the
destination with :func:`os.replace`, and the folder is ``fsync``-ed: a reader sees the old file
or the new one, never a partial one. A process killed mid-write (SIGKILL) leaves its temporary
file behind; :func:`remove_stale_temporaries` deletes those of dead processes, and
:func:`recover_checkpoint_dir` (called when training starts) also makes ``last.pt`` equal to
the newest ``step_N.pt`` again when a kill fell between the two writes.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import math
import os
import pickle
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "TRUST_PICKLE_HINT",
    "atomic_save",
    "atomic_write",
    "digest",
    "link_latest",
    "load_untrusted",
    "read_checkpoint",
    "recover_checkpoint_dir",
    "remove_stale_temporaries",
    "save_checkpoint",
]

CHECKPOINT_FORMAT = "subset_rl.agent"
"""Value of the ``format`` key of every agent checkpoint."""

CHECKPOINT_VERSION = 2
"""Version 2: plain data only (version 1 pickled the policy ``nn.Module``)."""

TRUST_PICKLE_HINT = (
    "if you trust this file, pass trust_pickle=True (subset-rl eval --trust-pickle)"
)
"""The explicit opt-in named by every refusal."""

TEMP_SUFFIX = ".subset_rl-tmp"
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+" + re.escape(TEMP_SUFFIX)
                      + "$")
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")

REQUIRED: dict[str, type | tuple[type, ...]] = {
    "class": str,
    "config": dict,
    "policy": dict,
    "policy_state": dict,
    "optimizer_state": dict,
    "generator_state": torch.Tensor,
    "torch_rng_state": torch.Tensor,
    "num_steps": int,
    "num_timesteps": int,
    "best_reward": torch.Tensor,
    "best_action": (torch.Tensor, type(None)),
    "obs_dim": int,
    "n": int,
    "k": int,
    "extra": dict,
    "sha256": str,
}
"""The keys of a version 2 checkpoint and their types."""


# ------------------------------------------------------------------------------------------------
# Digest
# ------------------------------------------------------------------------------------------------
def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _feed(h, key)
            _feed(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for item in obj:
            _feed(h, item)
    elif obj is None or isinstance(obj, (bool, int, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, float):
        h.update(f"float:{obj.hex() if math.isfinite(obj) else repr(obj)};".encode())
    elif isinstance(obj, torch.Size):
        _feed(h, tuple(obj))
    else:
        raise TypeError(
            f"a checkpoint holds tensors and plain data only, found {type(obj).__name__}"
        )


def digest(state: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents (every key but ``sha256``), tensors byte by byte."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def _temp_name(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/file system allows it
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Calls ``write(fh)`` on a temporary file in ``path``'s folder, ``fsync``, renames it.

    The temporary file is removed when the write fails (an exception, ``KeyboardInterrupt``);
    after SIGKILL, :func:`remove_stale_temporaries` removes it on the next start.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_name(path), suffix=TEMP_SUFFIX)
    with _replacing(path, tmp), os.fdopen(fd, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`atomic_write`: readers see the old file or the new one."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Adds the digest to an agent state and writes it with :func:`atomic_save`."""
    state = dict(state)
    state["sha256"] = digest(state)
    atomic_save(state, path)


def link_latest(source: str | os.PathLike, latest: str | os.PathLike) -> None:
    """Makes ``latest`` the same file as ``source`` atomically (a hard link, else a copy)."""
    source, latest = Path(source), Path(latest)
    tmp = latest.parent / f"{_temp_name(latest)}{secrets.token_hex(4)}{TEMP_SUFFIX}"
    with _replacing(latest, tmp):
        try:
            os.link(source, tmp)
        except OSError:  # no hard links on this file system
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())


@contextlib.contextmanager
def _replacing(target: Path, tmp: str | os.PathLike) -> Iterator[None]:
    """Renames ``tmp`` over ``target`` when the block succeeds (then fsyncs the folder); removes
    ``tmp`` if it fails, so no temporary file outlives a failed or interrupted write."""
    try:
        yield
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(target.parent)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Deletes the temporary files of :func:`atomic_save` left by processes that are gone.

    Only files named ``.<name>.<pid>.<random>.subset_rl-tmp`` whose ``pid`` is not a running
    process are removed (those of a concurrent writer are left alone).

    Returns:
        The removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP_RE.match(entry.name)
        if match is None or not entry.is_file() or _alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _same_contents(a: Path, b: Path) -> bool:
    try:
        return filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def recover_checkpoint_dir(folder: str | os.PathLike, latest: str = "last.pt") -> list[Path]:
    """Repairs a checkpoint folder after a crash; called when training starts.

    Removes stale temporary files (:func:`remove_stale_temporaries`) and, when ``latest`` is
    missing or equals an older ``step_N.pt`` (the process died between writing the newest step
    and linking ``latest`` to it), links ``latest`` to the newest ``step_N.pt``. A ``latest``
    that equals no step file is left alone.

    Returns:
        The removed temporary files.
    """
    folder = Path(folder)
    removed = remove_stale_temporaries(folder)
    if not folder.is_dir():
        return removed
    steps = sorted(
        (int(m.group(1)), folder / m.group(0))
        for m in (_STEP_RE.match(p.name) for p in folder.iterdir()) if m
    )
    if not steps:
        return removed
    newest, older = steps[-1][1], [p for _, p in steps[:-1]]
    last = folder / latest
    if not last.exists():
        link_latest(newest, last)
        return removed
    with contextlib.suppress(OSError):
        # last.pt is normally a hard link: compare inodes first, contents only without links
        if os.path.samefile(last, newest):
            return removed
        if any(os.path.samefile(last, p) for p in older):
            link_latest(newest, last)
            return removed
    if not _same_contents(last, newest) and any(_same_contents(last, p) for p in older):
        link_latest(newest, last)
    return removed


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def _one_line(err: BaseException, limit: int = 160) -> str:
    text = " ".join(str(err).split())
    text = text or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch_detail(err: BaseException) -> str:
    """The informative part of torch's multi-paragraph ``weights_only`` error, on one line."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("\n\n", 1)[0]
    else:
        kept = [p for p in text.split("\n\n") if p.strip() and not p.lstrip().startswith(
            ("Weights only load failed", "Check the documentation", "Please file an issue"))]
        text = kept[0] if kept else text
    return _one_line(RuntimeError(text))


def _refused_global(err: BaseException) -> str | None:
    """The global a ``weights_only`` load refused, or ``None`` when the error is another one."""
    match = re.search(r"GLOBAL ([\w.]+)", str(err))
    return match.group(1) if match else None


def load_untrusted(path: str | os.PathLike, *, trust_pickle: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True`` unless ``trust_pickle``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file needs arbitrary unpickling (naming the global and the opt-in), or
            it is truncated or corrupt; the message names the file and fits on one line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        name = _refused_global(err)
        if name is not None and not trust_pickle:
            raise ValueError(
                f"{path}: refused to load: it holds pickled Python objects ({name}) that could "
                f"run code when loaded, not just tensors and plain data; {TRUST_PICKLE_HINT}"
            ) from None
        raise ValueError(
            f"{path} is truncated or corrupt, not a readable torch checkpoint "
            f"(unpickling failed: {_torch_detail(err)})"
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged file can fail in any part of the reader
        if os.path.getsize(path) == 0:
            raise ValueError(f"{path} is empty (0 bytes): not a checkpoint") from None
        raise ValueError(
            f"{path} is truncated or corrupt, not a readable torch checkpoint "
            f"({type(err).__name__}: {_one_line(err)})"
        ) from None


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Reads and checks an agent checkpoint (on the CPU).

    Args:
        path: the file.
        trust_pickle: allow a file that needs arbitrary unpickling (a version 1 checkpoint,
            which pickled the policy module); only for files you trust, as unpickling can run
            any code.

    Returns:
        The state: for version 2, a dict with the keys of :data:`REQUIRED`, its digest checked.

    Raises:
        FileNotFoundError: no such file.
        ValueError: refused (pickled objects), truncated, corrupt (digest mismatch), foreign
            (not a subset_rl agent checkpoint) or incomplete (missing keys, wrong types); the
            message names the file and what is wrong.
    """
    state = load_untrusted(path, trust_pickle=trust_pickle)
    if not isinstance(state, dict) or (
        state.get("format") != CHECKPOINT_FORMAT and state.get("version") != 1
    ):
        found = f"a dict with keys {sorted(map(str, state))[:6]}" if isinstance(state, dict) \
            else f"a {type(state).__name__}"
        raise ValueError(f"{path} is not a subset_rl agent checkpoint (found {found})")
    version = state.get("version")
    if version == 1:  # only readable with trust_pickle: the policy module is pickled
        if not trust_pickle:  # pragma: no cover - weights_only refuses the module first
            raise ValueError(f"{path}: a version 1 checkpoint; {TRUST_PICKLE_HINT}")
        return state
    if version != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} is a subset_rl agent checkpoint of version {version!r}; this subset_rl "
            f"reads version {CHECKPOINT_VERSION}"
        )
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise ValueError(
            f"{path} is an incomplete subset_rl agent checkpoint: missing key(s) "
            f"{', '.join(map(repr, missing))}"
        )
    wrong = [
        f"{key!r} is a {type(state[key]).__name__}" for key, kind in REQUIRED.items()
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool))
    ]
    if wrong:
        raise ValueError(f"{path} is a damaged subset_rl agent checkpoint: {'; '.join(wrong)}")
    try:
        actual = digest(state)
    except TypeError as err:
        raise ValueError(f"{path} is a damaged subset_rl agent checkpoint: {err}") from None
    if actual != state["sha256"]:
        raise ValueError(
            f"{path} is corrupt: its contents do not match the SHA-256 digest stored in it "
            "(a damaged or edited file)"
        )
    return state
