"""Once each optimizer's own hyperparameters are tuned with the same budget, does the choice of
optimizer still change the best validation accuracy on MNIST?

Scientific parameter: the optimizer: sgd (momentum and Nesterov tuned), adam, adamw, rmsprop.
Nuisance parameters, tuned separately per family with the same budget (trials on GPU, seconds on
CPU): learning rate (log), the optimizer's own knobs (sgd momentum and nesterov; adam/adamw
beta1; rmsprop alpha and momentum), weight decay, batch size, epochs, lr schedule and the
model's shape (the parametric MLP; on GPU the parametric CNN too, as a tuned choice).
Fixed: MNIST with (0.1307, 0.3081) normalisation, the seeded stratified 50k/10k split,
cross-entropy, validation accuracy after the last epoch, TPE sampling and Hyperband pruning on
validation accuracy. The test set is not read.

Anchor: Choi et al. 2019, "On Empirical Comparisons of Optimizers for Deep Learning"
(arXiv 1910.05446): once every optimizer's hyperparameters are tuned, a more general optimizer
never loses to one it can emulate (Adam to momentum SGD, for instance) and the differences shrink.
Expect small gaps and ties. Unlike that paper, Adam's epsilon keeps its default here.

Run: make study NAME=optimizers  (CPU: 8 minutes; add TIMEOUT=, TRIALS=, SEED=, SMOKE=1)
"""

from bench.space import Space
from bench.study import Study

STUDY = Study(
    question=__doc__,
    families={name: {"optimizers": (name,)} for name in ("sgd", "adam", "adamw", "rmsprop")},
    space=Space(
        archs=("mlp", "cnn"),
        batch_size=(64, 128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(3, 12),
        optimizers=("sgd", "adam", "adamw", "rmsprop"),
        arch_ranges={"mlp": {"width": (64, 1024)}, "cnn": {"channels": (16, 64)}},
    ),
    cpu_space=Space(
        archs=("mlp",),
        batch_size=(128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(1, 4),
        optimizers=("sgd", "adam", "adamw", "rmsprop"),
        arch_ranges={"mlp": {"width": (32, 512)}},
    ),
    # Per replicate. GPU: 40 trials per family. CPU: 80 s of training per family (the trial cap
    # is out of reach; two worker processes: under 3 minutes of wall time a replicate).
    trials={"cpu": 1000, "cuda": 160},
    timeout={"cpu": 320, "cuda": None},
)
