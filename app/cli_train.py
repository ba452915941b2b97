"""``curate train | eval | finetune | probe``: the training and evaluation commands; app/cli.py adds
them to the ``curate`` parser (``add_train(sub)``, ...).

    curate train --objective clip|simclr|moco|mae   CLIP (default) or self-supervised pretraining of an image tower
                                                 (or NAME: an installed package's objective)
    curate eval                                  zero-shot evaluation; probes for image-only (SSL) checkpoints
    curate finetune --lora R                     LoRA (R > 0) or full (R = 0) fine-tuning of a CLIP checkpoint
    curate probe                                 linear probe + k-NN of an image tower on classification tasks

Data, task folders, checkpoints and run folders may be URLs (s3://, gs://, az://; https:// to read):
credentials come from the environment, fsspec's config, or ``--storage-options FILE`` (shardio/storage.py).
"""
from __future__ import annotations

import json
from pathlib import Path

LOSSES = ["clip", "siglip"]  # training.train.TrainConfig.loss; a test keeps the two equal
SSL_OPTIONS = ("moco_version", "temperature", "queue_size", "momentum")


def use_storage_options(a) -> None:
    """``--storage-options FILE``: a YAML/JSON mapping ``scheme -> fsspec options`` (or a curation config,
    whose ``storage_options`` block is used) for every URL this command opens. Never echoed."""
    if not getattr(a, "storage_options", None):
        return
    from shardio import storage

    path = Path(a.storage_options)
    if not path.is_file():
        raise FileNotFoundError(f"storage options file {path} does not exist")
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    data = data.get("storage_options", data) if isinstance(data, dict) else data
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: give a mapping of URL scheme to fsspec options, e.g. {{s3: {{profile: x}}}}")
    storage.configure(data)


def add_storage_options(parser) -> None:
    parser.add_argument("--storage-options", default=None, metavar="FILE",
                        help="YAML/JSON file: per URL scheme, fsspec options for URLs (endpoint_url, profile, "
                             "key, secret, ...); a curation config's storage_options block works too")


def _objective_settings(path: str | None) -> dict:
    """``--objective-config FILE``: the objective's own settings, a YAML/JSON mapping (options given on
    the command line win)."""
    if path is None:
        return {}
    if not Path(path).is_file():
        raise FileNotFoundError(f"objective config {path} does not exist")
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"objective config {path}: give a mapping of settings, not {type(data).__name__}")
    return data


def _train_plugin(a, settings: dict) -> None:
    """An objective from an installed package (training/objective.py ``installed``)."""
    from training.loop import fit
    from training.objective import BUILTIN, installed

    found = installed()
    if a.objective not in found:
        raise ValueError(f"unknown objective {a.objective!r}: built-in {', '.join(BUILTIN)}; from installed "
                         f"packages: {', '.join(sorted(found)) or 'none (entry point group curate.objectives)'}")
    extra = [k for k in SSL_OPTIONS + ("loss", "accum_steps", "decode") if getattr(a, k) is not None]
    if extra:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in extra)}: built-in objectives' options; "
                         f"give {a.objective}'s settings in --objective-config")
    cls = found[a.objective]
    given = {k: v for k, v in _given(a).items() if v is not None}
    cfg = cls.Config(train_data=a.data, out_dir=a.out, seed=a.seed, device=a.device, **{**settings, **given})
    _print(fit(cfg, cls(cfg)))


def cmd_train(a) -> None:
    use_storage_options(a)
    from training.objective import BUILTIN

    settings = _objective_settings(a.objective_config)
    if a.objective not in BUILTIN:
        return _train_plugin(a, settings)
    if a.objective == "clip":
        return _train_clip(a, settings)
    if a.objective == "mae":
        from training.mae import MAEConfig as SSLConfig, pretrain
    else:
        from training.ssl import SSLConfig, pretrain

    if a.loss not in (None, "clip") or a.accum_steps not in (None, 1):
        raise ValueError("--loss and --accum-steps are CLIP options; SSL objectives have their own loss")
    given = {**_given(a), "moco_version": a.moco_version, "temperature": a.temperature, "queue_size": a.queue_size,
             "momentum": a.momentum}
    cfg = SSLConfig(train_data=a.data, out_dir=a.out, seed=a.seed, device=a.device, objective=a.objective,
                    **{**settings, **{k: v for k, v in given.items() if v is not None}})
    _print(pretrain(cfg))


def _given(a) -> dict:
    """The options every objective shares (None: the preset's or the config's default)."""
    return {"preset": a.preset, "model": a.model, "samples_seen": a.samples_seen, "batch_size": a.batch_size,
            "lr": a.lr, "init_checkpoint": a.init, "workers": a.workers, "precision": a.precision,
            "grad_checkpointing": a.grad_checkpointing or None}


def _train_clip(a, settings: dict) -> None:
    extra = [k for k in SSL_OPTIONS if getattr(a, k) is not None]
    if extra:
        raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in extra)} need --objective simclr|moco")
    from training.train import TrainConfig, train

    given = {**_given(a), "accum_steps": a.accum_steps, "loss": a.loss, "decode": a.decode}
    cfg = TrainConfig(train_data=a.data, out_dir=a.out, seed=a.seed, device=a.device,
                      **{**settings, **{k: v for k, v in given.items() if v is not None}})
    r = train(cfg)
    _print(r)
    if r.get("bad_samples"):
        print("samples skipped, by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(r["bad_samples"].items())))


def cmd_eval(a) -> None:
    use_storage_options(a)
    from training.knn import is_image_only

    if is_image_only(a.checkpoint):
        print(f"{a.checkpoint} is an image-only (SSL) checkpoint: linear probe and k-NN instead of zero-shot")
        a.shots, a.knn = a.few_shot or 10, 20
        return cmd_probe(a)
    if a.suite:
        from training.evalsuite import run_suite

        s = run_suite(a.checkpoint, a.data_root, a.suite, results=a.results, only=a.tasks, weights=a.weights,
                      few_shot=a.few_shot)
        print(s["markdown"])
        return
    if not a.task:
        raise ValueError("give --task FOLDER (one task) or --suite builtin|datacomp with --data-root")
    from training.zeroshot import evaluate_zeroshot

    r = evaluate_zeroshot(a.checkpoint, a.task, weights=a.weights)
    if a.few_shot:
        from training.probe import linear_probe

        r["few_shot"] = linear_probe(a.checkpoint, a.task, k=a.few_shot, weights=a.weights)
    if a.results:
        _append(a.results, r)
    print(json.dumps(r, indent=2, default=str))


def cmd_finetune(a) -> None:
    use_storage_options(a)
    from training.lora import FinetuneConfig, finetune

    given = {"samples_seen": a.samples_seen, "batch_size": a.batch_size, "lr": a.lr, "wd": a.wd,
             "weights": a.weights, "workers": a.workers, "precision": a.precision, "targets": a.targets,
             "alpha": a.alpha, "accum_steps": a.accum_steps}
    cfg = FinetuneConfig(model=a.checkpoint, train_data=a.data, out_dir=a.out, lora=a.lora, seed=a.seed,
                         device=a.device, **{k: v for k, v in given.items() if v is not None})
    _print(finetune(cfg))


def cmd_probe(a) -> None:
    use_storage_options(a)
    if a.suite:
        from training.knn import probe_suite

        s = probe_suite(a.checkpoint, a.data_root, a.suite, results=a.results, only=a.tasks, shots=a.shots,
                        neighbours=a.knn, weights=a.weights)
        print(json.dumps({k: v for k, v in s.items() if k != "rows"}, indent=2))
        for r in s["rows"]:
            scores = {k: round(r[k][r["metric"]], 4) for k in ("linear", "knn", "zero_shot") if k in r}
            print(f"{r['task']:<40} {r['metric']:<22} {scores or r.get('error')}")
        return
    if not a.task:
        raise ValueError("give --task FOLDER (one task) or --suite builtin|datacomp with --data-root")
    from training.knn import image_probes
    from training.model import load_for_eval

    clip, device = load_for_eval(a.checkpoint, a.weights)
    from shardio.storage import redact

    r = {"task": redact(a.task), "checkpoint": redact(a.checkpoint), **image_probes(clip, a.task, a.shots, a.knn, device=device)}
    if a.results:
        _append(a.results, r)
    print(json.dumps(r, indent=2))


def _append(results: str, record: dict) -> None:
    """One row appended to a results jsonl, a local file or a bucket URL."""
    from training.runfolder import ResultsFile

    with ResultsFile(results) as out:
        out.append(record)


def _print(r: dict) -> None:
    print(json.dumps({k: v for k, v in r.items() if not isinstance(v, (dict, list))}, indent=2, default=str))


def add_train(sub) -> None:
    t = sub.add_parser("train", help="train a CLIP model (or an image tower: --objective simclr|moco|mae)",
                       description="CLIP contrastive training at a fixed samples-seen budget.")
    t.add_argument("--data", required=True, help="training shards (folder, braced pattern or glob; or URLs)")
    t.add_argument("--out", required=True, help="run folder (checkpoints/, final/, metrics.jsonl), or a bucket URL")
    t.add_argument("--preset", default=None, help="DataComp scale (debug, small, medium, large, xlarge) or CPU "
                   "preset (cpu-tiny, cpu-demo); options below override it")
    t.add_argument("--model", default=None, help="open_clip name, preset, JSON config or checkpoint folder "
                   "(default: curate-tiny)")
    t.add_argument("--samples-seen", type=int, default=None, help="training budget in samples (or from --preset)")
    t.add_argument("--batch-size", type=int, default=None, help="global batch size (default: 256)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the model's tuned one)")
    t.add_argument("--accum-steps", type=int, default=None, help="gradient accumulation micro-batches (exact)")
    t.add_argument("--loss", choices=LOSSES, default=None, help="ClipLoss or SigLipLoss (default: clip)")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None, help="auto: bf16 on GPU")
    t.add_argument("--grad-checkpointing", action="store_true", help="trade compute for activation memory")
    t.add_argument("--decode", choices=["auto", "cpu", "device"], default=None,
                   help="JPEG decoding of training images (default auto: on the GPU where its decoder works)")
    t.add_argument("--init", default=None, help="start from this checkpoint folder (or its URL)")
    t.add_argument("--workers", type=int, default=None, help="data loader processes per rank (default: 0 CPU, 4 GPU)")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    t.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    add_storage_options(t)
    g = t.add_argument_group("self-supervised objectives (image tower only, captions ignored)")
    g.add_argument("--objective", default="clip", metavar="NAME",
                   help="clip (with --loss), simclr, moco or mae (pretraining of the image tower), or an objective "
                        "an installed package declares (entry point curate.objectives) (default: clip)")
    g.add_argument("--objective-config", default=None, metavar="FILE",
                   help="YAML/JSON mapping of the objective's own settings (e.g. mask_ratio for mae); command-line "
                        "options win")
    g.add_argument("--moco-version", type=int, choices=[2, 3], default=None,
                   help="MoCo v2 (queue of keys) or v3 (prediction head, no queue) (default: 2)")
    g.add_argument("--temperature", type=float, default=None, help="default: simclr 0.5, moco 0.2")
    g.add_argument("--queue-size", type=int, default=None, help="MoCo v2 queue length (default: 4096)")
    g.add_argument("--momentum", type=float, default=None, help="MoCo key encoder momentum (default: 0.99)")
    t.set_defaults(func=cmd_train)


def add_eval(sub) -> None:
    e = sub.add_parser("eval", help="zero-shot evaluation", description="Zero-shot classification of a checkpoint "
                       "(and a few-shot linear probe of its image encoder); an image-only (SSL) checkpoint gets "
                       "the linear probe and k-NN instead.")
    e.add_argument("--checkpoint", required=True, help="checkpoint folder or its URL (or open_clip model spec)")
    e.add_argument("--task", default=None, help="one task folder (or URL) in CLIP_benchmark's wds layout")
    e.add_argument("--suite", choices=["builtin", "datacomp"], default=None,
                   help="a whole suite (schemas/tasks.py); resumable, writes jsonl + md + csv")
    e.add_argument("--data-root", default="data/sample_pool/eval", help="folder or bucket URL holding the suite's "
                   "task folders (default: data/sample_pool/eval)")
    e.add_argument("--tasks", nargs="*", default=None, help="only these task keys or folders")
    e.add_argument("--weights", default=None, help="weights file when --checkpoint is a model name "
                   "(e.g. an open_clip_train epoch_N.pt)")
    e.add_argument("--few-shot", type=int, default=0, metavar="K", help="also fit a K-shot linear probe")
    e.add_argument("--results", default=None, help="append results to this jsonl, a file or bucket URL (suite default: "
                   "<checkpoint>/eval_<suite>.jsonl, or ./eval_<suite>.jsonl for a URL or model name)")
    add_storage_options(e)
    e.set_defaults(func=cmd_eval)


def add_finetune(sub) -> None:
    f = sub.add_parser("finetune", help="LoRA or full fine-tuning of a CLIP checkpoint",
                       description="Adapt a CLIP checkpoint to image-text shards with the contrastive loss: LoRA "
                                   "adapters on the attention and MLP projections (merged on save), or every weight.")
    f.add_argument("--checkpoint", required=True, help="checkpoint folder, or an open_clip name with --weights")
    f.add_argument("--weights", default=None, help="open_clip weights file for a named model")
    f.add_argument("--data", required=True, help="training shards (folder, braced pattern or glob)")
    f.add_argument("--out", required=True, help="run folder (checkpoints/, final/, metrics.jsonl)")
    f.add_argument("--lora", type=int, required=True, metavar="R", help="LoRA rank; 0 = full fine-tune")
    f.add_argument("--alpha", type=float, default=None, help="LoRA alpha, update scaled by alpha/R (default: 8)")
    f.add_argument("--targets", nargs="+", default=None, help="module names to adapt (default: attn c_fc c_proj)")
    f.add_argument("--samples-seen", type=int, required=True, help="training budget in samples")
    f.add_argument("--batch-size", type=int, default=None, help="global batch size (default: 256)")
    f.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3 LoRA, 1e-4 full)")
    f.add_argument("--wd", type=float, default=None, help="weight decay (default: 0.1)")
    f.add_argument("--accum-steps", type=int, default=None, help="gradient accumulation micro-batches (exact)")
    f.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None, help="auto: bf16 on GPU")
    f.add_argument("--workers", type=int, default=None, help="data loader processes (default: 0 CPU, 4 GPU)")
    f.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    f.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    add_storage_options(f)
    f.set_defaults(func=cmd_finetune)


def add_probe(sub) -> None:
    p = sub.add_parser("probe", help="linear probe + k-NN of an image tower",
                       description="Linear probe and k-NN classification with a frozen image tower (and zero-shot "
                                   "when the checkpoint has a trained text tower).")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (or open_clip model spec)")
    p.add_argument("--weights", default=None, help="weights file when --checkpoint is a model name")
    p.add_argument("--task", default=None, help="one task folder in CLIP_benchmark's wds layout")
    p.add_argument("--suite", choices=["builtin", "datacomp"], default=None, help="a suite's classification tasks")
    p.add_argument("--data-root", default="data/sample_pool/eval", help="folder of the suite's task folders")
    p.add_argument("--tasks", nargs="*", default=None, help="only these task keys or folders")
    p.add_argument("--shots", type=int, default=10, help="labelled images per class (default: 10)")
    p.add_argument("--knn", type=int, default=20, metavar="K", help="k-NN neighbours (default: 20)")
    p.add_argument("--results", default=None, help="append results to this jsonl (a file or bucket URL)")
    add_storage_options(p)
    p.set_defaults(func=cmd_probe)
