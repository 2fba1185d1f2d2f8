"""Does the input normalisation the tutorials disagree about matter once the learning rate and
the rest of the training are tuned?

Scientific parameter: the input normalisation, the three choices the five tutorial recipes make:
none (ToTensor only, pixels in [0, 1]), half (Normalize(0.5, 0.5), pixels in [-1, 1]) and mnist
(Normalize(0.1307, 0.3081), zero mean and unit variance over the training set).
Nuisance parameters, tuned separately per family with the same budget (trials on GPU, seconds on
CPU): learning rate (log), optimizer and its knobs, weight decay, batch size, epochs, lr schedule
and the MLP's shape (depth, width, dropout, batch norm).
Fixed: the parametric MLP, the seeded stratified 50k/10k split, cross-entropy, TPE sampling and
Hyperband pruning on validation accuracy. The test set is not read.

Anchor: LeCun, Bottou, Orr and Müller 1998, "Efficient BackProp": inputs with zero mean and
comparable variance speed up gradient descent. The question here is whether that still shows
in the best accuracy once the learning rate (and batch norm, an option of the MLP) can adapt.

Run: make study NAME=normalization  (CPU: 6 minutes; add TIMEOUT=, TRIALS=, SEED=, SMOKE=1)
"""

from bench.space import Space
from bench.study import Study

STUDY = Study(
    question=__doc__,
    families={name: {"normalization": (name,)} for name in ("none", "half", "mnist")},
    space=Space(
        archs=("mlp",),
        batch_size=(64, 128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(3, 12),
        arch_ranges={"mlp": {"width": (64, 1024)}},
        normalization=("none", "half", "mnist"),
    ),
    cpu_space=Space(
        archs=("mlp",),
        batch_size=(128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(1, 4),
        arch_ranges={"mlp": {"width": (32, 512)}},
        normalization=("none", "half", "mnist"),
    ),
    # Per replicate. GPU: 40 trials per family. CPU: 80 s of training per family (two worker
    # processes: 2 minutes of wall time a replicate).
    trials={"cpu": 1000, "cuda": 120},
    timeout={"cpu": 240, "cuda": None},
)
