"""The one typed params object, loaded once from params.yaml at a stage's edge.

One set of defaults: a setting params.yaml states has no default here unless it is the same value (the
gate, the window, the augmentation params.yaml sets, the export size and `leakage.random_split` have none:
a params file must state them); tests/unit/test_params.py fails when a default here disagrees with params.yaml.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Strict):
    generated_export: str
    source: str
    store: str
    ingested: str
    validation: str
    prepared: str
    augment_preview: str
    models: str
    leakage: str = "reports/leakage"
    report: str = "reports/report"
    checkpoints: str = ".checkpoints"  # per-epoch training state; outside DVC outs so it survives a re-run
    backbone: str = "data/backbone"    # the CT ResNet-152 converted to Keras weights (backbone stage)
    features: str = "data/features"    # its pooled features per prepared image (features stage)
    evaluation: str
    predictions: str = "reports/predictions"  # evaluate's val/test probabilities + CIs, read by report
    monitor: str = "reports/monitor"  # monitor.json (verdict), summaries.csv, drift report, alert ledger
    registration: str
    package: str


class StorageParams(_Strict):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    retry_mode: Literal["standard", "adaptive"] = "standard"  # botocore's retry mode
    retry_attempts: int = Field(5, ge=1)  # S3 calls: botocore's total_max_attempts before a clear failure
    connect_timeout_s: float = Field(5, gt=0)
    read_timeout_s: float = Field(30, gt=0)


ReconstructionKernelName = Literal["B30f", "B45f", "B70f"]  # the named kernels of generate's phantom.KERNELS


class GenerateParams(_Strict):
    seed: int = 7
    patients_per_class: int = Field(ge=1)
    slices_per_patient: int = Field(ge=1)
    matrix: int = Field(512, ge=64)
    patient_offset: int = Field(0, ge=0)          # patient indices start here: another export's new people
    reconstruction_kernel: ReconstructionKernelName | None = None  # every patient on this kernel; None = each its own
    noise_scale: float = Field(1.0, gt=0)         # multiplies every patient's noise sigma
    class_mix: dict[str, float] | None = None     # class -> multiplier of patients_per_class (0 drops the class)
    manufacturer: str = Field("KIDNEY-CT PHANTOM", min_length=1, max_length=64, pattern=r"^[^\\]*$")  # DICOM LO

    @field_validator("class_mix")
    @classmethod
    def _multipliers_not_negative(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value and any(not 0 <= multiplier < float("inf") for multiplier in value.values()):
            raise ValueError("each class_mix multiplier is a number >= 0 (0 drops the class)")
        return value

    def patients_of(self, label: str) -> int:
        """Patients drawn for class `label`: patients_per_class times its class_mix multiplier (1.0 if unnamed),
        rounded, at least 1 unless the multiplier is 0."""
        multiplier = (self.class_mix or {}).get(label, 1.0)
        return max(round(self.patients_per_class * multiplier), 1) if multiplier > 0 else 0

    def unknown_mix_classes(self, classes: list[str]) -> list[str]:
        """The keys of class_mix that are not among `classes` (sorted)."""
        return sorted(set(self.class_mix or {}) - set(classes))


class IngestParams(_Strict):
    salt_env: str = "KIDNEY_CT_SALT"
    default_salt: str = "kidney-ct-default-salt"
    dicomweb_url: str | None = None  # a DICOMweb root (QIDO-RS/WADO-RS): pull from the PACS, not paths.source
    dicomweb_user: str | None = None
    dicomweb_password_env: str = "KIDNEY_CT_DICOMWEB_PASSWORD"  # env var holding the PACS password
    dicomweb_label_attribute: str = "StudyDescription"  # the attribute that names the class
    dicomweb_timeout_s: float = Field(30, gt=0)
    dicomweb_page_size: int = Field(100, ge=1)
    dicomweb_retry_attempts: int = Field(4, ge=1)
    dicomweb_retry_backoff_s: float = Field(0.5, ge=0)
    accumulate: bool = False  # folder exports: False = the export is the whole dataset; True = each export adds
    #   to what earlier runs ingested (weekly exports of new studies), like a PACS pull


class ValidateParams(_Strict):
    min_width: int = 64
    max_width: int = 4096
    min_class_share: float = Field(0.05, ge=0, le=1)
    max_class_share: float = Field(0.7, ge=0, le=1)


class PreprocessParams(_Strict):
    image_size: int = Field(180, ge=8)
    window_center: float                          # the CT window (HU): no default, params.yaml states it
    window_width: float = Field(gt=0)
    test_fraction: float = Field(0.25, gt=0, lt=1)
    val_fraction: float = Field(0.2, gt=0, lt=1)
    duplicate_threshold: float = Field(0.92, gt=0, le=1)
    duplicate_size: int = Field(32, ge=4)
    seed: int = 13
    body_crop: bool = False                       # crop each slice to the body's bounding box, background set to
    #   air (components.common.imaging.crop_to_body), in the one function training and serving share


class AugmentParams(_Strict):
    rotation: float = Field(ge=0, le=0.5)         # no default for the four params.yaml states; the rest: 0 = off
    zoom: float = Field(ge=0, lt=1)
    contrast: float = Field(ge=0, lt=1)
    flip: bool                                    # random left-right flip (anatomy is near-symmetric)
    translate: float = Field(0.0, ge=0, lt=1)     # random shift, fraction of the side
    brightness: float = Field(0.0, ge=0, lt=1)    # random brightness offset (window level jitter)
    noise: float = Field(0.0, ge=0, lt=1)         # Gaussian noise std on [0, 1] pixels (scanner noise)
    blur: float = Field(0.0, ge=0, le=3)          # largest Gaussian blur sigma in pixels (reconstruction kernels)
    elastic: float = Field(0.0, ge=0, le=1)       # elastic deformation magnitude (Keras scale; 0.1 is mild)
    preview_samples: int = Field(4, ge=1)


Architecture = Literal["paper_cnn", "compact_cnn", "efficientnet_b0", "mobilenet_v2", "resnet50", "inception_v3", "vit",
                       "ct_resnet152"]
BackboneLayer = Literal["layer1", "layer2", "layer3", "layer4"]
LAYER_BLOCKS = {"layer1": 3, "layer2": 8, "layer3": 36, "layer4": 3}  # ResNet-152's bottleneck blocks per layer


def check_blocks(layers: list[str], blocks: int | None) -> None:
    """Refuse a cut deeper than the deepest of `layers` has blocks."""
    if blocks is not None and layers:
        deepest = max(layers, key=list(LAYER_BLOCKS).index)
        if blocks > LAYER_BLOCKS[deepest]:
            raise ValueError(f"deepest_layer_blocks: {deepest} has {LAYER_BLOCKS[deepest]} blocks, not {blocks}")
FeaturePooling = Literal["mean", "max"]  # how a backbone layer's map becomes features: over all positions
FIXED_WIDTH = ("efficientnet_b0", "resnet50", "inception_v3")  # keras.applications without a width knob


class CandidateParams(_Strict):
    architecture: Architecture = "paper_cnn"
    image_size: int | None = Field(None, ge=32)   # resize inside the model; None = the prepared arrays' size
    width: float = Field(1.0, gt=0)               # channel multiplier (paper CNN, MobileNetV2 alpha, ViT)
    weights: str = "none"                         # none | imagenet | path to a local .h5/.weights.h5 file
    filters: list[int] = [16, 32, 64, 128]        # paper CNN conv blocks
    dense_units: int = 128                        # paper CNN dense layer; head width of the others
    patch_size: int = Field(12, ge=2)             # ViT patch side (180 / 12 = 15 x 15 patches)
    vit_dim: int = Field(64, ge=8)                # ViT token width (times `width`)
    vit_depth: int = Field(4, ge=1)               # ViT transformer blocks
    vit_heads: int = Field(4, ge=1)
    intensity_channels: list[float] = []          # extra input channels: pixels above each threshold of [0, 1],
                                                  #   stretched (a "dense structures" window: stones, bone)
    roi: list[float] = []                         # [top, bottom, left, right] fractions of the slice the model
                                                  #   looks at (cropped inside the model); [] = the whole slice
    global_pooling: Literal["avg_max", "max", "softmax"] = "avg_max"  # compact CNN: average + max, max alone, or
    #                                               softmax-weighted (a smooth maximum that learns sooner)
    pooling_temperature: float = Field(2.0, gt=0)  # softmax pooling: the scores' starting scale (large = max)
    batchnorm_momentum: float = Field(0.99, gt=0, lt=1)  # compact CNN; lower (0.9) when a run has few steps,
                                                  #   so the moving statistics catch up before validation
    dropout: float = Field(0.5, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to 5% over the epochs (steadier ends)
    weight_decay: float = Field(0.0, ge=0)        # > 0: AdamW with this decoupled weight decay
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    loss_weighting: Literal["none", "class", "class_and_group"] = "none"  # balance classes (and scan series)
    weighted_sampling: bool = False               # draw each epoch's images with those weights (loss unweighted)
    epoch_images: int | None = Field(None, ge=1)  # images per epoch; None = the training set once
    epochs: int = Field(12, ge=1)
    batch_size: int = Field(16, ge=1)
    patience: int = Field(4, ge=1)
    early_stopping: Literal["loss", "macro_f1"] = "loss"  # validation score that picks the best epoch
    min_epochs: int = Field(0, ge=0)              # epochs trained before early stopping may stop or pick
    backbone_layers: list[BackboneLayer] = ["layer3"]  # ct_resnet152: pooled outputs the head reads
    backbone_pooling: dict[BackboneLayer, list[FeaturePooling]] = {}  # per layer: mean and/or max; absent = mean
    deepest_layer_blocks: int | None = Field(None, ge=1)  # ct_resnet152: the deepest of backbone_layers read after
    #                                               this many of its bottleneck blocks (None = all; layer3 has 36):
    #                                               equal to backbone.deepest_layer_blocks, which cached the features
    trainable: str = Field("frozen", pattern=r"^(frozen|all|last_blocks_[1-9][0-9]*)$")  # ct_resnet152: frozen =
    #                                               head on cached features; last_blocks_N / all = fine-tune
    head_c: list[float] = [0.01, 0.1, 1.0]        # ct_resnet152 frozen: logistic-regression C values; the
    #                                               grouped validation split picks one

    def feature_blocks(self) -> list[tuple[str, str]]:
        """ct_resnet152: the (layer, pooling) feature blocks the head reads, in the model's order."""
        return [(layer, pooling) for layer in self.backbone_layers for pooling in self.backbone_pooling.get(layer, ["mean"])]

    @model_validator(mode="after")
    def _width_supported(self) -> CandidateParams:
        if self.architecture == "ct_resnet152":
            if self.width != 1.0 or self.intensity_channels or self.roi:
                raise ValueError("ct_resnet152 has a fixed width and one whole grey input: leave `width` at 1.0 "
                                 "and `intensity_channels` and `roi` empty")
            if self.weights == "imagenet":
                raise ValueError("ct_resnet152 reads the backbone stage's conversion: set `weights: converted` "
                                 "(or none: random weights, for tests; or a converted .npz file)")
            if not self.backbone_layers or len(set(self.backbone_layers)) != len(self.backbone_layers):
                raise ValueError("backbone_layers: list one or more distinct layers, e.g. [layer3]")
            unknown = sorted(set(self.backbone_pooling) - set(self.backbone_layers))
            if unknown or any(not p or len(set(p)) != len(p) for p in self.backbone_pooling.values()):
                raise ValueError(f"backbone_pooling: one or more distinct poolings per layer of backbone_layers "
                                 f"({'not in backbone_layers: ' + ', '.join(unknown) if unknown else 'e.g. [mean, max]'})")
            if not self.head_c or min(self.head_c) <= 0:
                raise ValueError("head_c: list one or more positive C values")
            check_blocks(self.backbone_layers, self.deepest_layer_blocks)
            return self
        if "pooling_temperature" in self.model_fields_set and (self.architecture, self.global_pooling) != (
                "compact_cnn", "softmax"):
            raise ValueError("pooling_temperature is the starting scale of the compact CNN's softmax pooling: set "
                             "`global_pooling: softmax` on a compact_cnn, or leave it out")
        if self.architecture in FIXED_WIDTH and self.width != 1.0:
            raise ValueError(f"{self.architecture} has a fixed width: leave `width` at 1.0")
        if self.weights != "none" and self.architecture in ("paper_cnn", "compact_cnn", "vit"):
            raise ValueError(f"{self.architecture} has no pretrained weights: set `weights: none`")
        if self.intensity_channels and self.architecture not in ("paper_cnn", "compact_cnn", "vit"):
            raise ValueError(f"{self.architecture} takes three grey channels: leave `intensity_channels` empty")
        if self.weighted_sampling and self.loss_weighting == "none":
            raise ValueError("weighted_sampling draws by the loss weights: set loss_weighting to class or "
                             "class_and_group")
        if self.roi and (len(self.roi) != 4 or not (0 <= self.roi[0] < self.roi[1] <= 1
                                                     and 0 <= self.roi[2] < self.roi[3] <= 1)):
            raise ValueError("roi is [top, bottom, left, right] fractions with top < bottom and left < right")
        if self.roi and self.architecture not in ("paper_cnn", "compact_cnn"):
            raise ValueError(f"{self.architecture} takes the whole slice: leave `roi` empty")
        if any(not 0 <= t < 1 for t in self.intensity_channels):
            raise ValueError("each of `intensity_channels` is a threshold in [0, 1)")
        return self


class RuntimeParams(_Strict):
    """How training uses the hardware (the same for every candidate of a run)."""

    jit_compile: Literal["auto"] | bool = "auto"  # XLA; "auto" = Keras' choice (on for JAX, off for TF on CPU)
    mixed_precision: bool = False                 # mixed_float16 when a GPU is present; ignored on CPU
    distribution: Literal["none", "data_parallel"] = "none"  # keras.distribution.DataParallel (JAX backend)
    loader_workers: int = Field(2, ge=1)          # threads assembling batches from the memory-mapped arrays
    fused_batchnorm: bool = True                  # batch normalisation through TensorFlow's fused kernel while
    #                                               training (the same arithmetic, 25-35% less time an epoch)


class BackboneParams(_Strict):
    """The CT ResNet-152 (backbone stage) and its cached features (features stage)."""

    enabled: bool = False                         # true: convert the checkpoint and cache features
    image_size: int | None = Field(None, ge=32)   # side the backbone sees; None = the prepared arrays' size
    layers: list[BackboneLayer] = ["layer3", "layer4"]  # pooled outputs cached per image (one forward pass)
    pooling: list[FeaturePooling] = ["mean"]      # each layer's map pooled these ways (a candidate picks)
    deepest_layer_blocks: int | None = Field(None, ge=1)  # the deepest of `layers` read after this many of its
    #   bottleneck blocks (None = all): a slice costs ~linearly in layer3's 36 blocks; candidates say the same number
    batch_size: int = Field(16, ge=1)
    runtime: Literal["openvino", "tensorflow"] = "openvino"  # what runs the forward passes (checked against Keras)
    copies: list[Literal["shift", "aug"]] = []    # also cache the features of each slice's copy as another scanner
    #   shows it (components.lib.scanner): shift = the outside test's sharper kernel + noise (the grouped CV scores
    #   it beside the plain one); aug = a random scanner per slice (the heads also train on it). One forward pass each

    @model_validator(mode="after")
    def _blocks_exist(self) -> BackboneParams:
        check_blocks(self.layers, self.deepest_layer_blocks)
        return self


class TrainParams(_Strict):
    seed: int = 1
    runtime: RuntimeParams = RuntimeParams()
    candidates: dict[str, CandidateParams]

    @field_validator("candidates")
    @classmethod
    def _at_least_one(cls, value: dict[str, CandidateParams]) -> dict[str, CandidateParams]:
        if not value:
            raise ValueError("list at least one candidate under train.candidates")
        return value


class EvaluateParams(_Strict):
    """The gate has no default: a params file must state every minimum (0 switches a check off), so a file
    without an `evaluate:` block is refused rather than silently gated at some number written here."""

    gate_metric: Literal["accuracy", "macro_f1"] = "macro_f1"
    min_accuracy: float = Field(ge=0, le=1)
    min_macro_f1: float = Field(ge=0, le=1)
    min_class_recall: float = Field(ge=0, le=1)  # every class's recall at least this (0 = no check)
    min_series_macro_f1: float = Field(ge=0, le=1)  # study verdicts' macro-F1 at least this (0 = no check)
    series_pooling: Literal["mean", "max", "geometric", "vote", "gem", "learned"] = "mean"  # slice probabilities ->
    #   study verdict; learned: a series head on each class's mean/max/top-k slice log-probability, fitted on
    #   out-of-fold predictions (components.common.study_model)
    decision_rule: Literal["none", "temperature", "offsets"] = "temperature"  # on the study verdict, fitted on out-of-fold
    #   series predictions and carried with the model: temperature = calibrated probabilities (likelihood; the
    #   verdict unchanged); offsets = the temperature and per-class logit offsets (macro-F1: it moves verdicts)
    protocol: Literal["holdout", "cv_refit"] = "holdout"  # holdout: certify on the test split; cv_refit: certify
    #   by the leakage stage's grouped CV of the same recipe, and train the deployed model on every labelled series
    gate_bound: Literal["point", "ci_low"] = "point"  # what meets the minimums: the estimate or its lower 95% bound


class RegisterParams(_Strict):
    model_name: str = "kidney-ct-classifier"
    non_inferiority_margin: float = Field(0.02, ge=0, le=1)  # the challenger becomes champion unless the lower
    #   95% bound of its paired macro-F1 difference with the champion, on the same held-out cases, is below -margin
    min_comparison_series: int = Field(5, ge=1)  # fewer new held-out series than this: compare on every test series


class MonitorParams(_Strict):
    """What the monitor stage compares (the champion's training data vs what arrived since) and when it alerts."""

    max_reference_images: int = Field(5000, ge=10)  # the champion's labelled images described once, by series
    min_new_series: int = Field(3, ge=1)  # fewer new scan series than this: too few to judge drift
    alpha: float = Field(0.01, gt=0, lt=1)  # chance of a false drift call per pass, shared by all its tests
    #   (Bonferroni): a column drifts when its test's p-value is below alpha / tests ...
    min_distance: float = Field(0.1, ge=0)  # ... and the shift is big enough to matter: normed Wasserstein distance
    #   (in reference standard deviations) for numbers, Jensen-Shannon distance for categories
    max_f1_drop: float = Field(0.05, ge=0, le=1)  # "degraded": the champion's macro-F1 on the new labelled cases
    #   is more than this below its certified figure and the upper 95% bound is below it too
    alert_webhook: str | None = None  # POST the verdict here on drift or degradation (Slack/Teams/any receiver)
    alert_timeout_s: float = Field(10, gt=0)
    alert_attempts: int = Field(3, ge=1)


class PredictParams(_Strict):
    """components.predict: the DICOM Structured Report of each scored series (--sr, --store-to-pacs)."""

    clinical_use: bool = False  # False (shadow): every SR is marked INVESTIGATIONAL, not for diagnosis; True only
    #   where the deployment is cleared for clinical use (the SR then reads as decision support)
    sr_top_slices: int = Field(3, ge=1, le=16)  # slices referenced as the ones that drove the verdict
    conformal_coverage: float | None = Field(0.90, gt=0, lt=1)  # each study's conformal set holds the true class
    #   with this probability (certified by grouped CV); null: one verdict, no set
    conformal_method: Literal["lac", "aps"] = "lac"  # lac: smallest sets; aps: sets adapt to flat probabilities
    conformal_mondrian: bool = False  # class-conditional: the coverage holds within every class (needs about
    #   coverage / (1 - coverage) calibration series per class; a class with fewer is in every set)


class LeakageParams(_Strict):
    candidate: str | None = None  # None = the first of train.candidates
    random_split: bool  # also train on a random (leaky) split, to show the leak: no default, params.yaml states it
    cv_folds: int = Field(0, ge=0)
    seed: int = 5
    tta: list[Literal["flip", "shift"]] = []  # also score test-time augmentation (same models, more views)
    ensemble: int = Field(1, ge=1)  # >1: also score the mean of this many models per fold (seeds train.seed + k);
    #                                 the plain score stays the first model's


class ReportParams(_Strict):
    bootstrap_resamples: int = Field(1000, ge=10)
    calibration_bins: int = Field(10, ge=2)
    gradcam_per_class: int = Field(2, ge=0)
    gradcam_energy_per_class: int = Field(8, ge=0)  # validation slices per class whose Grad-CAM energy outside the
    #   body evaluate measures (0 = not measured)


class MlflowParams(_Strict):
    tracking_uri: str = "sqlite:///mlruns.db"
    experiment: str = "kidney-ct"


class PackageParams(_Strict):
    bento_name: str = "kidney_ct_classifier"
    bentoml_home: str = ".bentoml"
    runtime: Literal["openvino", "tensorflow"] = "openvino"  # what scores slices in the service, predict, monitor
    runtime_precision: Literal["f32", "bf16", "int8"] = "f32"  # bf16: ~2x on CPUs with AVX-512 BF16/AMX; int8: NNCF
    #   static quantisation calibrated on 300 training slices; either is checked against Keras like f32
    max_probability_diff: float = Field(1e-3, gt=0, le=0.5)  # converted vs Keras on any validation slice
    max_study_probability_diff: float = Field(1e-3, gt=0, le=0.5)  # on any validation series' study verdict
    #   probabilities (what the verdict, the conformal set and the page's study answer read)
    min_slice_agreement: float = Field(0.99, ge=0.5, le=1.0)  # same predicted class; every series verdict must agree


class ClusterParams(_Strict):
    """Where a stage runs as a container (Airflow's KubernetesPodOperator and Kubeflow Pipelines alike)."""

    namespace: str = "kidney-ct"                  # Airflow's pods (KFP runs in its own profile namespace)
    cpu_image: str = ""                           # repo@sha256:<digest> of the image build; "" = set by the
    gpu_image: str = ""                           #   orchestrator (KFP --images, env KIDNEY_CT_KUBERNETES)
    workspace_pvc: str = "kidney-ct-workspace"    # the shared volume: params file and outputs (Airflow: a
    workspace: str = "/workspace"                 #   git + DVC checkout), mounted here, the stages' cwd
    config_map: str = "kidney-ct-config"          # MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL
    secret: str = "kidney-ct-secrets"             # AWS keys, KIDNEY_CT_SALT, PACS password
    config_keys: tuple[str, ...] = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL")
    secret_keys: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "KIDNEY_CT_SALT",
                                    "KIDNEY_CT_DICOMWEB_PASSWORD")
    train_gpus: int = Field(1, ge=0)              # nvidia.com/gpu per training container
    train_cpu: str = "2"                          # requests of a training container
    train_memory: str = "8G"


# `register` is a params key and also ABCMeta.register on pydantic models; the shadowing is harmless.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(_Strict):
        classes: list[str]
        paths: Paths
        storage: StorageParams = StorageParams()
        generate: GenerateParams
        ingest: IngestParams = IngestParams()
        validate_: ValidateParams = Field(ValidateParams(), alias="validate")
        preprocess: PreprocessParams
        augment: AugmentParams
        backbone: BackboneParams = BackboneParams()
        train: TrainParams
        evaluate: EvaluateParams  # required: the gate is stated, never defaulted
        register: RegisterParams = RegisterParams()
        monitor: MonitorParams = MonitorParams()
        predict: PredictParams = PredictParams()
        leakage: LeakageParams
        report: ReportParams = ReportParams()
        mlflow: MlflowParams = MlflowParams()
        package: PackageParams = PackageParams()
        cluster: ClusterParams = ClusterParams()

        @model_validator(mode="after")
        def _classes_distinct(self) -> Params:
            if len(set(self.classes)) != len(self.classes) or len(self.classes) < 2:
                raise ValueError("`classes` must list at least two distinct labels")
            return self

        @model_validator(mode="after")
        def _class_mix_names_classes(self) -> Params:
            unknown = self.generate.unknown_mix_classes(self.classes)
            if unknown:
                raise ValueError(f"generate.class_mix names {', '.join(map(repr, unknown))}, not among `classes` "
                                 f"({', '.join(self.classes)})")
            if not any(self.generate.patients_of(label) for label in self.classes):
                raise ValueError("generate.class_mix drops every class: give at least one a multiplier > 0")
            return self

        @model_validator(mode="after")
        def _cv_refit_has_its_cv(self) -> Params:
            if self.evaluate.protocol != "cv_refit":
                return self
            if self.leakage.cv_folds < 2:
                raise ValueError("evaluate.protocol cv_refit certifies the model by the grouped CV of its recipe: "
                                 "set leakage.cv_folds to 2 or more (5 for real data)")
            if self.leakage.candidate not in (None, *self.train.candidates):
                raise ValueError(f"evaluate.protocol cv_refit certifies leakage.candidate by its grouped CV, and "
                                 f"{self.leakage.candidate!r} is not in train.candidates")
            return self

        def certified_candidates(self) -> list[str]:
            """The candidates evaluate scores: all (holdout), or under cv_refit the one the grouped CV scored."""
            if self.evaluate.protocol == "cv_refit":
                return [self.leakage.candidate or next(iter(self.train.candidates))]
            return list(self.train.candidates)


class ParamsError(Exception):
    """params.yaml is missing or invalid; the message says which key and why."""


def error_lines(exc: ValidationError) -> str:
    """One indented `dotted.key: reason` line per error of a failed validation."""
    return "\n".join(f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())


def parse_params(raw: dict) -> Params:
    """Validate a params mapping into the typed object, with readable errors."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError("invalid params:\n" + error_lines(exc)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ParamsError with a clear message on failure."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    return parse_params(raw)
