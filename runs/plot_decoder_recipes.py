"""Plot docs/bench/decoder-recipes-cpu.json (accuracy and agreement of each decoder recipe) as a PNG.

    .venv/bin/python runs/plot_decoder_recipes.py [JSON] [PNG]
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source: Path, target: Path) -> None:
    result = json.loads(source.read_text())
    full, *rows = result["rows"]
    labels = [row["variant"] for row in rows]
    positions = range(len(rows))
    figure, axis = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.8))
    axis.barh([p + 0.2 for p in positions], [100 * r["accuracy"] for r in rows], height=0.4, label="accuracy (%)")
    axis.barh([p - 0.2 for p in positions], [100 * r["agreement"] for r in rows], height=0.4,
              label="agreement with the full model (%)")
    axis.axvline(100 * full["accuracy"], color="black", linestyle="--", label="full model accuracy")
    axis.axvline(80 * full["accuracy"], color="grey", linestyle=":", label="80% of the full model")
    axis.set_yticks(list(positions), labels, fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("% (200 shipped eval tasks, greedy, 32 tokens)")
    axis.set_xlim(0, 100)
    axis.set_title(result["decoder"].replace(", hidden", ",\nhidden"), fontsize=9)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(target, dpi=120)
    print(f"saved {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench/decoder-recipes-cpu.json"),
         Path(sys.argv[2] if len(sys.argv) > 2 else "docs/decoder-recipes.png"))
