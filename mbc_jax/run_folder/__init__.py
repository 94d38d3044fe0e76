"""The run folder: the one writer and reader of the format in docs/run_folder.md.

`mbc-jax train` writes through `RunWriter` (process 0 only; the other processes' calls do
nothing); `experiments/` and any other reader go through `RunFolder`:

    run = RunFolder.open("runs/demo/mbc")
    run.memorization_steps()                  # [0, 75, 150, ...]
    table = run.memorization(150, "train")    # {column: numpy array}, one entry per record
    steps, index, em = run.record_matrix("exact_match")   # [checkpoints, records]

One job per module: files.py is the format (file names, columns, CSV cells, checkpoint folders),
writer.py writes it (`RunWriter`, `MetricsLog`), reader.py reads it (`RunFolder`), and
training_data.py loads and tokenizes again the data a run trained on (`RunFolder.examples` and kin).

Every file is written atomically (`atomic_write`): a reader never sees half a file. The run folder may
be a local path or a URL (gs://, any fsspec URL): every path goes through `mbc_jax.paths.as_path`.
"""

from mbc_jax.paths import atomic_write
from mbc_jax.run_folder.files import (
    CHECKPOINTS,
    CONFIG,
    DATA,
    HEALTH,
    INT_COLUMNS,
    LEGS,
    MEMORIZATION,
    MEMORIZATION_COLUMNS,
    METRICS,
    MODEL,
    NO_TARGET,
    PARAMS,
    RECORDS,
    RECORDS_COLUMNS,
    SAMPLING,
    SAMPLING_COLUMNS,
    SUMMARY,
    TENSORBOARD,
    data_paths,
    read_csv,
    saved_steps,
    select,
    snapshot_name,
    weight_sources,
    write_csv,
)
from mbc_jax.run_folder.reader import RunFolder, fmt_lr
from mbc_jax.run_folder.writer import MetricsLog, RunWriter

__all__ = [
    "CHECKPOINTS", "CONFIG", "DATA", "HEALTH", "INT_COLUMNS", "LEGS", "MEMORIZATION", "MEMORIZATION_COLUMNS",
    "METRICS", "MODEL", "NO_TARGET", "PARAMS", "RECORDS", "RECORDS_COLUMNS", "SAMPLING", "SAMPLING_COLUMNS",
    "SUMMARY", "TENSORBOARD", "MetricsLog", "RunFolder", "RunWriter", "atomic_write", "data_paths", "fmt_lr",
    "read_csv", "saved_steps", "select", "snapshot_name", "weight_sources", "write_csv",
]
