"""Reading YAML: `yaml.safe_load` (no Python objects, ever), with YAML 1.2's floats.

PyYAML follows YAML 1.1, where a float needs a dot: `3e-4` is the *string* "3e-4", which a trainer
then fails on far from the config (`learning_rate: 3e-4` is how everyone writes a learning rate).
`safe_load` here reads `3e-4`, `1E5`, `-2e+3` as floats, and nothing else differently.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader plus YAML 1.2 floats written without a dot (`3e-4`)."""


SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def safe_load(text: str) -> Any:
    """`yaml.safe_load(text)`, with `3e-4` read as a float."""
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 - a subclass of yaml.SafeLoader
