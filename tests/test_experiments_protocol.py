"""Issue 13: merge of older records, the paper protocol, the stored tables, presets, timing.

Everything here is fast (no training beyond a few steps on scikit-learn's digits).
"""

from __future__ import annotations

import csv
from pathlib import Path

from subset_rl.experiments import main

OLD_HEADER = (
    "experiment,dataset,setting,estimator,seed,steps,metric,value,seconds_per_step,"
    "unique_percentage,val_steps,val_values"
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- merge (item 6)
def test_merge_reads_records_without_the_unique_curve_column(tmp_path):
    """``per_seed.csv`` written before the IP-CAE curve column existed used to crash ``merge``."""
    src = tmp_path / "old"
    src.mkdir()
    (src / "per_seed.csv").write_text(
        OLD_HEADER + "\n"
        "ipcae,mnist,k=50,cae,0,200,test BCE per pixel,0.37,0.0067,92.0,0 100 200,0.7 0.5 0.37\n"
        "ipcae,mnist,k=50,ipcae,0,200,test BCE per pixel,0.34,0.0152,94.0,0 100 200,0.7 0.4 0.34\n"
        "knn,mnist,\"d=2,k=10\",sfess,0,200,test k-NN accuracy,0.48,0.03,,0 100 200,0.1 0.3 0.48\n"
    )
    out = tmp_path / "merged"
    assert main(["merge", str(src), "--out", str(out)]) == 0
    rows = _read_csv(out / "results.csv")
    assert {(r["experiment"], r["estimator"]) for r in rows} == {
        ("ipcae", "cae"),
        ("ipcae", "ipcae"),
        ("knn", "sfess"),
    }
    assert (out / "curves_ipcae_mnist_k50.png").is_file()
    assert not (out / "unique_ipcae_mnist_k50.png").exists()  # no curve recorded: no plot
