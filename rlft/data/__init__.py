"""rlft's data layer: every stage loads its rows through `load_stage_data`.

```python
from rlft.data import DataConfig, load_stage_data

data = load_stage_data(cfg.data, formats=("language_modeling", "prompt_completion"),
                       base_dir=config_dir, rejects_path=stage_dir / "rejects.jsonl",
                       tokenizer=tokenizer)
data.train, data.eval, data.format, data.report
```

Modules: `config` (the `data:` section), `sources` (loading files, folders and hub datasets,
citing rows), `formats` (TRL's dataset formats: detection and row checks), `validate`
(checking loaded rows, the rejects file), `split` (the eval split, decontamination), `curate`
(dedup, near-dedup, identical pairs, length, balance, label flips), `stage` (`load_stage_data`).
Importing this package does not import `datasets`, torch or transformers.
"""

from rlft.data.config import CurateConfig, DataConfig, DataSource, DecontaminateConfig
from rlft.data.formats import FORMATS
from rlft.data.stage import StageData, load_stage_data

__all__ = [
    "FORMATS",
    "CurateConfig",
    "DataConfig",
    "DataSource",
    "DecontaminateConfig",
    "StageData",
    "load_stage_data",
]
