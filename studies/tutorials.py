"""How much did each of the five tutorial recipes leave on the table: with its architecture kept
and its training tuned (same budget for each), how far above the recipe does it get?

Scientific parameter: the tutorial's architecture, one family per leaderboard entry, named after
it: mlp-128-128, mlp-bn-300-100, mlp-400-200-100, cnn-conv32 and mlp-64-32 (the softmax
recipe's net without its second softmax, which the tuned version would drop first).
Nuisance parameters, tuned separately per family with the same budget (trials on GPU, seconds on
CPU): optimizer and its knobs, learning rate (log), weight decay, batch size, epochs, lr schedule.
Fixed: each architecture as the tutorial defines it, MNIST with (0.1307, 0.3081) normalisation,
the seeded stratified 50k/10k split, cross-entropy, TPE sampling and Hyperband pruning on
validation accuracy. The test set is not read.

Anchor: the leaderboard. The report puts each family's tuned finalists beside its entry's
reproduced number (results/leaderboard.parquet, from `make reproduce`): the recipe's own
training against tuned training of the same network. The recipes score differently (validation,
per-batch means, test); the table names each one's scoring.

Run: make study NAME=tutorials  (CPU: 8 minutes; add TIMEOUT=, TRIALS=, SEED=, SMOKE=1)
"""

from bench.space import Space
from bench.study import Study

ENTRIES = {  # leaderboard entry -> its architecture in the model registry
    "mlp-128-128-adam": "mlp-128-128",
    "mlp-bn-300-100-sgd": "mlp-bn-300-100",
    "mlp-400-200-100-sgd": "mlp-400-200-100",
    "cnn-conv32-adam": "cnn-conv32",
    "mlp-64-32-softmax-sgd": "mlp-64-32",
}

STUDY = Study(
    question=__doc__,
    families={entry: {"archs": (arch,)} for entry, arch in ENTRIES.items()},
    space=Space(
        archs=tuple(ENTRIES.values()),
        batch_size=(32, 64, 128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(3, 20),
    ),
    cpu_space=Space(
        archs=tuple(ENTRIES.values()),
        batch_size=(64, 128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(1, 4),
    ),
    # Per replicate. GPU: 40 trials per family. CPU: 64 s of training per family (two worker
    # processes: under 3 minutes of wall time a replicate).
    trials={"cpu": 1000, "cuda": 200},
    timeout={"cpu": 320, "cuda": None},
)
