"""Names and values shared across the package: splits, file names, the cell size.

A training workdir holds MODEL_FILE, METRICS_FILE, HISTORY_FILE, FLAGS_FILE, the
figures, the run manifest and, while a run is unfinished, BEST_FILE, BACKUP_DIR
and FIT_DONE_FILE. An evaluation folder holds METRICS_FILE, POWER_SPECTRUM_FILE, figures
and EVALUATION_FILE.
"""

SPLITS = ("train", "validation", "test")

# Comoving side of one cell, in cMpc: the original C2-Ray boxes (300 cells across
# 714 cMpc) and the built-in simulator's default.
CELL_SIZE_MPC = 2.381

MODEL_FILE = "model.keras"
BEST_FILE = "best.keras"  # SaveBest's target; becomes MODEL_FILE at the end
BACKUP_DIR = "backup"
BACKUP_STATE = "state.json"
FIT_DONE_FILE = "fit_done"  # written once fit has ended: a rerun goes straight to scoring
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
FLAGS_FILE = "flags.txt"
POWER_SPECTRUM_FILE = "power_spectrum.csv"
MANIFEST_FILE = "keras_cnn_run.json"
EVALUATION_FILE = "keras_cnn_evaluation.json"  # marks an evaluation folder as keras_cnn's
LOCK_FILE = ".keras_cnn.lock"
HISTORY_PNG = "history.png"
PRED_VS_TRUE_PNG = "pred_vs_true.png"
