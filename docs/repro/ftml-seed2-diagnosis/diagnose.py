"""Why FTML seed 2 collapses on Rainbow MNIST (issue 12, section 5): replay the first two tasks
of `fastcl run ftml --stream rainbow-mnist --tasks 10 --seed-offset 2 --threads 1` exactly and
record, per meta-update of task 1's first arrival, the sampled task, the meta-gradient norm and
the ReLU activity of every layer on task-0 and task-1 test images.

    PYTHONPATH=. python docs/repro/ftml-seed2-diagnosis/diagnose.py > docs/repro/ftml-seed2-diagnosis/log.txt
"""
import copy
import json
import sys

import torch

from fastcl.algorithms.ftml import FTML, FTMLConfig
from fastcl.data.rainbow import RainbowMNIST
from fastcl.models import ConvNet
from fastcl.online_experiments import DEFAULT_ARRIVALS, _accuracy, arrival_grid

torch.set_num_threads(1)
SEED = 2
stream = RainbowMNIST(10, 900, seed=SEED)
torch.manual_seed(SEED)
learner = FTML(ConvNet(), RainbowMNIST.input_shape, FTMLConfig(seed=SEED))
gen = torch.Generator().manual_seed(SEED)
tasks = [stream.task(k) for k in range(2)]


def activity(model, x):
    """Per ReLU layer: fraction of units (channel x position) that are zero on EVERY image of x,
    and the mean fraction of zero activations."""
    out, h = [], x
    for m in model.features:
        h = m(h)
        if isinstance(m, torch.nn.ReLU):
            dead = (h <= 0).all(0).float().mean().item()
            out.append((round(dead, 3), round((h <= 0).float().mean().item(), 3)))
    return out


def report(tag):
    with torch.no_grad():
        acts = {k: activity(learner.model, tasks[k].x_test[:300]) for k in range(2)}
    norms = {n: round(p.norm().item(), 2) for n, p in learner.model.named_parameters() if n.endswith("weight")}
    print(tag, "dead/zero per layer: task0", acts[0], "task1", acts[1], "weight norms", norms, flush=True)


log = []
orig_update = learner._update


def traced_update(task):
    before = {n: p.detach().clone() for n, p in learner.model.named_parameters()}
    g_state = learner.generator.get_state()
    sampled = learner.buffer.sample_tasks(1, learner.generator)[0]
    learner.generator.set_state(g_state)
    loss = orig_update(task)
    step = sum(((p.detach() - before[n]) ** 2).sum() for n, p in learner.model.named_parameters()) ** 0.5
    gnorm = sum((p.grad ** 2).sum() for p in learner.model.parameters()) ** 0.5
    with torch.no_grad():
        act = activity(learner.model, tasks[1].x_test[:300])
    log.append(dict(update=learner.updates, task=task, sampled=int(sampled), loss=round(loss, 3),
                    grad_norm=round(float(gnorm), 3), step=round(float(step), 4), task1_dead=act))
    return loss


for k in range(2):
    task = tasks[k]
    n = task.x_train.shape[0]
    order = torch.randperm(n, generator=gen)
    begin = 0
    grid = arrival_grid(DEFAULT_ARRIVALS, n) if k == 0 else [10]
    if k == 1:
        report("after task 0:")
        learner._update = traced_update
        theta0 = copy.deepcopy(learner.state_dict())
    for end in grid:
        idx = order[begin:end]
        learner.observe(task.x_train[idx], task.y_train[idx], k)
        print(f"task {k} |D|={end}: acc {_accuracy(learner, task.x_test, task.y_test, k):.3f}", flush=True)
        begin = end
    report(f"after task {k} arrival 1:" if k else "end of task 0:")
for row in log:
    print(json.dumps(row))
torch.save({"theta_after_task0": theta0}, sys.argv[1] if len(sys.argv) > 1 else "/tmp/ftml_theta0.pt")
