# %% [markdown]
# # 01 · What P-pooling does
#
# P-pooling (Wei et al., CVPR 2019) pools each window $R_j$ as
#
# $$y_j = \frac{\sum_{i \in R_j} x_i^{\alpha+1}}{\sum_{i \in R_j} x_i^{\alpha}}, \qquad \alpha \ge 0 \text{ learned}.$$
#
# $\alpha = 0$ is average pooling and $\alpha \to \infty$ is max pooling (supplement, Props 1–2). This notebook shows
# one window's output as $\alpha$ sweeps between the two, where the gradient goes inside a window, checks Props 1–2
# numerically with `polypool.pooling.p_pool2d`, and measures the detail-sensitivity argument on a thin structure.
#
# It needs no data and no GPU. Run it as a notebook, or as a script (`python notebooks/01_p_pooling.py`); either way
# the figures go to `results/figures/01_*.png`.

# %%
import matplotlib

if "ipykernel" not in __import__("sys").modules:  # as a script: no screen needed
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from polypool.repro.notebooks import save_figure
from polypool.pooling import p_pool2d

torch.manual_seed(0)
ALPHAS = np.concatenate([[0.0], np.logspace(-2, 4, 121)])

# %% [markdown]
# ## 1. One window, α from average to max
#
# A 3×3 window of activations between 0.5 and 6. The textbook formula $\sum x^{\alpha+1} / \sum x^\alpha$ overflows
# in fp32 once $6^\alpha$ passes $3.4\cdot10^{38}$ ($\alpha \approx 49$) and in fp16 at $\alpha \approx 6$; our op
# computes the same value in the max-normalised form $m \sum r^{\alpha+1} / \sum r^\alpha$, $r = x/m \le 1$, which
# cannot overflow. The right panel is the relative error against a float64 evaluation.

# %%
window = torch.tensor([[0.5, 1.0, 1.5], [2.0, 2.5, 3.0], [4.0, 5.0, 6.0]]).view(1, 1, 3, 3)


def ours(x, alpha):
    return p_pool2d(x, alpha, kernel_size=3).item()


def textbook(x, alpha):
    return ((x ** (alpha + 1)).sum() / (x ** alpha).sum()).item()


reference = np.array([textbook(window.double(), a) if a < 300 else ours(window.double(), a) for a in ALPHAS])
curves = {
    "ours, fp32": np.array([ours(window, a) for a in ALPHAS]),
    "ours, fp16": np.array([ours(window.half(), a) for a in ALPHAS]),
    "ours, bf16": np.array([ours(window.bfloat16(), a) for a in ALPHAS]),
    "textbook formula, fp32": np.array([textbook(window, a) for a in ALPHAS]),
    "textbook formula, fp16": np.array([textbook(window.half(), a) for a in ALPHAS]),
}
x_axis = np.where(ALPHAS == 0, 1e-3, ALPHAS)  # alpha = 0 drawn at the left edge of the log axis

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
left.plot(x_axis, curves["ours, fp32"], lw=2.5, label="P-pooling (ours, fp32)")
finite = np.isfinite(curves["textbook formula, fp32"])
left.plot(x_axis[finite], curves["textbook formula, fp32"][finite], "--", label="textbook formula, fp32 (until NaN)")
left.axhline(window.mean().item(), color="tab:green", ls=":", label=f"average pooling = {window.mean().item():.3f}")
left.axhline(window.max().item(), color="tab:red", ls=":", label=f"max pooling = {window.max().item():g}")
left.set(xscale="log", xlabel="α (α = 0 drawn at 1e-3)", ylabel="pooled value y",
         title="One 3×3 window: P-pooling moves from average to max")
left.legend(loc="center right", fontsize=8)
for name, values in curves.items():
    error = np.abs(values - reference) / reference
    error = np.where(np.isfinite(error), np.maximum(error, 1e-9), np.nan)
    right.plot(x_axis, error, "--" if "textbook" in name else "-", label=name)
right.set(xscale="log", yscale="log", xlabel="α", ylabel="relative error vs float64 (floored at 1e-9)",
          title="Stability: the textbook formula breaks (gaps = NaN/inf)")
right.legend(fontsize=8)
save_figure(fig, "01_alpha_sweep")
plt.show()
for name, values in curves.items():
    broken = ALPHAS[~np.isfinite(values)]
    print(f"{name:24s} first non-finite at alpha = {broken[0]:.3g}" if len(broken) else f"{name:24s} finite for all alpha")

# %% [markdown]
# ## 2. Where the gradient goes inside a window
#
# From the supplement, with $S_\beta = \sum x^\beta$:
# $\partial y / \partial x_i = \big((\alpha+1) x_i^\alpha S_\alpha - \alpha x_i^{\alpha-1} S_{\alpha+1}\big) / S_\alpha^2$.
# At $\alpha = 0$ every element gets $1/N$ (average pooling); as $\alpha$ grows the gradient concentrates on the
# largest elements, and small elements get a *negative* gradient (raising them lowers the weighted mean). We take
# the gradient from our op's analytic backward and check it against this closed form.

# %%
grad_alphas = [0.0, 1.0, 4.0, 16.0, 64.0]
values = window.flatten().double()
fig, ax = plt.subplots(figsize=(10, 4))
width = 0.8 / len(grad_alphas)
worst = 0.0
for k, alpha in enumerate(grad_alphas):
    x = window.clone().requires_grad_(True)
    p_pool2d(x, alpha, kernel_size=3).sum().backward()
    ours_grad = x.grad.flatten().double()
    s_a, s_a1 = (values ** alpha).sum(), (values ** (alpha + 1)).sum()
    closed = ((alpha + 1) * values ** alpha * s_a - alpha * values ** (alpha - 1) * s_a1) / s_a ** 2
    worst = max(worst, (ours_grad - closed).abs().max().item())
    ax.bar(np.arange(9) + (k - 2) * width, ours_grad.numpy(), width, label=f"α = {alpha:g}")
ax.axhline(0, color="black", lw=0.8)
ax.set_xticks(np.arange(9), [f"{v:g}" for v in values.tolist()])
ax.set(xlabel="element value x_i of the window", ylabel="∂y/∂x_i",
       title="Gradient inside one 3×3 window: from uniform (α = 0, average) to the max element (large α)")
ax.legend()
save_figure(fig, "01_window_gradients")
plt.show()
print(f"largest |our backward - closed form| over these alphas: {worst:.2e}")
assert worst < 1e-5

# %% [markdown]
# ## 3. Propositions 1 and 2, numerically
#
# On 4,096 random 2×2 windows (stride 2) whose four values are distinct draws from {0.1, 0.2, …, 1.0}, so the
# largest element is unique and the runner-up is at most 0.9× it (with near-ties the limit is reached only at
# correspondingly larger α):
# * **Prop. 1**: at $\alpha = 0$ the output and the input gradient equal average pooling's.
# * **Prop. 2**: as $\alpha$ grows, output and gradient approach max pooling's. The plot shows the largest
#   deviation over all windows against $\alpha$: it falls like $0.9^\alpha$, to float64 rounding by $\alpha = 10^3$.

# %%
levels = torch.rand(16 * 16 * 16, 10).argsort(1)[:, :4].double().add(1).div(10)  # 4 distinct levels per window
x = levels.view(1, 16, 16, 16, 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(1, 16, 32, 32)
grad_out = torch.randn(1, 16, 16, 16, dtype=torch.float64)


def pooled_and_grad(pool):
    leaf = x.clone().requires_grad_(True)
    out = pool(leaf)
    out.backward(grad_out)
    return out.detach(), leaf.grad


avg_y, avg_g = pooled_and_grad(lambda t: F.avg_pool2d(t, 2))
max_y, max_g = pooled_and_grad(lambda t: F.max_pool2d(t, 2))
p0_y, p0_g = pooled_and_grad(lambda t: p_pool2d(t, 0.0, 2))
prop1 = ((p0_y - avg_y).abs().max().item(), (p0_g - avg_g).abs().max().item())
print(f"Prop. 1 (alpha = 0 vs average pooling): max |dy| = {prop1[0]:.1e}, max |dx| = {prop1[1]:.1e}")
assert max(prop1) < 1e-12

prop2_alphas = np.logspace(0, 3, 13)
forward_gap, backward_gap = [], []
for alpha in prop2_alphas:
    y, g = pooled_and_grad(lambda t: p_pool2d(t, float(alpha), 2))
    forward_gap.append((y - max_y).abs().max().item())
    backward_gap.append((g - max_g).abs().max().item())
fig, ax = plt.subplots(figsize=(7, 4))
ax.plot(prop2_alphas, np.maximum(forward_gap, 1e-17), "o-", label="forward: max |y − max_pool(x)|")
ax.plot(prop2_alphas, np.maximum(backward_gap, 1e-17), "s-", label="backward: max |∂L/∂x − max_pool's|")
ax.set(xscale="log", yscale="log", xlabel="α", ylabel="largest deviation over 4,096 windows",
       title="Prop. 2: P-pooling → max pooling as α → ∞ (float64)")
ax.legend()
save_figure(fig, "01_props")
plt.show()
print(f"Prop. 2 at alpha = 1e3: forward gap {forward_gap[-1]:.1e}, backward gap {backward_gap[-1]:.1e}")
assert forward_gap[-1] < 1e-3 * forward_gap[0] and backward_gap[-1] < 1e-3 * backward_gap[0]

# %% [markdown]
# ## 4. Detail sensitivity: thin structures, shifted one pixel at a time
#
# Two 1-pixel-wide vertical structures on a noisy background (uniform in [0.3, 0.5]): a **bright line** (value 1)
# and a **dark gap** (value 0.05, like the thin background between two objects). Each goes through VGG16's first
# three pooling stages (2×2, stride 2: 8× down) while we shift it across one 8-pixel output cell. We measure how
# much of its contrast survives: (mean output on the structure's cells − mean output elsewhere) divided by
# (structure value − background mean), so 1 = fully kept, 0 = erased. The right panel is the background's bias
# (mean output off the structure minus the true background mean 0.4): what pooling does to the noise.
#
# Pooling that is symmetric in its window cannot see where inside a window the structure sits, so all curves are
# nearly flat in the shift (the small wiggles are the noise pixels the structure covers). What differs is how much
# of the structure survives: max pooling keeps the bright line whole but erases the dark gap and inflates the
# noise; average pooling keeps 1/8 of either and leaves the noise unbiased; P-pooling moves between the two
# with α, and since small activations get weight $x^\alpha$, dark details fade quickly as α grows.

# %%
def surviving_contrast(image, structure, value, pool, stages=3):
    out = image
    for _ in range(stages):
        out = pool(out)
    on_structure = F.max_pool2d(structure, 2 ** stages) > 0  # output cells that contain the structure
    inside, outside = out[on_structure].mean().item(), out[~on_structure].mean().item()
    return (inside - outside) / (value - BACKGROUND_MEAN), outside - BACKGROUND_MEAN


BACKGROUND_MEAN = 0.4
poolings = {"max": lambda t: F.max_pool2d(t, 2), "average": lambda t: F.avg_pool2d(t, 2)}
for alpha in (1.0, 3.0, 10.0):
    poolings[f"P, α = {alpha:g}"] = lambda t, a=alpha: p_pool2d(t, a, 2)

generator = torch.Generator().manual_seed(1)
noise = 0.3 + 0.2 * torch.rand(1, 1, 64, 64, generator=generator)
shifts = list(range(8))
kept = {kind: {name: [] for name in poolings} for kind in ("bright line", "dark gap")}
bias = {name: [] for name in poolings}
for shift in shifts:
    structure = torch.zeros_like(noise)
    structure[..., 24 + shift] = 1.0
    for kind, value in (("bright line", 1.0), ("dark gap", 0.05)):
        image = torch.where(structure > 0, torch.full_like(noise, value), noise)
        for name, pool in poolings.items():
            contrast, background_bias = surviving_contrast(image, structure, value, pool)
            kept[kind][name].append(contrast)
            if kind == "bright line":
                bias[name].append(background_bias)

fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
for ax, kind in zip(axes[:2], kept):
    for name, style in zip(poolings, ("o-", "s-", "^--", "v--", "d--")):
        ax.plot(shifts, kept[kind][name], style, label=name)
    ax.set(xlabel="structure position inside the 8-pixel output cell (pixels)",
           ylabel="fraction of contrast kept after 3 pools", ylim=(-0.05, 1.05),
           title=f"1-px {kind} through three 2×2 pools")
    ax.legend(fontsize=8)
names = list(poolings)
axes[2].bar(range(len(names)), [np.mean(bias[n]) for n in names], color=[f"C{i}" for i in range(len(names))])
axes[2].set_xticks(range(len(names)), names, rotation=20)
axes[2].set(ylabel="mean background output − true mean (0.4)", title="Bias of the pooled background noise")
save_figure(fig, "01_detail_shift")
plt.show()
for name in poolings:
    print(f"{name:12s} bright line kept {np.mean(kept['bright line'][name]):.3f}, "
          f"dark gap kept {np.mean(kept['dark gap'][name]):.3f}, background bias {np.mean(bias[name]):+.3f}")
