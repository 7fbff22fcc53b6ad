"""Our safetensors writer: byte-for-byte deterministic, and read by the safetensors library and PyTorch."""

import numpy as np
from safetensors import safe_open
from safetensors.torch import load_file

from mlp_cli import checkpoint


def test_same_tensors_and_metadata_give_the_same_bytes_and_the_library_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"0.weight": rng.standard_normal((3, 4)).astype(np.float32), "2.num_batches_tracked": np.array(7),
               "0.bias": rng.standard_normal(3), "mask": np.array([True, False]), "u": np.arange(5, dtype=np.uint8)}
    meta = {"epoch": 3, "config": {"z": 1, "a": [1.5, None]}, "classes": ["b", "a"]}
    data = checkpoint._tensor_bytes(tensors, meta)
    assert data == checkpoint._tensor_bytes(dict(reversed(list(tensors.items()))), dict(reversed(list(meta.items()))))
    assert len(data) % 8 == len(b"".join(np.asarray(t).tobytes() for t in tensors.values())) % 8
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with safe_open(str(path), framework="np") as f:
        assert {k: f.get_tensor(k).dtype for k in f.keys()} == {k: np.asarray(v).dtype for k, v in tensors.items()}
        for k, v in tensors.items():
            assert np.array_equal(f.get_tensor(k), v) and f.get_tensor(k).shape == np.shape(v)
    assert checkpoint._load_tensors(path)[1] == meta
    torch_tensors = load_file(str(path))
    assert torch_tensors["2.num_batches_tracked"].shape == () and torch_tensors["0.weight"].shape == (3, 4)
