"""``vstore train`` configuration (one dataclass, saved in every run's metrics and model.pt)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

TRAINED_MODELS = ("linear", "transformer", "transformer-reference", "random-frame")
BASELINES = ("knn", "zero-shot")
ALL_MODELS = TRAINED_MODELS + BASELINES
RECIPES = ("default", "reference")

# What each recipe sets when the user does not (None below); a dict is per model, "*" for the
# others. ``reference`` is the reference study's recipe exactly; ``default`` converges
# (measured in docs/classifiers.md): features standardised with the training set's mean and std
# (stored in the model), AdamW with a cosine decay of the learning rate to 0 over the run, more
# epochs, and the weights of the epoch with the lowest validation loss, on the split's
# validation part or, for the ``transformer``, on a part of the training videos held out when
# the split has none (its temporal part is kept only while it beats its linear part there).
RECIPE_SETTINGS: dict[str, dict[str, Any]] = {
    "reference": {"epochs": 10, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant",
                  "standardize": False, "keep_best": False, "holdout": 0.0},
    "default": {"epochs": {"linear": 100, "random-frame": 100, "*": 40}, "batch_size": 32, "lr": 1e-3,
                "weight_decay": 1e-4, "schedule": "cosine", "standardize": True, "keep_best": True,
                "holdout": {"transformer": 0.15, "*": 0.0}},
}
MEMMAP_CHOICES = {"auto": None, "on": True, "off": False}  # the CLI's --memmap -> TrainConfig.memmap


def memmap_choice(memmap: Optional[bool]) -> str:
    """``TrainConfig.memmap`` -> the CLI's --memmap name (auto | on | off)."""
    return next(name for name, value in MEMMAP_CHOICES.items() if value is memmap)


def recipe_value(recipe: str, name: str, model: str) -> Any:
    """What ``recipe`` sets for ``name`` when training ``model``."""
    value = RECIPE_SETTINGS[recipe][name]
    return value.get(model, value["*"]) if isinstance(value, dict) else value


@dataclass
class TrainConfig:
    model: str = "linear"  # linear | transformer | transformer-reference | random-frame | knn | zero-shot
    mixup: bool = False  # mixup augmentation (trained models)
    alpha: float = 0.4  # mixup lambda ~ Beta(alpha, alpha); the reference study used 0.4
    recipe: str = "default"  # default (converges) | reference (the study's: Adam 1e-3, 10 epochs, batch 16)
    epochs: Optional[int] = None  # None: the recipe's (default: 100 linear / random-frame, 40 transformer; reference: 10)
    batch_size: Optional[int] = None  # None: the recipe's (default 32, reference 16)
    lr: Optional[float] = None  # None: the recipe's (1e-3 both)
    weight_decay: Optional[float] = None  # None: the recipe's (default 1e-4 with AdamW, reference 0 with Adam)
    schedule: Optional[str] = None  # constant | cosine (to 0 over the run); None: the recipe's
    standardize: Optional[bool] = None  # standardise features with the training set's statistics
    keep_best: Optional[bool] = None  # keep the weights of the best validation-loss epoch (on the val part)
    holdout: Optional[float] = None  # without a val split: this fraction of each label's training videos is held
    #   out (hash-ranked) as the val part of the transformer's temporal stage; None: the recipe's
    #   (default: 0.15 for transformer, 0 for the others; reference: 0)
    linear_part: bool = True  # transformer: contain the linear model (classifiers.models); False: the temporal part
    #   alone, as before it had one (for comparisons: benchmarks/bench_quality.py --compare)
    linear_epochs: Optional[int] = None  # transformer: epochs of its linear part (None: the recipe's linear epochs)
    shuffle_labels: bool = False  # a noise control: train (and validate) on the labels permuted, test on the real ones
    seeds: int = 1  # repeat with seeds first_seed..first_seed+seeds-1; metrics are mean +/- std over them
    first_seed: int = 0  # the first seed (two runs with different first seeds are independent repeats)
    folds: int = 1  # > 1: stratified K-fold cross-validation (classifiers.folds); 1 = the stored split
    repeats: int = 1  # cross-validation repeated with this many different fold assignments
    cv_pool: str = "train"  # folds over: train (the split's train + val; its test part held out) | all
    eval_every: int = 0  # evaluate every this many steps (0 = at the end of every epoch)
    device: str = "auto"  # auto = CUDA when present
    amp: bool = True  # mixed precision on CUDA (no effect on CPU)
    layers: int = 1  # transformer encoder layers
    max_frames: Optional[int] = None  # cap frames per video (evenly subsampled); None = all stored
    finetune: bool = False  # random-frame: train the CLIP image encoder too...
    encoder_lr: float = 1e-5  # ...at this learning rate
    memory_budget_mb: Optional[int] = None  # frames above this are streamed (default: half of free RAM)
    memmap: Optional[bool] = None  # frames from the store's memory-mapped training view: None = above the budget
    k: int = 10  # knn: neighbours
    level: str = "video"  # knn: video (mean embeddings) | frame (frame votes summed per video)
    prompt: str = "a video about {label}"  # zero-shot: text prompt per label

    def __post_init__(self) -> None:
        if self.model not in ALL_MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {', '.join(ALL_MODELS)}")
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        for name in ("epochs", "batch_size", "lr", "weight_decay", "schedule", "standardize", "keep_best", "holdout"):
            if getattr(self, name) is None:
                setattr(self, name, recipe_value(self.recipe, name, self.model))
        if self.linear_epochs is None:
            self.linear_epochs = recipe_value(self.recipe, "epochs", "linear")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be constant or cosine, got {self.schedule!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be >= 0, got {self.first_seed}")
        if self.shuffle_labels and self.model in BASELINES:
            raise ValueError(f"--shuffle-labels applies to trained models, not {self.model}")
        for name in ("epochs", "batch_size", "seeds", "layers", "k", "folds", "repeats", "linear_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.encoder_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.folds == 1 and self.repeats > 1:
            raise ValueError("--repeats needs --folds K (K >= 2)")
        if self.cv_pool not in ("train", "all"):
            raise ValueError(f"cv_pool must be train or all, got {self.cv_pool!r}")
        if self.level not in ("video", "frame"):
            raise ValueError(f"level must be video or frame, got {self.level!r}")
        if "{label}" not in self.prompt:
            raise ValueError(f"prompt must contain {{label}}, got {self.prompt!r}")
        if self.mixup and self.model in BASELINES:
            raise ValueError(f"--mixup applies to trained models, not {self.model}")
        if self.finetune and self.model != "random-frame":
            raise ValueError("--finetune applies to random-frame only")

    @property
    def run_name(self) -> str:
        return self.model + (" + mixup" if self.mixup else "") + (" (shuffled labels)" if self.shuffle_labels else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        if "recipe" not in d:  # saved before recipes existed: Adam, constant rate, raw features
            d = {**d, "recipe": "reference"}
        return cls(**{k: v for k, v in d.items() if k in known})
