"""Ahead-of-time compiled forwards: a model exported with ``torch.export`` and compiled by AOTInductor into a
``.pt2`` package that later processes load without tracing or compiling anything.

:class:`AotCompiledModel` wraps a model: its first call looks for a package made for exactly this situation
in a directory (named by a digest of :func:`package_key`: torch version, device type and capability, the
arguments' shapes and dtypes, the model's class, config and weights files, the attention backend and whether
FlashAttention-3 is installed) and loads it, or exports and compiles the model on these arguments (minutes on
a GPU) and saves the package there. Experimental: on an H200 (torch 2.11, CUDA 13) a freshly built package of
the stage-1 diffusion model killed the process on its first run (a native crash). So this process loads a
package only once it is verified: a child process (:mod:`synchuman.pipelines.package_verifier`) loaded it,
ran one forward on the example arguments and matched the eager output; the verification is recorded next to
the package (``.verified.json``), so restarts load it without a child. A package that does not load, or
whose stored key differs from the expected one, is reported in the log and rebuilt; where exporting,
compiling, verifying or running it fails, the error is logged and noted, and the model is exported with SDPA
instead of FlashAttention-3 or, last, run through ``torch.compile``. Later calls run the package; a call with
other shapes than the package was made for runs the eager model (with a warning), never a mismatched package.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synchuman.pipelines.package_verifier import VERIFY_TIMEOUT_S, PackageVerificationError, verify_in_child

log = logging.getLogger(__name__)

PACKAGE_SUFFIX = ".pt2"
KEY_SUFFIX = ".key.json"
FAILED_SUFFIX = ".failed.txt"
VERIFIED_SUFFIX = ".verified.json"
#: Modules the verification child imports before loading a package: the custom attention operators
#: (FlashAttention-3's) that a package may call are registered by importing them.
CHILD_IMPORTS = ("synchuman.nn.attention",)
#: A half-written package older than this was left by a killed process (a build takes minutes).
STALE_PARTIAL_S = 3600.0


def files_identity(folder: Path) -> str:
    """``name:size:mtime_ns`` of every file directly in ``folder`` (sorted), plus a content hash of its small
    files (configs): changes whenever a weights file is replaced, without reading gigabytes."""
    parts = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = path.stat()
        part = f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"
        if stat.st_size < 1 << 20:
            part += ":" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        parts.append(part)
    return ";".join(parts)


def _tensor_signature(value: Any) -> str:
    """``dtype[shape]@device`` of a tensor; ``repr`` of anything else (baked into the export)."""
    if isinstance(value, torch.Tensor):
        return f"{value.dtype}{list(value.shape)}@{value.device.type}"
    return repr(value)


def call_signature(args: tuple[Any, ...]) -> list[str]:
    """What a package is specialised to: every positional argument's dtype, shape and device type."""
    return [_tensor_signature(a) for a in args]


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda sm_{major}{minor} {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return device.type


def _attention_description() -> str:
    from synchuman.nn import attention

    fa3 = attention.FLASH_ATTENTION3
    return f"backend={attention.get_attention_backend()} flash_attn3={fa3!r}"


def structure_digest(model: nn.Module) -> str:
    """A digest of ``model``'s module classes and every parameter's and buffer's name, dtype and shape:
    changes when layers are swapped (e.g. for FP8 ones) even if the checkpoint is the same."""
    parts = [f"{name}:{type(module).__qualname__}" for name, module in model.named_modules()]
    tensors = [*model.named_parameters(), *model.named_buffers()]
    parts += [f"{name}:{tensor.dtype}{list(tensor.shape)}" for name, tensor in tensors]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def package_key(model: nn.Module, args: tuple[Any, ...], weights_identity: str) -> dict[str, Any]:
    """Everything a compiled package depends on; a package is only loaded where its key is equal."""
    param = next(model.parameters())
    config = getattr(model, "config", None)
    return {
        "torch": torch.__version__,
        "device": _device_description(param.device),
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": json.dumps(dict(config), sort_keys=True, default=str) if config is not None else None,
        "weights_dtype": str(param.dtype),
        "structure": structure_digest(model),
        "weights": weights_identity,
        "arguments": call_signature(args),
        "attention": _attention_description(),
    }


def key_digest(key: Mapping[str, Any]) -> str:
    """A short stable name for ``key`` (16 hex digits)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomically(path: Path, write: Any) -> None:
    """``write(temporary_path)`` then rename onto ``path``: readers never see half a file."""
    # the suffix stays last: AOTInductor insists on a name ending in .pt2
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.partial.", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide the package from other users of the volume
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def remove_stale_partials(path: Path, older_than_s: float = STALE_PARTIAL_S) -> None:
    """Delete half-written packages for ``path`` left by a process killed while building (e.g. by a start-up
    probe): they can be as large as the package. Recent ones may still be written by another process."""
    for partial in path.parent.glob(f".{path.stem}.partial.*{path.suffix}"):
        with contextlib.suppress(OSError):
            if time.time() - partial.stat().st_mtime > older_than_s:
                partial.unlink()
                log.info("removed a half-written package", extra={"path": str(partial)})


def build_package(model: nn.Module, args: tuple[Any, ...], path: Path) -> None:
    """Export ``model(*args)`` and compile it with AOTInductor into the package ``path`` (atomically)."""
    from torch._inductor import aoti_compile_and_package

    with torch.inference_mode(False), torch.no_grad():
        # arguments made under inference_mode are inference tensors, which tracing cannot use
        example = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        exported = torch.export.export(model, example)

        def write(temporary: Path) -> None:
            aoti_compile_and_package(exported, package_path=str(temporary))

        _write_atomically(path, write)


def load_package(path: Path, device: torch.device) -> Any:
    """The callable compiled model of the package ``path``, on ``device``."""
    from torch._inductor import aoti_load_package

    index = device.index if device.type == "cuda" and device.index is not None else -1
    return aoti_load_package(str(path), device_index=index)


def _export_attention_backends() -> list[str | None]:
    """Attention backends to export with, in order: the configured one (``None``), then SDPA where
    FlashAttention-3 may be chosen (its operator might not export, compile or run in a package here)."""
    from synchuman.nn import attention

    may_use_fa3 = attention.get_attention_backend() in ("auto", "flash_attn3")
    if attention.FLASH_ATTENTION3 is not None and may_use_fa3:
        return [None, "sdpa"]
    return [None]


class AotCompiledModel:
    """``model``'s forward through an AOTInductor package in ``directory`` (see the module docstring).

    Attributes other than calling are the eager model's (``sample_size``, ``config``, ...). ``source`` says
    how this process runs it: ``"loaded"`` or ``"built"`` (a package), ``"torch.compile"``, or ``None`` before
    the first call. A package is loaded here only after a child process verified it (or a ``.verified.json``
    record says one did): ``verify_command`` is the child's argv prefix (default: this Python running
    :mod:`~synchuman.pipelines.package_verifier`), ``verify_timeout_s`` its time limit. Where exporting,
    compiling, verifying or the first run of a package fails, the error is logged and kept in a
    ``.failed.txt`` note next to where the package would be (later starts of the same setup skip it); the next
    attempt exports with SDPA instead of FlashAttention-3 (where that was used), the last resort is
    ``torch.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        directory: Path,
        name: str,
        weights_identity: str,
        verify_command: Sequence[str] | None = None,
        verify_timeout_s: float = VERIFY_TIMEOUT_S,
    ) -> None:
        self.model, self.directory, self.name = model, Path(directory), name
        self.weights_identity = weights_identity
        self.verify_command, self.verify_timeout_s = verify_command, verify_timeout_s
        self.source: str | None = None
        self.package_path: Path | None = None
        self._runner: Any = None
        self._signature: list[str] | None = None
        #: packages that failed in this process (also noted on disk where the directory is writable)
        self._failed: set[Path] = set()

    def __getattr__(self, attribute: str) -> Any:
        if attribute == "model":  # not set yet (during unpickling/copying): no recursion
            raise AttributeError(attribute)
        return getattr(self.model, attribute)

    def __call__(self, *args: Any) -> Any:
        if self._runner is None:
            self._signature = call_signature(args)
            return self._first_call(args)
        if call_signature(args) != self._signature:
            log.warning(
                "compiled model called with other arguments than its package was made for: running eager",
                extra={"package": str(self.package_path), "arguments": call_signature(args)},
            )
            return self.model(*args)
        return self._runner(*args)

    def _first_call(self, args: tuple[Any, ...]) -> Any:
        """Find, load or build the package and run it; a package that fails to run is noted, the next one
        tried."""
        while True:
            self._runner = self._load_or_build(args)
            if self.source == "torch.compile":
                return self._runner(*args)
            try:
                return self._runner(*args)
            except Exception as error:  # e.g. an operator the package cannot call on this machine
                assert self.package_path is not None
                self._note_failure(self.package_path, error, "running it")

    def _paths(self, key: Mapping[str, Any]) -> tuple[Path, Path]:
        """The package and its key file for ``key``."""
        stem = self.directory / f"{self.name}-{key_digest(key)}"
        return Path(f"{stem}{PACKAGE_SUFFIX}"), Path(f"{stem}{KEY_SUFFIX}")

    @staticmethod
    def _note_path(package: Path) -> Path:
        return package.with_name(package.name.removesuffix(PACKAGE_SUFFIX) + FAILED_SUFFIX)

    @staticmethod
    def _record_path(package: Path) -> Path:
        return package.with_name(package.name.removesuffix(PACKAGE_SUFFIX) + VERIFIED_SUFFIX)

    def _note_failure(self, package: Path, error: BaseException, during: str) -> None:
        """Log ``error`` and keep it in the package's failure note (later starts skip this setup)."""
        note = self._note_path(package)
        self._failed.add(package)
        text = f"{during}: {type(error).__name__}: {error}"
        log.error(
            f"ahead-of-time compiled model unusable ({text[:2000]}); delete the note to try again",
            extra={"package": str(package), "note": str(note)},
        )
        with contextlib.suppress(OSError):
            note.write_text(text + "\n")

    def _load_or_build(self, args: tuple[Any, ...]) -> Any:
        """A runner for ``args``: the first attention backend whose package loads or builds, else
        ``torch.compile`` (``self.source`` says which)."""
        from synchuman.nn.attention import attention_backend

        for backend in _export_attention_backends():
            with attention_backend(backend) if backend else contextlib.nullcontext():
                runner = self._load_or_build_package(args)
            if runner is not None:
                return runner
        log.error("no usable ahead-of-time compiled package: using torch.compile (compiles now, minutes)")
        self.source = "torch.compile"
        return torch.compile(self.model)

    def _load_or_build_package(self, args: tuple[Any, ...]) -> Any:
        """The package for ``args`` and the current attention backend, loaded or built, verified in a child
        process before this one loads it; ``None`` when it failed before (its note) or fails now."""
        key = package_key(self.model, args, self.weights_identity)
        path, key_path = self._paths(key)
        self.package_path = path
        fields = {"package": str(path), "attention": key["attention"]}
        if path in self._failed or self._note_path(path).is_file():
            log.warning(
                "ahead-of-time compiling failed before for this setup: skipping it",
                extra={**fields, "note": str(self._note_path(path))},
            )
            return None
        if path.is_file():
            problem = self._package_problem(key, key_path)
            if problem is None:
                try:
                    runner = self._verified_runner(path, key, args, fields)
                except PackageVerificationError as error:
                    if not error.unloadable:
                        self._note_failure(path, error, "verifying it")
                        return None
                    problem = str(error)  # a truncated or foreign file: rebuild it
                else:
                    self.source = "loaded"
                    return runner
            log.warning(f"compiled model package unusable: {problem}; rebuilding it", extra=fields)
        else:
            log.warning(
                "no compiled model package for this model, device and software: exporting and compiling it "
                "ahead of time (minutes on a GPU); later starts load it",
                extra=fields,
            )
        started = time.perf_counter()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(path)
            self._record_path(path).unlink(missing_ok=True)
            build_package(self.model, args, path)
            _write_atomically(key_path, lambda p: p.write_text(json.dumps(key, indent=1, sort_keys=True)))
        except Exception as error:  # export or AOTInductor cannot handle something in this model/setup
            self._note_failure(path, error, "exporting and compiling it")
            return None
        seconds, size = round(time.perf_counter() - started, 1), path.stat().st_size
        log.info("compiled model package built", extra={**fields, "seconds": seconds, "bytes": size})
        try:
            runner = self._verified_runner(path, key, args, fields)
        except PackageVerificationError as error:
            self._note_failure(path, error, "verifying the new package")
            return None
        self.source = "built"
        return runner

    def _verified_runner(
        self, path: Path, key: Mapping[str, Any], args: tuple[Any, ...], fields: dict[str, str]
    ) -> Any:
        """The package ``path`` loaded in this process, once a child process verified it (now, unless its
        record says it was). :class:`PackageVerificationError` when the child fails or the package does not
        load (``unloadable``: the child or this process could not load it; a rebuild may help)."""
        if not self._is_verified(path, key):
            self._verify(path, key, args, fields)
        started = time.perf_counter()
        try:
            runner = load_package(path, next(self.model.parameters()).device)
        except Exception as error:
            raise PackageVerificationError(
                f"could not be loaded ({type(error).__name__}: {error})", unloadable=True
            ) from error
        seconds = round(time.perf_counter() - started, 2)
        log.info("compiled model package loaded", extra={**fields, "seconds": seconds})
        return runner

    def _verify(
        self, path: Path, key: Mapping[str, Any], args: tuple[Any, ...], fields: dict[str, str]
    ) -> None:
        """Run the package once in a child process against this model's eager output on ``args``; record the
        success next to the package (raises :class:`PackageVerificationError` otherwise)."""
        log.info(
            "verifying the compiled model package in a child process (it loads the package and runs one "
            "forward; this process loads only verified packages)",
            extra=fields,
        )
        device = next(self.model.parameters()).device
        with torch.no_grad():
            expected = self.model(*args)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # room for the child's copy of the weights
        report = verify_in_child(
            path, args, expected, device, CHILD_IMPORTS, self.verify_command, self.verify_timeout_s
        )
        log.info("compiled model package verified", extra={**fields, **report})
        stat = path.stat()
        record = {"key": key_digest(key), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, **report}
        with contextlib.suppress(OSError):  # a read-only volume: verified again by the next start
            text = json.dumps(record, indent=1, sort_keys=True)
            _write_atomically(self._record_path(path), lambda p: p.write_text(text))

    def _is_verified(self, path: Path, key: Mapping[str, Any]) -> bool:
        """A verification record for exactly this package file (key, size and modification time) exists."""
        try:
            record = json.loads(self._record_path(path).read_text())
            stat = path.stat()
        except (OSError, ValueError):
            return False
        wanted = {"key": key_digest(key), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return isinstance(record, dict) and all(record.get(k) == v for k, v in wanted.items())

    @staticmethod
    def _package_problem(key: Mapping[str, Any], key_path: Path) -> str | None:
        """Why the package next to ``key_path`` must not be used, or ``None``."""
        try:
            stored = json.loads(key_path.read_text())
        except (OSError, ValueError) as error:
            return f"its key file {key_path.name} is missing or unreadable ({type(error).__name__})"
        if stored != dict(key):
            differing = sorted(k for k in set(stored) | set(key) if stored.get(k) != key.get(k))
            return f"made for another setup (differs in {', '.join(differing)})"
        return None
