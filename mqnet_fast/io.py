"""File writes and reads that cannot leave a torn, foreign or silently edited file behind.

Writes are atomic: a temporary file in the same folder, fsync, then rename, so a crash or Ctrl-C
leaves either the old file or the new one. New files follow the umask (a replaced file keeps its
mode), and a path that is a directory, a link or a special file (a device, a FIFO) is refused
instead of replaced.

Sealed files (`save_sealed`, `load_sealed`) are what the engine reads back: each carries the
identity of what wrote it (the experiment, the run, the round) and the sha256 of its content, both
checked on load. A seal detects a file copied from another experiment, edited by hand or damaged;
it is a checksum, not a signature (whoever edits a file on purpose can recompute it).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path


class RunFileError(ValueError):
    """A file that cannot be read or written as the engine needs it; the message names the file, what
    is wrong and what to do."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its type where the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _umask() -> int:
    """This process's umask, read without changing it where Linux shows it (os.umask sets it to
    read it, which another thread creating a file at that moment would see)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output_path(path: str | Path, what: str, *, inputs: tuple = ()) -> Path:
    """`path` as a file this process may create or replace: not empty, not a directory, a link or a
    special file, not one of `inputs`, in a folder that is a folder. Raises RunFileError naming `what`."""
    if str(path) == "":
        raise RunFileError(f"{what} is empty; give the path of the file to write")
    path = Path(path)
    if path.is_symlink():
        raise RunFileError(f"{what} {str(path)!r} is a symbolic link; give the path of a regular file (it is never "
                           "replaced through a link)")
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise RunFileError(f"{what} {str(path)!r} is a directory; give the path of the file to write")
        if not stat.S_ISREG(mode):
            raise RunFileError(f"{what} {str(path)!r} is a special file (a device, a FIFO or a socket); only a "
                               "regular file or a new path is written")
        for given in inputs:
            if given is not None and Path(given).exists() and os.path.samefile(path, given):
                raise RunFileError(f"{what} {str(path)!r} is the input file {str(given)!r}; writing it would "
                                   "destroy the input: give another path")
    check_parents(path, what, RunFileError)
    return path


def check_parents(path: Path, what: str, error: type[Exception]) -> None:
    """Raise `error` where the nearest existing folder above `path` is a file."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise error(f"{what} {str(path)!r}: {str(parent)!r} is a file, not a folder")
            return


@contextmanager
def _atomic(path: str | Path, mode: str):
    path = check_output_path(path, "file")
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        for folder in created:  # a failed write leaves no empty folders behind
            try:
                folder.rmdir()
            except OSError:
                break
        raise _write_error(path, err) from None
    try:
        # mkstemp creates 0600; the file gets the mode a plain open() would give it
        keep = path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask()
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, keep)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(path, err) from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_error(path: Path, err: OSError) -> RunFileError:
    return RunFileError(f"cannot write {str(path)!r}: {err.strerror or first_line(err)}{write_hint(err)}")


def write_hint(err: OSError) -> str:
    """What to do about a failed write, by its cause."""
    import errno

    if err.errno == errno.ENOSPC:
        return (" (the disk is full: free space, then rerun the same command; a run resumes after its last "
                "completed round)")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return " (the folder is not writable by this process: write elsewhere, or fix its permissions)"
    return ""


def _unchanged(path: Path, data: bytes) -> bool:
    """Whether `path` already holds exactly `data` (a resume rewrites nothing it does not change, so
    a finished run can be resumed in a read-only folder)."""
    try:
        return path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def atomic_write_bytes(path, data: bytes) -> None:
    if _unchanged(Path(path), data):
        return
    with _atomic(path, "wb") as f:
        f.write(data)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")


def atomic_save_npz(path, **arrays) -> None:
    import numpy as np

    with _atomic(path, "wb") as f:  # streamed: a large array is not held twice
        np.savez(f, **arrays)


def atomic_torch_save(path, obj) -> None:
    atomic_write_bytes(path, _serialized(obj))


def read_json(path):
    """A JSON file's value; RunFileError (naming the file) where it is not readable JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunFileError(f"{str(path)!r} is not a readable JSON file ({first_line(err)})") from None


# --------------------------------------------------------------------------------------------------
# Sealed files

SEAL_FORMAT = "mqnet-fast sealed file 1"


def digest_json(obj) -> str:
    """sha256 of a JSON value in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def seal_json(obj: dict) -> dict:
    """`obj` with a "sha256" entry over the rest (a JSON file the engine reads back)."""
    body = {k: v for k, v in obj.items() if k != "sha256"}
    return {**body, "sha256": digest_json(body)}


def unseal_json(path: Path, what: str) -> dict:
    """A JSON file written by `seal_json`, its seal checked and removed."""
    value = read_json(path)
    if not isinstance(value, dict) or "sha256" not in value:
        raise RunFileError(f"{what} {str(path)!r} has no seal: it was written by hand or by a mqnet-fast from before "
                           "run files were sealed; resume it with the version that wrote it, or start a new --run-dir")
    body = {k: v for k, v in value.items() if k != "sha256"}
    if digest_json(body) != value["sha256"]:
        raise RunFileError(f"{what} {str(path)!r} was edited or damaged: its content does not match its sha256; "
                           "restore it, or start a new --run-dir")
    return body


def _serialized(payload) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def payload_digest(payload) -> str:
    """The sha256 `save_sealed` gives `payload` (what a run records of a model it did not save)."""
    return hashlib.sha256(_serialized(payload)).hexdigest()


def save_sealed(path, payload, identity: dict) -> str:
    """torch.save `payload` (tensors, dicts, lists, numbers, strings) sealed with `identity` and the
    sha256 of its bytes, atomically. Returns that sha256 (the file's digest)."""
    import torch

    data = _serialized(payload)
    digest = hashlib.sha256(data).hexdigest()
    atomic_torch_save(path, {"format": SEAL_FORMAT, "identity": identity, "sha256": digest,
                             "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)})
    return digest


def _torch_load(source, path: Path, what: str):
    import torch

    try:
        return torch.load(source, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise RunFileError(f"{what} {str(path)!r} holds pickled objects other than tensors, dicts, lists and numbers, "
                           "which a run never writes; it is not loaded (unpickling it could run code). Delete it to "
                           f"rerun that part from the start. ({first_line(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as err:
        raise RunFileError(f"{what} {str(path)!r} cannot be read ({first_line(err)}): it is truncated or not a file "
                           "the engine wrote; delete it to rerun that part from the start") from None


def read_seal(path: str | Path, what: str) -> dict | None:
    """The seal of a sealed file ({"identity", "sha256", "data": the payload's bytes}), its checksum
    verified; None if `path` is missing."""
    import torch

    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        raise RunFileError(f"{what} {str(path)!r} is not a regular file")
    outer = _torch_load(path, path, what)
    if not isinstance(outer, dict) or outer.get("format") != SEAL_FORMAT:
        raise RunFileError(f"{what} {str(path)!r} has no seal: it was written by something else or by a mqnet-fast "
                           "from before run files were sealed; delete it to rerun that part from the start")
    payload = outer.get("payload")
    if not isinstance(payload, torch.Tensor) or not isinstance(outer.get("identity"), dict):
        raise RunFileError(f"{what} {str(path)!r} has a damaged seal; delete it to rerun that part from the start")
    data = payload.numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != outer.get("sha256"):
        raise RunFileError(f"{what} {str(path)!r} was edited or damaged: its content does not match its sha256; "
                           "delete it to rerun that part from the start")
    return {"identity": outer["identity"], "sha256": outer["sha256"], "data": data}


def seal_payload(seal: dict, path: str | Path, what: str):
    """The payload of a seal `read_seal` returned (torch.load with weights_only=True)."""
    return _torch_load(io.BytesIO(seal["data"]), Path(path), what)


def load_sealed(path: str | Path, identity: dict, what: str) -> tuple[object, str] | None:
    """(payload, sha256) of a file written by `save_sealed` with this `identity`, or None if it is
    missing. A file without a valid seal, edited, damaged, or written for another identity is refused
    (RunFileError naming the file and, for another identity, every field that differs)."""
    seal = read_seal(path, what)
    if seal is None:
        return None
    differs = identity_differences(seal["identity"], identity)
    if differs:
        raise RunFileError(f"{what} {str(path)!r} was written by another experiment or run ({differs}); it is not "
                           "used: move it back where it came from, or delete it to rerun that part")
    return seal_payload(seal, path, what), seal["sha256"]


def identity_differences(there: dict, here: dict, prefix: str = "") -> str:
    """'key: A there, B here' for every (nested) key whose values differ; '' when none does."""
    parts = []
    for key in sorted(set(there) | set(here), key=str):
        a, b = there.get(key), here.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = identity_differences(a, b, f"{prefix}{key}.")
            if inner:
                parts.append(inner)
        elif a != b:
            parts.append(f"{prefix}{key}: {a!r} there, {b!r} here")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------
# .npz inputs

def read_npz(path: str | Path, where: str, error: type[Exception] = RunFileError) -> dict:
    """Every array of an .npz file, read without pickles. Each array's header is read first and the
    total checked against the memory limit (mqnet_fast._memory) before any array is: a header claiming
    364 TiB is refused, not allocated. Raises `error` with a message starting with `where` for a
    missing, empty, truncated or non-.npz file, a single .npy, or an array that needs pickles."""
    import numpy as np

    from mqnet_fast import _memory

    path = Path(path)
    if not path.exists():
        raise error(f"{where}: no such file")
    if not path.is_file():
        raise error(f"{where} is not a regular file")
    if _is_npy(path):
        raise error(f"{where} holds a single array (.npy); expected an .npz of named arrays (np.savez)")
    try:
        headers = _npz_headers(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as err:
        raise error(f"{where} is not a readable .npz file ({first_line(err)})") from None
    for name, (_, dtype) in headers.items():
        if dtype.hasobject:
            raise error(f"{where}: array {name!r} cannot be read without pickles (it holds Python objects); save "
                        "plain numeric arrays")
    total = sum(int(np.prod(shape, dtype=object)) * dtype.itemsize for shape, dtype in headers.values())
    try:
        _memory.check(f"reading its {len(headers)} array(s)", total)
    except _memory.MemoryLimitError as err:
        raise error(f"{where}: {err}") from None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as err:
        raise error(f"{where} is not a readable .npz file ({first_line(err)})") from None


def _npz_headers(path: Path) -> dict:
    """{array name: (shape, dtype)} from the headers of an .npz file's members."""
    import numpy as np

    headers = {}
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if not member.endswith(".npy"):
                continue
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                          else np.lib.format.read_array_header_2_0)
                shape, _, dtype = reader(f)
            headers[member[:-4]] = (shape, dtype)
    return headers


def _is_npy(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(6) == b"\x93NUMPY"
    except OSError:
        return False
