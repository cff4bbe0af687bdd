"""Check that this tree builds the same networks as an earlier commit: for every option of conf/model/fusion/, the
network the earlier commit builds from its composed YAML, and the one this tree's preset builder gives, at the
same seed, must hold the same tensors; and the earlier commit's state dict must load strictly into this tree's.

Usage::

    python scripts/init_parity.py REV    # e.g. the commit before a change of the network code or its init

The earlier commit's code is exported with ``git archive`` into a temporary folder and run there in a child
process (nothing of this tree is imported by it). Exits 1 when a network differs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run inside the earlier commit's tree: compose each fusion's config, build its network at seed 0, save the state.
_OLD_SIDE = """
import sys, torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from mmgpt.config import CONFIG_DIR, register_schemas
from mmgpt.registry import build_network
register_schemas()
out, num_classes = sys.argv[1], int(sys.argv[2])
with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
    for path in sorted((CONFIG_DIR / "model" / "fusion").glob("*.yaml")):
        for task in ("classify", "caption"):
            cfg = compose("train", overrides=[f"model/fusion={path.stem}", f"task={task}"])
            torch.manual_seed(0)
            net = build_network(OmegaConf.to_container(cfg.model.net, resolve=True), num_classes)
            torch.save(net.state_dict(), f"{out}/{path.stem}-{task}.pt")
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rev", help="the earlier commit")
    p.add_argument("--num-classes", type=int, default=15)
    args = p.parse_args()

    import torch

    from mmgpt import presets
    from mmgpt.layers import unwrapped_names

    with tempfile.TemporaryDirectory() as tmp:
        old_tree, states = Path(tmp) / "tree", Path(tmp) / "states"
        old_tree.mkdir()
        states.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive.stdout, check=True)
        subprocess.run([sys.executable, "-c", _OLD_SIDE, str(states), str(args.num_classes)], cwd=old_tree,
                       env={**os.environ, "PYTHONPATH": str(old_tree)}, check=True)
        failed = 0
        for saved in sorted(states.glob("*.pt")):
            fusion, task = saved.stem.rsplit("-", 1)
            old = torch.load(saved)
            torch.manual_seed(0)
            net = presets.build(fusion, args.num_classes, decoder=task == "caption")
            renamed, new = unwrapped_names(net), net.state_dict()
            differ = [k for k, v in old.items()
                      if renamed.get(k, k) not in new or not torch.equal(new[renamed.get(k, k)], v)]
            missing = sorted(set(new) - {renamed.get(k, k) for k in old})
            try:
                presets.build(fusion, args.num_classes, decoder=task == "caption").load_state_dict(old)
                loads = "loads strictly"
            except RuntimeError as e:
                loads = f"does not load: {str(e).splitlines()[0]}"
            ok = not differ and not missing and loads == "loads strictly"
            failed += not ok
            print(f"{fusion:16s} {task:8s} {len(old):4d} tensors, {len(differ)} differ, {len(missing)} new; "
                  f"{args.rev}'s state dict {loads}" + ("" if ok else f"  <- {(differ + missing)[:3]}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
