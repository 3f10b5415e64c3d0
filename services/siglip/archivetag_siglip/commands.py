"""`archivetag models export-siglip`: a SigLIP checkpoint into the folder the service serves."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from archivetag.runtime.model_files import make_readable
from archivetag_siglip.spec import DEFAULT_MODEL


def export_to_folder(src: str, dest: Path, model_id: str | None = None, classes=None, int8: bool = False) -> dict:
    """Export src (a hub id, or a local checkpoint folder) into dest; returns the manifest.

    classes: None (the default interior/exterior/aerial/detail prompts), a {class: [prompts]}
    mapping, or a JSON/YAML file holding one.
    """
    from archivetag_siglip.export import export_folder

    if isinstance(classes, str):
        classes = Path(classes)
    manifest = export_folder(src, Path(dest), model_id=model_id, classes=classes, int8=int8)
    make_readable(Path(dest))
    return manifest


def _run_export(args: argparse.Namespace) -> int:
    from archivetag_siglip.export import ExportError
    from archivetag_siglip.prompts import ClassesError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        manifest = export_to_folder(args.model, args.out, model_id=args.model_id, classes=args.classes, int8=args.int8)
    except (ExportError, ClassesError, OSError) as exc:
        print(f"export-siglip: {exc}", file=sys.stderr)
        return 1
    vision = manifest["vision"]
    print(f"exported {manifest['model']['id']} (revision {manifest['model']['revision']}) to {args.out}\n"
          f"  vision.onnx sha256 {vision['sha256']}, ONNX vs torch max abs diff {vision['max_abs_diff_vs_torch']:.1e}\n"
          f"  classes: {', '.join(manifest['classes'])}"
          + (f"\n  int8 probe cosine to fp32: {manifest['vision_int8']['probe_cosine_to_fp32']:.5f}"
             if "vision_int8" in manifest else ""),
          file=sys.stderr)
    return 0


def add_commands(subparsers) -> None:
    export = subparsers.add_parser(
        "export-siglip", help="export a SigLIP checkpoint (ONNX vision tower + stamped class embeddings)",
        description="Export a SigLIP checkpoint for `archivetag serve siglip`: the vision tower as ONNX "
                    "(checked against torch), the classes' prompt-ensemble text embeddings (padding=max_length), "
                    "logit_scale/logit_bias, and a manifest with hashes and a probe image.",
    )
    export.add_argument("--model", default=DEFAULT_MODEL, metavar="ID_OR_DIR",
                        help=f"hub id (needs network) or local checkpoint folder (default {DEFAULT_MODEL})")
    export.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write, usually <models>/siglip")
    export.add_argument("--model-id", help="name to record in the manifest (default: the hub id or folder name)")
    export.add_argument("--classes", type=Path, metavar="FILE",
                        help='JSON or YAML {"class": ["prompt", ...]}; default interior/exterior/aerial/detail')
    export.add_argument("--int8", action="store_true",
                        help="also write vision-int8.onnx (dynamic quantisation; serve with --siglip-precision int8)")
    export.set_defaults(func=_run_export)


def build_pulled(plan, build: Path, tag_data: Path | None) -> None:
    """`models pull`: the downloaded checkpoint exported (ONNX vision tower + class embeddings), its commit recorded."""
    from archivetag.pull import write_hub_commit
    from archivetag_siglip.export import export_folder

    write_hub_commit(plan.folder, plan.commit)
    # With the int8 tower: --siglip-precision auto serves it on a CPU (docs/models/cpu.md).
    export_folder(str(plan.folder), build, model_id=plan.source.repo, int8=True)
