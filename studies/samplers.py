"""At the same budget, does Optuna's TPE find a better MLP than random or quasi-random search?

Scientific parameter: the search method (Optuna's sampler): TPE (multivariate off, constant_liar,
8 random start-up trials: the studies' default), random search, and scrambled-Sobol quasi-random
search. A family names its sampler (`{"sampler": "random"}`); the sampler is not a Space field,
because it is how the space is searched, not what it holds.
Nuisance parameters, searched by each family's own sampler with the same budget (trials on GPU,
seconds on CPU): the MLP's depth, width, dropout and batch norm, batch size, learning rate (log),
epochs, optimizer and its knobs, weight decay, lr schedule.
Fixed: the MLP, MNIST with (0.1307, 0.3081) normalisation, the seeded stratified 50k/10k split,
cross-entropy, validation accuracy after the last epoch, Hyperband pruning. The test set is not
read.

The tuning curves say from which budget a sampler pulls ahead; random and quasi-random trials are
i.i.d., so the report also draws their expected best after n trials (Dodge et al. 2019) with
exact bands. Random search is a strong baseline at small budgets (Bergstra & Bengio 2012); TPE
needs its start-up trials before it models anything, so expect ties at a CPU budget.

Run: make study NAME=samplers  (add REPLICATES=, TIMEOUT=, TRIALS=, SEED=, SMOKE=1)
"""

from bench.space import Space
from bench.study import Study

STUDY = Study(
    question=__doc__,
    families={name: {"sampler": name} for name in ("tpe", "random", "qmc")},
    space=Space(
        archs=("mlp",),
        batch_size=(64, 128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(3, 12),
        arch_ranges={"mlp": {"width": (64, 1024)}},
    ),
    cpu_space=Space(
        archs=("mlp",),
        batch_size=(128, 256, 512),
        lr=(1e-4, 1e-1),
        epochs=(1, 4),
        arch_ranges={"mlp": {"width": (32, 512)}},
    ),
    # Per replicate. GPU: 40 trials per sampler. CPU: 100 s of training per sampler (two worker
    # processes: 2.5 minutes of wall time a replicate).
    trials={"cpu": 1000, "cuda": 120},
    timeout={"cpu": 300, "cuda": None},
)
