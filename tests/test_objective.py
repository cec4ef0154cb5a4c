"""The objective is a choice in DiffusionConfig (diffusion.py): DDPM or rectified flow, uniform or
logit-normal training timesteps, through one contract. The loss written by hand equals the
library's on the same draws; an oracle model gives x0 back through every sampler; a checkpoint
records its objective and loads with it."""

import pytest
import torch

from compress3d_lite.config import ConfigError
from compress3d_lite.diffusion import DiffusionConfig, diffusion_loss, draw_timesteps, make_scheduler, sample


def test_the_rectified_flow_loss_written_by_hand_equals_the_library_on_the_same_draws():
    cfg = DiffusionConfig(objective="rectified_flow", sampler="euler", timesteps="logit_normal", logit_mean=1.0)
    scheduler = make_scheduler(cfg, "ddpm")
    x0 = torch.randn(16, 3, 4, generator=torch.Generator().manual_seed(0))
    model = lambda x, t: 0.5 * x + t.view(-1, 1, 1) / 1000  # noqa: E731  any fixed function of (x_t, t)
    torch.manual_seed(7)
    library = diffusion_loss(model, x0, scheduler, "l2")
    torch.manual_seed(7)
    eps = torch.randn_like(x0)
    s = torch.sigmoid(torch.randn(16) * 1.0 + 1.0)  # logit-normal, mean 1: toward the noise
    x_t = (1 - s.view(-1, 1, 1)) * x0 + s.view(-1, 1, 1) * eps
    by_hand = ((model(x_t, s * 1000) - (eps - x0)) ** 2).mean()
    assert torch.allclose(library, by_hand)


def test_the_ddpm_v_loss_by_hand_equals_the_library():
    scheduler = make_scheduler(DiffusionConfig(prediction_type="v_prediction"), "ddpm")
    x0 = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    model = lambda x, t: -x  # noqa: E731
    torch.manual_seed(3)
    library = diffusion_loss(model, x0, scheduler, "l2")
    torch.manual_seed(3)
    eps = torch.randn_like(x0)
    t = torch.randint(0, 1000, (8,))
    a = scheduler.alphas_cumprod[t].view(-1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    assert torch.allclose(library, ((model(x_t, t) - (a.sqrt() * eps - (1 - a).sqrt() * x0)) ** 2).mean(), atol=1e-6)


def test_logit_normal_timesteps_lean_toward_the_noise():
    for objective, sampler in (("ddpm", "ddim"), ("rectified_flow", "euler")):
        cfg = DiffusionConfig(objective=objective, sampler=sampler, timesteps="logit_normal", logit_mean=1.0)
        torch.manual_seed(0)
        t = draw_timesteps(make_scheduler(cfg, "ddpm"), 20_000).float() / 1000
        assert 0.66 < float(t.mean()) < 0.74 and float(t.min()) >= 0 and float(t.max()) < 1


@pytest.mark.parametrize("objective, prediction, sampler", [
    ("ddpm", "v_prediction", "ddim"), ("ddpm", "v_prediction", "dpm"), ("ddpm", "sample", "ddpm"),
    ("rectified_flow", "v_prediction", "euler"),
])
def test_an_oracle_model_gives_x0_back_through_each_sampler(objective, prediction, sampler):
    cfg = DiffusionConfig(objective=objective, prediction_type=prediction, sampler=sampler, sample_steps=8)
    x0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    train = make_scheduler(cfg, "ddpm")

    def oracle(x_t, t):  # the exact target for the x_t it is given
        if objective == "rectified_flow":
            s = (t.float() / 1000).view(-1, 1)
            return (x_t - x0) / s  # = eps - x0 on the straight path through x_t
        a = train.alphas_cumprod[t].view(-1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0 if prediction == "v_prediction" else x0

    seen = []
    out = sample(oracle, (3, 4), cfg, generator=torch.Generator().manual_seed(0),
                 callback=lambda i, t, x, x0_pred: seen.append(x0_pred))
    assert torch.allclose(out, x0, atol=1e-3)
    assert torch.allclose(seen[0], x0, atol=1e-3)  # the step callback's clean estimate, already at the first step
    start = sample(oracle, (3, 4), cfg, generator=torch.Generator().manual_seed(1), x_start=x0, strength=0.5)
    assert torch.allclose(start, x0, atol=1e-3)  # SDEdit's partial start, both objectives


def test_a_sampler_of_the_other_objective_is_refused_and_old_configs_load_as_ddpm():
    with pytest.raises(ConfigError, match="rectified flow samples with euler"):
        DiffusionConfig(objective="rectified_flow", sampler="ddim")
    with pytest.raises(ConfigError, match="diffusion.timesteps must be one of uniform, logit_normal"):
        DiffusionConfig(timesteps="beta")
    old = {"train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
           "sampler": "dpm", "sample_steps": 20}
    assert DiffusionConfig.from_dict(old).objective == "ddpm"


def test_a_checkpoint_records_its_objective_and_loads_with_it(tmp_path):
    from compress3d_lite.models.triplane_unet import TriplaneUNet, UNetConfig

    cfg = DiffusionConfig(objective="rectified_flow", sampler="euler", timesteps="logit_normal", logit_mean=0.5,
                          prediction_type="v_prediction")
    unet = TriplaneUNet(UNetConfig(latent_channels=4, latent_res=8, channels=(8, 16), embed_dim=8, heads=2,
                                   time_dim=8), cfg)
    unet.save_pretrained(tmp_path / "unet")
    back = TriplaneUNet.load(tmp_path / "unet")
    assert back.diffusion_cfg == cfg
    z = torch.randn(2, 3, 4, 8, 8)
    e = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    loss = back.train().loss(z, e, e, make_scheduler(back.diffusion_cfg, "ddpm"))
    assert torch.isfinite(loss)
