"""Presets: named configurations a user starts from and may then edit.

`--preset NAME` on the command line (other options win over it) and the window's Preset menu both
take them from here; `mnistgui train --list-presets` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    description: str
    settings: dict

    def config(self, **overrides) -> Config:
        settings = {**self.settings, **overrides}
        return Config.for_model(settings.pop("model"), **settings)


PRESETS = {
    preset.name: preset
    for preset in [
        Preset("notebook-convnet", "Notebook convnet",
               "the notebook's convnet, as published: N(0, 0.01) weights, RMSprop, dropout",
               dict(model="convnet")),
        Preset("modern-convnet", "Modern convnet",
               "the notebook's convnet with biases, He initialisation, Adam with a one-cycle schedule, "
               "random 2-pixel shifts, 10-degree rotations and 10% scaling, shuffling, 14 epochs (about 9 "
               "minutes on 2 cores)",
               dict(model="convnet", use_bias=True, init="he", optimizer="adam", learning_rate=0.003,
                    schedule="onecycle", augment_shift=2.0, augment_rotate=10.0, augment_scale=0.1, shuffle=True,
                    epochs=14, conv_dropout=0.1, hidden_dropout=0.3)),
        Preset("modern-mlp", "Modern MLP",
               "the dropout MLP with biases, He initialisation, AdamW (decoupled weight decay) with a cosine "
               "schedule and warm-up, small shifts and rotations, shuffling, 20 epochs",
               dict(model="dropout_mlp", hidden_sizes=(1024, 1024), use_bias=True, init="he", optimizer="adam",
                    learning_rate=0.001, weight_decay=0.0001, schedule="cosine", warmup_epochs=1.0,
                    augment_shift=1.5, augment_rotate=8.0, shuffle=True, epochs=20)),
        Preset("robust-convnet", "Robust convnet",
               "the modern convnet trained on adversarial examples (FGSM with a random start, eps 0.3, step "
               "1.25 eps, as Wong et al. 2020), 15 epochs, guarded against catastrophic overfitting; check it "
               "with `mnistgui attack --method pgd`",
               dict(model="convnet", use_bias=True, init="he", optimizer="adam", learning_rate=0.005,
                    schedule="onecycle", batch_size=100, shuffle=True, epochs=15, conv_dropout=0.0,
                    hidden_dropout=0.0, adv_training="fgsm", adv_eps=0.3)),
    ]
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
