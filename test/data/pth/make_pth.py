#!/usr/bin/env python3
"""Makes the small PyTorch checkpoints that test the TypeScript .pth reader, and expected.json.

Run from this folder with Debian's python3-torch (1.13):  /usr/bin/python3 make_pth.py
Every file is written with plain torch.save (zip format, pickle protocol 2), as the released
Infinity / STAR checkpoints are. expected.json lists, per file, every tensor the reader must find
(flattened name -> dtype, shape, values as float or int lists) so the tests need no Python.
"""
import collections
import datetime
import json
import os
import re
import zipfile

import torch

torch.manual_seed(0)
HERE = os.path.dirname(os.path.abspath(__file__))

DTYPES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def describe(t):
    t = t.detach()
    if t.dtype.is_floating_point:
        values = t.float().reshape(-1).tolist()  # f16/bf16 -> f32 is exact
    else:
        values = [int(v) for v in t.reshape(-1).tolist()]
    return {
        "dtype": DTYPES[t.dtype],
        "shape": list(t.shape),
        "contiguous": t.is_contiguous(),
        "storage_offset": t.storage_offset(),
        "values": values,
    }


def flatten(obj, prefix=""):
    out = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = describe(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


class Sub(torch.Tensor):
    """A tensor subclass: torch.save pickles it through torch._tensor._rebuild_from_type_v2."""


class Tiny(torch.nn.Module):
    """A module whose state_dict has the usual shapes: linear, norm, int64 buffer, 0-d parameter."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.scale = torch.nn.Parameter(torch.tensor(0.5))
        self.register_buffer("mask", 2 ** torch.arange(5, dtype=torch.int64) * 1000003)


def mixed_dtypes():
    base = torch.arange(24, dtype=torch.float32) * 0.25 - 3.0
    grid = base.view(4, 6)
    half = torch.randn(2, 3).half()
    bf = torch.randn(3, 4).bfloat16()
    tagged = torch.linspace(-1, 1, 5)
    tagged.note = "python state"  # torch >= 2 pickles this via _rebuild_from_type_v2; see subclass.pth
    return collections.OrderedDict(
        [
            ("f32", torch.randn(2, 3)),
            ("f16", half),
            ("bf16", bf),
            ("i64", torch.tensor([0, -1, 2**40 + 7, -(2**45)], dtype=torch.int64)),
            ("i32", torch.tensor([[1, -2], [2**31 - 1, -(2**31)]], dtype=torch.int32)),
            ("u8", torch.tensor([0, 1, 255], dtype=torch.uint8)),
            ("flag", torch.tensor([True, False, True])),
            ("scalar_f32", torch.tensor(3.25)),
            ("scalar_i64", torch.tensor(-9, dtype=torch.int64)),
            ("param", torch.nn.Parameter(torch.randn(3))),
            ("param_scalar", torch.nn.Parameter(torch.tensor(1.5), requires_grad=False)),
            # Views: all share `base`'s storage.
            ("view.base", base),
            ("view.slice", base[5:11]),  # contiguous, storage offset 5
            ("view.block", grid[1:3, 2:5]),  # non-contiguous, offset 8
            ("view.transposed", grid.t()),  # strides (1, 6)
            ("view.column", grid[:, 4]),  # stride 6, offset 4
            ("view.step", base[1::3]),  # stride 3
            ("bf16_t", bf.t()),
            ("f16_t", half.t()),
            ("tagged", tagged),
            ("empty", torch.zeros(0, 3)),
        ]
    )


def main():
    expected = {}

    def save(name, obj):
        path = os.path.join(HERE, name)
        torch.save(obj, path)
        expected[name] = flatten(obj)

    tiny = Tiny()
    with torch.no_grad():
        for p in tiny.parameters():
            p.copy_(torch.randn_like(p))
    save("flat_state.pth", tiny.state_dict())
    save("mixed.pth", mixed_dtypes())

    vae = Tiny()
    save(
        "vae_ckpt.pth",
        {"vae": vae.state_dict(), "ema": {"decay": 0.999, "w": torch.ones(2)}, "step": 1234, "note": "vae"},
    )

    var = Tiny()
    opt = torch.optim.AdamW(var.parameters(), lr=1e-3)
    loss = var.norm(var.proj(torch.randn(2, 4))).sum() * var.scale
    loss.backward()
    opt.step()
    save(
        "star_snapshot.pth",
        {
            "epoch": 1,
            "iter": 30,
            "trainer": {
                "config": {"patch_nums": (1, 2, 3), "resos": [16, 32], "label_smooth": 0.1, "prog_it": None},
                "var_wo_ddp": var.state_dict(),
                "vae_local": {"quantize.embedding.weight": torch.randn(8, 2)},
                "var_opt": {"optim": opt.state_dict(), "scaler": {"scale": 65536.0, "growth": True}},
            },
        },
    )

    # torch >= 2 writes tensors that carry Python state as
    # _rebuild_from_type_v2(_rebuild_tensor_v2, torch._tensor.Tensor, args, state). torch 1.13 only does
    # that for subclasses, so save a subclass and rename its global to the one torch 2 writes.
    sub = torch.arange(6, dtype=torch.float32).view(2, 3).t().as_subclass(Sub)
    sub_path = os.path.join(HERE, "from_type_v2.pth")
    torch.save({"sub": sub}, sub_path)
    with zipfile.ZipFile(sub_path) as z:
        entries = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(sub_path, "w", compression=zipfile.ZIP_STORED) as z:
        for name, data in entries:
            if name.endswith("data.pkl"):
                data = re.sub(rb"c__main__\nSub\n", b"ctorch._tensor\nTensor\n", data)
                assert b"torch._tensor\n_rebuild_from_type_v2" in data and b"__main__" not in data
            z.writestr(name, data)
    expected["from_type_v2.pth"] = {"sub": describe(sub.as_subclass(torch.Tensor))}

    # A global outside the allow-list: the reader must name it and execute nothing.
    torch.save({"w": torch.ones(2), "when": datetime.date(2024, 1, 2)}, os.path.join(HERE, "forbidden_global.pth"))

    # The same checkpoint re-zipped with deflate: entries are compressed, which must be refused.
    with zipfile.ZipFile(os.path.join(HERE, "flat_state.pth")) as src, zipfile.ZipFile(
        os.path.join(HERE, "compressed.pth"), "w", compression=zipfile.ZIP_DEFLATED
    ) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))

    # A zip that is no checkpoint at all.
    with zipfile.ZipFile(os.path.join(HERE, "no_data_pkl.pth"), "w") as z:
        z.writestr("archive/readme.txt", "no pickle here")

    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump({"torch": torch.__version__, "files": expected}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
