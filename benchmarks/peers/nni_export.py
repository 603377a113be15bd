"""Claim check (c): does NNI 3.0's weight-inheriting export of a sampled sub-network work?

Runs in the NNI venv:  /work/nni-venv/bin/python benchmarks/peers/nni_export.py

NNI documents (``RandomOneShot``'s docstring) that ``supernet.freeze(sample)`` on the one-shot supernet is
weight-preserving: the frozen sub-network inherits the supernet's weights. For a few random samples of the
SPOS ShuffleNet supernet with channel search, and of the ProxylessNAS supernet, we train the supernet a
couple of SGD steps (so weights and BN statistics are not at their init), then compare, in eval mode, the
supernet's output on the sampled path with the output of ``supernet.freeze(sample)``. The claim "NNI's
export fails" is TRUE if freeze raises or the outputs differ (beyond float noise), FALSE if they match.
Last stdout line: one JSON object.
"""

from __future__ import annotations

import json
import traceback
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import nni  # noqa: E402
from nni.nas.hub.pytorch import ProxylessNAS, ShuffleNetSpace  # noqa: E402
from nni.nas.oneshot.pytorch.supermodule.base import BaseSuperNetModule  # noqa: E402
from nni.nas.strategy import RandomOneShot  # noqa: E402


def resample(modules, memo=None):
    result = dict(memo or {})
    for m in modules:
        result.update(m.resample(memo=result))
    return result


def drop_none_entries_patch() -> None:
    """Work around the freeze crash (a ``'bias': None`` entry fed to ``load_state_dict``) to see whether the
    weight inheritance itself is right once the crash is out of the way."""
    from nni.nas.oneshot.pytorch.supermodule.operation import MixedOperation

    def freeze(self, sample):
        arguments = {**self.init_arguments}
        for n, mutable in self.mutable_arguments.items():
            arguments[n] = mutable.freeze(sample)
        operation = self.bound_type(**arguments)
        state = {k: v for k, v in self.freeze_weight(**arguments).items() if v is not None}
        operation.load_state_dict(state)
        return operation

    MixedOperation.freeze = freeze


def check(name: str, space, samples: int = 3) -> dict:
    torch.manual_seed(0)
    supernet = RandomOneShot().mutate_model(space)
    modules = [m for m in supernet.modules() if isinstance(m, BaseSuperNetModule)]
    opt = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    supernet.train()
    for _ in range(3):  # a few SPOS steps: weights and BN running stats move off their init
        resample(modules)
        loss = F.cross_entropy(supernet(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    records = []
    for _ in range(samples):
        sample = resample(modules)
        rec: dict = {"sample_head": dict(list(sample.items())[:4])}
        supernet.eval()
        with torch.no_grad():
            ref = supernet(x)
        try:
            frozen = supernet.freeze(sample)
            frozen.eval()
            with torch.no_grad():
                got = frozen(x)
            rec["max_abs_diff"] = float((ref - got).abs().max())
            rec["ref_scale"] = float(ref.abs().max())
            rec["match"] = bool(torch.allclose(ref, got, rtol=1e-4, atol=1e-5))
            n_frozen = sum(p.numel() for p in frozen.parameters())
            rec["frozen_params"] = n_frozen
        except Exception as e:  # noqa: BLE001
            rec["exception"] = f"{type(e).__name__}: {e}"[:500]
            rec["traceback_tail"] = traceback.format_exc().strip().splitlines()[-3:]
            rec["match"] = False
        records.append(rec)
        supernet.train()
    return {"space": name, "samples": records, "all_match": all(r["match"] for r in records)}


def main() -> None:
    results = [
        check("ShuffleNetSpace(channel_search=True)", ShuffleNetSpace(num_labels=10, channel_search=True)),
        check("ProxylessNAS", ProxylessNAS(num_labels=10)),
    ]
    fails = not all(r["all_match"] for r in results)
    drop_none_entries_patch()
    patched = [
        check("ShuffleNetSpace(channel_search=True) [None-bias patch]",
              ShuffleNetSpace(num_labels=10, channel_search=True), samples=2),
        check("ProxylessNAS [None-bias patch]", ProxylessNAS(num_labels=10), samples=2),
    ]
    print(json.dumps({"claim": "NNI 3.0's weight-inheriting export (supernet.freeze(sample)) fails", "nni": nni.__version__,
                      "torch": torch.__version__, "claim_true": fails, "evidence": results,
                      "with_workaround_patch": {"all_match": all(r["all_match"] for r in patched), "evidence": patched},
                      "caveat": "NNI 3.0 predates torch 2.14; the crash is a 'bias': None entry in the state dict "
                                "handed to load_state_dict of a bias-free conv (unexpected key in torch 2.14)"}))


if __name__ == "__main__":
    main()
