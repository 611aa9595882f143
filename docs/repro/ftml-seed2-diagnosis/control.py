"""Controls for diagnose.py: ReLU activity on task-1 (dark) test images at the random
initialisation, after TOE's task 0 (same stream, seed, Adam budget) and after FTML's task 0
(theta saved by diagnose.py), plus each model's Update-Procedure gradient norm on 10 task-1 images.

    PYTHONPATH=. python docs/repro/ftml-seed2-diagnosis/control.py /tmp/ftml_theta0.pt
"""
import sys

import torch
import torch.nn.functional as F

from fastcl.algorithms.ftml import FTMLConfig, TrainOnEverything
from fastcl.data.rainbow import RainbowMNIST
from fastcl.models import ConvNet
from fastcl.online_experiments import DEFAULT_ARRIVALS, arrival_grid

torch.set_num_threads(1)
SEED = 2
stream = RainbowMNIST(10, 900, seed=SEED)
tasks = [stream.task(k) for k in range(2)]


def activity(model, x):
    out, h = [], x
    for m in model.features:
        h = m(h)
        if isinstance(m, torch.nn.ReLU):
            out.append(round((h <= 0).all(0).float().mean().item(), 3))
    return out


def grad_norms(model, x, y):
    loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
    gs = torch.autograd.grad(loss, [p for n, p in model.named_parameters() if n.endswith("weight")])
    return [round(g.norm().item(), 4) for g in gs]


for k in range(2):
    print(f"task {k} {tasks[k].info}: mean pixel {tasks[k].x_test.mean().item():.3f}")
torch.manual_seed(SEED)
init = ConvNet()
models = {"random init": init}
torch.manual_seed(SEED)
toe = TrainOnEverything(ConvNet(), RainbowMNIST.input_shape, FTMLConfig(seed=SEED))
gen = torch.Generator().manual_seed(SEED)
order = torch.randperm(900, generator=gen)
begin = 0
for end in arrival_grid(DEFAULT_ARRIVALS, 900):
    toe.observe(tasks[0].x_train[order[begin:end]], tasks[0].y_train[order[begin:end]], 0)
    begin = end
models["TOE after task 0"] = toe.model
ftml = ConvNet()
ftml.load_state_dict(torch.load(sys.argv[1])["theta_after_task0"]["model"])
models["FTML after task 0"] = ftml
x1, y1 = tasks[1].x_test[:300], tasks[1].y_test[:300]
for name, m in models.items():
    with torch.no_grad():
        a0, a1 = activity(m, tasks[0].x_test[:300]), activity(m, x1)
        b1 = m.features[0].bias
    print(f"{name}: units dead on every image, per ReLU layer: task 0 {a0}, task 1 {a1}; "
          f"conv1 bias mean {b1.mean().item():.3f} min {b1.min().item():.3f}; "
          f"task-1 gradient norms per layer {grad_norms(m, tasks[1].x_train[:10], tasks[1].y_train[:10])}")
