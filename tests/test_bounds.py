"""The bounds of ``evaluate diagnose --bounds`` (evaluation/bounds.py): retrieval finds the nearest
training object, the regression learns a map it can learn, and the per-band loss is the UNet's
training loss (an oracle scores zero in every band, a wrong model does not)."""

from types import SimpleNamespace

import torch

from compress3d_lite.diffusion import DiffusionConfig, make_scheduler
from compress3d_lite.evaluation.bounds import N_BANDS, band_losses, retrieve
from compress3d_lite.stages.start import fit_start


def _gallery(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    e_s = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    e_i = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    z = (e_s @ torch.randn(d, 3 * 2 * 2 * 2, generator=g)).view(n, 3, 2, 2, 2)  # a linear map of e_s
    return {"z": z, "e_s": e_s, "e_i": e_i}


def test_retrieval_returns_the_latent_of_the_nearest_shape_embedding():
    gallery = _gallery()
    query = gallery["e_s"][[5, 17]] + 0.01 * torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(retrieve(gallery, query), gallery["z"][[5, 17]])


def test_the_regression_bound_learns_a_map_from_the_embeddings():
    """The regression bound is the pipeline's start estimate, fitted on the gallery."""
    gallery = _gallery()
    baseline = float(gallery["z"].pow(2).mean())  # predicting zeros
    model, final = fit_start(gallery["z"], gallery["e_i"], gallery["e_s"], steps=300, batch=32)
    assert final < 0.1 * baseline
    with torch.no_grad():
        again = torch.nn.functional.mse_loss(model(gallery["e_i"], gallery["e_s"]), gallery["z"])
    assert float(again) < 0.1 * baseline


class OracleUNet(torch.nn.Module):
    """Knows the clean latents: returns the exact v-prediction target (or zeros, when ``wrong``)."""

    def __init__(self, z, wrong=False):
        super().__init__()
        self.z, self.wrong = z, wrong
        self.diffusion_cfg = DiffusionConfig(prediction_type="v_prediction")
        self.scheduler = make_scheduler(self.diffusion_cfg, "ddpm")

    def forward(self, x_t, t, e_i, e_s):
        if self.wrong:
            return torch.zeros_like(x_t)
        a = self.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        eps = (x_t - a.sqrt() * self.z) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * self.z


def test_the_per_band_loss_is_zero_for_an_oracle_and_not_for_a_wrong_model():
    z = torch.randn(4, 3, 2, 2, 2, generator=torch.Generator().manual_seed(2))
    e = torch.zeros(4, 8)
    for wrong in (False, True):
        bench = SimpleNamespace(pipe=SimpleNamespace(unet=OracleUNet(z, wrong), device="cpu"))
        bands = band_losses(bench, z, e, e, draws=2)
        assert len(bands) == N_BANDS and bands[0]["band"] == [0.0, 0.1] and bands[-1]["band"] == [0.9, 1.0]
        losses = [b["loss"] for b in bands]
        assert all(x > 0.5 for x in losses) if wrong else max(losses) < 1e-6


class FlowOracleUNet(torch.nn.Module):
    """Knows the clean latents of a rectified-flow UNet: returns the velocity eps - x0 that
    x_t = (1 - s) x0 + s eps implies (or zeros, when ``wrong``)."""

    def __init__(self, z, wrong=False):
        super().__init__()
        self.z, self.wrong = z, wrong
        self.diffusion_cfg = DiffusionConfig(objective="rectified_flow", sampler="euler",
                                             timesteps="logit_normal", logit_mean=1.0)

    def forward(self, x_t, t, e_i, e_s):
        assert t.is_floating_point(), "a flow UNet is called with continuous timesteps"
        if self.wrong:
            return torch.zeros_like(x_t)
        s = (t / self.diffusion_cfg.train_timesteps).view(-1, 1, 1, 1, 1)
        eps = (x_t - (1 - s) * self.z) / s.clamp_min(1e-6)
        return eps - self.z


def test_the_per_band_loss_runs_on_a_rectified_flow_unet():
    z = torch.randn(4, 3, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    e = torch.zeros(4, 8)
    for wrong in (False, True):
        bench = SimpleNamespace(pipe=SimpleNamespace(unet=FlowOracleUNet(z, wrong), device="cpu"))
        losses = [b["loss"] for b in band_losses(bench, z, e, e, draws=2)]
        assert len(losses) == N_BANDS
        # the velocity's size is |eps - x0|^2 ~ 2 in every band; the oracle's error is round-off,
        # which 1 / s magnifies near t = 0 (the first band)
        assert all(x > 1.0 for x in losses) if wrong else max(losses[1:]) < 1e-6
