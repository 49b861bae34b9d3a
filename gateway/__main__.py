"""``python -m gateway [OPTIONS]``: same as ``synchuman serve gateway``."""

from __future__ import annotations

import argparse
import sys

import gateway.main
from services.common.arguments import run_checked
from synchuman.logs import configure_logging

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m gateway", description="ReconstructionService gateway")
    parser.add_argument("--log-level", default="INFO")
    gateway.main.add_arguments(parser)
    parsed = parser.parse_args()
    configure_logging(parsed.log_level)
    sys.exit(run_checked(gateway.main, parser, parsed))
