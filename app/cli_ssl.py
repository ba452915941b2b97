"""CLI for what else curated data trains: ``add_commands(sub)`` extends the ``curate`` sub-parsers.

    curate train --objective simclr|moco|mae   self-supervised pretraining of an image tower (default: clip)
    curate finetune --lora R               LoRA (R > 0) or full (R = 0) fine-tuning of a CLIP checkpoint
    curate probe                           linear probe + k-NN of an image tower on classification tasks

``train`` and ``eval`` must be registered before ``add_commands`` is called: ``train`` gains the SSL
options, and ``eval`` of an image-only (SSL) checkpoint runs the probes instead of zero-shot.
"""
from __future__ import annotations

import argparse
import json


def cmd_train_any(a, clip_train) -> None:
    if a.objective == "clip":
        extra = {k: getattr(a, k) for k in ("moco_version", "temperature", "queue_size", "momentum")
                 if getattr(a, k) is not None}
        if extra:
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in extra)} need --objective simclr|moco")
        return clip_train(a)
    if a.objective == "mae":
        from training.mae import MAEConfig as SSLConfig, pretrain
    else:
        from training.ssl import SSLConfig, pretrain

    if a.loss not in (None, "clip") or a.accum_steps not in (None, 1):
        raise ValueError("--loss and --accum-steps are CLIP options; SSL objectives have their own loss")
    given = {"preset": a.preset, "model": a.model, "samples_seen": a.samples_seen, "batch_size": a.batch_size,
             "lr": a.lr, "init_checkpoint": a.init, "workers": a.workers, "precision": a.precision,
             "grad_checkpointing": a.grad_checkpointing or None, "moco_version": a.moco_version,
             "temperature": a.temperature, "queue_size": a.queue_size, "momentum": a.momentum}
    cfg = SSLConfig(train_data=a.data, out_dir=a.out, seed=a.seed, device=a.device, objective=a.objective,
                    **{k: v for k, v in given.items() if v is not None})
    _print(pretrain(cfg))


def cmd_finetune(a) -> None:
    from training.lora import FinetuneConfig, finetune

    given = {"samples_seen": a.samples_seen, "batch_size": a.batch_size, "lr": a.lr, "wd": a.wd,
             "weights": a.weights, "workers": a.workers, "precision": a.precision, "targets": a.targets,
             "alpha": a.alpha, "accum_steps": a.accum_steps}
    cfg = FinetuneConfig(model=a.checkpoint, train_data=a.data, out_dir=a.out, lora=a.lora, seed=a.seed,
                         device=a.device, **{k: v for k, v in given.items() if v is not None})
    _print(finetune(cfg))


def cmd_probe(a) -> None:
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
    from training.zeroshot import append_result

    clip, device = load_for_eval(a.checkpoint, a.weights)
    r = {"task": a.task, "checkpoint": a.checkpoint, **image_probes(clip, a.task, a.shots, a.knn, device=device)}
    if a.results:
        append_result(a.results, r)
    print(json.dumps(r, indent=2))


def cmd_eval_any(a, zero_shot_eval) -> None:
    from training.knn import is_image_only

    if not is_image_only(a.checkpoint):
        return zero_shot_eval(a)
    print(f"{a.checkpoint} is an image-only (SSL) checkpoint: linear probe and k-NN instead of zero-shot")
    a.shots, a.knn = a.few_shot or 10, 20
    cmd_probe(a)


def _print(r: dict) -> None:
    print(json.dumps({k: v for k, v in r.items() if not isinstance(v, (dict, list))}, indent=2, default=str))


def add_commands(sub) -> None:
    """Extend the ``curate`` sub-parsers (``train`` and ``eval`` already registered)."""
    for name in ("train", "eval"):
        if name not in sub.choices:
            raise ValueError(f"add_commands needs the {name!r} command registered first")
    t = sub.choices["train"]
    clip_train = t.get_default("func")
    g = t.add_argument_group("self-supervised objectives (image tower only, captions ignored)")
    g.add_argument("--objective", choices=["clip", "simclr", "moco", "mae"], default="clip",
                   help="clip (with --loss), SimCLR, MoCo or MAE pretraining of the image tower (default: clip)")
    g.add_argument("--moco-version", type=int, choices=[2, 3], default=None,
                   help="MoCo v2 (queue of keys) or v3 (prediction head, no queue) (default: 2)")
    g.add_argument("--temperature", type=float, default=None, help="default: simclr 0.5, moco 0.2")
    g.add_argument("--queue-size", type=int, default=None, help="MoCo v2 queue length (default: 4096)")
    g.add_argument("--momentum", type=float, default=None, help="MoCo key encoder momentum (default: 0.99)")
    t.set_defaults(func=lambda a: cmd_train_any(a, clip_train))

    e = sub.choices["eval"]
    zero_shot_eval = e.get_default("func")
    e.set_defaults(func=lambda a: cmd_eval_any(a, zero_shot_eval))

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
    f.set_defaults(func=cmd_finetune)

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
    p.add_argument("--results", default=None, help="append results to this jsonl")
    p.set_defaults(func=cmd_probe)


def main(argv: list[str] | None = None) -> None:
    """``python -m app.cli_ssl ...``: the same as ``curate ...`` (app/cli.py wires these commands)."""
    from app.cli import main as curate_main

    curate_main(argv)


if __name__ == "__main__":
    main()
