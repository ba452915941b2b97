"""Evaluation task registry: DataComp's 38 scored tasks (+2 unscored) and the built-in offline suite.

Every task is read from a folder in CLIP_benchmark's webdataset layout (``<root>/<folder>/``):
classification tasks hold ``classnames.txt`` + ``zeroshot_classification_templates.txt`` at the root
and ``test/{i}.tar`` with ``{key}.png|jpg|webp`` + ``{key}.cls``; retrieval tasks hold
``test/{i}.tar`` with an image + ``{key}.txt`` (one caption per line). Class names and templates come
from the task folder (DataComp's download writes them there). Folder names are CLIP_benchmark's
``wds_<name>`` datasets without the prefix. A task whose folder is absent is reported missing,
never scored.

Main metrics and groups follow DataComp (Gadre et al. 2023, github.com/mlfoundations/datacomp): acc1 by default, mean per-class recall for
Caltech-101, FGVC Aircraft, Flowers and Pets, mean of both directions' recall@1 for Flickr30k and
MSCOCO; its special metrics (WinoGAViL jaccard, iWildCam macro-F1, FMoW worst-region, Dollar Street
and GeoDE worst-group) need annotations the wds classification layout lacks: those tasks are listed,
and reported as "metric unavailable" unless their results come from elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

GROUPS = ["ImageNet", "ImageNet dist. shifts", "VTAB", "Retrieval", "Other"]
SPECIAL = {"jaccard_score", "macro_f1", "worst_region_acc", "worst_group_acc"}


@dataclass(frozen=True)
class Task:
    key: str  # DataComp's task key, or builtin/<name>
    folder: str  # folder under the data root
    group: str
    metric: str  # main metric: acc1, mean_per_class_recall, mean_recall@1, or a special one
    kind: str = "classification"  # or "retrieval"
    scored: bool = True  # counted in the average


def _t(key, folder, group, metric="acc1", kind="classification", scored=True) -> Task:
    return Task(key, folder, group, metric, kind, scored)


DATACOMP: list[Task] = [
    _t("imagenet1k", "imagenet1k", "ImageNet"),
    _t("imagenet_sketch", "imagenet_sketch", "ImageNet dist. shifts"),
    _t("imagenetv2", "imagenetv2", "ImageNet dist. shifts"),
    _t("imagenet-a", "imagenet-a", "ImageNet dist. shifts"),
    _t("imagenet-o", "imagenet-o", "ImageNet dist. shifts"),
    _t("imagenet-r", "imagenet-r", "ImageNet dist. shifts"),
    _t("objectnet", "objectnet", "ImageNet dist. shifts"),
    _t("vtab/caltech101", "vtab-caltech101", "VTAB", "mean_per_class_recall"),
    _t("vtab/cifar100", "vtab-cifar100", "VTAB"),
    _t("vtab/clevr_count_all", "vtab-clevr_count_all", "VTAB"),
    _t("vtab/clevr_closest_object_distance", "vtab-clevr_closest_object_distance", "VTAB"),
    _t("vtab/dtd", "vtab-dtd", "VTAB"),
    _t("vtab/eurosat", "vtab-eurosat", "VTAB"),
    _t("vtab/kitti_closest_vehicle_distance", "vtab-kitti_closest_vehicle_distance", "VTAB"),
    _t("vtab/flowers", "vtab-flowers", "VTAB", "mean_per_class_recall"),
    _t("vtab/pets", "vtab-pets", "VTAB", "mean_per_class_recall"),
    _t("vtab/pcam", "vtab-pcam", "VTAB"),
    _t("vtab/resisc45", "vtab-resisc45", "VTAB"),
    _t("vtab/svhn", "vtab-svhn", "VTAB"),
    _t("sun397", "sun397", "VTAB"),
    _t("retrieval/flickr_1k_test_image_text_retrieval", "flickr30k", "Retrieval", "mean_recall@1", "retrieval"),
    _t("retrieval/mscoco_2014_5k_test_image_text_retrieval", "mscoco_captions", "Retrieval", "mean_recall@1",
       "retrieval"),
    _t("misc/winogavil", "winogavil", "Retrieval", "jaccard_score", "retrieval"),
    _t("cifar10", "cifar10", "Other"),
    _t("country211", "country211", "Other"),
    _t("fgvc_aircraft", "fgvc_aircraft", "Other", "mean_per_class_recall"),
    _t("food101", "food101", "Other"),
    _t("gtsrb", "gtsrb", "Other"),
    _t("mnist", "mnist", "Other"),
    _t("voc2007", "voc2007", "Other"),
    _t("renderedsst2", "renderedsst2", "Other"),
    _t("cars", "cars", "Other"),
    _t("stl10", "stl10", "Other"),
    _t("wilds/iwildcam", "wilds-iwildcam", "Other", "macro_f1"),
    _t("wilds/camelyon17", "wilds-camelyon17", "Other"),
    _t("wilds/fmow", "wilds-fmow", "Other", "worst_region_acc"),
    _t("dollar_street", "dollar_street", "Other", "worst_group_acc"),
    _t("geode", "geode", "Other", "worst_group_acc"),
    _t("fairface", "fairface", "Other", "acc1", scored=False),
    _t("utkface", "utkface", "Other", "acc1", scored=False),
]

# The built-in offline suite (written by app/sample_pool/suite.py), mirroring DataComp's groups.
SHIFTS = ["inverted", "rotated", "low_contrast", "edges", "cropped"]
BUILTIN: list[Task] = (
    [_t("builtin/fashion_mnist", "fashion_mnist", "ImageNet")]
    + [_t(f"builtin/fashion_mnist_{s}", f"fashion_mnist_{s}", "ImageNet dist. shifts") for s in SHIFTS]
    + [_t("builtin/openclipart_topics", "openclipart_topics", "VTAB", "mean_per_class_recall"),
       _t("builtin/emoji_names", "emoji_names", "VTAB"),
       _t("builtin/openclipart_retrieval", "openclipart_retrieval", "Retrieval", "mean_recall@1", "retrieval"),
       _t("builtin/emoji_retrieval", "emoji_retrieval", "Retrieval", "mean_recall@1", "retrieval")]
)
# Further tasks from Debian data no pool draws from (app/sample_pool/tasks_extra.py): fonts, WordNet,
# icon themes, Symbola glyphs, flags. Each has a train split beside its test split; mean per-class
# recall where classes are unbalanced, as DataComp does.
EXTRA: list[Task] = [
    _t("builtin/rendered_house_numbers", "rendered_house_numbers", "VTAB"),  # SVHN
    _t("builtin/icon_contexts", "icon_contexts", "VTAB", "mean_per_class_recall"),
    _t("builtin/icon_names", "icon_names", "VTAB", "mean_per_class_recall"),  # Caltech-101
    _t("builtin/emoji_groups", "emoji_groups", "VTAB", "mean_per_class_recall"),
    _t("builtin/object_counts", "object_counts", "VTAB"),  # CLEVR count
    _t("builtin/icon_retrieval", "icon_retrieval", "Retrieval", "mean_recall@1", "retrieval"),
    _t("builtin/flag_retrieval", "flag_retrieval", "Retrieval", "mean_recall@1", "retrieval"),
    _t("builtin/rendered_sentiment", "rendered_sentiment", "Other"),  # Rendered SST2
    _t("builtin/rendered_digits", "rendered_digits", "Other"),  # MNIST
    _t("builtin/rendered_letters", "rendered_letters", "Other"),
    _t("builtin/rendered_word_topics", "rendered_word_topics", "Other", "mean_per_class_recall"),
    _t("builtin/emoji_subgroups", "emoji_subgroups", "Other", "mean_per_class_recall"),
    _t("builtin/flag_countries", "flag_countries", "Other"),  # Country211
]
BUILTIN = BUILTIN + EXTRA
# for choosing between strategies without looking at the reported suite (sample pool's val/ folder)
VALIDATION: list[Task] = (
    [_t("val/fashion_mnist", "fashion_mnist", "ImageNet")]
    + [_t(f"val/fashion_mnist_{s}", f"fashion_mnist_{s}", "ImageNet dist. shifts") for s in SHIFTS]
    + [_t("val/openclipart_retrieval", "openclipart_retrieval", "Retrieval", "mean_recall@1", "retrieval"),
       _t("val/emoji_retrieval", "emoji_retrieval", "Retrieval", "mean_recall@1", "retrieval")]
    + [_t("val/" + t.folder, t.folder, t.group, t.metric, t.kind) for t in EXTRA]  # other items, same kinds
)
SUITES = {"datacomp": DATACOMP, "builtin": BUILTIN, "validation": VALIDATION}


# Bump when a task's data, classes, templates, metric or group changes (DataComp's averages moved
# when one task changed: mlfoundations/datacomp#18). Results files record it with ``fingerprint``.
REGISTRY_VERSION = 2  # 2: the EXTRA tasks


def fingerprint(tasks: list[Task]) -> str:
    """A short hash of the tasks' definitions (key, folder, group, metric, kind, scored)."""
    import hashlib
    import json

    rows = sorted([t.key, t.folder, t.group, t.metric, t.kind, t.scored] for t in tasks)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def suite(name: str) -> list[Task]:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}: one of {', '.join(SUITES)}")
    return SUITES[name]
