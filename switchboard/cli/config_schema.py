"""`switchboard config-schema`: print the JSON Schema of the configuration file, for editors and CI checks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from switchboard.shared.config.schema import json_schema


def register(commands: Any) -> None:
    parser = commands.add_parser("config-schema", help="print the JSON Schema of the configuration file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0
