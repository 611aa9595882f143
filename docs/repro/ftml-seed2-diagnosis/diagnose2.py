"""Continues diagnose.py from FTML's state after task 0 (saved there) through task 1's arrivals
|D_1| = 10, 20, 50, 100, and records after each: the task-1 test accuracy and the loss on D_1
before and after each of the 5 Update-Procedure steps (the evaluation's fine-tuning).

    PYTHONPATH=. python docs/repro/ftml-seed2-diagnosis/diagnose2.py /tmp/ftml_theta0.pt
"""
import sys

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fastcl.algorithms.ftml import FTML, FTMLConfig, sgd_adapt
from fastcl.data.rainbow import RainbowMNIST
from fastcl.models import ConvNet

torch.set_num_threads(1)
SEED = 2
stream = RainbowMNIST(10, 900, seed=SEED)
task = stream.task(1)
learner = FTML(ConvNet(), RainbowMNIST.input_shape, FTMLConfig(seed=SEED))
learner.load_state_dict(torch.load(sys.argv[1])["theta_after_task0"])
gen = torch.Generator().manual_seed(SEED)
torch.randperm(900, generator=gen)  # task 0's arrival order
order = torch.randperm(900, generator=gen)
begin = 0
for end in (10, 20, 50, 100):
    learner.observe(task.x_train[order[begin:end]], task.y_train[order[begin:end]], 1)
    begin = end
    x, y = learner.buffer.data(1)
    params = {k: v.detach() for k, v in learner.model.named_parameters()}
    rows = []
    for step in range(learner.config.finetune_steps + 1):
        with torch.no_grad():
            logits = functional_call(learner.model, params, (x,))
            test = functional_call(learner.model, params, (task.x_test,))
        rows.append(f"step {step}: D_1 loss {F.cross_entropy(logits, y).item():.3f} "
                    f"train acc {(logits.argmax(1) == y).float().mean().item():.2f} "
                    f"test acc {(test.argmax(1) == task.y_test).float().mean().item():.3f} "
                    f"test predicted classes {torch.bincount(test.argmax(1), minlength=10).tolist()}")
        params = sgd_adapt(learner.model, params, x, y, lr=learner.config.inner_lr, steps=1,
                           label_smoothing=learner.config.label_smoothing)
    print(f"|D_1| = {end}:\n  " + "\n  ".join(rows), flush=True)
