"""`import rlft`, `import reward_models` and `rlft --help` stay light: no torch, trl, deepspeed or wandb."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "trl", "deepspeed", "wandb", "transformers", "datasets", "peft", "accelerate")


@pytest.mark.parametrize(
    "code",
    [
        "import rlft, reward_models, rlft.config, rlft.pipeline, rlft.stages.sft, rlft.data",
        "import rlft.stages.dpo, rlft.stages.kto, rlft.reference, rlft.sweep",
        "from rlft.cli import build_parser; build_parser().format_help()",
        "import rlft.config_reference as r; r.pipeline_schema(); [r.field_docs(r.config_class(k)) for k in r.reference_names()]",
    ],
)
def test_light_imports(code):
    check = f"import sys; {code}; heavy = [m for m in {HEAVY!r} if m in sys.modules]; assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", check], check=True)
