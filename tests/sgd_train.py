"""``perceptrl`` with plain SGD in place of AdamW, for tests/test_distributed.py.

Adam divides each gradient entry by its own running scale, so two runs whose gradients differ by
float rounding can take visibly different steps where an entry is near zero (the first step is
``lr * sign(g)``). With SGD a step is ``lr * g``: comparing parameters after each optimizer step
compares the gradients themselves, which is what "the same optimizer step on 1 or 2 processes" means.
Run as ``torchrun ... tests/sgd_train.py train RECIPE OVERRIDES`` (or ``python tests/sgd_train.py ...``).
"""

import sys

import torch

import perceptrl.train.rl as rl


def sgd(model, train_cfg):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=train_cfg.lr)


if __name__ == "__main__":
    rl.make_optimizer = sgd
    from perceptrl.cli import main

    sys.exit(main(sys.argv[1:]))
