"""The diffusion objective and sampling loop around diffusers' schedulers, shared by the
diffusion prior (stage 3) and the triplane diffusion (stage 4).

Forward process (DDPM): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I), with the
cosine schedule (``squaredcos_cap_v2``) over T = 1000 steps. The network's target depends on the
parametrisation (``DiffusionConfig.prediction_type``):

    prior  "sample":        target x_0, L1 loss (the paper's prior, docs/paper.md §4)
    UNet   "v_prediction":  target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, MSE (our choice, §5)

    L = E_{x_0, t, eps} || f(x_t, t, cond) - target ||             (L1, or squared with ``loss="l2"``)

Sampling starts from x_T ~ N(0, I) and walks down a few timesteps with DDIM (deterministic,
eta = 0), DPM-Solver++ or ancestral DDPM. The caller supplies ``denoise(x_t, t)`` (the model's
output under its parametrisation), so guidance (single or dual) stays with the model that knows
its conditions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import Config, ConfigError


@dataclass
class DiffusionConfig(Config):
    """The noise schedule and sampler around diffusers' schedulers (paper: not found; our choice)."""

    train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"  # cosine schedule
    prediction_type: str = "sample"  # the model predicts x0 (docs/paper.md §4: "output: the clean e_s")
    sampler: str = "ddim"  # "ddim", "dpm" (DPM-Solver++) or "ddpm"
    sample_steps: int = 25

    def __post_init__(self):
        """Refuse (ConfigError naming the field) a schedule or sampler we cannot build, so that a bad
        checkpoint config fails when it is loaded rather than after a diffusion run."""
        choices = {"sampler": SAMPLERS, "prediction_type": PREDICTION_TYPES, "beta_schedule": BETA_SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"diffusion.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 1 <= self.train_timesteps <= 100_000:
            raise ConfigError(f"diffusion.train_timesteps must be in 1..100000, got {self.train_timesteps}")
        if not 1 <= self.sample_steps <= self.train_timesteps:
            raise ConfigError(f"diffusion.sample_steps must be in 1..{self.train_timesteps} (the steps of the noise "
                              f"schedule), got {self.sample_steps}")


SAMPLERS = ("ddim", "dpm", "ddpm")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def make_scheduler(cfg, sampler: str | None = "ddpm"):
    """A diffusers scheduler for ``cfg`` (a DiffusionConfig): "ddpm" (training and
    ancestral sampling), "ddim" or "dpm" (DPM-Solver++ multistep). No clipping of x_0: our data
    (scaled embeddings, normalised latents) is not confined to [-1, 1]."""
    from diffusers import DDPMScheduler  # each scheduler imported when asked for: DPM-Solver++ pulls in scipy.stats

    ddpm = DDPMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False)
    if sampler in (None, "ddpm"):
        return ddpm
    if sampler == "ddim":
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(ddpm.config)
    if sampler == "dpm":
        from diffusers import DPMSolverMultistepScheduler

        return DPMSolverMultistepScheduler.from_config(ddpm.config, algorithm_type="dpmsolver++")
    raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")


def target_for(scheduler, x0, noise, timesteps):
    """What the network is trained to output under the scheduler's parametrisation."""
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return x0
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def diffusion_loss(denoise, x0: torch.Tensor, scheduler, loss: str = "l1") -> torch.Tensor:
    """One Monte-Carlo estimate of the training objective for a batch of clean samples ``x0``
    (B, ...): a random t per sample, noise, the network's prediction, L1 (or L2) to the target.
    ``denoise(x_t, t)`` is the network with its conditions bound."""
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    pred = denoise(x_t, t)
    target = target_for(scheduler, x0, noise, t)
    return F.l1_loss(pred, target) if loss == "l1" else F.mse_loss(pred, target)


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
    x = x_T.to(device) * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    if x_start is not None and strength < 1.0:
        keep = max(1, round(strength * len(timesteps)))
        timesteps = timesteps[len(timesteps) - keep:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(len(scheduler.timesteps) - keep)
        x = scheduler.add_noise(x_start.to(device), x_T.to(device), timesteps[:1])
    if progress is not None and not progress.get("disable"):
        from tqdm.auto import tqdm

        timesteps = tqdm(timesteps, **{"desc": "denoise", "leave": False, **progress})
    for i, t in enumerate(timesteps):
        tt = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        out = denoise(scheduler.scale_model_input(x, t), tt)
        step = scheduler.step(out, t, x, generator=generator)
        if callback is not None:
            x0 = getattr(step, "pred_original_sample", None)
            callback(i, int(t), x, x0 if x0 is not None else out)
        x = step.prev_sample
    return x
