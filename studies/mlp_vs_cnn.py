"""Under the same budget, how much does the best CNN beat the best MLP on validation accuracy, and
at what cost (train seconds, parameters)?

Scientific parameter: the architecture family (MLP or CNN).
Nuisance parameters, tuned separately per family with the same budget (trials on GPU, seconds on
CPU): the family's shape (MLP depth/width/dropout/batch-norm; CNN blocks/channels/convs/dropout/
hidden units), batch size, learning rate (log), epochs, optimizer and its knobs, weight decay and
learning-rate schedule.
Fixed: MNIST with (0.1307, 0.3081) normalisation, a seeded stratified 50k/10k train/validation
split, cross-entropy, validation accuracy after the last epoch as the objective, TPE sampling and
Hyperband pruning on validation accuracy. The test set is not read.

Known bias: epochs are sampled and each lr schedule spans its own trial's epochs, so at an early
rung a short trial (already annealed) meets a long one mid-schedule, and Hyperband favours short
runs. Completed trials are compared on their final validation accuracy, which is unbiased.

Run: make study NAME=mlp_vs_cnn  (add DEVICE=cpu, TRIALS=, TIMEOUT=, SEED=, SMOKE=1)
"""

from bench.space import Space
from bench.study import Study

STUDY = Study(
    question=__doc__,
    families={"mlp": {"archs": ("mlp",)}, "cnn": {"archs": ("cnn",)}},
    # GPU: 100 trials, wide ranges.
    space=Space(
        archs=("mlp", "cnn"),
        batch_size=(64, 128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(3, 12),
        arch_ranges={"mlp": {"width": (64, 1024)}, "cnn": {"channels": (16, 64)}},
    ),
    # 2-core CPU: same knobs, smaller shapes and fewer epochs, so a family's half of the 14-minute
    # budget holds tens of trials.
    cpu_space=Space(
        archs=("mlp", "cnn"),
        batch_size=(128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(1, 4),
        arch_ranges={
            "mlp": {"width": (32, 512)},
            "cnn": {"blocks": (1, 2), "channels": (8, 16), "convs": (1, 1), "hidden": (32, 128)},
        },
    ),
    # Per replicate. GPU: 50 trials per family. CPU: 260 s of training per family (the trial
    # cap is out of reach): with two worker processes about 4.5 minutes of wall time a
    # replicate, under 15 for the default 3 replicates.
    trials={"cpu": 1000, "cuda": 100},
    timeout={"cpu": 520, "cuda": None},
    # Sampler and pruner: the Study defaults, TPE (constant_liar) and Hyperband on epochs.
)
