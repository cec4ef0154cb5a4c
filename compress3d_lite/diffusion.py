"""The diffusion objective and sampling loop around diffusers' schedulers, shared by the
diffusion prior (stage 3) and the triplane diffusion (stage 4). Two objectives
(``DiffusionConfig.objective``) run through the same four functions (``make_scheduler``,
``draw_timesteps``, ``noisy``, ``target_for``) and the same ``sample`` loop:

**DDPM** (``"ddpm"``): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I), integer t
in [0, T) over the cosine schedule (``squaredcos_cap_v2``), T = 1000. The network's target is
the parametrisation's (``prediction_type``):

    prior  "sample":        target x_0, L1 loss (the paper's prior, docs/paper.md §4)
    UNet   "v_prediction":  target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, MSE (our choice, §5)

**Rectified flow** (``"rectified_flow"``): x_t = (1 - s) x_0 + s eps with s = t / T in (0, 1),
a straight path from the data to the noise; the target is its velocity eps - x_0, whatever
``prediction_type`` says; sampled with diffusers' ``FlowMatchEulerDiscreteScheduler`` ("euler").

    L = E_{x_0, t, eps} || f(x_t, t, cond) - target ||             (L1, or squared with ``loss="l2"``)

Training timesteps (``timesteps``) are uniform, or logit-normal (s = sigmoid(n), n ~ N(mean,
std)): a mean above 0 spends more of the samples near the noise, where the coarse structure is
decided. Sampling starts from x_T ~ N(0, I) and walks down a few timesteps with DDIM
(deterministic, eta = 0), DPM-Solver++, ancestral DDPM or the flow's Euler steps. The caller
supplies ``denoise(x_t, t)`` (the model's output under its parametrisation), so guidance (single
or dual) stays with the model that knows its conditions.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import BETA_SCHEDULES, OBJECTIVES, PREDICTION_TYPES, SAMPLERS, TIMESTEPS, Config, ConfigError


@dataclass
class DiffusionConfig(Config):
    """The noise schedule and sampler around diffusers' schedulers (paper: not found; our choice)."""

    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule
    prediction_type: str = "sample"  # the model predicts x0 (docs/paper.md §4: "output: the clean e_s")
    sampler: str = "ddim"  # "ddim", "dpm" (DPM-Solver++) or "ddpm"; "euler" for rectified flow
    sample_steps: int = 25
    objective: str = "ddpm"  # "ddpm" or "rectified_flow" (module docstring)
    timesteps: str = "uniform"  # training timesteps: "uniform" or "logit_normal"
    logit_mean: float = 0.0  # logit-normal: > 0 biases the training samples toward the noise
    logit_std: float = 1.0

    def __post_init__(self):
        """Refuse (ConfigError naming the field) a schedule or sampler we cannot build, so that a bad
        checkpoint config fails when it is loaded rather than after a diffusion run."""
        choices = {"sampler": SAMPLERS, "prediction_type": PREDICTION_TYPES, "beta_schedule": BETA_SCHEDULES,
                   "objective": OBJECTIVES, "timesteps": TIMESTEPS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"diffusion.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 1 <= self.train_timesteps <= 100_000:
            raise ConfigError(f"diffusion.train_timesteps must be in 1..100000, got {self.train_timesteps}")
        if not sampler_fits(self.objective, self.sampler):
            raise ConfigError(f"diffusion.sampler {self.sampler!r} does not sample the objective {self.objective!r} "
                              "(rectified flow samples with euler; ddpm with ddim, dpm or ddpm)")
        if not self.logit_std > 0:
            raise ConfigError(f"diffusion.logit_std must be > 0, got {self.logit_std}")
        if not 1 <= self.sample_steps <= self.train_timesteps:
            raise ConfigError(f"diffusion.sample_steps must be in 1..{self.train_timesteps} (the steps of the noise "
                              f"schedule), got {self.sample_steps}")



def sampler_fits(objective: str, sampler: str) -> bool:
    """Rectified flow samples with euler only; DDPM with ddim, dpm or ddpm."""
    return sampler in SAMPLERS and (objective == "rectified_flow") == (sampler == "euler")


def make_scheduler(cfg, sampler: str | None = "ddpm"):
    """A diffusers scheduler for ``cfg`` (a DiffusionConfig): "ddpm" (training and
    ancestral sampling), "ddim" or "dpm" (DPM-Solver++ multistep). No clipping of x_0: our data
    (scaled embeddings, normalised latents) is not confined to [-1, 1]."""
    draws = {"c3d_objective": cfg.objective, "c3d_timesteps": cfg.timesteps, "c3d_logit_mean": cfg.logit_mean,
             "c3d_logit_std": cfg.logit_std}  # what draw_timesteps, noisy and target_for read back
    if cfg.objective == "rectified_flow":
        if sampler not in (None, "ddpm", "euler"):  # "ddpm": the training scheduler of every stage
            raise ValueError(f"sampler {sampler!r} does not sample rectified flow; use euler")
        from diffusers import FlowMatchEulerDiscreteScheduler

        flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.train_timesteps, shift=1.0)
        flow.register_to_config(**draws)
        return flow
    from diffusers import DDPMScheduler  # each scheduler imported when asked for: DPM-Solver++ pulls in scipy.stats

    ddpm = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False)
    if sampler in (None, "ddpm"):
        chosen = ddpm
    elif sampler == "ddim":
        from diffusers import DDIMScheduler

        chosen = DDIMScheduler.from_config(ddpm.config)
    elif sampler == "dpm":
        from diffusers import DPMSolverMultistepScheduler

        chosen = DPMSolverMultistepScheduler.from_config(ddpm.config, algorithm_type="dpmsolver++")
    else:
        raise ValueError(f"sampler {sampler!r} does not sample the ddpm objective; choose from ddim, dpm, ddpm")
    chosen.register_to_config(**draws)
    return chosen


def is_flow(scheduler) -> bool:
    return scheduler.config.get("c3d_objective", "ddpm") == "rectified_flow"


def draw_timesteps(scheduler, n: int, device="cpu") -> torch.Tensor:
    """(n,) training timesteps: uniform or logit-normal over the schedule; integers in [0, T) for
    DDPM, floats t = s * T with s in (0, 1) for rectified flow."""
    cfg, T = scheduler.config, scheduler.config.num_train_timesteps
    if cfg.get("c3d_timesteps", "uniform") == "logit_normal":
        u = torch.sigmoid(torch.randn(n) * cfg["c3d_logit_std"] + cfg["c3d_logit_mean"])
    elif not is_flow(scheduler):
        return torch.randint(0, T, (n,), device=device)  # uniform DDPM, as every shipped model was trained
    else:
        u = torch.rand(n)
    u = u.to(device)
    return u * T if is_flow(scheduler) else (u * T).long().clamp_max(T - 1)


def noisy(scheduler, x0, noise, t) -> torch.Tensor:
    """x_t of the forward process at timesteps t (B,)."""
    if is_flow(scheduler):
        s = (t.float() / scheduler.config.num_train_timesteps).view(-1, *[1] * (x0.dim() - 1))
        return (1 - s) * x0 + s * noise
    return scheduler.add_noise(x0, noise, t)


def target_for(scheduler, x0, noise, timesteps):
    """What the network is trained to output: the flow's velocity eps - x0, or the DDPM
    parametrisation's target."""
    if is_flow(scheduler):
        return noise - x0
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return x0
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def diffusion_loss(denoise, x0: torch.Tensor, scheduler, loss: str = "l1", parts: bool = False):
    """One Monte-Carlo estimate of the training objective for a batch of clean samples ``x0``
    (B, ...): a random t per sample, noise, the network's prediction, L1 (or L2) to the target.
    ``denoise(x_t, t)`` is the network with its conditions bound. ``parts``: (loss, (x_t, t, pred)),
    for a loss that also looks at the prediction (``clean_estimate``)."""
    noise = torch.randn_like(x0)
    t = draw_timesteps(scheduler, x0.shape[0], x0.device)
    x_t = noisy(scheduler, x0, noise, t)
    pred = denoise(x_t, t)
    target = target_for(scheduler, x0, noise, t)
    value = F.l1_loss(pred, target) if loss == "l1" else F.mse_loss(pred, target)
    return (value, (x_t, t, pred)) if parts else value


def clean_estimate(scheduler, x_t, t, out) -> torch.Tensor:
    """The model's estimate of x_0 from its output ``out`` at x_t (t: one timestep, or one per
    sample, (B,)): x_t - s v for the flow; for DDPM by its parametrisation (DPM-Solver's steps do
    not return it, DDIM's and DDPM's do)."""
    per_sample = torch.is_tensor(t) and t.dim() == 1
    shape = (-1, *[1] * (x_t.dim() - 1))
    if is_flow(scheduler):
        s = (t.float().view(shape) if per_sample else float(t)) / scheduler.config.num_train_timesteps
        return x_t - s * out
    alphas = scheduler.alphas_cumprod.to(x_t.device)
    a = alphas[t.long()].view(shape) if per_sample else alphas[int(t)]
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return out
    if kind == "epsilon":
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * out  # v-prediction


@torch.no_grad()
def sample(denoise, shape, cfg, steps: int | None = None, sampler: str | None = None,
           generator: torch.Generator | None = None, device="cpu", x_T: torch.Tensor | None = None,
           callback=None, scheduler=None, progress: dict | None = None, x_start: torch.Tensor | None = None,
           strength: float = 1.0) -> torch.Tensor:
    """Draw samples of ``shape`` by running the reverse process with ``steps`` model calls.

    ``denoise(x_t, t)`` returns the model output under the scheduler's parametrisation, t a (B,)
    long tensor. ``generator`` (a CPU torch.Generator) makes the draw reproducible on any device;
    ``x_T`` gives the initial noise instead. ``scheduler``: one built before by ``make_scheduler``
    (reused across calls). ``progress``: tqdm options of a progress bar over the steps (None: no
    bar). ``callback(i, t, x_t, x0_pred)`` sees every step (for the notebooks' step sliders).

    ``x_start`` with ``strength`` < 1 starts partway (SDEdit, Meng et al. 2022): the clean
    ``x_start`` is noised to the first of the last ``round(strength * steps)`` timesteps by the
    forward process (with ``x_T`` as the noise) and only those steps are run -- a probe of how
    much of a sample the model gets right once the coarse structure is given."""
    scheduler = scheduler or make_scheduler(cfg, sampler or cfg.sampler)
    scheduler.set_timesteps(steps or cfg.sample_steps)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator)
    flow = is_flow(scheduler)
    x = x_T.to(device) * getattr(scheduler, "init_noise_sigma", 1.0)
    timesteps = scheduler.timesteps
    if x_start is not None and strength < 1.0:
        keep = max(1, round(strength * len(timesteps)))
        timesteps = timesteps[len(timesteps) - keep:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(len(scheduler.timesteps) - keep)
        x0, eps = x_start.to(device), x_T.to(device)
        x = scheduler.scale_noise(x0, timesteps[:1], eps) if flow else scheduler.add_noise(x0, eps, timesteps[:1])
    if progress is not None and not progress.get("disable"):
        from tqdm.auto import tqdm

        timesteps = tqdm(timesteps, **{"desc": "denoise", "leave": False, **progress})
    # the stochastic samplers draw their step noise from `generator`; the others take no generator
    noise = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(timesteps):
        tt = torch.full((shape[0],), float(t), device=device) if flow else \
            torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        out = denoise(x if flow else scheduler.scale_model_input(x, t), tt)
        step = scheduler.step(out, t, x, **noise)
        if callback is not None:
            x0 = getattr(step, "pred_original_sample", None)
            callback(i, int(t), x, x0 if x0 is not None else clean_estimate(scheduler, x, t, out))
        x = step.prev_sample
    return x
