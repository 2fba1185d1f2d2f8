"""How does the best validation accuracy change with the batch size once the learning rate is
tuned for each batch size, and how must the best learning rate follow the batch size?

Scientific parameter: the batch size (GPU 32 ... 2048, CPU 64 ... 1024).
Nuisance parameters, tuned separately per family with the same budget (trials on GPU, seconds on
CPU): learning rate (log, wide enough for either scaling rule), SGD momentum and Nesterov,
weight decay, epochs, lr schedule (constant or cosine) and the MLP's shape.
Fixed: SGD (the optimizer of both anchors), the parametric MLP, MNIST with (0.1307, 0.3081)
normalisation, the seeded stratified 50k/10k split, cross-entropy, TPE sampling and Hyperband
pruning on validation accuracy. The test set is not read. The report draws the best trial's lr
against batch size on log-log axes with the fitted slope.

Anchors: Goyal et al. 2017, "Accurate, Large Minibatch SGD" (arXiv 1706.02677): scale the lr
linearly with the batch size (slope 1). Shallue et al. 2019, "Measuring the Effects of Data
Parallelism on Neural Network Training" (arXiv 1811.03600; MNIST is one of their workloads):
the best lr grows with the batch size, often slower than linearly, and then levels off.
Known bias: on CPU each family gets the same seconds, and a larger batch runs more epochs per
second, so large batches are favoured there; on GPU each family gets the same trial count.

Run: make study NAME=batch_size  (CPU: 8 minutes; add TIMEOUT=, TRIALS=, SEED=, SMOKE=1)
"""

from bench.space import Space
from bench.study import Study

GPU_SIZES, CPU_SIZES = (32, 64, 128, 256, 512, 1024, 2048), (64, 128, 256, 512, 1024)

STUDY = Study(
    question=__doc__,
    families={str(b): {"batch_size": (b,)} for b in GPU_SIZES},
    cpu_families={str(b): {"batch_size": (b,)} for b in CPU_SIZES},
    space=Space(
        archs=("mlp",),
        batch_size=GPU_SIZES,
        lr=(1e-4, 1.0),
        epochs=(3, 12),
        optimizers=("sgd",),
        schedules=("constant", "cosine"),
        arch_ranges={"mlp": {"width": (64, 1024)}},
    ),
    cpu_space=Space(
        archs=("mlp",),
        batch_size=CPU_SIZES,
        lr=(1e-4, 1.0),
        epochs=(1, 4),
        optimizers=("sgd",),
        schedules=("constant", "cosine"),
        arch_ranges={"mlp": {"width": (32, 512)}},
    ),
    # Per replicate. GPU: 30 trials per batch size. CPU: 320 s of training split between the
    # batch sizes (two worker processes: under 3 minutes of wall time a replicate).
    trials={"cpu": 1000, "cuda": 210},
    timeout={"cpu": 320, "cuda": None},
)
