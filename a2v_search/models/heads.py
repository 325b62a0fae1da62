"""PaSta heads: the eight trained MLPs of CLIP-Activity2Vec, and the zero-shot heads built from CLIP's text tower.

Both return probabilities as a dict ``{"pasta": (B, 93), "verbs": (B, 157), "parts": (B, 6)}``; pasta columns are
in the 93-state order (foot, leg, hip, hand, arm, head), parts in the same part order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import taxonomy as tx

#: The eight heads of the reference, in its order, with their class counts.
HEAD_SIZES: dict[str, int] = {"verb": tx.N_VERBS, **tx.PART_SIZES, "pasta_binary": tx.N_PARTS}


def run_fp32(heads: nn.Module, feat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Heads (trained or zero-shot) on (B, P) features in float32, autocast off whatever the caller's: in bf16 a
    sigmoid keeps 8 bits, every logit above ~6 becomes exactly 1.0 and ties pile up in the ranking."""
    with torch.autocast(feat.device.type, enabled=False):
        return heads(feat.float())


class MLPHead(nn.Module):
    """Linear(d, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, C); keys ``layers.{0,1,2}`` as in the reference."""

    def __init__(self, dim_in: int, dim_hidden: int, n_out: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim_in, dim_hidden), nn.Linear(dim_hidden, dim_hidden),
                                     nn.Linear(dim_hidden, n_out)])

    def hidden(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, h): the last hidden layer
        return F.relu(self.layers[1](F.relu(self.layers[0](x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, d) -> (B, C) logits
        return self.layers[2](self.hidden(x))


class PastaHeads(nn.Module):
    """The eight MLP heads on the unnormalised CLIP projection feature; sigmoid probabilities, independent per class.

    State-dict keys are ``{verb,foot,...,pasta_binary}_fc.layers.{0,1,2}.{weight,bias}``: the reference's
    ``head.*`` keys without the prefix.
    """

    def __init__(self, dim_in: int = 512, dim_hidden: int = 512):
        super().__init__()
        self.dim_in, self.dim_hidden = dim_in, dim_hidden
        for name, n in HEAD_SIZES.items():
            self.add_module(f"{name}_fc", MLPHead(dim_in, dim_hidden, n))

    def logits(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw logits of every head, keyed by head name (``"verb"``, ``"foot"``, ... ``"pasta_binary"``)."""
        return {name: getattr(self, f"{name}_fc")(feat) for name in HEAD_SIZES}

    def part_features(self, feat: torch.Tensor) -> torch.Tensor:
        """A2V's visual feature: the last hidden layer of each of the six part heads, (B, d) -> (B, 6, h), parts in
        ``taxonomy.PARTS`` order (foot, leg, hip, hand, arm, head)."""
        return torch.stack([getattr(self, f"{p}_fc").hidden(feat) for p in tx.PARTS], dim=1)

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:  # feat (B, d)
        logits = self.logits(feat)
        pasta = torch.cat([logits[p] for p in tx.PARTS], dim=-1)  # (B, 93)
        return {"pasta": pasta.sigmoid(), "verbs": logits["verb"].sigmoid(),
                "parts": logits["pasta_binary"].sigmoid()}


class ZeroShotHeads(nn.Module):
    """PaSta and verbs from cosine similarity with CLIP text embeddings of prompts.

    Calibration: ``softmax(logit_scale * cos)`` within each part, so a part's states (its no_interaction included)
    form a distribution; verbs are one softmax over the 157 verbs; a part flag is ``1 - p(no_interaction)``.
    """

    def __init__(self, pasta_text: torch.Tensor, verb_text: torch.Tensor, logit_scale: float):
        super().__init__()
        self.register_buffer("pasta_text", F.normalize(pasta_text.float(), dim=-1))  # (93, P)
        self.register_buffer("verb_text", F.normalize(verb_text.float(), dim=-1))  # (157, P)
        self.logit_scale = float(logit_scale)
        self.part_slices = [slice(r.start, r.stop) for r in tx.PART_RANGES.values()]
        # on the model's device, so that indexing never copies from the host (which would wait for the GPU)
        self.register_buffer("no_interaction", torch.tensor(list(tx.NO_INTERACTION_PASTA)), persistent=False)

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:  # feat (B, P)
        img = F.normalize(feat.float(), dim=-1)
        pasta_logits = self.logit_scale * img @ self.pasta_text.T  # (B, 93)
        pasta = torch.cat([pasta_logits[:, s].softmax(-1) for s in self.part_slices], dim=-1)  # (B, 93)
        verbs = (self.logit_scale * img @ self.verb_text.T).softmax(-1)  # (B, 157)
        parts = 1.0 - pasta[:, self.no_interaction]  # (B, 6)
        return {"pasta": pasta, "verbs": verbs, "parts": parts}
