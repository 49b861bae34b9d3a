"""Container entry point: run the command, keep its output one JSON object per line.

    python json_logs.py COMMAND [ARG ...]

The services log JSON lines (``synchuman.logs``), but not everything a process writes is theirs: console
lines of the CLI, third-party warnings, tracebacks, gRPC's C core. This wrapper runs ``COMMAND`` with stdout
and stderr piped, passes every line that already is a JSON object through unchanged, and turns every other
non-empty line (``\\r``-separated progress bars included) into
``{"ts": ..., "level": "info", "logger": "stdout"|"stderr", "msg": LINE}``, all on its stdout, so
``docker compose logs`` holds nothing but JSON lines. SIGTERM, SIGINT and SIGHUP are forwarded to the command;
the exit status is the command's (128 + N when it died of signal N).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO

_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def as_json_line(line: str, stream: str) -> str:
    """``line`` unchanged when it is a JSON object, else a JSON object carrying it as ``msg``."""
    if line.startswith("{"):
        try:
            if isinstance(json.loads(line), dict):
                return line
        except ValueError:
            pass
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
    return json.dumps({"ts": stamp, "level": "info", "logger": stream, "msg": line}, ensure_ascii=False)


def relay(source: IO[bytes], stream: str, lock: threading.Lock) -> None:
    """Copy ``source`` to stdout line by line through :func:`as_json_line` until it closes."""
    pending = b""
    while chunk := source.read1(65536):  # type: ignore[attr-defined]
        *lines, pending = _LINE_BREAK.split(pending + chunk)
        _write(lines, stream, lock)
    _write([pending], stream, lock)


def _write(lines: list[bytes], stream: str, lock: threading.Lock) -> None:
    texts = [line.decode("utf-8", "replace").rstrip() for line in lines]
    out = [as_json_line(text, stream) for text in texts if text.strip()]
    if out:
        with lock:
            sys.stdout.write("\n".join(out) + "\n")
            sys.stdout.flush()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: json_logs.py COMMAND [ARG ...]", file=sys.stderr)
        return 2
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        print(as_json_line(f"cannot start {argv[0]}: {exc}", "stderr"), flush=True)
        return 127
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda number, _frame: child.send_signal(number))
    lock = threading.Lock()
    relays = [
        threading.Thread(target=relay, args=(pipe, name, lock), daemon=True)
        for pipe, name in ((child.stdout, "stdout"), (child.stderr, "stderr"))
    ]
    for thread in relays:
        thread.start()
    status = child.wait()
    for thread in relays:
        thread.join(timeout=5.0)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
