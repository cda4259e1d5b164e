"""Small shared helpers: seeds, devices, atomic files, hashing, JSON lines."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from meddistill.errors import ArtifactError, ConfigError, WriteError


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends only on ``parts`` (never on the clock)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device auto")
    return dev


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA with bf16; CPUs with AMX or AVX512-BF16),
    so that bf16 autocast speeds training up; where bf16 is emulated it slows it down."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def machine_info(device: torch.device) -> dict[str, Any]:
    """What computed a result: the device, the CPU's model name and torch's CPU capability
    (AVX2, AVX512 …), whether bf16 is native there, and torch's thread count."""
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["cpu"] = _cpu_model()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["bf16_native"] = bf16_native(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on the given device, or a no-op context."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def config_hash(obj: Any, length: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:length]


def _new_temp_file(path: Path) -> Path:
    """A new empty file next to ``path``, created with the permissions of any new file (0666 less
    the umask, e.g. 0644: artifacts are meant to be shared; ``mkstemp`` would make them 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"no free temporary name next to {path}")


#: errno values of a write that failed for lack of room or permission, not for a bug
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how safetensors' writer reports an OSError


def write_problem(exc: BaseException) -> str | None:
    """Why a write failed, if it failed for lack of room or permission (:data:`WRITE_ERRNOS`),
    else None. Knows OSErrors and the I/O errors of safetensors' writer."""
    if isinstance(exc, OSError):
        return (exc.strerror or str(exc)) if exc.errno in WRITE_ERRNOS else None
    found = _RUST_OS_ERROR.search(str(exc))
    if found and int(found.group(1)) in WRITE_ERRNOS:
        return os.strerror(int(found.group(1)))
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a write that fails for lack of room or permission into a :class:`WriteError`
    naming ``path`` (one line for the user); any other error stays what it is."""
    try:
        yield
    except WriteError:
        raise
    except Exception as exc:
        reason = write_problem(exc)
        if reason is None:
            raise
        raise WriteError(path, reason) from None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; it replaces ``path`` only if the block succeeds.
    The file keeps the temp file's permissions (0666 less the umask) even if the block wrote it
    anew (safetensors writes its own 0600 file and renames it over the temp file). A full disk,
    a read-only file system or a folder that may not be written is a :class:`WriteError`."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(path)
    mode = os.stat(tmp).st_mode & 0o777
    try:
        with writing(path):
            yield Path(tmp)
            if os.stat(tmp).st_mode & 0o777 != mode:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_jsonl_atomic(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Replace a JSON-lines file with ``rows`` (written as :func:`append_jsonl` writes them)."""
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def append_jsonl(path: str | os.PathLike, row: dict[str, Any]) -> None:
    """Append one row; a torn last line (a killed writer) is closed first, so the row stays whole."""
    line = (json.dumps(row, sort_keys=True) + "\n").encode()
    with writing(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not _ends_a_line(path):
            line = b"\n" + line
        with open(path, "ab") as f:
            f.write(line)
            f.flush()


def _ends_a_line(path: str | os.PathLike) -> bool:
    """True unless ``path`` is a readable, seekable file whose last byte is not a newline."""
    try:
        with open(path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except OSError:  # missing, unreadable or not seekable (a pipe): nothing to close
        return True


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file (none if it does not exist); a torn line (a killed writer) is
    skipped; a file that cannot be read as text is an :class:`ArtifactError`. A line that is
    valid JSON but not an object is returned as it is: callers say what a row must hold."""
    rows: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return rows
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{p} cannot be read as a JSON-lines file ({type(exc).__name__})") from None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_json_object(path: str | os.PathLike, fix: str) -> dict[str, Any]:
    """A JSON file holding an object; a corrupt one is an :class:`ArtifactError` that says ``fix``."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is corrupt ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} is corrupt (not a JSON object); {fix}")
    return data


def code_version() -> str:
    from meddistill import __version__

    return __version__
