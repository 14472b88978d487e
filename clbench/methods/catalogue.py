"""The shipped methods as planning sees them, without importing torch: where each method's class
lives (``SHIPPED``) and its card (``CARDS``): the class attributes that resolving a run, checking
where a mask can act and packing lockstep groups read.

The cards are derived from the classes (``card_of``), and written into this file by
``python -m clbench.methods.catalogue``; ``tests/test_layers.py`` fails when they are not current.
The classes stay the single source of truth: a new or changed method file needs that command run.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# The mask's keep-sets (clbench.runs.mask.MASK_KEEP_CHOICES): a card's default, every one.
ALL_MASK_KEEPS = ("task", "batch", "seen")

# name -> "module:Class", in the order the command line lists them.
SHIPPED = {
    "sgd": "clbench.methods.sgd:SGD",
    "joint": "clbench.methods.joint:Joint",
    "er": "clbench.methods.er:ER",
    "der": "clbench.methods.der:DER",
    "derpp": "clbench.methods.derpp:DERpp",
    "er_ace": "clbench.methods.er_ace:ERACE",
    "xder": "clbench.methods.xder:XDER",
    "icarl": "clbench.methods.icarl:ICaRL",
    "agem": "clbench.methods.agem:AGEM",
    "gdumb": "clbench.methods.gdumb:GDumb",
    "ss_il": "clbench.methods.ss_il:SSIL",
    "lode": "clbench.methods.lode:LODE",
    "lode_derpp": "clbench.methods.lode_derpp:LODEDERpp",
    "er_las": "clbench.methods.er_las:ERLAS",
    "er_aml": "clbench.methods.er_aml:ERAML",
    "wa": "clbench.methods.wa:WA",
    "bic": "clbench.methods.bic:BiC",
}


@dataclass(frozen=True)
class MethodCard:
    """What resolution and planning read of a method (``clbench.methods.base.Method`` documents each)."""

    name: str
    uses_buffer: bool
    exemplar_memory: bool
    replay_draws: int
    group_by_buffer_size: bool
    mask_acts_on: tuple[str, ...]
    weights: tuple[str, ...]
    options: tuple[tuple[str, Any], ...]  # the method's own hyperparameters and their defaults
    run_notes: tuple[str, ...]
    # Added with the mask's keep-sets; written into CARDS only where it is not every keep-set.
    mask_keeps: tuple[str, ...] = ALL_MASK_KEEPS
    # Added with the options' ranges (``Method.option_ranges``); written only where there are some.
    option_ranges: tuple[tuple[str, str], ...] = ()
    # Added with validation splits in groups over seeds; written only where True.
    reads_task_rows: bool = False

    @property
    def has_memory(self) -> bool:
        """The buffer size matters: a replay buffer or an exemplar memory of its own."""
        return self.uses_buffer or self.exemplar_memory


def card_of(cls: type, name: str | None = None) -> MethodCard:
    """The card of a method class (a shipped one, or one of your own)."""
    return MethodCard(
        name=name or cls.name,
        uses_buffer=bool(cls.uses_buffer),
        exemplar_memory=bool(cls.exemplar_memory),
        replay_draws=int(cls.replay_draws),
        group_by_buffer_size=bool(cls.group_by_buffer_size),
        mask_acts_on=tuple(cls.mask_acts_on),
        weights=tuple(cls.weights),
        options=tuple(dict(cls.options).items()),
        run_notes=tuple(cls.run_notes),
        mask_keeps=tuple(getattr(cls, "mask_keeps", ALL_MASK_KEEPS)),
        option_ranges=tuple(dict(getattr(cls, "option_ranges", {})).items()),
        reads_task_rows=bool(getattr(cls, "reads_task_rows", False)),
    )


# Written by `python -m clbench.methods.catalogue` from the classes; do not edit by hand.
# Generated, one field per line as the generator writes it (the formatter leaves it alone).
# fmt: off
# BEGIN CARDS
CARDS: dict[str, MethodCard] = {
    "sgd": MethodCard(
        name="sgd",
        uses_buffer=False,
        exemplar_memory=False,
        replay_draws=0,
        group_by_buffer_size=False,
        mask_acts_on=("stream",),
        weights=(),
        options=(),
        run_notes=(),
    ),
    "joint": MethodCard(
        name="joint",
        uses_buffer=False,
        exemplar_memory=False,
        replay_draws=0,
        group_by_buffer_size=False,
        mask_acts_on=("stream",),
        weights=(),
        options=(),
        run_notes=(),
    ),
    "er": MethodCard(
        name="er",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("stream", "buffer"),
        weights=(),
        options=(),
        run_notes=(),
    ),
    "der": MethodCard(
        name="der",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("stream",),
        weights=("alpha",),
        options=(),
        run_notes=(),
    ),
    "derpp": MethodCard(
        name="derpp",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=2,
        group_by_buffer_size=False,
        mask_acts_on=("stream", "buffer"),
        weights=("alpha", "beta"),
        options=(),
        run_notes=(),
    ),
    "er_ace": MethodCard(
        name="er_ace",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("stream", "buffer"),
        weights=(),
        options=(),
        run_notes=(),
    ),
    "xder": MethodCard(
        name="xder",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=2,
        group_by_buffer_size=True,
        mask_acts_on=("stream",),
        weights=("alpha", "beta"),
        options=(("gamma", 0.85), ("eta", 0.1), ("margin", 0.3)),
        run_notes=("xder: X-DER as published is --mask -inf (its stream cross-entropy is a softmax over the current task's classes); --mask none is its unmasked counterpart; without the SupCon consistency term (needs colour augmentation of natural images; Mammoth's xder_ce drops it too)",),
        option_ranges=(("gamma", ">= 0"), ("eta", ">= 0")),
        reads_task_rows=True,
    ),
    "icarl": MethodCard(
        name="icarl",
        uses_buffer=False,
        exemplar_memory=True,
        replay_draws=0,
        group_by_buffer_size=True,
        mask_acts_on=(),
        weights=(),
        options=(("wd", 0.0),),
        run_notes=("icarl: no softmax cross-entropy (sigmoid BCE with distillation), an unmasked reference baseline; accuracies from the nearest-mean-of-exemplars classifier",),
        option_ranges=(("wd", ">= 0"),),
        reads_task_rows=True,
    ),
    "agem": MethodCard(
        name="agem",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("stream",),
        weights=(),
        options=(),
        run_notes=(),
        reads_task_rows=True,
    ),
    "gdumb": MethodCard(
        name="gdumb",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=0,
        group_by_buffer_size=True,
        mask_acts_on=("buffer",),
        weights=(),
        options=(("minlr", 0.0005), ("fitting_epochs", 256), ("cutmix_alpha", 1.0), ("cutmix_prob", 0.5)),
        run_notes=("gdumb: the stream only fills a greedy class-balanced memory; after every task a network trained from scratch on the memory is evaluated (GDumb's code; Mammoth refits after the last task only); lr is the refit's maximum lr",),
        option_ranges=(("minlr", ">= 0"), ("fitting_epochs", ">= 1"), ("cutmix_alpha", ">= 0"), ("cutmix_prob", "0..1")),
    ),
    "ss_il": MethodCard(
        name="ss_il",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=(),
        weights=(),
        options=(("distill", 1.0),),
        run_notes=("ss_il: SS-IL's stream cross-entropy is the masked softmax at m = -inf (current task's classes), its replayed rows' is over the past classes only: no general mask; plain SGD under the protocol (no momentum, weight decay or lr / (t + 1)); memory rebuilt at task ends, ceil(M / S) per class",),
        option_ranges=(("distill", ">= 0"),),
    ),
    "lode": MethodCard(
        name="lode",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("stream", "buffer"),
        weights=(),
        options=(("rho", 0.1),),
        run_notes=(),
        option_ranges=(("rho", ">= 0"),),
    ),
    "lode_derpp": MethodCard(
        name="lode_derpp",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=2,
        group_by_buffer_size=False,
        mask_acts_on=("stream", "buffer"),
        weights=("alpha", "beta"),
        options=(("rho", 0.05),),
        run_notes=(),
        option_ranges=(("rho", ">= 0"),),
    ),
    "er_las": MethodCard(
        name="er_las",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("stream", "buffer"),
        weights=(),
        options=(("tau", 1.0), ("window", 1)),
        run_notes=(),
        option_ranges=(("tau", ">= 0"), ("window", ">= 1")),
    ),
    "er_aml": MethodCard(
        name="er_aml",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("buffer",),
        weights=(),
        options=(("temperature", 0.2),),
        run_notes=("er_aml: no cross-entropy on stream rows after task 0 (SupCon on features), so the general mask acts on the replayed rows only; positives and negatives drawn from the step's stream batch and replay minibatch (the authors: the whole buffer and the batch)",),
        option_ranges=(("temperature", "> 0"),),
    ),
    "wa": MethodCard(
        name="wa",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=False,
        mask_acts_on=("stream", "buffer"),
        weights=(),
        options=(),
        run_notes=("wa: ER's replay with PyCIL's WA loss ((1 - P/S) CE over seen classes + P/S KD at T = 2 from the previous task's network) and weight aligning of the new classes' head rows at every task end; plain SGD under the protocol (no momentum, weight decay or schedule)",),
    ),
    "bic": MethodCard(
        name="bic",
        uses_buffer=True,
        exemplar_memory=False,
        replay_draws=1,
        group_by_buffer_size=True,
        mask_acts_on=("stream", "buffer"),
        weights=(),
        options=(("bias_epochs", 250), ("bias_lr", 0.001), ("temperature", 2.0), ("val_split", 0.1), ("distill_after_bias", 1)),
        run_notes=("bic: ER's replay with Mammoth's BiC loss ((1 - 1/(t+1)) CE over seen classes + 1/(t+1) T^2 KD from the previous task's bias-corrected network) and a two-parameter bias layer on the newest task's logits fitted at every task end on held-out rows; plain SGD under the protocol",),
        option_ranges=(("bias_epochs", ">= 0"), ("bias_lr", ">= 0"), ("temperature", "> 0"), ("val_split", "0..<1"), ("distill_after_bias", "0..1")),
        reads_task_rows=True,
    ),
}
# END CARDS
# fmt: on


def _literal(value: Any) -> str:
    """``value`` as Python source, in the project's format (double quotes, one-item tuples)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        items = [_literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    return repr(value)


def _written_cards() -> str:
    """The CARDS block as the classes say it should read (imports every shipped method: torch)."""
    import importlib  # noqa: PLC0415 - only when (re)writing the catalogue

    lines = ["CARDS: dict[str, MethodCard] = {"]
    for name, where in SHIPPED.items():
        module, _, cls_name = where.partition(":")
        card = card_of(getattr(importlib.import_module(module), cls_name))
        lines.append(f"    {json.dumps(name)}: MethodCard(")
        lines += [
            f"        {f.name}={_literal(getattr(card, f.name))},"
            for f in fields(card)
            if (f.name != "mask_keeps" or card.mask_keeps != ALL_MASK_KEEPS)
            and (f.name != "option_ranges" or card.option_ranges)
            and (f.name != "reads_task_rows" or card.reads_task_rows)
        ]
        lines.append("    ),")
    lines.append("}")
    return "\n".join(lines)


def catalogue_source() -> str:
    """This file's text with the CARDS block as the classes say it should read."""
    path = Path(__file__)
    pattern = re.compile(r"(# BEGIN CARDS\n).*?(\n# END CARDS)", re.S)
    return pattern.sub(lambda m: m.group(1) + _written_cards() + m.group(2), path.read_text())


if __name__ == "__main__":
    Path(__file__).write_text(catalogue_source())
    print(f"wrote the cards of {len(SHIPPED)} methods into {__file__}", file=sys.stderr)
