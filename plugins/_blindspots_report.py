"""The blind-spot report: ``report.json`` (the schema tests check), ``report.html`` (tables, the δ bar
plot with intervals, real/generated examples per concept) and ``delta.png``."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

REQUIRED_KEYS = ("format", "version", "model", "features", "n_images", "sae", "counts", "concepts", "memorisation")
CONCEPT_KEYS = ("concept", "label", "delta", "delta_low", "delta_high", "effect", "p", "q", "real_energy", "gen_energy")


def check_schema(result: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first missing or malformed field of a report."""
    for key in REQUIRED_KEYS:
        if key not in result:
            raise ValueError(f"report lacks {key!r}")
    for c in result["concepts"]:
        for key in CONCEPT_KEYS:
            if key not in c:
                raise ValueError(f"concept {c.get('concept')} lacks {key!r}")
        if c["label"] not in ("suppressed", "exaggerated", "faithful", "inactive"):
            raise ValueError(f"concept {c['concept']} has label {c['label']!r}")
        if not 0 <= c["delta_low"] <= c["delta_high"] <= 1 or not 0 <= c["q"] <= 1:
            raise ValueError(f"concept {c['concept']}: interval or q out of range")


def _thumb(image: Any, size: int = 64) -> str:
    buf = io.BytesIO()
    image.convert("RGB").resize((size, size), Image.NEAREST).save(buf, format="PNG")  # no blur of 32 px images
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


NULL_DELTA = 0.5  # δ of a concept with the same energy in real and generated images
PAPER_THRESHOLDS = (0.1, 0.9)  # the paper's δ rule: suppressed below, exaggerated above
COLOUR = {"suppressed": "tab:blue", "exaggerated": "tab:red", "faithful": "0.7"}
#: below this correlation a concept's best ground-truth label is shown as weak
NAME_MIN_CORR = 0.3


def concept_title(c: dict[str, Any]) -> str:
    """``#12 shape=crescent (r 0.62)``; a weakly correlated best label is marked, not passed off as a name."""
    if "name" not in c:
        return f"#{c['concept']}"
    r = float(c.get("name_corr", 0.0))
    return f"#{c['concept']} {c['name']} (r {r:.2f}{', weak' if r < NAME_MIN_CORR else ''})"


def shown_concepts(concepts: list[dict[str, Any]], limit: int = 40) -> list[dict[str, Any]]:
    """The concepts the detail plot and tables show: every discovery (by q), then, when concepts have
    ground-truth names, the best-correlated concept of each named label (faithful ones too, so a label
    that is *not* found shifted is visible), at most ``limit``."""
    found = sorted((c for c in concepts if c["label"] in ("suppressed", "exaggerated")), key=lambda c: c["q"])
    best: dict[str, dict[str, Any]] = {}
    for c in concepts:
        if c["label"] != "inactive" and c.get("name_corr", 0.0) >= NAME_MIN_CORR:
            if c["name"] not in best or c["name_corr"] > best[c["name"]]["name_corr"]:
                best[c["name"]] = c
    ids = {c["concept"] for c in found}
    named = sorted((c for c in best.values() if c["concept"] not in ids), key=lambda c: c["name"])
    return (found + named)[:limit]


def _bars(ax: Any, shown: list[dict[str, Any]], min_shift: float) -> None:
    x = range(len(shown))
    d = [c["delta"] for c in shown]
    err = [[c["delta"] - c["delta_low"] for c in shown], [c["delta_high"] - c["delta"] for c in shown]]
    ax.bar(x, d, color=[COLOUR[c["label"]] for c in shown], yerr=err, error_kw={"lw": 0.6, "capsize": 0})
    ax.axhline(NULL_DELTA, color="k", lw=0.8, label="no shift (δ = 0.5)")
    if min_shift > 0:
        for t in (NULL_DELTA - min_shift, NULL_DELTA + min_shift):
            first = t < NULL_DELTA
            ax.axhline(t, color="tab:green", lw=0.6, ls=":", label=f"least shift (±{min_shift:g})" if first else None)
    for t in PAPER_THRESHOLDS:
        ax.axhline(
            t, color="k", lw=0.6, ls="--", label="paper's δ rule (0.1 / 0.9)" if t == PAPER_THRESHOLDS[0] else None
        )
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.6, len(shown) - 0.4)


def _delta_plot(concepts: list[dict[str, Any]], path: Path, fdr: float | None = None, min_shift: float = 0.0) -> None:
    """Top: every tested concept's δ (sorted) with its 95 % bootstrap interval; bottom: the discoveries and
    the best concept of each named label, labelled. Colours: the class at the FDR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tested = sorted((c for c in concepts if c["label"] != "inactive"), key=lambda c: c["delta"])
    detail = shown_concepts(concepts)
    width = max(7.0, min(16.0, 0.32 * len(detail) + 2))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(width, 6.8), gridspec_kw={"height_ratios": [1, 1.5]})
    _bars(top, tested, min_shift)
    top.set_xticks([])
    top.set_ylabel("δ = E_gen / (E_real + E_gen)")
    top.set_title(f"all {len(tested)} tested concepts, sorted by δ (bars: 95 % bootstrap interval)", fontsize=9)
    handles, labels = top.get_legend_handles_labels()
    fdr_text = f"FDR {fdr:g}" if fdr is not None else "the FDR"
    handles += [Patch(color=COLOUR[k]) for k in COLOUR]
    labels += [f"{k} at {fdr_text}" for k in COLOUR]
    top.legend(handles, labels, fontsize=7, loc="upper left", ncol=2, framealpha=0.8)
    if detail:
        _bars(bottom, detail, min_shift)
        bottom.set_xticks(range(len(detail)))
        bottom.set_xticklabels([concept_title(c) for c in detail], rotation=60, ha="right", fontsize=7)
        bottom.set_ylabel("δ")
        bottom.set_title("discoveries, then the best concept of each ground-truth label", fontsize=9)
    else:
        bottom.axis("off")
        bottom.text(0.5, 0.5, "no concept differs between real and generated images", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _thumbs(images: list[Any], indices: list[int], captions: list[str], n: int = 4) -> str:
    """Thumbnails; hovering one shows its index and caption."""

    def title(i: int) -> str:
        return html.escape(f"{i}: {captions[i]}" if i < len(captions) else str(i), quote=True)

    return "".join(f'<img src="{_thumb(images[i])}" title="{title(i)}">' for i in indices[:n])


def _row(c: dict[str, Any], real: list[Any], generated: list[Any], captions: list[str]) -> str:
    top_real = c.get("top_real_images", [])
    top_gen = c.get("top_generated_images", [])
    return (
        f"<tr><td>{html.escape(concept_title(c))}</td><td class='{c['label']}'>{c['label']}</td>"
        f"<td>{c['delta']:.3f} [{c['delta_low']:.3f}, {c['delta_high']:.3f}]</td><td>{c['effect']:+.2f}</td>"
        f"<td>{c['real_energy']:.3g} → {c['gen_energy']:.3g}</td><td>{c['q']:.2g}</td>"
        f"<td>{_thumbs(real, top_real, captions)}</td><td>{_thumbs(generated, top_real, captions)}</td>"
        f"<td>{_thumbs(generated, top_gen, captions)}</td></tr>"
    )


HEADER = (
    "<tr><th>concept (best label, r)</th><th>class</th><th>δ [95 % CI]</th><th>d<sub>z</sub></th>"
    "<th>energy real → gen</th><th>q</th><th>its top real images</th><th>generated for the same captions</th>"
    "<th>its top generated images</th></tr>"
)


def write_report(result: dict[str, Any], real: list[Any], generated: list[Any], out: Path) -> None:
    check_schema(result)
    (out / "report.json").write_text(json.dumps(result, indent=1))
    fdr = result.get("config", {}).get("fdr")
    min_shift = float(result.get("config", {}).get("min_shift", 0.0))
    _delta_plot(result["concepts"], out / "delta.png", fdr, min_shift)
    found = [c for c in shown_concepts(result["concepts"], limit=10**6) if c["label"] in ("suppressed", "exaggerated")]
    named = [
        c for c in shown_concepts(result["concepts"], limit=10**6) if c["label"] not in ("suppressed", "exaggerated")
    ]
    captions = [str(c) for c in result.get("captions", [])]
    found_rows = "".join(_row(c, real, generated, captions) for c in found[:40])
    if not found:
        found_rows = f"<tr><td colspan=9>no concept differs between real and generated images at FDR {fdr}</td></tr>"
    named_rows = "".join(_row(c, real, generated, captions) for c in named)
    counts = ", ".join(f"{v} {k}" for k, v in result["counts"].items())
    memo = result["memorisation"]
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in result.get("seconds", {}).items())
    plot = base64.b64encode((out / "delta.png").read_bytes()).decode()
    named_part = (
        f"<h2>Concepts named by a ground-truth label, not found shifted</h2><table>{HEADER}{named_rows}</table>"
        if named
        else ""
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Conceptual blindspots</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:90em}} td,th{{border:1px solid #ccc;padding:3px}}
td{{white-space:nowrap}} table{{border-collapse:collapse;font-size:90%}} img{{margin:1px;image-rendering:pixelated}}
.suppressed{{color:#1f77b4;font-weight:bold}} .exaggerated{{color:#d62728;font-weight:bold}}</style></head><body>
<h1>Conceptual blindspots</h1>
<p>Model <code>{html.escape(str(result["model"]))}</code>, features <code>{html.escape(result["features"])}</code>,
{result["n_images"]} real images and one generated image for each of their captions (same seed per caption).
SAE: {html.escape(json.dumps(result["sae"]))}.</p>
<p><b>Concepts: {counts}</b> (Benjamini–Hochberg at FDR {fdr} over the tested concepts, and a least shift
|δ − 0.5| ≥ {min_shift:g}; {result.get("significant_below_min_shift", 0)} more concepts are significant but shift less).
Near copies of a real image: {len(memo["flagged"])} generated images (threshold {memo["threshold"]:.4f}).
Time: {secs}.</p>
<p>Per concept, energy = the per-image sum of its SAE codes over tokens. δ = E<sub>gen</sub> / (E<sub>real</sub> +
E<sub>gen</sub>): 0.5 (solid line) is no shift, below is suppressed (the model draws the concept less often than the
data has it), above is exaggerated; dotted lines are the least shift a discovery needs, dashed lines the paper's
fixed rule (0.1 / 0.9). A class here is a paired
t-test on the per-caption energy differences with BH control of the false-discovery rate; d<sub>z</sub> is the
paired standardised effect, the interval a bootstrap over caption pairs. Concept names are the ground-truth label
whose presence correlates best with the concept's energy on real images (r), when the image set has labels.</p>
<img src="data:image/png;base64,{plot}">
<h2>Suppressed and exaggerated concepts</h2>
<table>{HEADER}{found_rows}</table>
{named_part}
</body></html>"""
    (out / "report.html").write_text(page, encoding="utf-8")
