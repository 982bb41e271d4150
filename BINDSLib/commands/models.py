"""``binds models``: the model bundles BINDS can find, and where it looks."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    p = sub.add_parser("models", help="list the model bundles found and the search path",
                       description="List model bundles on the search path ($BINDS_MODEL_PATH, "
                                   "~/.binds/models, the shipped Resources/Models) and verify "
                                   "their weights' SHA-256 with --verify.")
    p.add_argument("--verify", action="store_true", help="load each bundle as diagnose or risk does: its hash, network and metadata")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bundle import hidden_bundles, list_bundles, load_bundle, read_metadata, search_path
    from ..errors import EXIT_MODEL, BindsError, ModelError
    from ..model.selection import bundle_info

    rows = []
    for path in list_bundles():
        try:
            meta = read_metadata(path)
            row = {"name": meta.get("name", path.name), "folder": path.name, "version": meta.get("version"),
                   "kind": meta.get("binds", {}).get("kind"), "path": str(path),
                   "weights_sha256": meta["weights_sha256"]}
            if row["kind"] == "diagnosis":  # what --model auto uses to choose
                info = bundle_info(path, meta)
                row["modalities"] = list(info.modalities)
                row["training_data"] = "synthetic" if info.synthetic else "real"
            if args.verify:  # loaded as diagnose or risk load it: weights, network and metadata
                if row["kind"] == "diagnosis":
                    from ..model.inference import DiagnosisModel

                    DiagnosisModel.from_bundle(path, device="cpu")
                elif row["kind"] == "risk":
                    from ..risk.inference import RiskModel

                    RiskModel.from_bundle(path, device="cpu")
                else:
                    load_bundle(path)
                    raise ModelError(f"binds.kind is {row['kind']!r}: neither a diagnosis nor a risk bundle", path)
                row["verified"] = True
        except BindsError as e:
            row = {"name": path.name, "folder": path.name, "path": str(path), "error": str(e)}
        rows.append(row)
    hidden = [{"folder": d.name, "path": str(d), "hidden_by": str(by)} for d, by in hidden_bundles()]
    if args.json:
        json.dump({"search_path": [str(p) for p in search_path()], "bundles": rows, "hidden": hidden},
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("search path:\n" + "".join(f"  {p}\n" for p in search_path()))
        for r in rows:
            status = r.get("error") or ("verified" if r.get("verified") else r["weights_sha256"][:12])
            reads = (f"  {'+'.join(r['modalities'])}, {r['training_data']} training data"
                     if "modalities" in r else "")
            # --model takes the folder's name (or its path)
            name = r["folder"] + ("" if r["name"] == r["folder"] else f" ({r['name']})")
            sys.stdout.write(f"{name:<28} {r.get('kind') or '?':<10} {r.get('version') or '':<8} "
                             f"{status}{reads}\n")
        for h in hidden:  # e.g. several training runs' RUN_DIR/bundle on BINDS_MODEL_PATH
            sys.stdout.write(f"not used: {h['path']} (its folder name is taken by {h['hidden_by']}; "
                             "rename the folder or give its path to --model)\n")
    return EXIT_MODEL if any("error" in r for r in rows) and args.verify else 0
