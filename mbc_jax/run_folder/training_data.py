"""The data a run trained on, loaded and tokenized again exactly as the run did (for record texts and for
re-tokenizing prompts): a mixin of `RunFolder`, reading its `path`, `config` and `records`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mbc_jax import UserError
from mbc_jax import config as config_lib
from mbc_jax.data import Template, load_records, tokenize
from mbc_jax.data.template import CHAT
from mbc_jax.models import load_tokenizer
from mbc_jax.paths import UrlPath, fetch, is_url
from mbc_jax.run_folder.files import CONFIG, MODEL, RECORDS, data_paths


class TrainingData:
    """`data_path`, `load_records`, `template`, `examples` and `tokenizer` of a run folder."""

    path: Path | UrlPath
    config: dict
    records: dict[str, np.ndarray]

    def data_path(self, split: str) -> str:
        """The file (or hf: id) the run read `split` from, as the trainer resolves it."""
        cfg = config_lib.from_dict(self.config, str(self.path / CONFIG))
        train, val = data_paths(cfg, self.path)
        return _resolve(train if split == "train" or not val else val, self.path)

    def load_records(self, split: str) -> list:
        """The Records of `split`, in records.csv order (matched by their index in the data file)."""
        path = self.data_path(split)
        c = self.config
        records, _ = load_records(path, schema=c.get("schema", "auto"), fields=c.get("fields"),
                                  tree=c.get("tree", "best"), tree_filter=c.get("tree_filter"))
        by_index = {r.index: r for r in records}
        wanted = self.records["index"][self.records["split"] == split]
        missing = [int(i) for i in wanted if int(i) not in by_index]
        if missing:
            raise UserError(f"{path}: has no record with index {missing[0]} ({len(missing)} missing) although "
                            f"{self.path / RECORDS} lists it; the data file changed since the run")
        return [by_index[int(i)] for i in wanted]

    def template(self):
        t = self.config.get("template")
        return Template.from_spec(t if not t or t == CHAT else _resolve(t, self.path))

    def examples(self, split: str, tokenizer: Any, vocab_size: int | None = None) -> tuple[list, list]:
        """(Records, Examples) of `split` tokenized exactly as the run tokenized them; checks the
        token counts against records.csv."""
        records = self.load_records(split)
        max_length = int(self.config.get("max_length", 512))
        examples, _ = tokenize(records, tokenizer, self.template(), max_length, vocab_size=vocab_size)
        want = self.records["tokens"][self.records["split"] == split]
        for ex, n in zip(examples, want):
            if len(ex) != int(n):
                raise UserError(f"{self.data_path(split)}: record {ex.id} tokenizes to {len(ex)} tokens but the run "
                                f"had {int(n)} ({self.path / RECORDS}); the data or tokenizer changed since the run")
        return records, examples

    def tokenizer(self):
        tok = load_tokenizer(fetch(self.path / MODEL))  # a URL: a local copy
        if tok is None:
            raise UserError(f"{self.path / MODEL}: no tokenizer files; this experiment needs the run's tokenizer")
        return tok


def _resolve(p: str, run_dir: Path | UrlPath) -> str:
    """A data/template path as the run saw it: as given (hf: ids, URLs and absolute paths), else relative
    to the current folder, else to the run folder's parent."""
    if p.startswith("hf:") or is_url(p) or Path(p).is_absolute() or Path(p).exists():
        return p
    for base in (run_dir.parent, run_dir):
        if (base / p).exists():
            return str(base / p)
    return p
